//! Finding the project's own binaries (built by `cargo build --release`).

use std::path::{Path, PathBuf};

/// A project binary could not be found.
#[derive(Debug, thiserror::Error)]
#[error(
    "project binary `{name}` not found in {searched}; run `cargo build --release --workspace` first"
)]
pub struct BinaryNotFound {
    name: String,
    searched: String,
}

/// The workspace root (the directory above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of a project binary: `$CARGO_TARGET_DIR` or `<workspace>/target`,
/// release build preferred over debug.
pub fn project_binary(name: &str) -> Result<PathBuf, BinaryNotFound> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let candidates = [
        target.join("release").join(name),
        target.join("debug").join(name),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| BinaryNotFound {
            name: name.to_string(),
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

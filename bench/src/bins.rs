//! Finding our daemon binaries: `vhost-user-blk` and `vhost-user-net` from
//! the same target directory as this executable (or `$VIADUCT_BIN_DIR`).
//! Under `cargo run` a missing one is built first with the same profile.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors locating a daemon binary.
#[derive(Debug, thiserror::Error)]
pub enum BinError {
    #[error("cannot locate this executable: {0}")]
    SelfExe(std::io::Error),
    #[error(
        "{0} not found; build it first: cargo build --release -p vhost-user-blk -p vhost-user-net"
    )]
    Missing(PathBuf),
    #[error("building {0} failed")]
    Build(String),
}

fn bin_dir() -> Result<PathBuf, BinError> {
    if let Some(d) = std::env::var_os("VIADUCT_BIN_DIR") {
        return Ok(d.into());
    }
    let exe = std::env::current_exe().map_err(BinError::SelfExe)?;
    Ok(exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}

/// Path of the daemon binary `name`, building it under `cargo run` when
/// it is missing.
pub fn daemon(name: &str) -> Result<PathBuf, BinError> {
    let path = bin_dir()?.join(name);
    if path.is_file() {
        return Ok(path);
    }
    // `cargo run` exports CARGO and the manifest dir to the program.
    if let (Some(cargo), Some(manifest)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        let release = bin_dir()?.ends_with("release");
        let mut c = Command::new(cargo);
        c.arg("build").args(["-p", name]);
        if release {
            c.arg("--release");
        }
        c.current_dir(manifest);
        eprintln!("viaduct-bench: building {name}");
        let ok = c.status().is_ok_and(|s| s.success());
        if ok && path.is_file() {
            return Ok(path);
        }
        return Err(BinError::Build(name.into()));
    }
    Err(BinError::Missing(path))
}

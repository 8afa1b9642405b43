//! Where the guest kit keeps what it downloads and builds.

use std::path::{Path, PathBuf};

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("neither $VIADUCT_CACHE nor $HOME is set; set VIADUCT_CACHE to a writable directory")]
    NoLocation,
    #[error("cannot create cache directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The kit's cache: `$VIADUCT_CACHE`, else `~/.cache/viaduct`.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Finds (and creates) the cache directory.
    pub fn locate() -> Result<Self, CacheError> {
        let root = match std::env::var_os("VIADUCT_CACHE") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home = std::env::var_os("HOME").ok_or(CacheError::NoLocation)?;
                PathBuf::from(home).join(".cache").join("viaduct")
            }
        };
        Self::at(root)
    }

    /// Uses `root` as the cache directory, creating it if needed.
    pub fn at(root: PathBuf) -> Result<Self, CacheError> {
        std::fs::create_dir_all(&root).map_err(|source| CacheError::Create {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A subdirectory of the cache, created if needed.
    pub fn dir(&self, name: &str) -> Result<PathBuf, CacheError> {
        let path = self.root.join(name);
        std::fs::create_dir_all(&path).map_err(|source| CacheError::Create {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// A fresh scratch directory for one test run; see [`Scratch`].
    pub fn scratch(&self, tag: &str) -> Result<Scratch, CacheError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self.dir(&format!("runs/{tag}-{}-{stamp}", std::process::id()))?;
        Ok(Scratch { path })
    }
}

/// A scratch directory, removed when dropped unless the thread is
/// panicking (a failed test keeps its consoles and logs) or `VIADUCT_KEEP`
/// is set.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Keeps the directory (for inspection after a failure) and returns its path.
    pub fn keep(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("VIADUCT_KEEP").is_some() {
            eprintln!("scratch kept: {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

//! Where the names in a qcow2 header may lead. A header is data the guest
//! may have written, so every backing or data-file name in it is checked
//! against what the operator allowed (`--backing-dir`, `--backing`,
//! `--data-file`) and opened here, never by imago:
//!
//! - beneath `--backing-dir DIR` with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: no `..` out of DIR, no
//!   symlink anywhere on the way, absolute names only when they lie beneath
//!   DIR's canonical path;
//! - or one of the `--backing FILE`s, when the name refers to that very
//!   file (same device and inode); the `--backing` path is what is opened;
//! - the external data file only as `--data-file FILE`, which must be the
//!   file the header names (if it names one).
//!
//! Backing files open read-only. Every file opened is also kept (as a
//! duplicate descriptor) for the daemon's Landlock ruleset, which lists
//! exactly these files.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::config::{CacheMode, ChainPolicy};

/// A name in an image header that we do not follow, or a file we cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The backing name is outside everything the operator allowed.
    #[error(
        "{image} names backing file {name:?}, which is not allowed ({why}); \
         allow it with --backing-dir DIR or --backing FILE"
    )]
    BackingNotAllowed {
        /// The image whose header names it.
        image: PathBuf,
        /// The name as the header gives it.
        name: String,
        /// Why each allowance did not apply.
        why: String,
    },
    /// The image needs an external data file and `--data-file` is missing.
    #[error("{image} needs external data file {name:?}; it is only used when given as --data-file")]
    DataFileNotAllowed {
        /// The image.
        image: PathBuf,
        /// The name in its header (empty if none).
        name: String,
    },
    /// `--data-file` is not the file the header names.
    #[error("{image} names external data file {name:?}, which is not --data-file {flag}")]
    DataFileMismatch {
        /// The image.
        image: PathBuf,
        /// The header's name.
        name: String,
        /// The `--data-file` argument.
        flag: PathBuf,
    },
    /// `--data-file` given for an image without an external data file.
    #[error("--data-file {flag} given, but {image} has no external data file")]
    DataFileUnused {
        /// The image.
        image: PathBuf,
        /// The `--data-file` argument.
        flag: PathBuf,
    },
    /// `--backing-dir` cannot be opened.
    #[error("cannot open --backing-dir {0}")]
    BackingDir(PathBuf, #[source] std::io::Error),
    /// An allowed file cannot be opened.
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// An allowed file is neither a regular file nor a block device.
    #[error("{0} is neither a regular file nor a block device")]
    NotAFile(PathBuf),
    /// An allowed file changed between the check and the open.
    #[error("{0} changed while it was being opened")]
    Changed(PathBuf),
}

/// A file of the image's chain, kept for the Landlock ruleset.
#[derive(Debug)]
pub struct ChainFile {
    /// Its path (as resolved), for logs.
    pub path: PathBuf,
    /// A duplicate of the descriptor the image layer uses.
    pub fd: OwnedFd,
    /// Opened for writing (the image itself, a data file).
    pub writable: bool,
}

impl ChainFile {
    /// Records `file` (duplicating its descriptor).
    pub fn of(path: &Path, file: &File, writable: bool) -> Result<Self, ChainError> {
        let fd = file
            .try_clone()
            .map_err(|e| ChainError::Open(path.to_owned(), e))?
            .into();
        Ok(ChainFile {
            path: path.to_owned(),
            fd,
            writable,
        })
    }
}

/// A file opened on behalf of a header name.
#[derive(Debug)]
pub struct Opened {
    /// Where it was found (DIR joined with the name, or the `--backing` or
    /// `--data-file` path); names in its own header resolve against it.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
}

/// `--backing-dir`, opened once.
#[derive(Debug)]
struct BackingDir {
    /// As given.
    path: PathBuf,
    /// Canonical, for absolute names.
    canonical: PathBuf,
    /// O_PATH descriptor that lookups start from.
    fd: OwnedFd,
}

/// Resolves header names under a [`ChainPolicy`].
#[derive(Debug)]
pub struct Resolver {
    policy: ChainPolicy,
    dir: Option<BackingDir>,
    direct: bool,
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

impl Resolver {
    /// Opens `--backing-dir` (if any); files open with O_DIRECT when the
    /// cache mode asks for it.
    pub fn new(policy: &ChainPolicy, cache: CacheMode) -> Result<Self, ChainError> {
        let dir = match &policy.backing_dir {
            None => None,
            Some(path) => {
                let dir_err = |e| ChainError::BackingDir(path.clone(), e);
                let canonical = std::fs::canonicalize(path).map_err(dir_err)?;
                let fd: OwnedFd = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(path)
                    .map_err(dir_err)?
                    .into();
                Some(BackingDir {
                    path: path.clone(),
                    canonical,
                    fd,
                })
            }
        };
        Ok(Resolver {
            policy: policy.clone(),
            dir,
            direct: cache.direct(),
        })
    }

    fn flags(&self, write: bool) -> libc::c_int {
        let mut flags = libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
        flags |= if write { libc::O_RDWR } else { libc::O_RDONLY };
        if self.direct {
            flags |= libc::O_DIRECT;
        }
        flags
    }

    /// Opens the backing file `name` that image `image` names, read-only,
    /// if the policy allows it.
    pub fn backing(&self, image: &Path, name: &str) -> Result<Opened, ChainError> {
        let mut why = Vec::new();
        match &self.dir {
            None => why.push("no --backing-dir".to_string()),
            Some(dir) => match self.beneath(dir, name) {
                Ok(opened) => return Ok(opened),
                Err(e) => why.push(e),
            },
        }
        if self.policy.backing.is_empty() {
            why.push("no --backing".to_string());
        } else {
            let target = referred(image, name);
            let id = std::fs::metadata(&target).ok().map(|m| (m.dev(), m.ino()));
            for allowed in &self.policy.backing {
                let Ok(meta) = std::fs::metadata(allowed) else {
                    continue;
                };
                if id == Some((meta.dev(), meta.ino())) {
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(self.flags(false))
                        .open(allowed)
                        .map_err(|e| ChainError::Open(allowed.clone(), e))?;
                    let got = checked(allowed, file)?;
                    let m = got
                        .metadata()
                        .map_err(|e| ChainError::Open(allowed.clone(), e))?;
                    if (m.dev(), m.ino()) != (meta.dev(), meta.ino()) {
                        return Err(ChainError::Changed(allowed.clone()));
                    }
                    return Ok(Opened {
                        path: allowed.clone(),
                        file: got,
                    });
                }
            }
            why.push("not one of the --backing files".to_string());
        }
        Err(ChainError::BackingNotAllowed {
            image: image.to_owned(),
            name: name.to_owned(),
            why: why.join("; "),
        })
    }

    /// openat2 beneath the backing directory; the reason as text on refusal.
    fn beneath(&self, dir: &BackingDir, name: &str) -> Result<Opened, String> {
        let as_path = Path::new(name);
        let relative = if as_path.is_absolute() {
            as_path
                .strip_prefix(&dir.canonical)
                .map_err(|_| format!("absolute and not beneath {}", dir.canonical.display()))?
        } else {
            as_path
        };
        if relative.as_os_str().is_empty()
            || relative
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
        {
            return Err(format!("leaves --backing-dir {}", dir.path.display()));
        }
        let c_name = std::ffi::CString::new(relative.as_os_str().as_encoded_bytes())
            .map_err(|_| "contains a NUL byte".to_string())?;
        let how = OpenHow {
            flags: u64::try_from(self.flags(false)).map_err(|_| "bad open flags".to_string())?,
            mode: 0,
            resolve: libc::RESOLVE_BENEATH
                | libc::RESOLVE_NO_SYMLINKS
                | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2 reads the NUL-terminated name and `how` (of the
        // size passed), both alive for the call; the directory fd is ours.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.fd.as_raw_fd(),
                c_name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        let path = dir.path.join(relative);
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EXDEV) => format!("leaves --backing-dir {}", dir.path.display()),
                Some(libc::ELOOP) => {
                    format!(
                        "a symlink on the way beneath --backing-dir {}",
                        dir.path.display()
                    )
                }
                _ => format!("{}: {e}", path.display()),
            });
        }
        let raw = libc::c_int::try_from(fd).map_err(|_| format!("openat2 returned {fd}"))?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        let file = checked(&path, file).map_err(|e| e.to_string())?;
        Ok(Opened { path, file })
    }

    /// Opens `--data-file` for image `image`, whose header names `name`
    /// (if it names one); writable unless `read_only`. Extra open flags
    /// (O_DSYNC) in `extra`.
    pub fn data_file(
        &self,
        image: &Path,
        name: Option<&str>,
        read_only: bool,
        extra: libc::c_int,
    ) -> Result<Opened, ChainError> {
        let Some(flag) = &self.policy.data_file else {
            return Err(ChainError::DataFileNotAllowed {
                image: image.to_owned(),
                name: name.unwrap_or_default().to_owned(),
            });
        };
        let flag_id = std::fs::metadata(flag)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| ChainError::Open(flag.clone(), e))?;
        if let Some(name) = name {
            let named = std::fs::metadata(referred(image, name))
                .ok()
                .map(|m| (m.dev(), m.ino()));
            if named != Some(flag_id) {
                return Err(ChainError::DataFileMismatch {
                    image: image.to_owned(),
                    name: name.to_owned(),
                    flag: flag.clone(),
                });
            }
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true)
            .write(!read_only)
            .custom_flags(self.flags(false) | extra);
        let file = opts
            .open(flag)
            .map_err(|e| ChainError::Open(flag.clone(), e))?;
        let file = checked(flag, file)?;
        let m = file
            .metadata()
            .map_err(|e| ChainError::Open(flag.clone(), e))?;
        if (m.dev(), m.ino()) != flag_id {
            return Err(ChainError::Changed(flag.clone()));
        }
        Ok(Opened {
            path: flag.clone(),
            file,
        })
    }

    /// Fails if `--data-file` was given (the image has no data file).
    pub fn no_data_file(&self, image: &Path) -> Result<(), ChainError> {
        match &self.policy.data_file {
            Some(flag) => Err(ChainError::DataFileUnused {
                image: image.to_owned(),
                flag: flag.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// The path a header name refers to: relative names are relative to the
/// directory of the image that names them (as QEMU resolves them).
fn referred(image: &Path, name: &str) -> PathBuf {
    let dir = match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.join(name)
}

/// `file` if it is a regular file or block device.
fn checked(path: &Path, file: File) -> Result<File, ChainError> {
    let ft = file
        .metadata()
        .map_err(|e| ChainError::Open(path.to_owned(), e))?
        .file_type();
    if ft.is_file() || ft.is_block_device() {
        Ok(file)
    } else {
        Err(ChainError::NotAFile(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use vmm_sys_util::tempdir::TempDir;

    fn dirs() -> (TempDir, PathBuf, PathBuf) {
        let t = TempDir::new_with_prefix("/tmp/chain").unwrap();
        let allowed = t.as_path().join("allowed");
        let outside = t.as_path().join("outside");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(allowed.join("base"), b"base").unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        (t, allowed, outside)
    }

    fn resolver(policy: ChainPolicy) -> Resolver {
        Resolver::new(&policy, CacheMode::Writeback).unwrap()
    }

    fn read(o: Opened) -> Vec<u8> {
        use std::io::Read;
        let mut v = Vec::new();
        let mut f = o.file;
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn backing_dir_allows_names_beneath_it_only() {
        let (_t, allowed, outside) = dirs();
        symlink(outside.join("secret"), allowed.join("link")).unwrap();
        std::fs::create_dir(allowed.join("sub")).unwrap();
        std::fs::write(allowed.join("sub/inner"), b"inner").unwrap();
        symlink(&outside, allowed.join("dirlink")).unwrap();
        let r = resolver(ChainPolicy {
            backing_dir: Some(allowed.clone()),
            ..Default::default()
        });
        let img = allowed.join("top.qcow2");
        assert_eq!(read(r.backing(&img, "base").unwrap()), b"base");
        assert_eq!(read(r.backing(&img, "sub/inner").unwrap()), b"inner");
        let abs = std::fs::canonicalize(&allowed).unwrap().join("base");
        assert_eq!(
            read(r.backing(&img, abs.to_str().unwrap()).unwrap()),
            b"base"
        );
        let secret = outside.join("secret");
        for name in [
            secret.to_str().unwrap(),
            "../outside/secret",
            "sub/../../outside/secret",
            "link",
            "dirlink/secret",
            "/etc/passwd",
            "",
        ] {
            let e = r.backing(&img, name).unwrap_err();
            assert!(
                matches!(&e, ChainError::BackingNotAllowed { name: n, .. } if n == name),
                "{name}: {e}"
            );
            assert!(e.to_string().contains(name), "{e}");
        }
        // Writes through the backing file are impossible.
        let f = r.backing(&img, "base").unwrap().file;
        // SAFETY: fcntl(F_GETFL) on our own descriptor.
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);
    }

    #[test]
    fn backing_files_are_matched_by_identity() {
        let (_t, allowed, outside) = dirs();
        let base = allowed.join("base");
        let r = resolver(ChainPolicy {
            backing: vec![base.clone()],
            ..Default::default()
        });
        let img = outside.join("top.qcow2");
        assert_eq!(read(r.backing(&img, "../allowed/base").unwrap()), b"base");
        assert_eq!(
            read(r.backing(&img, base.to_str().unwrap()).unwrap()),
            b"base"
        );
        let e = r.backing(&img, "secret").unwrap_err();
        assert!(e.to_string().contains("\"secret\""), "{e}");
        let e = resolver(ChainPolicy::default())
            .backing(&img, "../allowed/base")
            .unwrap_err();
        assert!(matches!(e, ChainError::BackingNotAllowed { .. }), "{e}");
    }

    #[test]
    fn data_file_only_as_the_flag_and_only_the_named_file() {
        let (_t, allowed, outside) = dirs();
        let img = allowed.join("top.qcow2");
        let none = resolver(ChainPolicy::default());
        assert!(matches!(
            none.data_file(&img, Some("base"), false, 0),
            Err(ChainError::DataFileNotAllowed { .. })
        ));
        assert!(none.no_data_file(&img).is_ok());
        let r = resolver(ChainPolicy {
            data_file: Some(allowed.join("base")),
            ..Default::default()
        });
        let ok = r.data_file(&img, Some("base"), false, 0).unwrap();
        // SAFETY: fcntl(F_GETFL) on our own descriptor.
        let fl = unsafe { libc::fcntl(ok.file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR);
        let name = outside.join("secret");
        assert!(matches!(
            r.data_file(&img, name.to_str(), false, 0),
            Err(ChainError::DataFileMismatch { .. })
        ));
        assert!(matches!(
            r.no_data_file(&img),
            Err(ChainError::DataFileUnused { .. })
        ));
    }
}

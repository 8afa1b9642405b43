//! Provisioning from Debian's packages only, idempotently: host packages
//! (through `scripts/install-host-deps.sh`) and the stock guest kernel,
//! downloaded with `apt-get download` and extracted, never installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binaries::workspace_root;
use crate::cache::{Cache, CacheError};
use crate::kernel::{GuestKernel, KernelError, extract_vmlinux};

/// The guest kernel every test boots (stock Debian, from bookworm-backports).
pub const KERNEL_VERSION: &str = "6.12.95+deb12-amd64";

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot run {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("{what} failed (exit {code:?}): {stderr}")]
    Failed {
        what: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error(
        "Debian package {0} could not be downloaded; is bookworm-backports enabled (scripts/install-host-deps.sh) and the package still in the archive?"
    )]
    PackageUnavailable(String),
    #[error("filesystem error on {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

fn run(cmd: &mut Command, what: &str) -> Result<(), ProvisionError> {
    let out = cmd
        .output()
        .map_err(|e| ProvisionError::Spawn(what.to_string(), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ProvisionError::Failed {
        what: what.to_string(),
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn progress(msg: &str) {
    eprintln!("guest-kit: {msg}");
}

/// Installs the host packages (QEMU 10, busybox-static, cpio, qemu-utils, ...).
pub fn ensure_host_packages() -> Result<(), ProvisionError> {
    let script = workspace_root().join("scripts/install-host-deps.sh");
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .map_err(|e| ProvisionError::Spawn(script.display().to_string(), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(ProvisionError::Failed {
            what: script.display().to_string(),
            code: status.code(),
            stderr: "see the lines above".into(),
        })
    }
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>, ProvisionError> {
    let prefix = format!("{package}_");
    let entries = std::fs::read_dir(dir).map_err(|e| ProvisionError::Io(dir.into(), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Downloads (once) and extracts (once) the guest kernel, and cuts its vmlinux.
pub fn ensure_kernel(cache: &Cache) -> Result<GuestKernel, ProvisionError> {
    let package = format!("linux-image-{KERNEL_VERSION}");
    let root = cache.dir("kernel")?.join(KERNEL_VERSION);
    let kernel = GuestKernel {
        version: KERNEL_VERSION.to_string(),
        bzimage: root.join(format!("boot/vmlinuz-{KERNEL_VERSION}")),
        vmlinux: root.join("vmlinux"),
        modules: root.join(format!("lib/modules/{KERNEL_VERSION}")),
    };
    let stamp = root.join(".complete");
    if stamp.is_file() {
        return Ok(kernel);
    }

    let debs = cache.dir("debs")?;
    let deb = match find_deb(&debs, &package)? {
        Some(deb) => deb,
        None => {
            progress(&format!("downloading {package} (about 107 MB)"));
            run(
                Command::new("apt-get")
                    .args(["download", "-q", &package])
                    .current_dir(&debs),
                "apt-get download",
            )
            .map_err(|_| ProvisionError::PackageUnavailable(package.clone()))?;
            find_deb(&debs, &package)?
                .ok_or_else(|| ProvisionError::PackageUnavailable(package.clone()))?
        }
    };

    progress(&format!("extracting {}", deb.display()));
    let tmp = root.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ProvisionError::Io(tmp.clone(), e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ProvisionError::Io(tmp.clone(), e))?;
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp),
        "dpkg-deb -x",
    )?;
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(|e| ProvisionError::Io(root.clone(), e))?;
    }
    std::fs::rename(&tmp, &root).map_err(|e| ProvisionError::Io(root.clone(), e))?;

    progress("cutting vmlinux out of the bzImage (PVH boot)");
    extract_vmlinux(&kernel.bzimage, &kernel.vmlinux)?;
    std::fs::write(&stamp, b"").map_err(|e| ProvisionError::Io(stamp.clone(), e))?;
    Ok(kernel)
}

/// Host packages and guest kernel, in one call.
pub fn ensure_all(cache: &Cache) -> Result<GuestKernel, ProvisionError> {
    ensure_host_packages()?;
    ensure_kernel(cache)
}

//! Busybox initramfs images for test guests: chosen kernel modules
//! (decompressed, loaded in dependency order), files, project binaries with
//! the shared libraries `ldd` names, and one scenario script per image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::console::{DONE_MARKER, RESULT_MARKER};
use crate::cpio::{CpioWriter, Entry};
use crate::modules::{ModuleError, ModuleTree};

/// Where busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Why an initramfs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot run ldd on {0}")]
    Ldd(PathBuf, #[source] std::io::Error),
    #[error("{0} is not statically linked busybox; install busybox-static")]
    BusyboxNotStatic(PathBuf),
    #[error(transparent)]
    Module(#[from] ModuleError),
}

/// An initramfs under construction.
#[derive(Debug, Clone)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
    modules: Vec<String>,
    scenario: String,
}

/// The init script's fixed part: mounts, modules, the result helper.
fn init_script(modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin /mnt
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
result() {{ echo "{RESULT_MARKER} $*"; }}
for m in {mods}; do
  insmod /lib/modules/$m.ko || result insmod_failed=$m
done
ip link set lo up 2>/dev/null
echo VIADUCT-BOOTED
( . /etc/viaduct/scenario.sh )
echo {DONE_MARKER}
sync
poweroff -f
"#,
        mods = modules.join(" ")
    )
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    /// An image with the directory skeleton and `/dev/console`.
    pub fn new() -> Self {
        let mut me = Self {
            entries: BTreeMap::new(),
            modules: Vec::new(),
            scenario: String::new(),
        };
        for dir in [
            "bin",
            "dev",
            "etc",
            "etc/viaduct",
            "lib",
            "lib/modules",
            "proc",
            "sys",
            "tmp",
        ] {
            me.entries.insert(dir.to_string(), Entry::Dir);
        }
        me.entries
            .insert("dev/console".into(), Entry::CharDev { major: 5, minor: 1 });
        me
    }

    fn insert(&mut self, dest: &str, entry: Entry) {
        let rel = dest.trim_start_matches('/').to_string();
        let mut parent = Path::new(&rel).parent();
        while let Some(p) = parent {
            let s = p.to_string_lossy().to_string();
            if s.is_empty() {
                break;
            }
            self.entries.entry(s).or_insert(Entry::Dir);
            parent = p.parent();
        }
        self.entries.insert(rel, entry);
    }

    /// Adds the host's static busybox as `/bin/busybox`.
    pub fn busybox(&mut self) -> Result<&mut Self, InitramfsError> {
        let path = PathBuf::from(BUSYBOX);
        let data = std::fs::read(&path).map_err(|e| InitramfsError::Read(path.clone(), e))?;
        if has_interpreter(&data) {
            return Err(InitramfsError::BusyboxNotStatic(path));
        }
        self.insert("bin/busybox", Entry::File { data, mode: 0o755 });
        Ok(self)
    }

    /// Adds kernel modules (with their dependencies) and loads them at boot.
    pub fn modules(
        &mut self,
        tree: &ModuleTree,
        names: &[&str],
    ) -> Result<&mut Self, InitramfsError> {
        for module in tree.resolve(names)? {
            if self.modules.contains(&module.name) {
                continue;
            }
            self.insert(
                &format!("lib/modules/{}", module.file_name),
                Entry::File {
                    data: module.data,
                    mode: 0o644,
                },
            );
            self.modules.push(module.name);
        }
        Ok(self)
    }

    /// Adds a file with the given contents.
    pub fn file(&mut self, dest: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.insert(
            dest,
            Entry::File {
                data: data.into(),
                mode,
            },
        );
        self
    }

    /// Copies a host file into the image.
    pub fn host_file(
        &mut self,
        dest: &str,
        src: &Path,
        mode: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let data = std::fs::read(src).map_err(|e| InitramfsError::Read(src.into(), e))?;
        Ok(self.file(dest, data, mode))
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, dest: &str, target: &str) -> &mut Self {
        self.insert(
            dest,
            Entry::Symlink {
                target: target.into(),
            },
        );
        self
    }

    /// Copies a dynamically linked host binary and every library `ldd` names,
    /// at the same paths, so it runs inside the guest.
    pub fn binary(&mut self, dest: &str, src: &Path) -> Result<&mut Self, InitramfsError> {
        self.host_file(dest, src, 0o755)?;
        for lib in ldd(src)? {
            if !self
                .entries
                .contains_key(lib.to_string_lossy().trim_start_matches('/'))
            {
                let dest = lib.to_string_lossy().to_string();
                self.host_file(&dest, &lib, 0o755)?;
            }
        }
        Ok(self)
    }

    /// Sets the scenario script, run by init after modules load. It reports
    /// with `result key=value ...`.
    pub fn scenario(&mut self, script: &str) -> &mut Self {
        self.scenario = script.to_string();
        self
    }

    /// Writes the image as an uncompressed newc cpio archive.
    pub fn write(&self, path: &Path) -> Result<(), InitramfsError> {
        let werr = |e| InitramfsError::Write(path.into(), e);
        let file = std::fs::File::create(path).map_err(werr)?;
        let mut w = CpioWriter::new(std::io::BufWriter::new(file));
        let mut entries = self.entries.clone();
        entries.insert(
            "init".into(),
            Entry::File {
                data: init_script(&self.modules).into_bytes(),
                mode: 0o755,
            },
        );
        entries.insert(
            "etc/viaduct/scenario.sh".into(),
            Entry::File {
                data: self.scenario.clone().into_bytes(),
                mode: 0o755,
            },
        );
        // BTreeMap order puts parents before children.
        for (name, entry) in &entries {
            w.append(name, entry).map_err(werr)?;
        }
        w.finish().map_err(werr)?;
        Ok(())
    }
}

/// Writes a plain test-guest image: busybox, `modules` (with dependencies)
/// and `scenario`.
pub fn guest_initramfs(
    modules_dir: &Path,
    modules: &[&str],
    scenario: &str,
    out: &Path,
) -> Result<(), InitramfsError> {
    let tree = ModuleTree::open(modules_dir)?;
    let mut img = Initramfs::new();
    img.busybox()?.modules(&tree, modules)?.scenario(scenario);
    img.write(out)
}

/// Whether an ELF64 image has a PT_INTERP program header (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let rd = |off: usize, n: usize| elf.get(off..off + n);
    let (Some(phoff), Some(entsize), Some(num)) = (rd(0x20, 8), rd(0x36, 2), rd(0x38, 2)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(u64::from_le_bytes(phoff.try_into().unwrap_or([0; 8]))) else {
        return false;
    };
    let entsize = usize::from(u16::from_le_bytes([entsize[0], entsize[1]]));
    let num = usize::from(u16::from_le_bytes([num[0], num[1]]));
    (0..num).any(|i| {
        rd(phoff + i * entsize, 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP)
    })
}

/// Shared libraries (and the ELF interpreter) a binary needs, per `ldd`.
pub fn ldd(bin: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| InitramfsError::Ldd(bin.into(), e))?;
    // "not a dynamic executable" exits 1 and means: nothing to copy.
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    libs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn init_loads_modules_in_order_and_reports() {
        let s = init_script(&["dca".into(), "igb".into()]);
        assert!(s.contains("for m in dca igb; do"));
        assert!(s.contains(DONE_MARKER));
        assert!(s.starts_with("#!/bin/busybox sh"));
    }

    #[test]
    fn detects_dynamic_elf() {
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(has_interpreter(&ls));
        let bb = std::fs::read(BUSYBOX).unwrap();
        assert!(!has_interpreter(&bb), "busybox-static must be static");
        assert!(!has_interpreter(b"short"));
    }

    #[test]
    fn parents_are_created() {
        let mut i = Initramfs::new();
        i.file("/usr/lib/x/y.so", b"z".to_vec(), 0o644);
        assert!(matches!(i.entries.get("usr"), Some(Entry::Dir)));
        assert!(matches!(i.entries.get("usr/lib/x"), Some(Entry::Dir)));
    }
}

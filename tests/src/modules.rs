//! Kernel modules of the guest kernel: lookup by name, dependency order, and
//! decompression (the Debian kernel ships `.ko.xz`; busybox `insmod` wants
//! plain `.ko` and no `modules.dep` is shipped in the package).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a module could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read module tree {0}")]
    Walk(PathBuf, #[source] std::io::Error),
    #[error("kernel module `{0}` not found in the guest kernel's modules")]
    NotFound(String),
    #[error("cannot decompress {0} (is xz-utils installed?)")]
    Decompress(PathBuf, #[source] std::io::Error),
    #[error("xz failed on {0}")]
    XzFailed(PathBuf),
    #[error("module dependency cycle through `{0}`")]
    Cycle(String),
}

/// A decompressed module ready for the initramfs.
#[derive(Debug, Clone)]
pub struct Module {
    /// Canonical name (dashes turned into underscores).
    pub name: String,
    /// File name inside the initramfs, e.g. `kvm_amd.ko`.
    pub file_name: String,
    pub data: Vec<u8>,
}

/// Index of a kernel's module tree.
#[derive(Debug)]
pub struct ModuleTree {
    by_name: HashMap<String, PathBuf>,
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleTree {
    /// Indexes every `.ko.xz`/`.ko` under `root` (the `lib/modules/<ver>` dir).
    pub fn open(root: &Path) -> Result<Self, ModuleError> {
        let mut by_name = HashMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| ModuleError::Walk(dir.clone(), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| ModuleError::Walk(dir.clone(), e))?;
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Some(fname) = path.file_name().and_then(|f| f.to_str()) else {
                    continue;
                };
                let stem = fname
                    .strip_suffix(".ko.xz")
                    .or_else(|| fname.strip_suffix(".ko"));
                if let Some(stem) = stem {
                    by_name.insert(canonical(stem), path);
                }
            }
        }
        Ok(Self { by_name })
    }

    fn load(&self, name: &str) -> Result<Module, ModuleError> {
        let key = canonical(name);
        let path = self
            .by_name
            .get(&key)
            .ok_or_else(|| ModuleError::NotFound(name.to_string()))?;
        let data = if path.extension().is_some_and(|e| e == "xz") {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(path)
                .output()
                .map_err(|e| ModuleError::Decompress(path.clone(), e))?;
            if !out.status.success() {
                return Err(ModuleError::XzFailed(path.clone()));
            }
            out.stdout
        } else {
            std::fs::read(path).map_err(|e| ModuleError::Decompress(path.clone(), e))?
        };
        Ok(Module {
            file_name: format!("{key}.ko"),
            name: key,
            data,
        })
    }

    /// The named modules and everything they depend on, dependencies first,
    /// each once.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<Module>, ModuleError> {
        let mut done: Vec<Module> = Vec::new();
        let mut visiting: Vec<String> = Vec::new();
        for name in names {
            self.visit(name, &mut done, &mut visiting)?;
        }
        Ok(done)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut Vec<Module>,
        visiting: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        let key = canonical(name);
        if done.iter().any(|m| m.name == key) {
            return Ok(());
        }
        if visiting.contains(&key) {
            return Err(ModuleError::Cycle(key));
        }
        visiting.push(key.clone());
        let module = self.load(&key)?;
        for dep in depends_of(&module.data) {
            self.visit(&dep, done, visiting)?;
        }
        visiting.retain(|v| v != &key);
        done.push(module);
        Ok(())
    }
}

/// The `depends=` list from a module's `.modinfo` section.
pub fn depends_of(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(pos) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[pos + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(canonical)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parses_modinfo() {
        let blob = b"junk\0license=GPL\0depends=kvm,ccp\0vermagic=6.12\0";
        assert_eq!(depends_of(blob), vec!["kvm", "ccp"]);
        let blob = b"\0depends=\0name=x\0";
        assert!(depends_of(blob).is_empty());
        assert!(depends_of(b"nothing").is_empty());
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("vfio-pci-core"), "vfio_pci_core");
    }
}

//! Checks that this host's KVM can run Viaduct: opens `/dev/kvm`, creates a
//! VM and a vCPU, and reports the capabilities the VMM relies on.

use kvm_ioctls::{Cap, Kvm};

/// Why the KVM check failed.
#[derive(Debug, thiserror::Error)]
pub enum KvmCheckError {
    #[error("cannot open /dev/kvm (is the kvm module loaded and are you allowed to use it?)")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the stable version 12")]
    ApiVersion(i32),
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_VCPU failed")]
    CreateVcpu(#[source] kvm_ioctls::Error),
    #[error("KVM lacks required capabilities: {0}")]
    MissingCaps(String),
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmReport {
    pub api_version: i32,
    pub max_vcpus: usize,
    pub caps: Vec<(&'static str, bool)>,
}

impl KvmReport {
    /// One `key=value` line per fact, for humans and for test harnesses.
    pub fn render(&self) -> String {
        let mut out = format!(
            "kvm_api_version={}\nkvm_max_vcpus={}\n",
            self.api_version, self.max_vcpus
        );
        for (name, ok) in &self.caps {
            out.push_str(&format!("kvm_cap_{name}={}\n", u8::from(*ok)));
        }
        out
    }
}

const REQUIRED: [(&str, Cap); 6] = [
    ("irqchip", Cap::Irqchip),
    ("irqfd", Cap::Irqfd),
    ("ioeventfd", Cap::Ioeventfd),
    ("irq_routing", Cap::IrqRouting),
    ("user_memory", Cap::UserMemory),
    ("signal_msi", Cap::SignalMsi),
];

/// Opens KVM, creates a VM and one vCPU, and checks the required capabilities.
pub fn check_kvm() -> Result<KvmReport, KvmCheckError> {
    let kvm = Kvm::new().map_err(KvmCheckError::Open)?;
    let api_version = kvm.get_api_version();
    if api_version != 12 {
        return Err(KvmCheckError::ApiVersion(api_version));
    }
    let vm = kvm.create_vm().map_err(KvmCheckError::CreateVm)?;
    let _vcpu = vm.create_vcpu(0).map_err(KvmCheckError::CreateVcpu)?;
    let caps: Vec<_> = REQUIRED
        .iter()
        .map(|(name, cap)| (*name, kvm.check_extension(*cap)))
        .collect();
    let missing: Vec<_> = caps.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        return Err(KvmCheckError::MissingCaps(missing.join(", ")));
    }
    Ok(KvmReport {
        api_version,
        max_vcpus: kvm.get_max_vcpus(),
        caps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_cap() {
        let r = KvmReport {
            api_version: 12,
            max_vcpus: 4,
            caps: vec![("irqfd", true), ("ioeventfd", false)],
        };
        let text = r.render();
        assert!(text.contains("kvm_api_version=12\n"));
        assert!(text.contains("kvm_cap_irqfd=1\n"));
        assert!(text.contains("kvm_cap_ioeventfd=0\n"));
    }

    #[test]
    fn host_kvm_creates_a_vm() {
        // Every machine of this project has /dev/kvm (see shared/testbed.md);
        // a failure here is a real environment fault worth seeing.
        let report = check_kvm().expect("KVM check on this host");
        assert_eq!(report.api_version, 12);
        assert!(report.max_vcpus >= 1);
    }
}

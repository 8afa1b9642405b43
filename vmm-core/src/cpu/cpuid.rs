//! Per-vCPU CPUID: KVM's supported set, with this vCPU's APIC id, the
//! topology (N single-thread cores in one package) and the hypervisor bit,
//! so Linux's topology code agrees with the MP table. Pure: tests feed
//! fabricated entries.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY_EXT: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Level types in leaf 0xb/0x1f ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to hold ids 0..n.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts `entries` (a copy of KVM's supported CPUID) for vCPU `index` of `count`.
pub fn patch(entries: &mut [kvm_cpuid_entry2], index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count = u32::from(count.max(1));
    let core_bits = id_bits(count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ecx |= ECX_HYPERVISOR;
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1.
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0; // no SMT: shift 0
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index; // invalid level: ends enumeration
                    }
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[15:12] APIC id size, ECX[7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | ((count - 1) & 0xff);
            }
            LEAF_AMD_TOPOLOGY_EXT => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // core id; one thread per core
                e.ecx = 0; // node 0
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0x0, 0),
            entry(LEAF_FEATURES, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_TOPOLOGY, 2),
            entry(LEAF_AMD_SIZE_IDS, 0),
            entry(LEAF_AMD_TOPOLOGY_EXT, 0),
            entry(0x4000_0000, 0),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id() {
        for id in 0..4u8 {
            let mut v = sample();
            patch(&mut v, id, 4);
            assert_eq!(find(&v, LEAF_FEATURES, 0).ebx >> 24, u32::from(id));
            assert_eq!(find(&v, LEAF_EXT_TOPOLOGY, 0).edx, u32::from(id));
            assert_eq!(find(&v, LEAF_EXT_TOPOLOGY, 1).edx, u32::from(id));
            assert_eq!(find(&v, LEAF_AMD_TOPOLOGY_EXT, 0).eax, u32::from(id));
        }
    }

    #[test]
    fn hypervisor_bit_and_topology() {
        let mut v = sample();
        patch(&mut v, 1, 3);
        let f = find(&v, LEAF_FEATURES, 0);
        assert_ne!(f.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(f.edx & EDX_HTT, 0);
        assert_eq!((f.ebx >> 16) & 0xff, 3);
        assert_eq!(f.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        let core = find(&v, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!(
            (core.eax, core.ebx, (core.ecx >> 8) & 0xff),
            (2, 3, LEVEL_CORE)
        );
        assert_eq!(find(&v, LEAF_EXT_TOPOLOGY, 2).ebx, 0);
        assert_eq!(find(&v, LEAF_AMD_SIZE_IDS, 0).ecx & 0xff, 2);
        // Leaves we do not own are untouched.
        assert_eq!(find(&v, 0x4000_0000, 0).ebx, 0x0800);
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut v = sample();
        v[1].edx = EDX_HTT;
        patch(&mut v, 0, 1);
        assert_eq!(find(&v, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
    }
}

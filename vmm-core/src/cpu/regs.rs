//! Boot-time vCPU state: GDT, identity page tables, segment and control
//! registers for the two entry modes (64-bit Linux boot protocol, 32-bit
//! PVH), FPU defaults and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::boot::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK, PDE, PDPTE, PML4};
use crate::boot::{BootEntry, BootMode};
use crate::memory::GuestMemory;

/// Why a vCPU's registers could not be set.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write {0} into guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error("KVM {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Encodes one GDT descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM segment register a GDT descriptor at `index` describes.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    // The 20-bit limit, split over the descriptor.
    let raw_limit = ((((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) & 0x000f_ffff) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// The boot GDT for a mode: null, code, data, TSS.
pub fn boot_gdt(mode: BootMode) -> [u64; 4] {
    let code = match mode {
        BootMode::Linux64 { .. } => gdt_entry(0xa09b, 0, 0xfffff),
        BootMode::Pvh32 { .. } => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Special registers for a mode, given the GDT.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: BootMode) -> kvm_sregs {
    let gdt = boot_gdt(mode);
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT;
    // Cannot truncate: four 8-byte entries, limit 31.
    #[allow(clippy::cast_possible_truncation)]
    let gdt_limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.gdt.limit = gdt_limit;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match mode {
        BootMode::Linux64 { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_PG;
            sregs.cr3 = PML4;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootMode::Pvh32 { .. } => {
            sregs.cr0 = X86_CR0_PE;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers at the kernel entry.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        ..Default::default()
    };
    match entry.mode {
        BootMode::Linux64 { zero_page } => {
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
            regs.rsi = zero_page;
        }
        BootMode::Pvh32 { start_info } => regs.rbx = start_info,
    }
    regs
}

/// Writes the GDT, an empty IDT and (64-bit mode) 1 GiB of identity mapping.
pub fn write_boot_tables(mem: &GuestMemory, mode: BootMode) -> Result<(), RegsError> {
    for (i, e) in boot_gdt(mode).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT + 8 * i as u64))
            .map_err(|e| RegsError::Memory("the GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))
        .map_err(|e| RegsError::Memory("the IDT", e))?;
    if let BootMode::Linux64 { .. } = mode {
        let pt = |e| RegsError::Memory("page tables", e);
        mem.write_obj(PDPTE | 0x03, GuestAddress(PML4))
            .map_err(pt)?;
        mem.write_obj(PDE | 0x03, GuestAddress(PDPTE)).map_err(pt)?;
        for i in 0..512u64 {
            // 2 MiB pages, present + writable + PS.
            mem.write_obj((i << 21) | 0x83, GuestAddress(PDE + i * 8))
                .map_err(pt)?;
        }
    }
    Ok(())
}

/// Puts the boot vCPU at the kernel entry.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), RegsError> {
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("GET_SREGS", e))?;
    vcpu.set_sregs(&boot_sregs(sregs, entry.mode))
        .map_err(|e| RegsError::Kvm("SET_SREGS", e))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(|e| RegsError::Kvm("SET_REGS", e))
}

/// FPU defaults every vCPU starts with (x87 control word, SSE MXCSR).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("SET_FPU", e))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, off: usize) -> u32 {
    // `regs` is C chars: the same bytes, reinterpreted.
    let b = |i: usize| state.regs[off + i].to_ne_bytes()[0];
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        state.regs[off + i] = std::os::raw::c_char::from_ne_bytes([*byte]);
    }
}

/// LINT0 = ExtINT (the PIC), LINT1 = NMI, as the MP table says.
pub fn set_lint(mut state: kvm_lapic_state) -> kvm_lapic_state {
    let mode = |v: u32, m: u32| (v & !0x700) | (m << 8);
    let lvt0 = lapic_reg(&state, APIC_LVT0);
    set_lapic_reg(&mut state, APIC_LVT0, mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&state, APIC_LVT1);
    set_lapic_reg(&mut state, APIC_LVT1, mode(lvt1, APIC_MODE_NMI));
    state
}

/// Programs the vCPU's local APIC LINT pins.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let state = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("GET_LAPIC", e))?;
    vcpu.set_lapic(&set_lint(state))
        .map_err(|e| RegsError::Kvm("SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_round_trips_into_segments() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.selector, code.l, code.db, code.present), (8, 1, 0, 1));
        assert_eq!(
            (code.limit, code.type_, code.s, code.g),
            (0xffff_ffff, 0xb, 1, 1)
        );
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.selector, data.db, data.type_), (16, 1, 3));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
        let based = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcd), 2);
        assert_eq!((based.base, based.limit), (0x1234_5678, 0xabcd));
    }

    #[test]
    fn long_mode_and_pvh_registers() {
        let lm = boot_sregs(
            kvm_sregs::default(),
            BootMode::Linux64 { zero_page: 0x7000 },
        );
        assert_eq!(lm.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(lm.cr0 & X86_CR0_PG, 0);
        assert_eq!(lm.cs.l, 1);
        let pvh = boot_sregs(kvm_sregs::default(), BootMode::Pvh32 { start_info: 0x6000 });
        assert_eq!(
            (pvh.cr0, pvh.efer, pvh.cs.l, pvh.cs.db),
            (X86_CR0_PE, 0, 0, 1)
        );
        let r = boot_regs(BootEntry {
            rip: 0x100_0000,
            mode: BootMode::Pvh32 { start_info: 0x6000 },
        });
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, 0x6000, 2));
        let r = boot_regs(BootEntry {
            rip: 0x10_0200,
            mode: BootMode::Linux64 { zero_page: 0x7000 },
        });
        assert_eq!((r.rsi, r.rsp), (0x7000, BOOT_STACK));
    }

    #[test]
    fn lint_pins_are_extint_and_nmi() {
        let mut s = kvm_lapic_state::default();
        set_lapic_reg(&mut s, APIC_LVT0, 0x0001_0000);
        let s = set_lint(s);
        assert_eq!(lapic_reg(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&s, APIC_LVT1), 0x0000_0400);
    }
}

//! The guest-physical address map: where boot structures, RAM and the MMIO
//! hole live. One place, so the e820 map, the MP table, the page tables and
//! the PCI window can never disagree.

/// GDT used for the boot-time segments.
pub const BOOT_GDT: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP: u64 = 0x7000;
/// Linux `boot_params` (the "zero page") for bzImage boot.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit boot protocol.
pub const PML4: u64 = 0x9000;
pub const PDPTE: u64 = 0xa000;
pub const PDE: u64 = 0xb000;
/// Kernel command line and its maximum size (including the NUL).
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
/// Start of the extended BIOS data area; the MP table lives here, in the
/// last KiB of base memory, where Linux scans for it.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte of "high" memory: where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// The MMIO hole below 4 GiB: [MMIO32_START, 4 GiB).
pub const MMIO32_START: u64 = 0xc000_0000;
/// 32-bit PCI BAR window, at the bottom of the hole.
pub const PCI_MMIO32_START: u64 = MMIO32_START;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCIe enhanced configuration access (ECAM/MMCONFIG) for bus 0: 32
/// devices x 8 functions x 4 KiB, above the BAR window (MCFG, e820
/// reserved).
pub const PCI_ECAM_START: u64 = PCI_MMIO32_START + PCI_MMIO32_SIZE;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// In-kernel IOAPIC and local APIC addresses (fixed by KVM).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages inside the hole (below the BIOS ROM).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// RAM that does not fit below the hole continues here.
pub const RAM_64BIT_START: u64 = 1 << 32;
/// 64-bit PCI BAR window, above any RAM a VM may have: [64 GiB, 128 GiB),
/// inside the 40 physical address bits CPUs (and QEMU's models) have.
pub const PCI_MMIO64_START: u64 = 1 << 36;
pub const PCI_MMIO64_SIZE: u64 = 1 << 36;
/// Most RAM a VM may have: what fits below the 64-bit window once the
/// MMIO hole below 4 GiB is skipped.
pub const MAX_RAM: u64 = PCI_MMIO64_START - RAM_64BIT_START + MMIO32_START;

/// An address or size of this map as the 32-bit field firmware tables and
/// boot headers carry. Use it in const context (`const { addr32(X) }`): one
/// at or above 4 GiB then stops the build instead of being truncated.
pub const fn addr32(v: u64) -> u32 {
    assert!(v <= u32::MAX as u64, "not below 4 GiB");
    // Cannot truncate: checked just above.
    #[allow(clippy::cast_possible_truncation)]
    let a = v as u32;
    a
}

// The windows must not overlap; checked when compiling.
const _: () = {
    assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= IOAPIC_ADDR);
    assert!(RAM_64BIT_START + (MAX_RAM - MMIO32_START) <= PCI_MMIO64_START);
    assert!(IOAPIC_ADDR < LAPIC_ADDR && LAPIC_ADDR < KVM_TSS_ADDR);
    assert!(ZERO_PAGE + 0x1000 <= BOOT_STACK && BOOT_STACK < PML4);
    assert!(PVH_MODLIST > PVH_INFO && PVH_MODLIST < PVH_MEMMAP);
    assert!(CMDLINE + CMDLINE_MAX as u64 <= EBDA_START);
};

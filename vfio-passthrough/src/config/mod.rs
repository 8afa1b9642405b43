//! Configuration-space virtualization for a passed-through function: what
//! the guest sees is the device's own configuration space with the BAR
//! registers emulated (sizing with all-ones writes, relocation), no I/O
//! BARs and no option ROM, the INTx pin only once the VMM has wired INTx
//! ([`VirtualConfig::expose_int_pin`]), the capability lists filtered
//! (standard: PM, MSI, PCIe and MSI-X kept; extended: SR-IOV, ARI and
//! resizable BAR hidden) and the MSI-X message control word virtualized
//! (the VMM enables MSI-X through VFIO, not through the register), the MSI
//! capability's registers emulated ([`MsiRegs`]), and, on request, MSI-X
//! hidden (the guest then uses MSI). A hidden capability is gone as a whole,
//! not only unlinked: its header and body read as zero, as on a device
//! without it, and writes to them are dropped ([`crate::cap_extent`] says
//! where it lies). Every
//! other byte is forwarded to the device's config region with the exact
//! offset and size. Pure: the device is reached through [`ConfigSpace`],
//! so unit tests run on a fabricated configuration space.
//!
//! Here: the device access trait, the errors, the register map and
//! [`VirtualConfig`] with its construction. `bar_regs`: the emulated BAR
//! registers; `cap_lists`: filtering the standard and extended capability
//! lists; `guest_access`: guest reads and writes, byte by byte; `tests`: the
//! unit tests on a fabricated configuration space.

mod bar_regs;
mod cap_lists;
mod guest_access;
#[cfg(test)]
mod tests;

use pci::msi_cap::MsiRegs;

use crate::cap_extent::HiddenRanges;

pub use bar_regs::{Bar, BarKind};
pub use cap_lists::MsixLayout;
use cap_lists::StdCaps;
pub use guest_access::WriteEffect;

/// Where the real configuration space is read and written (the VFIO
/// config region in production, a byte array in tests).
pub trait ConfigSpace {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

/// Why a device's configuration space cannot be virtualized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration space reads as all-ones (device gone or in reset)")]
    NoDevice,
    #[error("header type {0:#x} is not a type-0 endpoint (bridges are not passed through)")]
    NotEndpoint(u8),
    #[error("MSI-X table or PBA of {vectors} vectors lies outside BAR {bar} ({size:#x} bytes)")]
    MsixOutsideBar { bar: u8, size: u64, vectors: u16 },
}

pub const COMMAND: u64 = 0x04;
const HEADER_TYPE: usize = 0x0e;
const BAR0: u64 = 0x10;
const BAR_END: u64 = 0x28;
const ROM: u64 = 0x30;
const CAP_PTR: u64 = 0x34;
const INT_LINE: u64 = 0x3c;
const INT_PIN: u64 = 0x3d;
const STD_SIZE: usize = 256;
/// Extended configuration space size (PCIe).
pub const EXT_SIZE: usize = 4096;
const NUM_BARS: usize = 6;

/// Standard capabilities the guest sees.
pub const CAP_PM: u8 = 0x01;
pub const CAP_MSI: u8 = 0x05;
pub const CAP_PCIE: u8 = 0x10;
pub const CAP_MSIX: u8 = 0x11;
const KEPT_CAPS: [u8; 4] = [CAP_PM, CAP_MSI, CAP_PCIE, CAP_MSIX];
/// Extended capabilities hidden from the guest.
pub const ECAP_ARI: u16 = 0x0e;
pub const ECAP_SRIOV: u16 = 0x10;
pub const ECAP_REBAR: u16 = 0x15;
pub const ECAP_VF_REBAR: u16 = 0x24;
const HIDDEN_ECAPS: [u16; 4] = [ECAP_ARI, ECAP_SRIOV, ECAP_REBAR, ECAP_VF_REBAR];
/// MSI-X message control bits the guest owns (enable, function mask).
const MSIX_CTRL_GUEST: u16 = 0xc000;

/// The guest's view of one function's configuration space.
#[derive(Debug, Clone)]
pub struct VirtualConfig {
    bars: [Bar; NUM_BARS],
    /// (offset of a kept standard capability, next kept offset).
    std_chain: Vec<(u64, u8)>,
    first_cap: u8,
    /// (offset, virtual header) of every extended capability header we rewrite.
    ext_headers: Vec<(u64, u32)>,
    /// Where the hidden capabilities (standard and extended) lie.
    hidden: HiddenRanges,
    size: usize,
    msix: Option<MsixLayout>,
    /// Device's message control (table size bits) with the guest's bits.
    msix_control: u16,
    msi: Option<MsiRegs>,
    int_line: u8,
    /// The device's INTx pin (1-4, 0: none).
    device_pin: u8,
    /// The pin the guest sees: the device's once INTx is wired, else 0.
    int_pin: u8,
}

/// The dword at `off` of a raw configuration space image; all-ones past
/// its end, as a missing device reads.
fn le32(b: &[u8], off: u64) -> u32 {
    let s = usize::try_from(off)
        .ok()
        .and_then(|o| b.get(o..o.checked_add(4)?));
    match s {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => u32::MAX,
    }
}

/// The byte at `off` of a raw configuration space image (`None` past its end).
fn byte_at(b: &[u8], off: u64) -> Option<u8> {
    b.get(usize::try_from(off).ok()?).copied()
}

impl VirtualConfig {
    /// Reads the device's configuration space and builds the guest's view.
    /// `bar_sizes` are the sizes VFIO reports for regions 0-5;
    /// `region_size` is the config region's size (256 or 4096).
    pub fn new(
        dev: &dyn ConfigSpace,
        bar_sizes: [u64; NUM_BARS],
        region_size: u64,
    ) -> Result<Self, ConfigError> {
        Self::with_msix(dev, bar_sizes, region_size, true)
    }

    /// Like [`Self::new`]; with `keep_msix` false the MSI-X capability is
    /// left out of the guest's list (the guest falls back to MSI).
    pub fn with_msix(
        dev: &dyn ConfigSpace,
        bar_sizes: [u64; NUM_BARS],
        region_size: u64,
        keep_msix: bool,
    ) -> Result<Self, ConfigError> {
        let size = if region_size >= EXT_SIZE as u64 {
            EXT_SIZE
        } else {
            STD_SIZE
        };
        let mut raw = vec![0u8; size];
        for (i, chunk) in raw.chunks_mut(4).enumerate() {
            dev.read(i as u64 * 4, chunk);
        }
        if le32(&raw, 0) == u32::MAX {
            return Err(ConfigError::NoDevice);
        }
        if raw[HEADER_TYPE] & 0x7f != 0 {
            return Err(ConfigError::NotEndpoint(raw[HEADER_TYPE]));
        }
        let bars = Self::decode_bars(&raw, bar_sizes);
        let StdCaps {
            chain: std_chain,
            first: first_cap,
            msix,
            msi,
            mut hidden,
        } = Self::filter_std_caps(&raw, keep_msix);
        let has_pcie = std_chain
            .iter()
            .any(|(off, _)| byte_at(&raw, *off) == Some(CAP_PCIE));
        let ext_headers = if size == EXT_SIZE && has_pcie {
            Self::filter_ext_caps(&raw, &mut hidden)
        } else {
            Vec::new()
        };
        let msix_control = msix
            .and_then(|m| {
                let ctrl = [byte_at(&raw, m.cap + 2)?, byte_at(&raw, m.cap + 3)?];
                Some(u16::from_le_bytes(ctrl) & 0x07ff)
            })
            .unwrap_or(0);
        if let Some(m) = msix {
            for (bar, off, len) in [
                (m.table_bar, m.table_offset, m.table_size()),
                (m.pba_bar, m.pba_offset, m.pba_size()),
            ] {
                let b = bars.get(usize::from(bar)).copied().unwrap_or(Bar::UNUSED);
                let fits = off.checked_add(len).is_some_and(|end| end <= b.size);
                if b.kind == BarKind::Unused || !fits {
                    return Err(ConfigError::MsixOutsideBar {
                        bar,
                        size: b.size,
                        vectors: m.vectors,
                    });
                }
            }
        }
        Ok(Self {
            bars,
            std_chain,
            first_cap,
            ext_headers,
            hidden,
            size,
            msix,
            msix_control,
            msi: msi.map(MsiRegs::new),
            int_line: 0,
            device_pin: byte_at(&raw, INT_PIN)
                .filter(|p| (1..=4).contains(p))
                .unwrap_or(0),
            int_pin: 0,
        })
    }

    /// Size of the configuration space the guest can reach.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn msix(&self) -> Option<MsixLayout> {
        self.msix
    }

    /// The emulated BARs (index = BAR number).
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied()
    }

    /// The MSI-X message control word the guest sees.
    pub fn msix_control(&self) -> u16 {
        self.msix_control
    }

    /// The device's INTx pin (1 = INTA … 4 = INTD), 0 if it has none.
    pub fn device_int_pin(&self) -> u8 {
        self.device_pin
    }

    /// INTx is wired to the guest: show the device's pin.
    pub fn expose_int_pin(&mut self) {
        self.int_pin = self.device_pin;
    }

    /// The MSI capability the guest sees, if the device has one.
    pub fn msi(&self) -> Option<MsiRegs> {
        self.msi
    }
}

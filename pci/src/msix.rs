//! MSI-X emulation: the capability, the vector table and the pending-bit
//! array. Table writes and control changes report which vectors changed,
//! so the owner can re-route them; masking (per vector and the function
//! mask) is tracked here and honoured by the owner's interrupt routes.

/// Capability id of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;
/// Most vectors a function may have.
pub const MAX_VECTORS: u16 = 2048;

/// An MSI message: where and what the device writes to interrupt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: VECTOR_MASKED,
        }
    }
}

/// What a table or control write changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsixChange {
    None,
    /// One vector's message or mask changed.
    Vector(u16),
    /// Enable or function mask changed: every vector may have.
    All,
}

/// The MSI-X state of one function.
#[derive(Debug, Clone)]
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    control: u16,
}

impl Msix {
    /// `vectors` in 1..=2048.
    pub fn new(vectors: u16) -> Self {
        let n = usize::from(vectors.clamp(1, MAX_VECTORS));
        Self {
            entries: vec![Entry::default(); n],
            pending: vec![0; n.div_ceil(64)],
            control: 0,
        }
    }

    pub fn vectors(&self) -> u16 {
        // Cannot truncate: `new` clamps the table to MAX_VECTORS (2048) entries.
        #[allow(clippy::cast_possible_truncation)]
        let n = self.entries.len() as u16;
        n
    }

    /// Size of the table and of the PBA in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability body and its writable mask (message control's top bits).
    pub fn capability(&self, table: (u8, u32), pba: (u8, u32)) -> ([u8; 12], [u32; 3]) {
        let mut b = [0u8; 12];
        b[0] = MSIX_CAP_ID;
        b[2..4].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        b[4..8].copy_from_slice(&(table.1 | u32::from(table.0 & 7)).to_le_bytes());
        b[8..12].copy_from_slice(&(pba.1 | u32::from(pba.0 & 7)).to_le_bytes());
        let ctrl_writable = u32::from(CTRL_ENABLE | CTRL_FUNCTION_MASK) << 16;
        (b, [ctrl_writable, 0, 0])
    }

    /// Takes the message control word as the guest wrote it.
    pub fn set_control(&mut self, control: u16) -> MsixChange {
        let relevant = control & (CTRL_ENABLE | CTRL_FUNCTION_MASK);
        if relevant == self.control {
            return MsixChange::None;
        }
        self.control = relevant;
        MsixChange::All
    }

    pub fn enabled(&self) -> bool {
        self.control & CTRL_ENABLE != 0
    }

    /// Whether `vector` may not interrupt now (disabled, function- or vector-masked).
    pub fn masked(&self, vector: u16) -> bool {
        match self.entries.get(usize::from(vector)) {
            Some(e) => {
                !self.enabled()
                    || self.control & CTRL_FUNCTION_MASK != 0
                    || e.ctrl & VECTOR_MASKED != 0
            }
            None => true,
        }
    }

    /// The message `vector` sends.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(vector)).map(|e| MsiMessage {
            addr: u64::from(e.addr_hi) << 32 | u64::from(e.addr_lo),
            data: e.data,
        })
    }

    /// Marks `vector` pending (it fired while masked) or clears it.
    pub fn set_pending(&mut self, vector: u16, pending: bool) {
        let v = usize::from(vector);
        if let Some(word) = self.pending.get_mut(v / 64) {
            if pending {
                *word |= 1 << (v % 64);
            } else {
                *word &= !(1 << (v % 64));
            }
        }
    }

    fn access_ok(offset: u64, len: usize, limit: u64) -> bool {
        matches!(len, 4 | 8) && offset % len as u64 == 0 && offset + len as u64 <= limit
    }

    /// Reads the table; odd or out-of-range reads give all-ones.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        if !Self::access_ok(offset, data.len(), self.table_size()) {
            data.fill(0xff);
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let off = offset + 4 * i as u64;
            let e = &self.entries[(off / ENTRY_SIZE) as usize];
            let v = match off % ENTRY_SIZE {
                0 => e.addr_lo,
                4 => e.addr_hi,
                8 => e.data,
                _ => e.ctrl,
            };
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Writes the table; returns the vector that changed.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> MsixChange {
        if !Self::access_ok(offset, data.len(), self.table_size()) {
            return MsixChange::None;
        }
        let index = offset / ENTRY_SIZE;
        for (i, chunk) in data.chunks(4).enumerate() {
            let off = offset + 4 * i as u64;
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let e = &mut self.entries[(off / ENTRY_SIZE) as usize];
            match off % ENTRY_SIZE {
                0 => e.addr_lo = v & !0x3,
                4 => e.addr_hi = v,
                8 => e.data = v,
                _ => e.ctrl = v & VECTOR_MASKED,
            }
        }
        // `access_ok` put the write inside the table, so the index fits; were it
        // not to, "every vector may have changed" is still a truthful answer.
        u16::try_from(index).map_or(MsixChange::All, MsixChange::Vector)
    }

    /// Reads the PBA (writes to it are ignored by the owner).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        if !Self::access_ok(offset, data.len(), self.pba_size()) {
            data.fill(0xff);
            return;
        }
        let word = self.pending[(offset / 8) as usize];
        let bytes = word.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_start_masked_and_follow_control() {
        let mut m = Msix::new(3);
        assert!(m.masked(0));
        m.table_write(0, &0xfee0_1000u32.to_le_bytes());
        m.table_write(8, &0x41u32.to_le_bytes());
        assert_eq!(
            m.table_write(12, &0u32.to_le_bytes()),
            MsixChange::Vector(0)
        );
        assert!(m.masked(0), "MSI-X not enabled yet");
        assert_eq!(m.set_control(CTRL_ENABLE | 2), MsixChange::All);
        assert_eq!(m.set_control(CTRL_ENABLE), MsixChange::None);
        assert!(!m.masked(0));
        assert!(m.masked(1), "vector 1 still masked");
        assert_eq!(
            m.message(0),
            Some(MsiMessage {
                addr: 0xfee0_1000,
                data: 0x41
            })
        );
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert!(m.masked(0));
        assert!(m.masked(7), "no such vector");
    }

    #[test]
    fn table_reads_back_and_64bit_writes_work() {
        let mut m = Msix::new(2);
        let mut qword = [0u8; 8];
        qword[..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        qword[4..].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(m.table_write(16, &qword), MsixChange::Vector(1));
        let mut out = [0u8; 8];
        m.table_read(16, &mut out);
        assert_eq!(out, qword);
        let mut ctrl = [0u8; 4];
        m.table_read(28, &mut ctrl);
        assert_eq!(u32::from_le_bytes(ctrl), 1, "masked at reset");
    }

    #[test]
    fn odd_table_and_pba_accesses() {
        let mut m = Msix::new(2);
        let mut b = [0u8; 2];
        m.table_read(0, &mut b);
        assert_eq!(b, [0xff; 2]);
        let mut w = [0u8; 4];
        m.table_read(2, &mut w);
        assert_eq!(w, [0xff; 4]);
        m.table_read(32, &mut w);
        assert_eq!(w, [0xff; 4], "past the table");
        assert_eq!(m.table_write(30, &[0; 4]), MsixChange::None);
        assert_eq!(m.table_write(0, &[0; 1]), MsixChange::None);
        m.set_pending(1, true);
        let mut p = [0u8; 8];
        m.pba_read(0, &mut p);
        assert_eq!(u64::from_le_bytes(p), 2);
        m.set_pending(1, false);
        m.set_pending(999, true);
        m.pba_read(0, &mut p);
        assert_eq!(u64::from_le_bytes(p), 0);
        let (cap, wr) = m.capability((0, 0x4000), (0, 0x6000));
        assert_eq!(cap[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 1);
        assert_eq!(wr[0] >> 16, 0xc000);
    }
}

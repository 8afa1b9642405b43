//! BAR placement: naturally aligned addresses handed out from a window.

/// Why a BAR could not be placed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BarAllocError {
    #[error("no room for a BAR of {0:#x} bytes in the PCI window")]
    NoRoom(u64),
}

/// Hands out naturally aligned BAR addresses from a window.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    pub fn new(start: u64, size: u64) -> Self {
        Self {
            next: start,
            end: start.saturating_add(size),
        }
    }

    /// `size` must be a power of two (PCI BARs are).
    pub fn allocate(&mut self, size: u64) -> Result<u64, BarAllocError> {
        let err = BarAllocError::NoRoom(size);
        if !size.is_power_of_two() {
            return Err(err);
        }
        let addr = self.next.checked_add(size - 1).ok_or(err.clone())? & !(size - 1);
        let end = addr.checked_add(size).ok_or(err.clone())?;
        if end > self.end {
            return Err(err);
        }
        self.next = end;
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_aligned_and_bounded() {
        let mut a = BarAllocator::new(0xc000_1000, 0x10000);
        assert_eq!(a.allocate(0x8000), Ok(0xc000_8000));
        assert_eq!(a.allocate(0x1000), Ok(0xc001_0000));
        assert_eq!(a.allocate(0x8000), Err(BarAllocError::NoRoom(0x8000)));
        assert_eq!(a.allocate(0x3000), Err(BarAllocError::NoRoom(0x3000)));
    }
}

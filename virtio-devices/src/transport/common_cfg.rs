//! The virtio-pci common configuration structure (virtio 1.x §4.1.4.3):
//! feature windows, device status, queue selection and per-queue setup.
//! Pure state plus a decoder of guest accesses, so it is tested without PCI.

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;
/// "No MSI-X vector" in msix_config / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;
/// Size of the structure.
pub const COMMON_CFG_SIZE: u64 = IMAGE_LEN as u64;
/// The same, as the length of the structure's image.
const IMAGE_LEN: usize = 0x38;

/// One queue's driver-side setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    pub max_size: u16,
    pub size: u16,
    pub msix_vector: u16,
    pub enabled: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl QueueState {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            msix_vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// What a write changed, for the transport to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommonEvent {
    None,
    /// device_status was written (old, new); new == 0 is a reset.
    Status {
        old: u8,
        new: u8,
    },
}

/// The common configuration state.
#[derive(Debug, Clone)]
pub struct CommonCfg {
    pub device_features: u64,
    pub driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    pub msix_config: u16,
    pub status: u8,
    pub config_generation: u8,
    queue_select: u16,
    pub queues: Vec<QueueState>,
}

impl CommonCfg {
    pub fn new(device_features: u64, num_queues: u16, queue_max_size: u16) -> Self {
        Self {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            msix_config: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: (0..num_queues)
                .map(|_| QueueState::new(queue_max_size))
                .collect(),
        }
    }

    /// Back to the state after power-on (features offered are kept).
    pub fn reset(&mut self) {
        let max = self.queues.first().map_or(0, |q| q.max_size);
        *self = Self::new(self.device_features, self.num_queues(), max);
    }

    /// How many queues there are; `new` took the count as a u16.
    fn num_queues(&self) -> u16 {
        // Cannot truncate: the vector was built from a u16 count.
        #[allow(clippy::cast_possible_truncation)]
        let n = self.queues.len() as u16;
        n
    }

    fn selected(&self) -> Option<&QueueState> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn selected_mut(&mut self) -> Option<&mut QueueState> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// The structure as the guest sees it now.
    fn image(&self) -> [u8; IMAGE_LEN] {
        let mut b = [0u8; IMAGE_LEN];
        let feature_word = |f: u64, sel: u32| match sel {
            0 => (f & 0xffff_ffff) as u32,
            1 => (f >> 32) as u32,
            _ => 0,
        };
        b[0..4].copy_from_slice(&self.device_feature_select.to_le_bytes());
        b[4..8].copy_from_slice(
            &feature_word(self.device_features, self.device_feature_select).to_le_bytes(),
        );
        b[8..12].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        b[12..16].copy_from_slice(
            &feature_word(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        b[0x10..0x12].copy_from_slice(&self.msix_config.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&self.num_queues().to_le_bytes());
        b[0x14] = self.status;
        b[0x15] = self.config_generation;
        b[0x16..0x18].copy_from_slice(&self.queue_select.to_le_bytes());
        if let Some(q) = self.selected() {
            b[0x18..0x1a].copy_from_slice(&q.size.to_le_bytes());
            b[0x1a..0x1c].copy_from_slice(&q.msix_vector.to_le_bytes());
            b[0x1c..0x1e].copy_from_slice(&u16::from(q.enabled).to_le_bytes());
            b[0x1e..0x20].copy_from_slice(&self.queue_select.to_le_bytes()); // notify_off = index
            b[0x20..0x28].copy_from_slice(&q.desc.to_le_bytes());
            b[0x28..0x30].copy_from_slice(&q.avail.to_le_bytes());
            b[0x30..0x38].copy_from_slice(&q.used.to_le_bytes());
        }
        b
    }

    /// A guest read; odd or out-of-range reads give all-ones.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        if !matches!(len, 1 | 2 | 4 | 8) || offset % len != 0 || offset + len > COMMON_CFG_SIZE {
            data.fill(0xff);
            return;
        }
        let image = self.image();
        match usize::try_from(offset)
            .ok()
            .and_then(|o| image.get(o..o + data.len()))
        {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0xff),
        }
    }

    /// A guest write; returns what the transport must act on.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> CommonEvent {
        let v = match data.len() {
            1 => u64::from(data[0]),
            2 => u64::from(u16::from_le_bytes([data[0], data[1]])),
            4 => u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]])),
            8 => u64::from_le_bytes(data.try_into().unwrap_or([0xff; 8])),
            _ => return CommonEvent::None,
        };
        // `v` holds exactly `data.len()` bytes and every arm below matches
        // that length, so narrowing to the register's width loses nothing.
        let (v8, v16, v32) = (
            (v & 0xff) as u8,
            (v & 0xffff) as u16,
            (v & 0xffff_ffff) as u32,
        );
        // While the queues run, their setup is frozen (virtio 1.x 4.1.4.3.2).
        let live = self.status & STATUS_DRIVER_OK != 0;
        let set_half = |field: &mut u64, high: bool, v: u64| {
            *field = if high {
                (*field & 0xffff_ffff) | (v << 32)
            } else {
                (*field & !0xffff_ffff) | (v & 0xffff_ffff)
            }
        };
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v32,
            (0x08, 4) => self.driver_feature_select = v32,
            (0x0c, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                let high = match self.driver_feature_select {
                    0 => false,
                    1 => true,
                    _ => return CommonEvent::None,
                };
                set_half(&mut self.driver_features, high, v);
                // The driver can only accept what is offered.
                self.driver_features &= self.device_features;
            }
            (0x10, 2) => self.msix_config = v16,
            (0x14, 1) => {
                let old = self.status;
                let mut new = v8;
                // FEATURES_OK sticks only if the accepted set is a subset (always, by
                // construction) and once set cannot be cleared except by reset.
                if new != 0 {
                    new |= old & (STATUS_FEATURES_OK | STATUS_NEEDS_RESET);
                }
                self.status = new;
                return CommonEvent::Status { old, new };
            }
            (0x16, 2) => self.queue_select = v16,
            (0x18, 2) if !live => {
                if let Some(q) = self.selected_mut() {
                    let n = v16;
                    if n.is_power_of_two() && n <= q.max_size {
                        q.size = n;
                    }
                }
            }
            (0x1a, 2) => {
                if let Some(q) = self.selected_mut() {
                    q.msix_vector = v16;
                }
            }
            (0x1c, 2) if !live => {
                if let Some(q) = self.selected_mut() {
                    // Only 1 may be written (disabling is done by reset).
                    if v == 1 {
                        q.enabled = true;
                    }
                }
            }
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) | (0x20 | 0x28 | 0x30, 8) if !live => {
                let high = offset % 8 == 4;
                if let Some(q) = self.selected_mut() {
                    let field = match offset & !7 {
                        0x20 => &mut q.desc,
                        0x28 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    if data.len() == 8 {
                        *field = v;
                    } else {
                        set_half(field, high, v);
                    }
                }
            }
            _ => {}
        }
        CommonEvent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(c: &CommonCfg, off: u64, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        c.read(off, &mut b);
        b.resize(8, 0);
        u64::from_le_bytes(b.try_into().unwrap())
    }

    #[test]
    fn feature_windows() {
        let mut c = CommonCfg::new(0x1_0000_0246, 1, 256);
        assert_eq!(rd(&c, 0x04, 4), 0x246);
        c.write(0x00, &1u32.to_le_bytes());
        assert_eq!(rd(&c, 0x04, 4), 1);
        c.write(0x08, &0u32.to_le_bytes());
        c.write(0x0c, &0xffff_ffffu32.to_le_bytes());
        c.write(0x08, &1u32.to_le_bytes());
        c.write(0x0c, &3u32.to_le_bytes());
        assert_eq!(c.driver_features, 0x1_0000_0246, "only offered bits stick");
        c.write(0x14, &[STATUS_FEATURES_OK]);
        c.write(0x0c, &0u32.to_le_bytes());
        assert_eq!(c.driver_features, 0x1_0000_0246, "frozen after FEATURES_OK");
    }

    #[test]
    fn queue_setup_and_freeze() {
        let mut c = CommonCfg::new(0, 2, 256);
        assert_eq!(rd(&c, 0x12, 2), 2);
        c.write(0x16, &1u16.to_le_bytes());
        assert_eq!(rd(&c, 0x1e, 2), 1, "notify_off is the index");
        c.write(0x18, &128u16.to_le_bytes());
        c.write(0x18, &100u16.to_le_bytes());
        c.write(0x18, &512u16.to_le_bytes());
        c.write(0x1a, &1u16.to_le_bytes());
        c.write(0x20, &0x1000u32.to_le_bytes());
        c.write(0x24, &0x1u32.to_le_bytes());
        c.write(0x28, &0x2000u64.to_le_bytes());
        c.write(0x30, &0x3000u32.to_le_bytes());
        c.write(0x1c, &1u16.to_le_bytes());
        let q = c.queues[1];
        assert_eq!((q.size, q.msix_vector, q.enabled), (128, 1, true));
        assert_eq!((q.desc, q.avail, q.used), (0x1_0000_1000, 0x2000, 0x3000));
        assert_eq!(
            c.write(0x14, &[STATUS_DRIVER_OK | STATUS_FEATURES_OK]),
            CommonEvent::Status {
                old: 0,
                new: STATUS_DRIVER_OK | STATUS_FEATURES_OK
            }
        );
        c.write(0x20, &0u32.to_le_bytes());
        assert_eq!(c.queues[1].desc, 0x1_0000_1000, "frozen while live");
        c.write(0x14, &[0]);
        c.reset();
        assert_eq!(c.queues[1], QueueState::new(256));
    }

    #[test]
    fn bad_selects_and_odd_accesses() {
        let mut c = CommonCfg::new(0, 1, 64);
        c.write(0x16, &9u16.to_le_bytes());
        assert_eq!(rd(&c, 0x18, 2), 0, "no such queue reads zero");
        c.write(0x18, &32u16.to_le_bytes());
        c.write(0x1c, &1u16.to_le_bytes());
        assert!(!c.queues[0].enabled);
        let mut b = [0u8; 3];
        c.read(0, &mut b);
        assert_eq!(b, [0xff; 3]);
        let mut w = [0u8; 4];
        c.read(0x36, &mut w);
        assert_eq!(w, [0xff; 4]);
        assert_eq!(c.write(0x14, &[1, 2, 3]), CommonEvent::None);
        c.write(0x08, &7u32.to_le_bytes());
        c.write(0x0c, &1u32.to_le_bytes());
        assert_eq!(c.driver_features, 0);
    }
}

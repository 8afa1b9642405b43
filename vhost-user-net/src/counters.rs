//! Per-queue counters (packets, bytes, drops by reason), kept across
//! frontend connections and logged at exit and on SIGUSR1.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// TX chain shorter than the virtio-net header plus an Ethernet header.
    TxShort,
    /// TX frame above 64 KiB.
    TxTooLong,
    /// TX header asks for something not negotiated or is malformed.
    TxBadHeader,
    /// Descriptor chain with the wrong direction, outside guest memory or
    /// with too many segments.
    BadChain,
    /// The TAP refused the frame (e.g. a GSO frame the kernel rejects).
    TapError,
    /// RX frame larger than the guest's buffers (no MRG_RXBUF, or more than
    /// the ring can ever hold).
    RxTooLarge,
}

const DROP_KINDS: usize = 6;

impl Drop {
    fn index(self) -> usize {
        self as usize
    }

    /// The name used in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Drop::TxShort => "tx_short",
            Drop::TxTooLong => "tx_too_long",
            Drop::TxBadHeader => "tx_bad_header",
            Drop::BadChain => "bad_chain",
            Drop::TapError => "tap_error",
            Drop::RxTooLarge => "rx_too_large",
        }
    }

    const ALL: [Drop; DROP_KINDS] = [
        Drop::TxShort,
        Drop::TxTooLong,
        Drop::TxBadHeader,
        Drop::BadChain,
        Drop::TapError,
        Drop::RxTooLarge,
    ];
}

/// Counters of one virtqueue; updated only by its worker thread, read by
/// anyone (relaxed atomics).
#[derive(Debug, Default)]
pub struct QueueCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: [AtomicU64; DROP_KINDS],
}

impl QueueCounters {
    /// Counts one frame of `bytes` bytes (virtio-net header excluded).
    pub fn frame(&self, bytes: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one drop.
    pub fn drop(&self, why: Drop) {
        self.drops[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn drops(&self, why: Drop) -> u64 {
        self.drops[why.index()].load(Ordering::Relaxed)
    }

    /// `packets=.. bytes=.. drops_x=..` (only non-zero drops).
    pub fn summary(&self) -> String {
        let mut s = format!("packets={} bytes={}", self.packets(), self.bytes());
        for d in Drop::ALL {
            let n = self.drops(d);
            if n != 0 {
                s.push_str(&format!(" drop_{}={n}", d.name()));
            }
        }
        s
    }
}

/// Counters of one queue pair.
#[derive(Debug, Default)]
pub struct PairCounters {
    pub rx: QueueCounters,
    pub tx: QueueCounters,
}

/// Logs every pair's counters at info level.
pub fn log_all(pairs: &[std::sync::Arc<PairCounters>]) {
    for (i, p) in pairs.iter().enumerate() {
        log::info!("counters pair={i} dir=rx {}", p.rx.summary());
        log::info!("counters pair={i} dir=tx {}", p.tx.summary());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_non_zero_drops() {
        let c = QueueCounters::default();
        c.frame(60);
        c.frame(1500);
        c.drop(Drop::TxShort);
        c.drop(Drop::TxShort);
        assert_eq!(c.summary(), "packets=2 bytes=1560 drop_tx_short=2");
    }
}

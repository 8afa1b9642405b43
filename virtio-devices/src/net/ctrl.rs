//! The virtio-net control queue's commands (virtio 1.2 §5.1.6.5): what a
//! command the driver sent means and whether the device accepts it. The
//! guest writes all of it, so everything is checked: the class and command
//! against what was negotiated, each payload's exact length, the queue-pair
//! count against the device's maximum. Pure: the transport hands in the
//! bytes it read from the chain and writes back the ack byte
//! ([`CtrlAck`]) this module decides.

/// The ack byte the device writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CtrlAck {
    /// VIRTIO_NET_OK.
    Ok = 0,
    /// VIRTIO_NET_ERR.
    Err = 1,
}

/// Command classes (the first header byte).
const CLASS_RX: u8 = 0;
const CLASS_MAC: u8 = 1;
const CLASS_MQ: u8 = 4;

/// VIRTIO_NET_CTRL_RX commands we accept (those of VIRTIO_NET_F_CTRL_RX;
/// the CTRL_RX_EXTRA ones are not offered).
const RX_PROMISC: u8 = 0;
const RX_ALLMULTI: u8 = 1;
/// VIRTIO_NET_CTRL_MAC_TABLE_SET.
const MAC_TABLE_SET: u8 = 0;
/// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
const MQ_VQ_PAIRS_SET: u8 = 0;

/// The largest payload a command may carry: a MAC table of 4096 entries
/// (far above what any driver sends; Linux falls back to promiscuous
/// mode long before). Longer chains are refused without being read whole.
pub const MAX_PAYLOAD: usize = 8 + 4096 * 6;

/// What was negotiated that decides which commands exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtrlFeatures {
    /// VIRTIO_NET_F_CTRL_RX: RX mode and MAC table commands.
    pub rx: bool,
    /// VIRTIO_NET_F_MQ: the device's number of queue pairs (None without MQ).
    pub max_queue_pairs: Option<u16>,
}

/// A command the device accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlCommand {
    /// Promiscuous (`allmulti: false`) or all-multicast mode on or off.
    /// Accepted; the TAP behind the backend delivers every frame anyway.
    RxMode { allmulti: bool, on: bool },
    /// A new MAC filter with this many unicast and multicast entries.
    /// Accepted without filtering, as for the RX mode.
    MacTable { unicast: u32, multicast: u32 },
    /// Use this many queue pairs (already checked against the maximum).
    QueuePairs(u16),
}

/// Why a command gets VIRTIO_NET_ERR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    #[error("command shorter than its 2-byte header ({0} bytes)")]
    NoHeader(usize),
    #[error("command payload of {0} bytes is above the limit")]
    TooLong(usize),
    #[error("class {0} is not supported or not negotiated")]
    Class(u8),
    #[error("command {cmd} of class {class} is not supported")]
    Command { class: u8, cmd: u8 },
    #[error("class {class} command {cmd}: payload of {len} bytes, expected {want}")]
    Length {
        class: u8,
        cmd: u8,
        len: usize,
        want: usize,
    },
    #[error("{want} queue pairs requested, the device has 1 to {max}")]
    QueuePairs { want: u16, max: u16 },
}

impl CtrlError {
    /// Errors a correct driver never causes (worth a warning).
    pub fn is_malformed(&self) -> bool {
        !matches!(self, CtrlError::Class(_) | CtrlError::Command { .. })
    }
}

/// Parses one command: `bytes` is everything the driver put in the
/// device-readable part of the chain (header, then payload).
pub fn parse(bytes: &[u8], features: CtrlFeatures) -> Result<CtrlCommand, CtrlError> {
    let Some((&[class, cmd], payload)) = bytes.split_first_chunk::<2>() else {
        return Err(CtrlError::NoHeader(bytes.len()));
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(CtrlError::TooLong(payload.len()));
    }
    let exact = |want: usize| {
        if payload.len() == want {
            Ok(())
        } else {
            Err(CtrlError::Length {
                class,
                cmd,
                len: payload.len(),
                want,
            })
        }
    };
    match class {
        CLASS_RX if features.rx => match cmd {
            RX_PROMISC | RX_ALLMULTI => {
                exact(1)?;
                Ok(CtrlCommand::RxMode {
                    allmulti: cmd == RX_ALLMULTI,
                    on: payload[0] != 0,
                })
            }
            _ => Err(CtrlError::Command { class, cmd }),
        },
        CLASS_MAC if features.rx => match cmd {
            MAC_TABLE_SET => parse_mac_table(payload),
            _ => Err(CtrlError::Command { class, cmd }),
        },
        CLASS_MQ => {
            let Some(max) = features.max_queue_pairs else {
                return Err(CtrlError::Class(class));
            };
            if cmd != MQ_VQ_PAIRS_SET {
                return Err(CtrlError::Command { class, cmd });
            }
            exact(2)?;
            let want = u16::from_le_bytes([payload[0], payload[1]]);
            if want == 0 || want > max {
                return Err(CtrlError::QueuePairs { want, max });
            }
            Ok(CtrlCommand::QueuePairs(want))
        }
        _ => Err(CtrlError::Class(class)),
    }
}

/// Two tables back to back, each a little-endian u32 count and that many
/// 6-byte MACs; the payload must end exactly after the second.
fn parse_mac_table(payload: &[u8]) -> Result<CtrlCommand, CtrlError> {
    let bad = |want: usize| CtrlError::Length {
        class: CLASS_MAC,
        cmd: MAC_TABLE_SET,
        len: payload.len(),
        want,
    };
    let mut at = 0usize;
    let mut counts = [0u32; 2];
    for count in &mut counts {
        let head = payload
            .get(at..at + 4)
            .ok_or_else(|| bad(at.saturating_add(4)))?;
        *count = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let macs = usize::try_from(*count)
            .ok()
            .and_then(|n| n.checked_mul(6))
            .ok_or(bad(usize::MAX))?;
        at = at
            .checked_add(4)
            .and_then(|a| a.checked_add(macs))
            .ok_or(bad(usize::MAX))?;
        if at > payload.len() {
            return Err(bad(at));
        }
    }
    if at != payload.len() {
        return Err(bad(at));
    }
    Ok(CtrlCommand::MacTable {
        unicast: counts[0],
        multicast: counts[1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: CtrlFeatures = CtrlFeatures {
        rx: true,
        max_queue_pairs: Some(2),
    };

    fn cmd(class: u8, cmd: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![class, cmd];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn queue_pairs_are_checked_against_the_maximum() {
        assert_eq!(
            parse(&cmd(4, 0, &2u16.to_le_bytes()), ALL),
            Ok(CtrlCommand::QueuePairs(2))
        );
        assert_eq!(
            parse(&cmd(4, 0, &1u16.to_le_bytes()), ALL),
            Ok(CtrlCommand::QueuePairs(1))
        );
        for bad in [0u16, 3, 0x8000, u16::MAX] {
            assert_eq!(
                parse(&cmd(4, 0, &bad.to_le_bytes()), ALL),
                Err(CtrlError::QueuePairs { want: bad, max: 2 })
            );
        }
        // Short and long payloads, another MQ command (RSS, hash config).
        assert!(matches!(
            parse(&cmd(4, 0, &[2]), ALL),
            Err(CtrlError::Length { len: 1, .. })
        ));
        assert!(matches!(
            parse(&cmd(4, 0, &[2, 0, 0]), ALL),
            Err(CtrlError::Length { len: 3, .. })
        ));
        assert_eq!(
            parse(&cmd(4, 1, &[0; 8]), ALL),
            Err(CtrlError::Command { class: 4, cmd: 1 })
        );
        // Without MQ negotiated the class does not exist.
        let no_mq = CtrlFeatures {
            rx: true,
            max_queue_pairs: None,
        };
        assert_eq!(parse(&cmd(4, 0, &[1, 0]), no_mq), Err(CtrlError::Class(4)));
    }

    #[test]
    fn rx_mode_and_mac_table_are_acked_only_with_ctrl_rx() {
        assert_eq!(
            parse(&cmd(0, 0, &[1]), ALL),
            Ok(CtrlCommand::RxMode {
                allmulti: false,
                on: true
            })
        );
        assert_eq!(
            parse(&cmd(0, 1, &[0]), ALL),
            Ok(CtrlCommand::RxMode {
                allmulti: true,
                on: false
            })
        );
        // CTRL_RX_EXTRA commands (ALLUNI..NOBCAST) are not offered.
        assert_eq!(
            parse(&cmd(0, 2, &[1]), ALL),
            Err(CtrlError::Command { class: 0, cmd: 2 })
        );
        assert!(parse(&cmd(0, 0, &[]), ALL).is_err());
        assert!(parse(&cmd(0, 0, &[1, 1]), ALL).is_err());
        // One unicast, two multicast entries.
        let mut t = 1u32.to_le_bytes().to_vec();
        t.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        t.extend_from_slice(&2u32.to_le_bytes());
        t.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1, 1, 0, 0x5e, 0, 0, 1]);
        assert_eq!(
            parse(&cmd(1, 0, &t), ALL),
            Ok(CtrlCommand::MacTable {
                unicast: 1,
                multicast: 2
            })
        );
        let no_rx = CtrlFeatures {
            rx: false,
            max_queue_pairs: Some(2),
        };
        assert_eq!(parse(&cmd(0, 0, &[1]), no_rx), Err(CtrlError::Class(0)));
        assert_eq!(parse(&cmd(1, 0, &t), no_rx), Err(CtrlError::Class(1)));
        // MAC_ADDR_SET needs CTRL_MAC_ADDR, which is not offered.
        assert_eq!(
            parse(&cmd(1, 1, &[2, 0, 0, 0, 0, 1]), ALL),
            Err(CtrlError::Command { class: 1, cmd: 1 })
        );
    }

    #[test]
    fn hostile_mac_tables_are_refused() {
        let table = |counts: [u32; 2], macs: usize, extra: usize| {
            let mut t = counts[0].to_le_bytes().to_vec();
            t.resize(4 + macs * 6, 0);
            t.extend_from_slice(&counts[1].to_le_bytes());
            t.resize(t.len() + extra, 0);
            t
        };
        // Counts that promise more MACs than sent, or overflow.
        assert!(parse(&cmd(1, 0, &table([5, 0], 1, 0)), ALL).is_err());
        assert!(parse(&cmd(1, 0, &table([u32::MAX, 0], 0, 0)), ALL).is_err());
        assert!(parse(&cmd(1, 0, &table([0, u32::MAX], 0, 0)), ALL).is_err());
        assert!(parse(&cmd(1, 0, &table([0, 1], 0, 0)), ALL).is_err());
        // Trailing bytes after the second table; a missing second count.
        assert!(parse(&cmd(1, 0, &table([0, 0], 0, 1)), ALL).is_err());
        assert!(parse(&cmd(1, 0, &[0, 0, 0, 0]), ALL).is_err());
        assert_eq!(
            parse(&cmd(1, 0, &table([0, 0], 0, 0)), ALL),
            Ok(CtrlCommand::MacTable {
                unicast: 0,
                multicast: 0
            })
        );
    }

    #[test]
    fn unknown_classes_short_and_long_commands_are_errors() {
        assert_eq!(parse(&[], ALL), Err(CtrlError::NoHeader(0)));
        assert_eq!(parse(&[4], ALL), Err(CtrlError::NoHeader(1)));
        for class in [2u8, 3, 5, 6, 0xff] {
            assert_eq!(
                parse(&cmd(class, 0, &[0; 4]), ALL),
                Err(CtrlError::Class(class))
            );
        }
        let long = vec![0u8; MAX_PAYLOAD + 3];
        assert_eq!(parse(&long, ALL), Err(CtrlError::TooLong(MAX_PAYLOAD + 1)));
        assert!(CtrlError::QueuePairs { want: 9, max: 2 }.is_malformed());
        assert!(!CtrlError::Class(9).is_malformed());
    }
}

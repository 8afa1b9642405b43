//! The net case matrix for a full run and for `--quick`.

use crate::net::systems::{Dir, Traffic};

/// One net case.
#[derive(Debug, Clone, Copy)]
pub struct NetCase {
    pub t: Traffic,
}

impl NetCase {
    pub fn name(&self) -> String {
        let dir = match self.t.dir {
            Dir::GuestToTap => "guest→TAP",
            Dir::TapToGuest => "TAP→guest",
        };
        if self.t.gso {
            format!("64 KiB GSO TCPv4 {dir}")
        } else {
            format!("{}-byte frames {dir}", self.t.len)
        }
    }

    pub fn unit(&self) -> &'static str {
        if self.t.gso { "Gbit/s" } else { "Mpps" }
    }
}

/// 64 KiB: the largest frame the daemon (virtio-devices MAX_TX_FRAME) accepts.
const GSO_FRAME: usize = 64 * 1024;

/// Cases of the suite.
pub fn cases(quick: bool) -> Vec<NetCase> {
    let c = |dir, len, gso| NetCase {
        t: Traffic { dir, len, gso },
    };
    if quick {
        return vec![
            c(Dir::GuestToTap, 64, false),
            c(Dir::GuestToTap, GSO_FRAME, true),
        ];
    }
    vec![
        c(Dir::GuestToTap, 64, false),
        c(Dir::TapToGuest, 64, false),
        c(Dir::GuestToTap, 1500, false),
        c(Dir::TapToGuest, 1500, false),
        c(Dir::GuestToTap, GSO_FRAME, true),
    ]
}

//! The relay's part of dirty logging: a [`Filter`] wrapper every daemon's
//! filter sits inside. It handles SET_LOG_BASE and SET_LOG_FD itself (so
//! vhost-user-backend, whose own log support cannot see io_uring writes,
//! never gets them), follows `VHOST_F_LOG_ALL` in SET_FEATURES and the
//! extent of the memory table, and adds `VHOST_F_LOG_ALL` and
//! `PROTOCOL_F_LOG_SHMFD` to what the backend offers — stripping them again
//! from what the frontend acks, so the backend's feature checks are
//! unchanged.
//!
//! A log region is refused — the connection ends, with the reason in the
//! log — when its fd, offset or size does not describe memory inside the
//! file, or when it is too small for the memory table (a frontend that
//! would lose marks). A later SET_MEM_TABLE that outgrows the log is
//! logged; marks past the end are counted ([`LogRegion::beyond`]).

use std::os::fd::AsFd;
use std::sync::Arc;

use log::{info, warn};

use super::DirtyLog;
use super::region::{self, LogRegion};
use crate::relay::{
    FLAG_REPLY, FLAG_VERSION, Filter, Msg, REQ_GET_PROTOCOL_FEATURES, REQ_RESET_DEVICE,
    REQ_RESET_OWNER, REQ_SET_FEATURES, REQ_SET_PROTOCOL_FEATURES, Routed,
};

/// `VHOST_USER_GET_FEATURES`.
pub const REQ_GET_FEATURES: u32 = 1;
/// `VHOST_USER_SET_MEM_TABLE`.
pub const REQ_SET_MEM_TABLE: u32 = 5;
/// `VHOST_USER_SET_LOG_BASE`.
pub const REQ_SET_LOG_BASE: u32 = 6;
/// `VHOST_USER_SET_LOG_FD`.
pub const REQ_SET_LOG_FD: u32 = 7;
/// `VHOST_USER_ADD_MEM_REG`.
pub const REQ_ADD_MEM_REG: u32 = 37;
/// `VHOST_F_LOG_ALL`.
pub const F_LOG_ALL: u64 = 1 << 26;
/// `VHOST_USER_PROTOCOL_F_LOG_SHMFD`.
pub const PROTOCOL_F_LOG_SHMFD: u64 = 1 << 1;

/// Bytes of one memory region in SET_MEM_TABLE / ADD_MEM_REG.
const REGION_LEN: usize = 32;

/// Wraps a daemon's relay filter with dirty-log handling.
#[derive(Debug)]
pub struct Logging<F: Filter> {
    inner: F,
    log: DirtyLog,
    /// Offer logging to the frontend. A daemon whose write paths do not
    /// all mark yet must not: the frontend would migrate stale pages.
    offer: bool,
    /// End of the highest guest physical address in the memory table.
    mem_end: u64,
}

impl<F: Filter> Logging<F> {
    /// `inner` sees every message this wrapper does not consume. With
    /// `offer` false the wrapper passes everything through untouched.
    pub fn new(inner: F, log: DirtyLog, offer: bool) -> Logging<F> {
        Logging {
            inner,
            log,
            offer,
            mem_end: 0,
        }
    }

    /// A SET_LOG_BASE: map, check, install, reply (echoing the payload as
    /// QEMU and the vhost crate's frontend expect). `Err`: refused.
    fn set_log_base(&mut self, m: &Msg) -> Result<Msg, String> {
        let [fd] = m.fds.as_slice() else {
            return Err(format!("{} fds instead of 1", m.fds.len()));
        };
        let Some((size, offset)) = two_u64(&m.payload) else {
            return Err(format!("payload of {} bytes, not 16", m.payload.len()));
        };
        let region = LogRegion::map(fd.as_fd(), offset, size).map_err(|e| e.to_string())?;
        let need = region::bytes_for(self.mem_end);
        if (region.len() as u64) < need {
            return Err(format!(
                "log of {size} bytes cannot cover guest memory up to {:#x} ({need} bytes needed)",
                self.mem_end
            ));
        }
        info!(
            "event=dirty_log_base size={size} offset={offset} covers={:#x}",
            region.covers()
        );
        self.log.set_region(Some(Arc::new(region)));
        Ok(Msg::new(
            REQ_SET_LOG_BASE,
            FLAG_VERSION | FLAG_REPLY,
            m.payload.clone(),
            Vec::new(),
        ))
    }

    fn note_memory(&mut self, end: u64, replace: bool) {
        self.mem_end = if replace { end } else { self.mem_end.max(end) };
        if let Some(r) = self.log.region() {
            if r.covers() < self.mem_end {
                warn!(
                    "event=dirty_log_short covers={:#x} mem_end={:#x}",
                    r.covers(),
                    self.mem_end
                );
            }
        }
    }
}

impl<F: Filter> Filter for Logging<F> {
    fn on_frontend(&mut self, m: Msg, out: &mut Vec<Routed>) {
        if !self.offer {
            return self.inner.on_frontend(m, out);
        }
        match m.request() {
            REQ_SET_LOG_BASE => match self.set_log_base(&m) {
                Ok(reply) => out.push(Routed::ToFrontend(reply)),
                Err(why) => out.push(Routed::Hangup(format!("SET_LOG_BASE refused: {why}"))),
            },
            REQ_SET_LOG_FD => {
                // Only the kernel's vhost uses a log eventfd; the fd is
                // closed unused, and acked if asked.
                if m.needs_reply() {
                    out.push(Routed::ToFrontend(Msg::reply_u64(REQ_SET_LOG_FD, 0)));
                }
            }
            REQ_SET_FEATURES => match m.payload_u64() {
                Some(features) => {
                    self.log.set_log_all(features & F_LOG_ALL != 0);
                    self.inner
                        .on_frontend(m.with_payload_u64(features & !F_LOG_ALL), out);
                }
                None => self.inner.on_frontend(m, out),
            },
            REQ_SET_PROTOCOL_FEATURES => match m.payload_u64() {
                Some(p) => self
                    .inner
                    .on_frontend(m.with_payload_u64(p & !PROTOCOL_F_LOG_SHMFD), out),
                None => self.inner.on_frontend(m, out),
            },
            REQ_SET_MEM_TABLE => {
                if let Some(end) = table_end(&m.payload) {
                    self.note_memory(end, true);
                }
                self.inner.on_frontend(m, out);
            }
            REQ_ADD_MEM_REG => {
                if let Some(end) = m.payload.get(8..).and_then(region_end) {
                    self.note_memory(end, false);
                }
                self.inner.on_frontend(m, out);
            }
            REQ_RESET_OWNER | REQ_RESET_DEVICE => {
                self.log.set_log_all(false);
                self.log.set_region(None);
                self.inner.on_frontend(m, out);
            }
            _ => self.inner.on_frontend(m, out),
        }
    }

    fn to_frontend(&self, m: Msg) -> Msg {
        let m = self.inner.to_frontend(m);
        if !self.offer {
            return m;
        }
        match (m.request(), m.payload_u64()) {
            (REQ_GET_FEATURES, Some(f)) => m.with_payload_u64(f | F_LOG_ALL),
            (REQ_GET_PROTOCOL_FEATURES, Some(p)) => m.with_payload_u64(p | PROTOCOL_F_LOG_SHMFD),
            _ => m,
        }
    }
}

/// Two little-endian u64s, exactly.
fn two_u64(b: &[u8]) -> Option<(u64, u64)> {
    let a: [u8; 8] = b.get(0..8)?.try_into().ok()?;
    let c: [u8; 8] = b.get(8..16)?.try_into().ok()?;
    (b.len() == 16).then(|| (u64::from_le_bytes(a), u64::from_le_bytes(c)))
}

/// End of one region (guest_phys_addr + memory_size), saturating.
fn region_end(r: &[u8]) -> Option<u64> {
    let (gpa, size) = two_u64(r.get(..16)?)?;
    Some(gpa.saturating_add(size))
}

/// Highest region end of a SET_MEM_TABLE payload (count, padding, regions).
fn table_end(p: &[u8]) -> Option<u64> {
    let n = usize::try_from(u32::from_le_bytes(p.get(0..4)?.try_into().ok()?)).ok()?;
    let regions = p.get(8..)?;
    regions
        .chunks_exact(REGION_LEN)
        .take(n)
        .filter_map(region_end)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A filter that passes everything to the backend.
    struct Pass;
    impl Filter for Pass {
        fn on_frontend(&mut self, m: Msg, out: &mut Vec<Routed>) {
            out.push(Routed::ToBackend(m));
        }
    }

    fn memfd(len: u64) -> OwnedFd {
        // SAFETY: a fresh memfd with a valid C string name.
        let fd = unsafe { libc::memfd_create(c"dlf".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: memfd_create returned a new fd we own.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.set_len(len).expect("set_len");
        f.into()
    }

    fn mem_table(regions: &[(u64, u64)]) -> Msg {
        let mut p = Vec::new();
        p.extend_from_slice(&u32::try_from(regions.len()).expect("few").to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for &(gpa, size) in regions {
            for v in [gpa, size, 0x7f00_0000_0000, 0] {
                p.extend_from_slice(&v.to_le_bytes());
            }
        }
        Msg::new(REQ_SET_MEM_TABLE, FLAG_VERSION, p, Vec::new())
    }

    fn log_base(size: u64, offset: u64, fd: OwnedFd) -> Msg {
        let mut p = size.to_le_bytes().to_vec();
        p.extend_from_slice(&offset.to_le_bytes());
        Msg::new(REQ_SET_LOG_BASE, FLAG_VERSION, p, vec![fd])
    }

    fn run(f: &mut Logging<Pass>, m: Msg) -> Vec<Routed> {
        let mut out = Vec::new();
        f.on_frontend(m, &mut out);
        out
    }

    #[test]
    fn log_base_is_answered_here_and_never_reaches_the_backend() {
        let log = DirtyLog::new(false);
        let mut f = Logging::new(Pass, log.clone(), true);
        run(&mut f, mem_table(&[(0, 512 << 20)]));
        let need = region::bytes_for(512 << 20);
        let out = run(&mut f, log_base(need, 0, memfd(need)));
        let [Routed::ToFrontend(reply)] = out.as_slice() else {
            panic!("expected one reply to the frontend");
        };
        assert_eq!(reply.request(), REQ_SET_LOG_BASE);
        assert_eq!(
            reply.payload.len(),
            16,
            "the vhost crate reads a VhostUserLog back"
        );
        assert!(log.region().is_some());
        // LOG_ALL on: marks land; the backend sees the features without it.
        let out = run(
            &mut f,
            Msg::new(
                REQ_SET_FEATURES,
                FLAG_VERSION,
                (F_LOG_ALL | 1).to_le_bytes().to_vec(),
                vec![],
            ),
        );
        let [Routed::ToBackend(fwd)] = out.as_slice() else {
            panic!("SET_FEATURES goes on");
        };
        assert_eq!(fwd.payload_u64(), Some(1));
        log.mark(0x1000, 1);
        assert!(log.region().is_some_and(|r| r.is_marked(0x1000)));
    }

    #[test]
    fn a_log_too_small_for_the_memory_table_is_refused() {
        let log = DirtyLog::new(false);
        let mut f = Logging::new(Pass, log.clone(), true);
        run(&mut f, mem_table(&[(0, 1 << 30), (4 << 30, 1 << 30)]));
        let short = region::bytes_for(1 << 30);
        let out = run(&mut f, log_base(short, 0, memfd(short)));
        assert!(matches!(out.as_slice(), [Routed::Hangup(_)]));
        assert!(log.region().is_none());
    }

    #[test]
    fn hostile_log_fds_are_refused() {
        let log = DirtyLog::new(false);
        let mut f = Logging::new(Pass, log.clone(), true);
        // Past the end of the file.
        let out = run(&mut f, log_base(8192, 0, memfd(4096)));
        assert!(matches!(out.as_slice(), [Routed::Hangup(_)]));
        // No fd; a short payload.
        let mut m = log_base(8, 0, memfd(4096));
        m.fds.clear();
        assert!(matches!(run(&mut f, m).as_slice(), [Routed::Hangup(_)]));
        let m = Msg::new(
            REQ_SET_LOG_BASE,
            FLAG_VERSION,
            vec![0; 8],
            vec![memfd(4096)],
        );
        assert!(matches!(run(&mut f, m).as_slice(), [Routed::Hangup(_)]));
        assert!(log.region().is_none());
    }

    #[test]
    fn offers_and_strips_the_feature_bits() {
        let f = Logging::new(Pass, DirtyLog::new(false), true);
        let r = f.to_frontend(Msg::reply_u64(REQ_GET_FEATURES, 1));
        assert_eq!(r.payload_u64(), Some(1 | F_LOG_ALL));
        let r = f.to_frontend(Msg::reply_u64(REQ_GET_PROTOCOL_FEATURES, 0x8));
        assert_eq!(r.payload_u64(), Some(0x8 | PROTOCOL_F_LOG_SHMFD));
        let mut f = f;
        let out = run(
            &mut f,
            Msg::new(
                REQ_SET_PROTOCOL_FEATURES,
                FLAG_VERSION,
                (0x8 | PROTOCOL_F_LOG_SHMFD).to_le_bytes().to_vec(),
                vec![],
            ),
        );
        let [Routed::ToBackend(fwd)] = out.as_slice() else {
            panic!("goes on");
        };
        assert_eq!(fwd.payload_u64(), Some(0x8));
    }

    #[test]
    fn without_offer_everything_passes_untouched() {
        let mut f = Logging::new(Pass, DirtyLog::new(false), false);
        let r = f.to_frontend(Msg::reply_u64(REQ_GET_FEATURES, 1));
        assert_eq!(r.payload_u64(), Some(1));
        let r = f.to_frontend(Msg::reply_u64(REQ_GET_PROTOCOL_FEATURES, 0x8));
        assert_eq!(r.payload_u64(), Some(0x8));
        let m = Msg::new(
            REQ_SET_LOG_BASE,
            FLAG_VERSION,
            vec![0; 16],
            vec![memfd(4096)],
        );
        assert!(matches!(run(&mut f, m).as_slice(), [Routed::ToBackend(_)]));
    }

    #[test]
    fn set_log_fd_is_acked_when_asked_and_swallowed() {
        let mut f = Logging::new(Pass, DirtyLog::new(false), true);
        let m = Msg::new(REQ_SET_LOG_FD, FLAG_VERSION, vec![], vec![memfd(1)]);
        assert!(run(&mut f, m).is_empty());
        let m = Msg::new(
            REQ_SET_LOG_FD,
            FLAG_VERSION | crate::relay::FLAG_NEED_REPLY,
            vec![],
            vec![memfd(1)],
        );
        let out = run(&mut f, m);
        assert!(matches!(out.as_slice(), [Routed::ToFrontend(r)] if r.payload_u64() == Some(0)));
    }
}

//! INFLIGHT_SHMFD for vhost-user-blk, as a relay in front of
//! vhost-user-backend.
//!
//! Why a relay: vhost-user-backend 0.24 answers GET/SET_INFLIGHT_FD with
//! "invalid operation" and drops the connection, and has no hook for them
//! (only a hand-written `VhostUserBackendReqHandlerMut` could, which means
//! re-implementing all of its ring and memory handling). The relay
//! ([`vhost_user_daemon::relay`]) lets the framework keep everything
//! else while this filter:
//!
//! - offers INFLIGHT_SHMFD in GET_PROTOCOL_FEATURES replies and strips it
//!   from SET_PROTOCOL_FEATURES (the framework never sees a bit it did not
//!   offer);
//! - answers GET_INFLIGHT_FD with a fresh sealed memfd region and
//!   SET_INFLIGHT_FD by mapping the region handed back, both published to
//!   the queue workers through a [`SharedRegion`] (a worker picks it up
//!   when its ring starts and resubmits what the region records);
//! - after passing on SET_VRING_KICK, kicks that eventfd once itself, so a
//!   ring restarted after a daemon crash gets processed (and its
//!   resubmitted requests completed) even if the guest, waiting for them,
//!   never kicks again. libvhost-user does the same.
//!
//! A bad GET (zero queues or entries, more than the device has) gets
//! `mmap_size = 0` and no fd, which frontends read as "no in-flight
//! tracking"; a bad SET (no fd, wrong size, unsealed file) is refused with
//! a failed REPLY_ACK if one was asked for, and the rings then run without
//! tracking.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use log::{info, warn};
use vhost_user_daemon::inflight::{
    InflightInfo, InflightRegion, PROTOCOL_F_INFLIGHT_SHMFD, REQ_GET_INFLIGHT_FD,
    REQ_SET_INFLIGHT_FD, SharedRegion,
};
use vhost_user_daemon::notify_fd;
use vhost_user_daemon::relay::{
    FLAG_REPLY, FLAG_VERSION, Filter, Msg, REQ_GET_PROTOCOL_FEATURES, REQ_SET_PROTOCOL_FEATURES,
    Routed,
};

/// `VHOST_USER_SET_VRING_KICK`.
const REQ_SET_VRING_KICK: u32 = 12;
/// SET_VRING_KICK payload bit: no fd (polling mode).
const VRING_NOFD: u64 = 1 << 8;

/// The blk daemon's message policy (see the module docs).
#[derive(Debug)]
pub struct BlkFilter {
    region: SharedRegion,
    num_queues: u16,
    max_queue_size: u16,
    negotiated: bool,
}

impl BlkFilter {
    /// A filter for a device of `num_queues` queues of at most
    /// `max_queue_size` entries, publishing regions into `region`.
    pub fn new(region: SharedRegion, num_queues: u16, max_queue_size: u16) -> Self {
        BlkFilter {
            region,
            num_queues,
            max_queue_size,
            negotiated: false,
        }
    }

    fn publish(&self, region: Option<Arc<InflightRegion>>) {
        *self.region.lock().unwrap_or_else(|e| e.into_inner()) = region;
    }

    fn get_inflight(&self, m: &Msg) -> Msg {
        let reply = |info: InflightInfo, fds: Vec<OwnedFd>| {
            Msg::new(
                REQ_GET_INFLIGHT_FD,
                FLAG_VERSION | FLAG_REPLY,
                info.encode(),
                fds,
            )
        };
        let refuse = |why: &str| {
            warn!("event=inflight_get result=refused reason=\"{why}\"");
            reply(
                InflightInfo {
                    mmap_size: 0,
                    mmap_offset: 0,
                    num_queues: 0,
                    queue_size: 0,
                },
                Vec::new(),
            )
        };
        let Some(asked) = InflightInfo::parse(&m.payload) else {
            return refuse("payload is not 24 bytes");
        };
        if asked.num_queues > self.num_queues || asked.queue_size > self.max_queue_size {
            return refuse("more queues or entries than the device has");
        }
        let region = match InflightRegion::create(asked.num_queues, asked.queue_size) {
            Ok(r) => Arc::new(r),
            Err(e) => return refuse(&e.to_string()),
        };
        let fd = match region.dup_fd() {
            Ok(fd) => fd,
            Err(e) => return refuse(&e.to_string()),
        };
        let info = region.info();
        info!(
            "event=inflight_get queues={} queue_size={} bytes={}",
            info.num_queues, info.queue_size, info.mmap_size
        );
        self.publish(Some(region));
        reply(info, vec![fd])
    }

    fn set_inflight(&self, m: Msg) -> bool {
        let Some(info) = InflightInfo::parse(&m.payload) else {
            warn!("event=inflight_set result=refused reason=\"payload is not 24 bytes\"");
            return false;
        };
        let Some(fd) = m.fds.into_iter().next() else {
            warn!("event=inflight_set result=refused reason=\"no fd\"");
            return false;
        };
        if info.num_queues > self.num_queues || info.queue_size > self.max_queue_size {
            warn!(
                "event=inflight_set result=refused reason=\"more queues or entries than the device has\""
            );
            return false;
        }
        match InflightRegion::open(fd, info) {
            Ok(region) => {
                info!(
                    "event=inflight_set queues={} queue_size={}",
                    info.num_queues, info.queue_size
                );
                self.publish(Some(Arc::new(region)));
                true
            }
            Err(e) => {
                warn!("event=inflight_set result=refused reason=\"{e}\"");
                false
            }
        }
    }
}

/// Adds 1 to a kick eventfd (the relay checked it is one; the write never
/// blocks, see [`notify_fd`]).
fn self_kick(fd: OwnedFd) {
    if let Err(e) = notify_fd::signal(fd.as_fd()) {
        warn!("event=self_kick_failed err={e}");
    }
}

impl Filter for BlkFilter {
    fn on_frontend(&mut self, m: Msg, out: &mut Vec<Routed>) {
        match m.request() {
            REQ_SET_PROTOCOL_FEATURES => {
                if let Some(features) = m.payload_u64() {
                    self.negotiated = features & PROTOCOL_F_INFLIGHT_SHMFD != 0;
                    if !self.negotiated {
                        self.publish(None);
                    }
                    out.push(Routed::ToBackend(
                        m.with_payload_u64(features & !PROTOCOL_F_INFLIGHT_SHMFD),
                    ));
                    return;
                }
            }
            REQ_GET_INFLIGHT_FD if self.negotiated => {
                out.push(Routed::ToFrontend(self.get_inflight(&m)));
                return;
            }
            REQ_SET_INFLIGHT_FD if self.negotiated => {
                let ack = m.needs_reply();
                let ok = self.set_inflight(m);
                if ack {
                    out.push(Routed::ToFrontend(Msg::reply_u64(
                        REQ_SET_INFLIGHT_FD,
                        u64::from(!ok),
                    )));
                }
                return;
            }
            REQ_SET_VRING_KICK if self.negotiated => {
                let polling = m.payload_u64().is_none_or(|p| p & VRING_NOFD != 0);
                let kick = if polling {
                    None
                } else {
                    m.fds.first().and_then(|fd| fd.try_clone().ok())
                };
                out.push(Routed::ToBackend(m));
                if let Some(fd) = kick {
                    // Sent after the message: the count waits in the
                    // eventfd until the worker registers it.
                    self_kick(fd);
                }
                return;
            }
            _ => {}
        }
        out.push(Routed::ToBackend(m));
    }

    fn to_frontend(&self, m: Msg) -> Msg {
        match (m.request(), m.payload_u64()) {
            (REQ_GET_PROTOCOL_FEATURES, Some(features)) => {
                m.with_payload_u64(features | PROTOCOL_F_INFLIGHT_SHMFD)
            }
            _ => m,
        }
    }
}

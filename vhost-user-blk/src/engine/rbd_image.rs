//! One open RBD image shared by every queue: the cluster connection (with
//! bounded connect and monitor timeouts, so a dead monitor is a start-up
//! error, not a hang), the image handle, and the routing of librbd's
//! completions to the queue that submitted them.
//!
//! librbd signals finished requests on one eventfd per image
//! (`rbd_set_image_notification`); `rbd_poll_io_events` hands them out.
//! Each queue's engine waits on an epoll set holding that eventfd and its
//! own mailbox eventfd: whichever worker wakes first drains the image's
//! completions ([`RbdImage::dispatch`]), keeps nothing itself, and files
//! each one in the mailbox of the queue named in its tag, waking that
//! queue. No thread of ours waits on librbd, and a worker never blocks on it.

use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::sync::Mutex;
use std::time::Duration;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::rbd_ffi::{self, Api, Completion, EVENT_TYPE_EVENTFD, Image, IoCtx, Rados, cstr};
use super::rbd_spec::RbdSpec;

/// How long connecting to the monitors, and each monitor command, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RbdError {
    /// librbd is not installed.
    #[error(
        "cannot load {lib} for rbd: disks (install librbd1): {0}",
        lib = "librbd.so.1"
    )]
    Library(String),
    /// A librados/librbd call failed at start-up.
    #[error("rbd {image}: {what}")]
    Call {
        /// POOL/IMAGE[@SNAP].
        image: String,
        /// What failed, with the errno.
        what: String,
    },
    /// The completion eventfd.
    #[error("rbd: cannot create the completion eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Finished requests of one queue, waiting for its worker.
#[derive(Debug)]
pub struct Mailbox {
    /// `(slot, librbd return value)`.
    pub done: Mutex<Vec<(u32, isize)>>,
    /// Written when `done` gains entries.
    pub efd: EventFd,
}

/// An open image and its cluster connection.
#[derive(Debug)]
pub struct RbdImage {
    pub(crate) api: &'static Api,
    rados: Rados,
    ioctx: IoCtx,
    pub(crate) image: Image,
    /// Image size in bytes (at open).
    pub size: u64,
    /// Opened read-only (a snapshot, or --read-only).
    pub read_only: bool,
    /// POOL/IMAGE[@SNAP].
    pub name: String,
    notify: EventFd,
    mailboxes: Vec<Mailbox>,
}

// SAFETY: librbd's C API may be called from any thread, and its AIO calls
// and rbd_poll_io_events from several at once (the handle's state is
// locked inside librbd); the handles are only closed in Drop, with
// exclusive access.
unsafe impl Send for RbdImage {}
// SAFETY: as above.
unsafe impl Sync for RbdImage {}

fn errno(rc: i64) -> String {
    let e = std::io::Error::from_raw_os_error(i32::try_from(-rc).unwrap_or(libc::EIO));
    format!("{e} ({rc})")
}

/// The cache mode librbd should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbdCache {
    /// librbd's write-back cache (flushed by guest flushes).
    Writeback,
    /// No cache: a write completes once the OSDs have it.
    Off,
}

impl RbdImage {
    /// Connect and open `spec` with `queues` mailboxes.
    pub fn open(
        spec: &RbdSpec,
        read_only: bool,
        cache: RbdCache,
        queues: usize,
    ) -> Result<RbdImage, RbdError> {
        let api = rbd_ffi::api().map_err(RbdError::Library)?;
        let name = spec.name();
        let fail = |what: &str, rc: i64| RbdError::Call {
            image: name.clone(),
            what: format!("{what}: {}", errno(rc)),
        };
        let id = spec.id.as_deref().map(cstr);
        let mut rados: Rados = ptr::null_mut();
        // SAFETY: rados_create writes a handle into `rados`; `id` is NULL
        // (client.admin) or a NUL-terminated string valid for the call.
        let rc = unsafe {
            (api.rados_create)(&mut rados, id.as_ref().map_or(ptr::null(), |s| s.as_ptr()))
        };
        if rc < 0 {
            return Err(fail("rados_create", rc.into()));
        }
        let mut img = RbdImage {
            api,
            rados,
            ioctx: ptr::null_mut(),
            image: ptr::null_mut(),
            size: 0,
            read_only: read_only || spec.snap.is_some(),
            name: name.clone(),
            notify: EventFd::new(EFD_NONBLOCK).map_err(RbdError::EventFd)?,
            mailboxes: Vec::new(),
        };
        for _ in 0..queues {
            img.mailboxes.push(Mailbox {
                done: Mutex::new(Vec::new()),
                efd: EventFd::new(EFD_NONBLOCK).map_err(RbdError::EventFd)?,
            });
        }
        let conf = spec.conf.as_ref().map(|p| cstr(&p.to_string_lossy()));
        // SAFETY: the handle is live; `conf` is NULL (librados' default
        // search) or a NUL-terminated path valid for the call.
        let rc = unsafe {
            (api.rados_conf_read_file)(rados, conf.as_ref().map_or(ptr::null(), |s| s.as_ptr()))
        };
        if rc < 0 {
            let what = match &spec.conf {
                Some(p) => format!("cannot read {}", p.display()),
                None => "cannot read /etc/ceph/ceph.conf (give :conf=PATH)".into(),
            };
            return Err(fail(&what, rc.into()));
        }
        let secs = CONNECT_TIMEOUT.as_secs().to_string();
        let rbd_cache = if cache == RbdCache::Writeback {
            "true"
        } else {
            "false"
        };
        for (key, value) in [
            // Bounded: an unreachable monitor fails the connect, not hangs.
            ("client_mount_timeout", secs.as_str()),
            ("rados_mon_op_timeout", secs.as_str()),
            // Nothing on the filesystem: no admin socket, no log file.
            ("admin_socket", ""),
            ("log_file", ""),
            ("log_to_stderr", "false"),
            ("err_to_stderr", "false"),
            ("rbd_cache", rbd_cache),
        ] {
            let (k, v) = (cstr(key), cstr(value));
            // SAFETY: live handle, NUL-terminated key and value.
            let rc = unsafe { (api.rados_conf_set)(rados, k.as_ptr(), v.as_ptr()) };
            if rc < 0 {
                return Err(fail(&format!("setting {key}"), rc.into()));
            }
        }
        // SAFETY: live, configured handle; blocks at most
        // client_mount_timeout.
        let rc = unsafe { (api.rados_connect)(rados) };
        if rc < 0 {
            let client = spec.id.as_deref().unwrap_or("admin");
            let what = match -rc {
                libc::ETIMEDOUT => format!(
                    "no monitor answered within {} s (mon host in the conf file)",
                    CONNECT_TIMEOUT.as_secs()
                ),
                libc::EACCES | libc::EPERM => format!(
                    "the monitors refused client.{client} (wrong id, or a wrong or missing key in its keyring)"
                ),
                _ => format!("cannot connect to the cluster as client.{client}"),
            };
            return Err(fail(&what, rc.into()));
        }
        let pool = cstr(&spec.pool);
        // SAFETY: connected handle; writes an io context into img.ioctx.
        let rc = unsafe { (api.rados_ioctx_create)(rados, pool.as_ptr(), &mut img.ioctx) };
        if rc < 0 {
            return Err(fail(&format!("pool {:?}", spec.pool), rc.into()));
        }
        let (image, snap) = (cstr(&spec.image), spec.snap.as_deref().map(cstr));
        let snap_ptr = snap.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let open = if img.read_only {
            api.rbd_open_read_only
        } else {
            api.rbd_open
        };
        // SAFETY: live io context; NUL-terminated image and snapshot (or
        // NULL) names; writes the image handle into img.image.
        let rc = unsafe { open(img.ioctx, image.as_ptr(), &mut img.image, snap_ptr) };
        if rc < 0 {
            img.image = ptr::null_mut();
            let what = match &spec.snap {
                Some(s) => format!("image {:?} or its snapshot {s:?}", spec.image),
                None => format!("image {:?}", spec.image),
            };
            return Err(fail(&what, rc.into()));
        }
        // SAFETY: open image; writes its size.
        let rc = unsafe { (api.rbd_get_size)(img.image, &mut img.size) };
        if rc < 0 {
            return Err(fail("rbd_get_size", rc.into()));
        }
        // SAFETY: open image; the eventfd lives as long as the image
        // (closed after it in Drop).
        let rc = unsafe {
            (api.rbd_set_image_notification)(img.image, img.notify.as_raw_fd(), EVENT_TYPE_EVENTFD)
        };
        if rc < 0 {
            return Err(fail("rbd_set_image_notification", rc.into()));
        }
        Ok(img)
    }

    /// The eventfd librbd writes when requests finish.
    pub fn notify_fd(&self) -> RawFd {
        self.notify.as_raw_fd()
    }

    /// Queue `queue`'s mailbox.
    pub fn mailbox(&self, queue: usize) -> Option<&Mailbox> {
        self.mailboxes.get(queue)
    }

    /// Queues with a mailbox.
    pub fn queues(&self) -> usize {
        self.mailboxes.len()
    }

    /// Moves every finished request out of librbd into its queue's
    /// mailbox and wakes the queues that got some.
    pub fn dispatch(&self) {
        // Reset first: a completion posted after the drain re-arms it.
        let _ = self.notify.read();
        let mut comps: [Completion; 32] = [ptr::null_mut(); 32];
        let mut woken = 0u64;
        loop {
            // SAFETY: open image; librbd writes up to 32 completion
            // handles into `comps`, each ours until released below.
            let n = unsafe { (self.api.rbd_poll_io_events)(self.image, comps.as_mut_ptr(), 32) };
            let n = usize::try_from(n).unwrap_or(0).min(comps.len());
            for &c in &comps[..n] {
                // SAFETY: a finished completion handed out by
                // rbd_poll_io_events, released exactly once, here.
                let (tag, ret) = unsafe {
                    let tag =
                        u64::try_from((self.api.rbd_aio_get_arg)(c).addr()).unwrap_or(u64::MAX);
                    let ret = (self.api.rbd_aio_get_return_value)(c);
                    (self.api.rbd_aio_release)(c);
                    (tag, ret)
                };
                let (queue, slot) = untag(tag);
                let Some(mb) = self.mailboxes.get(queue) else {
                    log::error!("event=rbd_completion_unrouted tag={tag:#x}");
                    continue;
                };
                mb.done
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((slot, ret));
                woken |= 1 << (queue % 64);
            }
            if n < comps.len() {
                break;
            }
        }
        for (q, mb) in self.mailboxes.iter().enumerate() {
            if woken & (1 << (q % 64)) != 0 {
                let _ = mb.efd.write(1);
            }
        }
    }

    /// Make every completed write durable (at shutdown; blocking).
    pub fn flush(&self) -> std::io::Result<()> {
        // SAFETY: open image.
        let rc = unsafe { (self.api.rbd_flush)(self.image) };
        if rc < 0 {
            return Err(std::io::Error::from_raw_os_error(-rc));
        }
        Ok(())
    }
}

/// A completion's cb_arg: queue in the high half, slot in the low.
pub fn tag(queue: usize, slot: u32) -> u64 {
    // Queues number at most 64 (config): the shift loses nothing.
    (u64::try_from(queue).unwrap_or(u64::from(u32::MAX)) << 32) | u64::from(slot)
}

/// The queue and slot a tag names.
pub fn untag(tag: u64) -> (usize, u32) {
    let [s0, s1, s2, s3, q0, q1, q2, q3] = tag.to_le_bytes();
    let queue = usize::try_from(u32::from_le_bytes([q0, q1, q2, q3])).unwrap_or(usize::MAX);
    (queue, u32::from_le_bytes([s0, s1, s2, s3]))
}

impl Drop for RbdImage {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this object and is closed
        // once, image before io context before cluster; no request is in
        // flight (every engine waits for its own before it goes, and the
        // engines hold this image).
        unsafe {
            if !self.image.is_null() {
                (self.api.rbd_close)(self.image);
            }
            if !self.ioctx.is_null() {
                (self.api.rados_ioctx_destroy)(self.ioctx);
            }
            (self.api.rados_shutdown)(self.rados);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        assert_eq!(untag(tag(0, 0)), (0, 0));
        assert_eq!(untag(tag(63, 1023)), (63, 1023));
        assert_eq!(untag(tag(5, u32::MAX)), (5, u32::MAX));
    }
}

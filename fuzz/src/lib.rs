//! Shared by the vhost-user message-stream targets: an arbitrary, mostly
//! well-formed sequence of vhost-user messages (the test kit's hand-built
//! wire format: header, payload, fds via SCM_RIGHTS) played against a
//! daemon serving in this process.
//! Each input is one connection: optional handshake, the messages, then a
//! half-close; replies are drained until the daemon hangs up, so the next
//! input meets the daemon back at its accept loop.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use arbitrary::Arbitrary;
use viaduct_test_kit::hostile::proto::*;

/// User address the fuzzer's memory regions pretend to live at.
const UADDR: u64 = 0x4000_0000;

/// One fd to attach.
#[derive(Arbitrary, Debug)]
pub enum Fd {
    /// A memfd of this many 4 KiB pages (0..=64).
    Memfd(u8),
    /// The same, sealed against shrinking (what SET_INFLIGHT_FD accepts).
    SealedMemfd(u8),
    Eventfd,
}

/// A message body: mostly the shapes real requests carry.
#[derive(Arbitrary, Debug)]
pub enum Body {
    Empty,
    U64(u64),
    State {
        index: u8,
        num: u16,
    },
    VringAddr {
        index: u8,
        desc: u16,
        used: u16,
        avail: u16,
    },
    /// (gpa page, pages, file offset page) per region.
    MemTable(Vec<(u8, u8, u8)>),
    /// SET_CONFIG / GET_CONFIG: offset, size, flags, data.
    Config {
        offset: u16,
        size: u16,
        data: Vec<u8>,
    },
    /// GET/SET_INFLIGHT_FD: mmap size (pages), offset (bytes), queues,
    /// queue size.
    Inflight {
        pages: u8,
        offset: u16,
        queues: u16,
        queue_size: u16,
    },
    Raw(Vec<u8>),
}

/// One message.
#[derive(Arbitrary, Debug)]
pub struct Msg {
    /// Request code: 1..=45 mostly, anything sometimes.
    pub req: u8,
    pub raw_req: Option<u32>,
    pub need_reply: bool,
    pub bad_flags: Option<u32>,
    pub size_lie: Option<u16>,
    pub body: Body,
    pub fds: Vec<Fd>,
}

/// One connection's worth of messages.
#[derive(Arbitrary, Debug)]
pub struct Session {
    pub skip_hello: bool,
    pub msgs: Vec<Msg>,
}

fn make_fd(f: &Fd) -> Option<OwnedFd> {
    // SAFETY: memfd_create/eventfd with valid arguments; result checked.
    let fd = unsafe {
        match f {
            Fd::Memfd(_) => libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC),
            Fd::SealedMemfd(_) => libc::memfd_create(
                c"fuzz".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            ),
            Fd::Eventfd => libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC),
        }
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the fd was just created and is owned here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Fd::Memfd(pages) | Fd::SealedMemfd(pages) = f {
        // SAFETY: ftruncate on our own memfd.
        unsafe { libc::ftruncate(owned.as_raw_fd(), i64::from(*pages % 65) * 4096) };
    }
    if let Fd::SealedMemfd(_) = f {
        // SAFETY: fcntl on our own memfd.
        unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    }
    Some(owned)
}

fn body_bytes(b: &Body) -> Vec<u8> {
    match b {
        Body::Empty => Vec::new(),
        Body::U64(v) => v.to_le_bytes().to_vec(),
        Body::State { index, num } => u32s(&[u32::from(*index % 4), u32::from(*num)]),
        Body::VringAddr {
            index,
            desc,
            used,
            avail,
        } => {
            let mut p = u32s(&[u32::from(*index % 4), 0]);
            let a = |x: u16| UADDR + u64::from(x) * 16;
            p.extend(u64s(&[a(*desc), a(*used), a(*avail), 0]));
            p
        }
        Body::MemTable(regions) => {
            let mut p = u32s(&[regions.len() as u32, 0]);
            for &(gpa, pages, off) in regions.iter().take(10) {
                let gpa = u64::from(gpa) * 4096;
                p.extend(u64s(&[
                    gpa,
                    u64::from(pages) * 4096,
                    UADDR + gpa,
                    u64::from(off) * 4096,
                ]));
            }
            p
        }
        Body::Config { offset, size, data } => {
            let mut p = u32s(&[u32::from(*offset), u32::from(*size), 0]);
            p.extend_from_slice(data);
            p
        }
        Body::Inflight {
            pages,
            offset,
            queues,
            queue_size,
        } => {
            let mut p = u64s(&[u64::from(*pages) * 4096, u64::from(*offset)]);
            p.extend_from_slice(&queues.to_le_bytes());
            p.extend_from_slice(&queue_size.to_le_bytes());
            p.extend_from_slice(&[0; 4]);
            p
        }
        Body::Raw(v) => v.clone(),
    }
}

fn send(s: &mut UnixStream, req: u32, flags: u32, size: u32, body: &[u8], fds: &[RawFd]) -> bool {
    write_message(s, req, flags, size, body, fds).is_ok()
}

/// Ignore SIGPIPE (libFuzzer's C main never did) so a daemon hanging up
/// mid-write is an error, not the end of the fuzzer.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Plays `session` on a fresh connection to `socket`.
pub fn play(socket: &Path, session: &Session) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        panic!("daemon no longer accepts connections");
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(mut reader) = s.try_clone() else {
        return;
    };
    let drain = std::thread::spawn(move || {
        let _ = reader.set_read_timeout(Some(Duration::from_secs(5)));
        let mut sink = Vec::new();
        // Ends when the daemon hangs up (EOF) — or times out if it never
        // does, which the fuzzer then reports as a slow unit.
        reader.read_to_end(&mut sink).is_ok()
    });
    if !session.skip_hello {
        let f = F_VERSION_1 | F_PROTOCOL_FEATURES;
        // INFLIGHT_SHMFD is the blk relay's; the net daemon never offered
        // it and ignores it.
        let pf = PF_MQ | PF_REPLY_ACK | PF_CONFIG | PF_INFLIGHT_SHMFD;
        let _ = send(&mut s, SET_OWNER, V1, 0, &[], &[])
            && send(&mut s, SET_FEATURES, V1, 8, &f.to_le_bytes(), &[])
            && send(&mut s, SET_PROTOCOL_FEATURES, V1, 8, &pf.to_le_bytes(), &[]);
    }
    for m in session.msgs.iter().take(64) {
        let req = m.raw_req.unwrap_or(u32::from(m.req % 46));
        let flags = m
            .bad_flags
            .unwrap_or(if m.need_reply { V1 | NEED_REPLY } else { V1 });
        let body = body_bytes(&m.body);
        let size = m.size_lie.map_or(body.len() as u32, u32::from);
        let fds: Vec<OwnedFd> = m.fds.iter().take(40).filter_map(make_fd).collect();
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        if !send(&mut s, req, flags, size, &body, &raw) {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = drain.join();
    check_resources();
}

/// Connections must not leak fds or threads: with one connection served
/// at a time, the counts stay bounded however many inputs ran. (LeakSanitizer
/// cannot judge an in-process daemon whose threads outlive each input, so the
/// message targets run with -detect_leaks=0 and rely on this.)
fn check_resources() {
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
    let mut tries = 0;
    loop {
        let (fds, tasks) = (count("/proc/self/fd"), count("/proc/self/task"));
        if fds < 256 && tasks < 48 {
            return;
        }
        // The previous connection may still be tearing down.
        tries += 1;
        if tries >= 200 {
            let mut kinds = std::collections::BTreeMap::<String, usize>::new();
            for e in std::fs::read_dir("/proc/self/fd")
                .into_iter()
                .flatten()
                .flatten()
            {
                let t = std::fs::read_link(e.path()).map_or("?".into(), |p| {
                    let s = p.to_string_lossy().into_owned();
                    s
                });
                *kinds.entry(t).or_default() += 1;
            }
            panic!("leak: {fds} fds {kinds:?}, {tasks} threads after teardown");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

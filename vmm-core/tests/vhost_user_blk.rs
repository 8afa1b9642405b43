//! The vhost-user frontend against real backends on the host, no guest:
//! qemu-storage-daemon and our own vhost-user-blk daemon export a raw
//! image; the test connects, reads the
//! config through GET_CONFIG, activates one queue in memfd guest RAM, puts
//! a virtio-blk read request on the ring by hand, kicks, and waits for the
//! call eventfd and the data.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtio_devices::transport::{QueueConfig, VirtioDevice};
use virtio_devices::vhost_user::{DeviceKind, GuestRegion, VhostUserDevice};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};
use vmm_core::memory::GuestRam;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Which daemon serves the image.
enum Backend {
    QemuStorageDaemon,
    /// The project's own daemon (built by `cargo build --release --workspace`).
    Viaduct,
}

fn project_daemon() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("vhost-user-blk"))
        .find(|p| p.is_file())
        .expect("vhost-user-blk not built; run `cargo build --release --workspace` first")
}

fn start(backend: &Backend, image: &Path, sock: &Path) -> Daemon {
    let mut cmd = match backend {
        Backend::QemuStorageDaemon => {
            let mut c = Command::new("qemu-storage-daemon");
            c.arg("--blockdev")
                .arg(format!("driver=file,node-name=f0,filename={}", image.display()))
                .args(["--blockdev", "driver=raw,node-name=d0,file=f0"])
                .arg("--export")
                .arg(format!(
                    "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={},writable=on",
                    sock.display()
                ));
            c
        }
        Backend::Viaduct => {
            let mut c = Command::new(project_daemon());
            c.arg("--socket-path")
                .arg(sock)
                .arg("--blk-file")
                .arg(image);
            c
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the vhost-user-blk backend");
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the backend did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

fn wait_readable(evt: &EventFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1, the fd outlives the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
}

const DESC: u64 = 0x10000;
const AVAIL: u64 = 0x11000;
const USED: u64 = 0x12000;
const HDR: u64 = 0x20000;
const DATA: u64 = 0x21000;
const STATUS: u64 = 0x22000;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

#[test]
fn frontend_reads_a_sector_through_qemu_storage_daemon() {
    read_a_sector(Backend::QemuStorageDaemon, "qsd");
}

#[test]
fn frontend_reads_a_sector_through_our_vhost_user_blk() {
    read_a_sector(Backend::Viaduct, "own");
}

fn read_a_sector(backend: Backend, tag: &str) {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("viaduct-vu-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.raw");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(16 << 20).unwrap();
    let pattern: Vec<u8> = (0..512u32).map(|i| ((i * 7 + 3) & 0xff) as u8).collect();
    f.write_all_at(&pattern, 8 * 512).unwrap();
    let sock = dir.join("blk.sock");
    let _daemon = start(&backend, &image, &sock);

    let ram = GuestRam::new(64 << 20, false).unwrap();
    let regions: Vec<GuestRegion> = ram
        .ranges
        .iter()
        .map(|r| GuestRegion {
            gpa: r.guest_addr,
            size: r.size,
            hva: ram
                .mem
                .get_host_address(GuestAddress(r.guest_addr))
                .unwrap() as u64,
            fd: ram.memfd.as_raw_fd(),
            file_offset: r.file_offset,
        })
        .collect();
    let mut dev = VhostUserDevice::connect(
        &sock,
        DeviceKind::Block { num_queues: 1 },
        128,
        regions,
        ram.mem.clone(),
    )
    .expect("vhost-user handshake");
    assert_eq!(dev.device_type(), 2);
    assert_ne!(dev.features() & (1 << 32), 0, "VERSION_1 offered");
    assert_eq!(
        dev.features() & (1 << 30),
        0,
        "vhost-user bit hidden from the guest"
    );
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(
        u64::from_le_bytes(cap),
        (16 << 20) / 512,
        "capacity via GET_CONFIG"
    );

    // One read request: header, 512-byte buffer, status byte.
    let m = &ram.mem;
    m.write_obj(0u32, GuestAddress(HDR)).unwrap(); // VIRTIO_BLK_T_IN
    m.write_obj(8u64, GuestAddress(HDR + 8)).unwrap();
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    for (i, (addr, len, flags)) in [
        (HDR, 16u32, NEXT),
        (DATA, 512, NEXT | WRITE),
        (STATUS, 1, WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        let d = GuestAddress(DESC + 16 * i as u64);
        m.write_obj(addr, d).unwrap();
        m.write_obj(len, d.unchecked_add(8)).unwrap();
        m.write_obj(flags, d.unchecked_add(12)).unwrap();
        m.write_obj(u16::try_from(i).unwrap() + 1, d.unchecked_add(14))
            .unwrap();
    }
    m.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap(); // ring[0] = head 0
    m.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap(); // idx = 1

    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let q = QueueConfig {
        index: 0,
        size: 16,
        desc: DESC,
        avail: AVAIL,
        used: USED,
        kick: &kick,
        call: &call,
    };
    dev.activate(1 << 32, &[q]).expect("activation");
    kick.write(1).unwrap();
    // The backend may signal once when the ring starts; wait for the
    // interrupt that comes with the used entry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut used_idx = 0u16;
    while used_idx == 0 && Instant::now() < deadline {
        assert!(
            wait_readable(&call, 10_000),
            "backend signalled the call eventfd"
        );
        let _ = call.read();
        used_idx = m.read_obj(GuestAddress(USED + 2)).unwrap();
    }
    assert_eq!(used_idx, 1);
    let mut data = vec![0u8; 512];
    m.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(data, pattern);
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        0,
        "VIRTIO_BLK_S_OK"
    );
    dev.reset();
    let _ = std::fs::remove_dir_all(&dir);
}

//! Test host A: a TCG guest on this host, booted by QEMU with all of its RAM
//! in a shared memfd, so any vhost-user device can be attached. QEMU is the
//! vhost-user frontend; the guest runs the stock kernel's virtio drivers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::kernel::GuestKernel;
use crate::qemu::{GuestRun, RunError, run_guest};

/// A QEMU guest on the host with vhost-user devices.
#[derive(Debug, Clone)]
pub struct HostA {
    kernel: GuestKernel,
    memory_mib: u32,
    cpus: u32,
    cmdline: String,
    devices: Vec<String>,
    chardevs: usize,
    reconnect_ms: Option<u32>,
    /// Guest RAM in a file on this hugetlbfs instead of a memfd.
    hugetlbfs: Option<PathBuf>,
}

impl HostA {
    pub fn new(kernel: &GuestKernel) -> Self {
        Self {
            kernel: kernel.clone(),
            memory_mib: 512,
            cpus: 1,
            cmdline: "console=ttyS0 panic=-1 quiet".into(),
            devices: Vec::new(),
            chardevs: 0,
            reconnect_ms: None,
            hugetlbfs: None,
        }
    }

    pub fn memory_mib(&mut self, mib: u32) -> &mut Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(&mut self, n: u32) -> &mut Self {
        self.cpus = n;
        self
    }

    /// Appends to the guest kernel command line.
    pub fn append(&mut self, extra: &str) -> &mut Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(extra);
        self
    }

    /// Vhost-user sockets added after this reconnect every `ms` when the
    /// daemon goes away (QEMU keeps the device and its in-flight region).
    pub fn reconnect_ms(&mut self, ms: u32) -> &mut Self {
        self.reconnect_ms = Some(ms);
        self
    }

    fn chardev(&mut self, socket: &Path) -> String {
        let id = format!("vu{}", self.chardevs);
        self.chardevs += 1;
        self.devices.push("-chardev".into());
        let reconnect = self
            .reconnect_ms
            .map_or(String::new(), |ms| format!(",reconnect-ms={ms}"));
        self.devices.push(format!(
            "socket,id={id},path={}{reconnect}",
            socket.display()
        ));
        id
    }

    /// A vhost-user-blk-pci disk served on `socket`.
    pub fn vhost_user_blk(&mut self, socket: &Path, num_queues: u16) -> &mut Self {
        let id = self.chardev(socket);
        self.devices.push("-device".into());
        self.devices.push(format!(
            "vhost-user-blk-pci,chardev={id},num-queues={num_queues}"
        ));
        self
    }

    /// A virtio-net-pci NIC whose backend is a vhost-user daemon on `socket`.
    /// QEMU gives the guest `mac` itself (it does not read the backend's).
    pub fn vhost_user_net(&mut self, socket: &Path, mac: &str, queue_pairs: u16) -> &mut Self {
        let id = self.chardev(socket);
        let netdev = format!("n{id}");
        self.devices.push("-netdev".into());
        self.devices.push(format!(
            "vhost-user,id={netdev},chardev={id},queues={queue_pairs}"
        ));
        let mq = if queue_pairs > 1 {
            format!(",mq=on,vectors={}", 2 * queue_pairs + 2)
        } else {
            String::new()
        };
        self.devices.push("-device".into());
        self.devices
            .push(format!("virtio-net-pci,netdev={netdev},mac={mac}{mq}"));
        self
    }

    /// Guest RAM as a shared file on the hugetlbfs mounted at `dir`
    /// (`memory-backend-file,mem-path=DIR,share=on`).
    pub fn hugetlbfs(&mut self, dir: &Path) -> &mut Self {
        self.hugetlbfs = Some(dir.to_path_buf());
        self
    }

    /// Raw extra QEMU arguments.
    pub fn qemu_args(&mut self, args: &[&str]) -> &mut Self {
        self.devices.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// The QEMU command for this guest with `initramfs`.
    pub fn command(&self, initramfs: &Path) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        let mem = self.memory_mib;
        cmd.args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
        ])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .args(["-m", &format!("{mem}M"), "-smp", &self.cpus.to_string()])
        .args([
            "-object",
            &match &self.hugetlbfs {
                None => format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
                Some(dir) => format!(
                    "memory-backend-file,id=mem,size={mem}M,mem-path={},share=on",
                    dir.display()
                ),
            },
        ])
        .args(["-machine", "q35,memory-backend=mem"])
        .arg("-kernel")
        .arg(&self.kernel.bzimage)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &self.cmdline])
        .args(&self.devices);
        cmd
    }

    /// Boots the guest and waits for it to power off (or for `timeout`).
    pub fn boot(
        &self,
        initramfs: &Path,
        timeout: Duration,
        log: Option<PathBuf>,
    ) -> Result<GuestRun, RunError> {
        run_guest(self.command(initramfs), timeout, log.as_deref())
    }
}

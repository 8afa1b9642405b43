//! `viaduct`: the VMM binary. Command-line parsing only; the work is in
//! the `vmm_core` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vmm_core::config::{self, VmConfig};
use vmm_core::seccomp::SeccompMode;

/// Viaduct: a compact KVM VMM whose disks and NICs are served by vhost-user daemons.
///
/// Boot a stock kernel (bzImage, or an ELF vmlinux through its PVH entry) with
/// 2 vCPUs, 512 MiB, an initramfs and a disk served by a vhost-user-blk daemon:
///
///   viaduct --kernel /boot/vmlinuz --initramfs initrd.cpio \
///           --cmdline 'console=ttyS0 reboot=k panic=-1' \
///           --cpus 2 --memory 512M --disk socket=/run/blk0.sock,num_queues=2
///
/// The guest's serial console is on stdio. Guest power-off or reboot ends viaduct
/// with status 0; a guest panic or a VMM failure ends it with status 1 and a
/// one-line reason on stderr; bad arguments with status 2 before anything starts.
///
/// Pass a VF bound to vfio-pci through (see `viaduct sriov bind`), with its MAC
/// set on the PF first:  --device vfio=0000:01:10.0,mac=02:00:00:00:00:01,vlan=100
///
/// With both daemons (see their --help) and a control socket:
///
///   vhost-user-blk --socket-path /run/blk0.sock --blk-file disk.raw &
///   vhost-user-net --socket-path /run/net0.sock --tap vtap0 --host-ip 192.168.100.1/24 &
///   viaduct --kernel bzImage --initramfs initrd.cpio --cpus 2 \
///           --disk socket=/run/blk0.sock --net socket=/run/net0.sock,mac=52:54:00:12:34:56 \
///           --api-socket /run/vm0.api
///   viaduct ctl --api-socket /run/vm0.api info     # also: pause, resume, shutdown
///
/// A daemon that dies can be started again on the same socket: viaduct
/// reconnects and the guest's device goes on; with vhost-user-blk, requests
/// in flight at the crash are resubmitted (INFLIGHT_SHMFD).
///
///   viaduct check-kvm      # open /dev/kvm, create a VM and a vCPU, list capabilities
///   viaduct sriov list     # SR-IOV PFs and VFs; see `viaduct sriov --help`
#[derive(Parser, Debug)]
#[command(
    name = "viaduct",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Kernel image: a bzImage, or an uncompressed ELF vmlinux with a PVH note.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs (cpio archive, optionally compressed as the kernel supports).
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = config::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// Guest RAM: SIZE[,hugepages=on] (memfd-backed, shared with vhost-user backends).
    #[arg(long, value_name = "SIZE[,hugepages=on]", default_value = "512M")]
    memory: String,
    /// A vhost-user-blk disk: socket=PATH[,num_queues=N][,queue_size=N]. Repeatable.
    #[arg(long, value_name = "socket=PATH,...")]
    disk: Vec<String>,
    /// A vhost-user-net NIC: socket=PATH[,mac=MAC][,num_queue_pairs=N][,queue_size=N]. Repeatable.
    #[arg(long, value_name = "socket=PATH,...")]
    net: Vec<String>,
    /// A passed-through PCI function bound to vfio-pci: vfio=BDF[,mac=MAC][,vlan=ID][,msix=off].
    /// mac=/vlan= (VFs only) are set on the PF before the guest boots; msix=off hides
    /// MSI-X so the guest uses the device's MSI. Repeatable.
    #[arg(long, value_name = "vfio=BDF,...")]
    device: Vec<String>,
    /// Serial console: stdio, file=PATH or off.
    #[arg(long, value_name = "stdio|file=PATH|off", default_value = "stdio")]
    serial: String,
    /// Serve the control API (HTTP/JSON) on this unix socket: GET /vm/info,
    /// PUT /vm/pause, /vm/resume, /vm/shutdown. See `viaduct ctl --help`.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Once the VM runs, confine viaduct with seccomp: `on` kills it on any
    /// syscall off the list, `log` only logs such calls (kernel audit log),
    /// `off` disables the filter (debugging). With `on` and `log`, a
    /// Landlock domain also closes the filesystem but /dev/kvm, /dev/vfio
    /// and the API socket's directory.
    #[arg(long, value_enum, default_value_t = SeccompMode::On)]
    seccomp: SeccompMode,
}

/// What `viaduct ctl` asks a running VMM.
#[derive(Subcommand, Debug, Clone, Copy)]
enum CtlAction {
    /// Print the VM's state, vCPUs, memory, devices (sockets, negotiated
    /// features, reconnects) and exit counters as JSON.
    Info,
    /// Stop every vCPU (the guest's clock stops too).
    Pause,
    /// Let a paused VM run again.
    Resume,
    /// End the VMM (exit status 0) without waiting for the guest.
    Shutdown,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that this host's KVM can run Viaduct: creates a VM and a vCPU and
    /// prints one `key=value` line per capability. Exit status 0 when usable.
    CheckKvm,
    /// Manage SR-IOV virtual functions: create, configure (MAC, VLAN, spoof
    /// checking...), bind to vfio-pci for passthrough.
    ///
    /// Example: viaduct sriov create --pf enp1s0 --num-vfs 2 &&
    ///          viaduct sriov set --pf enp1s0 --vf 0 --mac 02:00:00:00:00:01 --vlan 100 --spoofchk on &&
    ///          viaduct sriov bind --vf 0000:01:10.0
    #[command(subcommand, verbatim_doc_comment)]
    Sriov(vfio_passthrough::sriov::cli::SriovCommand),
    /// Talk to a running viaduct through its --api-socket.
    ///
    /// Example: viaduct ctl --api-socket /run/vm0.api info
    #[command(verbatim_doc_comment)]
    Ctl {
        /// The socket given to `viaduct --api-socket`.
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        #[command(subcommand)]
        action: CtlAction,
    },
}

fn vm_config(cli: Cli) -> anyhow::Result<VmConfig> {
    let kernel = cli
        .kernel
        .context("--kernel PATH is required (see --help)")?;
    let cfg = VmConfig {
        kernel,
        initramfs: cli.initramfs,
        cmdline: cli.cmdline,
        cpus: config::check_cpus(cli.cpus)?,
        memory: config::parse_memory(&cli.memory)?,
        disks: cli
            .disk
            .iter()
            .map(|d| config::parse_disk(d))
            .collect::<Result<_, _>>()?,
        nets: cli
            .net
            .iter()
            .map(|n| config::parse_net(n))
            .collect::<Result<_, _>>()?,
        vfio: cli
            .device
            .iter()
            .map(|d| config::parse_device(d))
            .collect::<Result<_, _>>()?,
        serial: config::parse_serial(&cli.serial)?,
        api_socket: cli.api_socket,
        seccomp: cli.seccomp,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn check_kvm() -> ExitCode {
    match vmm_core::kvm_check::check_kvm() {
        Ok(report) => {
            print!("{}", report.render());
            println!("kvm_ok=1");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("viaduct: {:#}", anyhow::Error::from(e));
            println!("kvm_ok=0");
            ExitCode::FAILURE
        }
    }
}

fn sriov(cmd: &vfio_passthrough::sriov::cli::SriovCommand) -> ExitCode {
    let sysfs = vfio_passthrough::sriov::pci::Sysfs::default();
    match vfio_passthrough::sriov::cli::run(cmd, &sysfs, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viaduct sriov: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

fn ctl(socket: &std::path::Path, action: CtlAction) -> ExitCode {
    let (method, path) = match action {
        CtlAction::Info => ("GET", "/vm/info"),
        CtlAction::Pause => ("PUT", "/vm/pause"),
        CtlAction::Resume => ("PUT", "/vm/resume"),
        CtlAction::Shutdown => ("PUT", "/vm/shutdown"),
    };
    match vmm_core::api::client::call(socket, method, path) {
        Ok((status, body)) if (200..300).contains(&status) => {
            if !body.is_empty() {
                println!("{body}");
            }
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("viaduct ctl: {method} {path}: HTTP {status} {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("viaduct ctl: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckKvm) => return check_kvm(),
        Some(Command::Sriov(cmd)) => return sriov(cmd),
        Some(Command::Ctl { api_socket, action }) => return ctl(api_socket, *action),
        None => {}
    }
    let cfg = match vm_config(cli) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("viaduct: {e:#}");
            return ExitCode::from(2);
        }
    };
    let code = match vmm_core::vm::run(&cfg) {
        Ok(outcome) => {
            if outcome.code != 0 {
                eprintln!("viaduct: {}", outcome.message);
            }
            outcome.code
        }
        Err(e) => {
            eprintln!("viaduct: {:#}", anyhow::Error::from(e));
            1
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Exit now: vCPU threads may still be inside KVM_RUN.
    std::process::exit(i32::from(code))
}

//! A VM from configuration to exit status: KVM VM with the in-kernel
//! irqchip and PIT, memfd-backed RAM as memslots, the platform devices on
//! the port bus, the kernel loaded, one thread per vCPU, and the event
//! loop until the guest powers off, reboots, panics, or the VMM fails.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::api::server::{ApiError, ApiServer};
use crate::backends::{Backends, Watched};
use crate::boot::{self, BootEntry, BootSpec, layout};
use crate::config::{MemoryConfig, SerialMode, VmConfig};
use crate::control::VmController;
use crate::cpu::exit_stats::ExitCounters;
use crate::cpu::pause::{self, PauseControl, PauseError};
use crate::cpu::regs;
use crate::cpu::vcpu::{Vcpu, VcpuError, VcpuShared};
use crate::devices::bus::Bus;
use crate::devices::manager::{DeviceError, DeviceManager};
use crate::event_loop::{self, EventLoopError, Sources, TOKEN_BACKENDS};
use crate::lifecycle::{Lifecycle, Outcome};
use crate::memory::{GuestRam, MemoryError};

/// Why the VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("KVM {0} failed")]
    KvmCall(&'static str, #[source] kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot open serial output {0}")]
    SerialFile(String, #[source] std::io::Error),
    #[error("guest memory region at {0:#x} has no host mapping")]
    NoHostMapping(u64),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Pause(#[from] PauseError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Landlock(#[from] crate::landlock::LandlockError),
}

/// A KVM VM with its RAM, buses and lifecycle.
pub struct Vm {
    pub kvm: Kvm,
    pub fd: Arc<VmFd>,
    pub ram: GuestRam,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub lifecycle: Arc<Lifecycle>,
    /// `--device vfio=` functions, shut down after the guest.
    pub passthrough: crate::vfio::Passthrough,
    pub exits: Arc<ExitCounters>,
    pub pause: Arc<PauseControl>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("ram", &self.ram)
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .field("passthrough", &self.passthrough)
            .field("lifecycle", &self.lifecycle)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Creates the VM, its interrupt controllers, PIT and RAM.
    pub fn new(memory: MemoryConfig) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let fd = kvm
            .create_vm()
            .map_err(|e| VmError::KvmCall("CREATE_VM", e))?;
        fd.set_tss_address(const { layout::addr32(layout::KVM_TSS_ADDR) } as usize)
            .map_err(|e| VmError::KvmCall("SET_TSS_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::KvmCall("CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::KvmCall("CREATE_PIT2", e))?;
        let ram = GuestRam::new(memory.size, memory.hugepages)?;
        for (slot, region) in (0u32..).zip(ram.mem.iter()) {
            let host = ram
                .mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::NoHostMapping(region.start_addr().0))?;
            let mr = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `ram`, which the
            // VM keeps for as long as the memslot exists (the VM's lifetime).
            unsafe { fd.set_user_memory_region(mr) }
                .map_err(|e| VmError::KvmCall("SET_USER_MEMORY_REGION", e))?;
        }
        Ok(Self {
            kvm,
            fd: Arc::new(fd),
            ram,
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
            lifecycle: Arc::new(Lifecycle::new().map_err(VmError::EventFd)?),
            passthrough: Default::default(),
            exits: Arc::new(ExitCounters::default()),
            pause: Arc::new(PauseControl::default()),
        })
    }

    /// Creates and configures `count` vCPUs; vCPU 0 starts at `boot`.
    pub fn create_vcpus(&self, count: u8, boot: BootEntry) -> Result<Vec<Vcpu>, VmError> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::KvmCall("GET_SUPPORTED_CPUID", e))?;
        regs::write_boot_tables(&self.ram.mem, boot.mode)?;
        let shared = VcpuShared {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            lifecycle: self.lifecycle.clone(),
            exits: self.exits.clone(),
            pause: self.pause.clone(),
        };
        (0..count)
            .map(|id| {
                let fd = self
                    .fd
                    .create_vcpu(u64::from(id))
                    .map_err(|e| VmError::KvmCall("CREATE_VCPU", e))?;
                let entry = (id == 0).then_some(boot);
                Ok(Vcpu::new(id, count, fd, &cpuid, entry, shared.clone())?)
            })
            .collect()
    }

    /// The VM's device manager: what creates and wires its devices.
    pub fn devices(&self) -> DeviceManager<'_> {
        DeviceManager {
            fd: &self.fd,
            ram: &self.ram,
            pio: &self.pio,
            mmio: &self.mmio,
            lifecycle: &self.lifecycle,
            passthrough: &self.passthrough,
        }
    }
}

fn console_sink(mode: &SerialMode) -> Result<Option<Box<dyn Write + Send>>, VmError> {
    Ok(match mode {
        SerialMode::Stdio => Some(Box::new(std::io::stdout())),
        SerialMode::Off => None,
        SerialMode::File(p) => {
            Some(Box::new(File::create(p).map_err(|e| {
                VmError::SerialFile(p.display().to_string(), e)
            })?))
        }
    })
}

/// Boots the configured guest and runs it to its end.
pub fn run(cfg: &VmConfig) -> Result<Outcome, VmError> {
    let started = Instant::now();
    // Before anything starts: a busy API socket is an operator error.
    let api = cfg.api_socket.as_deref().map(ApiServer::bind).transpose()?;
    pause::install_kick_handler()?;
    let vm = Vm::new(cfg.memory)?;
    let serial = vm
        .devices()
        .add_platform_devices(console_sink(&cfg.serial)?)?;
    let devices = vm.devices().add_pci_devices(cfg)?;
    let spec = BootSpec {
        kernel: &cfg.kernel,
        initramfs: cfg.initramfs.as_deref(),
        cmdline: &cfg.cmdline,
        cpus: cfg.cpus,
    };
    let entry = boot::load(&vm.ram, &spec)?;
    log::info!("kernel entry {:#x} ({:?})", entry.rip, entry.mode);
    let vcpus = vm.create_vcpus(cfg.cpus, entry)?;
    let backends = Backends::new(
        devices
            .iter()
            .map(|d| Watched::new(d.id.clone(), d.backend.clone(), d.transport.clone()))
            .collect(),
        TOKEN_BACKENDS,
    );
    let control = VmController::new(
        vm.fd.clone(),
        vm.pause.clone(),
        vm.exits.clone(),
        vm.lifecycle.clone(),
        devices,
        cfg.vfio.iter().map(|d| d.bdf.to_string()).collect(),
        cfg.cpus,
        cfg.memory.size,
    );
    // Everything is open: close the filesystem before the vCPU threads
    // start (they inherit the Landlock domain).
    crate::landlock::install(cfg)?;
    let mut handles = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        handles.push(vcpu.spawn()?);
    }
    vm.pause.adopt_threads(handles);
    // Everything is built and running: confine every thread from here on.
    crate::seccomp::install(cfg.seccomp)?;
    let sources = Sources {
        serial: (cfg.serial == SerialMode::Stdio).then_some(serial),
        api: api.map(|s| (s, &control as &dyn crate::api::routes::VmControl)),
        backends,
    };
    let ended = event_loop::run(&vm.lifecycle, sources);
    vm.passthrough.shutdown();
    ended?;
    let outcome = vm.lifecycle.outcome().unwrap_or(Outcome {
        code: 1,
        message: "VM stopped without a reason".into(),
    });
    log::info!("{}", control.exit_report());
    log::info!(
        "{} after {:.2}s; peak RSS {} KiB",
        outcome.message,
        started.elapsed().as_secs_f64(),
        peak_rss_kib()
    );
    // vCPU threads still blocked in KVM_RUN end with the process.
    Ok(outcome)
}

/// The process's peak resident set size.
pub fn peak_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer, which is valid
    // for the struct's size; the result is only read on success.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return -1;
    }
    // SAFETY: getrusage succeeded and initialized the struct.
    unsafe { usage.assume_init() }.ru_maxrss
}

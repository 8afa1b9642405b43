//! The VM's configuration: parsing the command line's values (sizes,
//! `key=value` device lists) and validating them before anything starts.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid size `{0}` (examples: 512M, 2G, 1048576)")]
    Size(String),
    #[error("invalid --memory `{0}`: {1}")]
    Memory(String, String),
    #[error("invalid {what} `{spec}`: {why}")]
    Device {
        what: &'static str,
        spec: String,
        why: String,
    },
    #[error("--cpus {0}: must be between 1 and {MAX_CPUS}")]
    Cpus(u32),
    #[error("invalid --serial `{0}` (stdio, off or file=PATH)")]
    Serial(String),
    #[error("{what} {path}: {why}")]
    Path {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
}

/// Most vCPUs the MP table in base memory can describe.
pub const MAX_CPUS: u32 = 32;
/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    pub size: u64,
    pub hugepages: bool,
}

/// A vhost-user-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub socket: PathBuf,
    pub num_queues: u16,
    pub queue_size: u16,
}

/// A vhost-user-net NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub socket: PathBuf,
    pub mac: Option<[u8; 6]>,
    pub num_queue_pairs: u16,
    pub queue_size: u16,
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    File(PathBuf),
    Off,
}

/// Everything a VM run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u8,
    pub memory: MemoryConfig,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    /// `--device vfio=BDF[,mac=MAC][,vlan=ID][,msix=off]` passthrough functions.
    pub vfio: Vec<vfio_passthrough::session::DeviceSpec>,
    pub serial: SerialMode,
    pub api_socket: Option<PathBuf>,
    /// The seccomp filter installed once the VM runs.
    pub seccomp: crate::seccomp::SeccompMode,
}

/// Parses `512M`, `2G`, `64K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::Size(s.to_string());
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift)
        .filter(|v| *v > 0)
        .ok_or_else(err)
}

/// Splits `a=1,b=2` into pairs; a bare first item is an error.
fn pairs(spec: &str) -> Result<Vec<(&str, &str)>, String> {
    spec.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .ok_or_else(|| format!("`{p}` is not key=value"))
        })
        .collect()
}

/// Parses `--memory SIZE[,hugepages=on|off]`.
pub fn parse_memory(spec: &str) -> Result<MemoryConfig, ConfigError> {
    let merr = |why: String| ConfigError::Memory(spec.to_string(), why);
    let (size, rest) = spec.split_once(',').unwrap_or((spec, ""));
    let size = parse_size(size)?;
    let mut hugepages = false;
    for (k, v) in pairs(rest).map_err(merr)? {
        match (k, v) {
            ("hugepages", "on") => hugepages = true,
            ("hugepages", "off") => hugepages = false,
            _ => return Err(merr(format!("unknown option `{k}={v}`"))),
        }
    }
    Ok(MemoryConfig { size, hugepages })
}

fn parse_u16(what: &str, v: &str, min: u16) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| format!("{what}={v} is not a number >= {min}"))
}

fn parse_queue_size(v: &str) -> Result<u16, String> {
    let n = parse_u16("queue_size", v, 2)?;
    if n.is_power_of_two() && n <= 32768 {
        Ok(n)
    } else {
        Err(format!("queue_size={v} must be a power of two up to 32768"))
    }
}

/// Parses `--disk socket=PATH[,num_queues=N][,queue_size=N]`.
pub fn parse_disk(spec: &str) -> Result<DiskConfig, ConfigError> {
    let derr = |why: String| ConfigError::Device {
        what: "--disk",
        spec: spec.into(),
        why,
    };
    let mut disk = DiskConfig {
        socket: PathBuf::new(),
        num_queues: 1,
        queue_size: 256,
    };
    for (k, v) in pairs(spec).map_err(derr)? {
        match k {
            "socket" => disk.socket = PathBuf::from(v),
            "num_queues" => disk.num_queues = parse_u16(k, v, 1).map_err(derr)?,
            "queue_size" => disk.queue_size = parse_queue_size(v).map_err(derr)?,
            _ => return Err(derr(format!("unknown option `{k}`"))),
        }
    }
    if disk.socket.as_os_str().is_empty() {
        return Err(derr("socket=PATH is required".into()));
    }
    Ok(disk)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses `--net socket=PATH[,mac=MAC][,num_queue_pairs=N][,queue_size=N]`.
pub fn parse_net(spec: &str) -> Result<NetConfig, ConfigError> {
    let nerr = |why: String| ConfigError::Device {
        what: "--net",
        spec: spec.into(),
        why,
    };
    let mut net = NetConfig {
        socket: PathBuf::new(),
        mac: None,
        num_queue_pairs: 1,
        queue_size: 256,
    };
    for (k, v) in pairs(spec).map_err(nerr)? {
        match k {
            "socket" => net.socket = PathBuf::from(v),
            "mac" => net.mac = Some(parse_mac(v).ok_or_else(|| nerr(format!("bad mac `{v}`")))?),
            "num_queue_pairs" => net.num_queue_pairs = parse_u16(k, v, 1).map_err(nerr)?,
            "queue_size" => net.queue_size = parse_queue_size(v).map_err(nerr)?,
            _ => return Err(nerr(format!("unknown option `{k}`"))),
        }
    }
    if net.socket.as_os_str().is_empty() {
        return Err(nerr("socket=PATH is required".into()));
    }
    Ok(net)
}

/// Parses `--device vfio=BDF[,mac=MAC][,vlan=ID][,msix=off]`.
pub fn parse_device(spec: &str) -> Result<vfio_passthrough::session::DeviceSpec, ConfigError> {
    let derr = |why: String| ConfigError::Device {
        what: "--device",
        spec: spec.into(),
        why,
    };
    let mut dev = vfio_passthrough::session::DeviceSpec {
        bdf: String::new(),
        mac: None,
        vlan: None,
        msix: true,
    };
    for (k, v) in pairs(spec).map_err(derr)? {
        match k {
            "vfio" => {
                dev.bdf =
                    vfio_passthrough::group::normalize_bdf(v).map_err(|e| derr(e.to_string()))?
            }
            "mac" => match parse_mac(v) {
                Some(m) if m[0] & 1 == 0 && m != [0; 6] => dev.mac = Some(m),
                _ => return Err(derr(format!("mac={v} is not a unicast MAC"))),
            },
            "vlan" => match v.parse::<u16>() {
                Ok(id) if id < 4095 => dev.vlan = Some(id),
                _ => return Err(derr(format!("vlan={v} is not a VLAN id (0-4094)"))),
            },
            "msix" => match v {
                "on" => dev.msix = true,
                "off" => dev.msix = false,
                _ => return Err(derr(format!("msix={v}: use on or off"))),
            },
            _ => return Err(derr(format!("unknown option `{k}`"))),
        }
    }
    if dev.bdf.is_empty() {
        return Err(derr("vfio=BDF is required".into()));
    }
    Ok(dev)
}

/// Parses `--serial stdio|off|file=PATH`.
pub fn parse_serial(spec: &str) -> Result<SerialMode, ConfigError> {
    match spec {
        "stdio" => Ok(SerialMode::Stdio),
        "off" => Ok(SerialMode::Off),
        _ => match spec.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(SerialMode::File(PathBuf::from(p))),
            _ => Err(ConfigError::Serial(spec.into())),
        },
    }
}

/// Checks `--cpus`.
pub fn check_cpus(n: u32) -> Result<u8, ConfigError> {
    match u8::try_from(n) {
        Ok(cpus) if (1..=MAX_CPUS).contains(&n) => Ok(cpus),
        _ => Err(ConfigError::Cpus(n)),
    }
}

fn readable_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let perr = |why: String| ConfigError::Path {
        what,
        path: path.into(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| perr(e.to_string()))?;
    if !meta.is_file() {
        return Err(perr("is not a regular file".into()));
    }
    std::fs::File::open(path).map_err(|e| perr(e.to_string()))?;
    if meta.len() == 0 {
        return Err(perr("is empty".into()));
    }
    Ok(())
}

fn socket_path(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let perr = |why: String| ConfigError::Path {
        what,
        path: path.into(),
        why,
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| perr(format!("{e} (is the vhost-user backend running?)")))?;
    if !meta.file_type().is_socket() {
        return Err(perr("is not a unix socket".into()));
    }
    Ok(())
}

impl VmConfig {
    /// Checks that every file and socket the VM needs is there, before
    /// anything is started.
    pub fn validate(&self) -> Result<(), ConfigError> {
        readable_file("kernel", &self.kernel)?;
        if let Some(p) = &self.initramfs {
            readable_file("initramfs", p)?;
        }
        for d in &self.disks {
            socket_path("disk socket", &d.socket)?;
        }
        for n in &self.nets {
            socket_path("net socket", &n.socket)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "M", "0", "-1M", "1T", "99999999999999999999G", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_with_hugepages() {
        assert_eq!(
            parse_memory("1G,hugepages=on"),
            Ok(MemoryConfig {
                size: 1 << 30,
                hugepages: true
            })
        );
        assert!(!parse_memory("512M").unwrap().hugepages);
        assert!(parse_memory("512M,huge=on").is_err());
        assert!(parse_memory("512M,hugepages").is_err());
    }

    #[test]
    fn disks_and_nets() {
        let d = parse_disk("socket=/tmp/b.sock,num_queues=2,queue_size=128").unwrap();
        assert_eq!((d.num_queues, d.queue_size), (2, 128));
        assert_eq!(d.socket, PathBuf::from("/tmp/b.sock"));
        assert!(parse_disk("num_queues=2").is_err());
        assert!(parse_disk("socket=/x,queue_size=100").is_err());
        assert!(parse_disk("socket=/x,num_queues=0").is_err());
        assert!(parse_disk("socket=/x,bogus=1").is_err());
        let n = parse_net("socket=/n,mac=52:54:00:12:34:56,num_queue_pairs=2").unwrap();
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(n.num_queue_pairs, 2);
        assert!(parse_net("socket=/n,mac=52:54:00:12:34").is_err());
        assert!(parse_net("socket=/n,mac=52:54:00:12:34:zz").is_err());
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
    }

    #[test]
    fn vfio_devices() {
        let d = parse_device("vfio=0000:01:10.0,mac=02:00:00:00:0a:01,vlan=100").unwrap();
        assert!(d.msix);
        assert!(!parse_device("vfio=01:00.0,msix=off").unwrap().msix);
        assert!(parse_device("vfio=01:00.0,msix=no").is_err());
        assert_eq!(d.bdf, "0000:01:10.0");
        assert_eq!(d.mac, Some([2, 0, 0, 0, 0x0a, 1]));
        assert_eq!(d.vlan, Some(100));
        assert_eq!(parse_device("vfio=01:00.0").unwrap().bdf, "0000:01:00.0");
        for bad in [
            "mac=02:00:00:00:00:01",
            "vfio=1:0.0",
            "vfio=0000:01:10.0,mac=01:00:5e:00:00:01",
            "vfio=0000:01:10.0,vlan=4095",
            "vfio=0000:01:10.0,vlan=-1",
            "vfio=0000:01:10.0,rom=off",
            "vfio",
        ] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_and_cpus() {
        assert_eq!(parse_serial("stdio"), Ok(SerialMode::Stdio));
        assert_eq!(parse_serial("off"), Ok(SerialMode::Off));
        assert_eq!(
            parse_serial("file=/tmp/c"),
            Ok(SerialMode::File("/tmp/c".into()))
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("tty").is_err());
        assert_eq!(check_cpus(2), Ok(2));
        assert!(check_cpus(0).is_err());
        assert!(check_cpus(MAX_CPUS + 1).is_err());
    }

    /// A configuration with nothing but a kernel path (for other modules' tests).
    pub(crate) fn minimal() -> VmConfig {
        VmConfig {
            kernel: "/nonexistent/vmlinuz".into(),
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.into(),
            cpus: 1,
            memory: MemoryConfig {
                size: 256 << 20,
                hugepages: false,
            },
            disks: vec![],
            nets: vec![],
            vfio: vec![],
            serial: SerialMode::Stdio,
            api_socket: None,
            seccomp: Default::default(),
        }
    }

    #[test]
    fn validation_names_the_missing_file() {
        let cfg = VmConfig {
            kernel: "/nonexistent/vmlinuz".into(),
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.into(),
            cpus: 1,
            memory: MemoryConfig {
                size: 256 << 20,
                hugepages: false,
            },
            disks: vec![],
            nets: vec![],
            vfio: vec![],
            serial: SerialMode::Stdio,
            api_socket: None,
            seccomp: Default::default(),
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("kernel /nonexistent/vmlinuz"), "{err}");
        let mut cfg = cfg;
        cfg.kernel = "/proc/self/exe".into();
        cfg.disks = vec![parse_disk("socket=/nonexistent.sock").unwrap()];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("backend running"), "{err}");
    }
}

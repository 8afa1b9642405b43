//! Validation of the command line into a [`Config`]: every operator mistake
//! is caught here, before any TAP or socket is touched.

use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use thiserror::Error;

use crate::cli::Args;
use vhost_user_daemon::cli::CliError;
pub use vhost_user_daemon::listen::Listen;

/// Largest number of queue pairs: two vrings each, and the worker mask of
/// vhost-user-backend is a u64.
pub const MAX_QUEUE_PAIRS: u32 = 16;
/// Largest split virtqueue size.
pub const MAX_QUEUE_SIZE: u32 = 32768;

/// An operator error in the arguments.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Socket(#[from] CliError),
    #[error("give exactly one of --tap or --tap-fd")]
    Tap,
    #[error("--tap-fd has {given} fds but --num-queue-pairs is {pairs}")]
    TapFdCount { given: usize, pairs: u32 },
    #[error("invalid tap name {0:?} (1..15 bytes, no '/', ' ' or NUL)")]
    TapName(String),
    #[error("invalid fd {0}")]
    Fd(i32),
    #[error("--mtu {0} outside 68..65535")]
    Mtu(u32),
    #[error("--num-queue-pairs {0} outside 1..{MAX_QUEUE_PAIRS}")]
    QueuePairs(u32),
    #[error("--queue-size {0} is not a power of two in 2..{MAX_QUEUE_SIZE}")]
    QueueSize(u32),
    #[error("invalid --mac {0:?} (want xx:xx:xx:xx:xx:xx, unicast)")]
    Mac(String),
    #[error("invalid --host-ip {0:?} (want a.b.c.d/prefix)")]
    HostIp(String),
    #[error("--poll-us {0} is above 1000000")]
    PollUs(u64),
    #[error("cannot read random bytes for a mac")]
    Random(#[source] std::io::Error),
}

/// Which TAP queues the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSpec {
    Name(String),
    Fds(Vec<RawFd>),
}

/// A validated daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: Listen,
    pub tap: TapSpec,
    pub host_ip: Option<(Ipv4Addr, u8)>,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub num_queue_pairs: u16,
    pub queue_size: u16,
    pub poll_us: u64,
}

/// Parses `xx:xx:xx:xx:xx:xx`; refuses multicast (and broadcast) addresses.
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
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return None;
    }
    Some(mac)
}

/// Formats a MAC the usual way.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random unicast, locally administered MAC.
pub fn random_mac() -> Result<[u8; 6], ConfigError> {
    let mut mac = [0u8; 6];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(ConfigError::Random)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

fn parse_host_ip(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some((addr, prefix))
}

fn valid_tap_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let socket = a.common.listen()?;
        if !(1..=MAX_QUEUE_PAIRS).contains(&a.num_queue_pairs) {
            return Err(ConfigError::QueuePairs(a.num_queue_pairs));
        }
        let tap = match (a.tap, a.tap_fd.is_empty()) {
            (Some(name), true) => {
                if !valid_tap_name(&name) {
                    return Err(ConfigError::TapName(name));
                }
                TapSpec::Name(name)
            }
            (None, false) => {
                if a.tap_fd.len() != a.num_queue_pairs as usize {
                    return Err(ConfigError::TapFdCount {
                        given: a.tap_fd.len(),
                        pairs: a.num_queue_pairs,
                    });
                }
                if let Some(&bad) = a.tap_fd.iter().find(|&&fd| fd < 0) {
                    return Err(ConfigError::Fd(bad));
                }
                TapSpec::Fds(a.tap_fd)
            }
            _ => return Err(ConfigError::Tap),
        };
        let mtu = u16::try_from(a.mtu)
            .ok()
            .filter(|m| *m >= 68)
            .ok_or(ConfigError::Mtu(a.mtu))?;
        let queue_size = u16::try_from(a.queue_size)
            .ok()
            .filter(|q| *q >= 2 && q.is_power_of_two())
            .ok_or(ConfigError::QueueSize(a.queue_size))?;
        let mac = match a.mac {
            Some(s) => parse_mac(&s).ok_or(ConfigError::Mac(s))?,
            None => random_mac()?,
        };
        let host_ip = match a.host_ip {
            Some(s) => Some(parse_host_ip(&s).ok_or(ConfigError::HostIp(s))?),
            None => None,
        };
        if a.poll_us > 1_000_000 {
            return Err(ConfigError::PollUs(a.poll_us));
        }
        Ok(Config {
            socket,
            tap,
            host_ip,
            mac,
            mtu,
            // Bounded by MAX_QUEUE_PAIRS above.
            num_queue_pairs: u16::try_from(a.num_queue_pairs)
                .map_err(|_| ConfigError::QueuePairs(a.num_queue_pairs))?,
            queue_size,
            poll_us: a.poll_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cfg(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["vhost-user-net"];
        v.extend_from_slice(args);
        Config::try_from(Args::try_parse_from(v).expect("clap parse"))
    }

    #[test]
    fn minimal_and_defaults() {
        let c = cfg(&["--socket-path", "/tmp/s", "--tap", "t0"]).unwrap();
        assert_eq!(c.socket, Listen::Path("/tmp/s".into()));
        assert_eq!(c.tap, TapSpec::Name("t0".into()));
        assert_eq!((c.mtu, c.num_queue_pairs, c.queue_size), (1500, 1, 256));
        assert_eq!(c.mac[0] & 0x03, 0x02, "random mac is local unicast");
    }

    #[test]
    fn socket_and_tap_are_exclusive() {
        assert!(matches!(
            cfg(&["--tap", "t0"]),
            Err(ConfigError::Socket(CliError::ListenChoice))
        ));
        assert!(matches!(
            cfg(&["--socket-path", "/s", "--fd", "3", "--tap", "t0"]),
            Err(ConfigError::Socket(CliError::ListenChoice))
        ));
        assert!(matches!(cfg(&["--fd", "3"]), Err(ConfigError::Tap)));
        assert!(matches!(
            cfg(&["--fd", "3", "--tap", "t", "--tap-fd", "4"]),
            Err(ConfigError::Tap)
        ));
    }

    #[test]
    fn tap_fd_count_must_match_pairs() {
        let c = cfg(&["--fd", "3", "--tap-fd", "4,5", "--num-queue-pairs", "2"]).unwrap();
        assert_eq!(c.tap, TapSpec::Fds(vec![4, 5]));
        assert!(matches!(
            cfg(&["--fd", "3", "--tap-fd", "4", "--num-queue-pairs", "2"]),
            Err(ConfigError::TapFdCount { given: 1, pairs: 2 })
        ));
        assert!(matches!(
            cfg(&["--fd=-1", "--tap-fd", "4"]),
            Err(ConfigError::Socket(CliError::BadFd(-1)))
        ));
    }

    #[test]
    fn numeric_bounds() {
        let base = ["--socket-path", "/s", "--tap", "t0"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            cfg(&v)
        };
        assert!(matches!(with(&["--mtu", "67"]), Err(ConfigError::Mtu(67))));
        assert!(matches!(
            with(&["--mtu", "65536"]),
            Err(ConfigError::Mtu(_))
        ));
        assert_eq!(with(&["--mtu", "65535"]).unwrap().mtu, 65535);
        assert!(matches!(
            with(&["--queue-size", "100"]),
            Err(ConfigError::QueueSize(100))
        ));
        assert!(matches!(
            with(&["--queue-size", "65536"]),
            Err(ConfigError::QueueSize(_))
        ));
        assert!(matches!(
            with(&["--num-queue-pairs", "0"]),
            Err(ConfigError::QueuePairs(0))
        ));
        assert!(matches!(
            with(&["--num-queue-pairs", "17"]),
            Err(ConfigError::QueuePairs(17))
        ));
        // A log level is parsed by clap: a usage error, exit code 2.
        let loud = [
            "vhost-user-net",
            "--socket-path",
            "/s",
            "--tap",
            "t0",
            "--log-level",
            "loud",
        ];
        assert!(Args::try_parse_from(loud).is_err());
    }

    #[test]
    fn mac_and_ip_parsing() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(parse_mac("01:00:5e:00:00:01"), None, "multicast");
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:ef:00"), None);
        assert_eq!(parse_mac("5:54:00:ab:cd:ef"), None);
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            "52:54:00:ab:cd:ef"
        );
        assert_eq!(
            parse_host_ip("10.0.0.1/24"),
            Some((Ipv4Addr::new(10, 0, 0, 1), 24))
        );
        assert_eq!(parse_host_ip("10.0.0.1/33"), None);
        assert_eq!(parse_host_ip("10.0.0.1"), None);
        assert!(!valid_tap_name("a/b"));
        assert!(!valid_tap_name("0123456789abcdef"));
        assert!(valid_tap_name("vtap0"));
    }
}

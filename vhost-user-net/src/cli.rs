//! Command-line arguments, as typed by the operator; [`crate::config`]
//! turns them into a validated configuration.

use clap::Parser;
use vhost_user_daemon::cli::CommonArgs;

const EXAMPLE: &str = "\
Example (QEMU as the frontend, 2 queue pairs):
  vhost-user-net --socket-path /tmp/net.sock --tap vtap0 --num-queue-pairs 2 \\
      --host-ip 192.168.100.1/24
  qemu-system-x86_64 ... \\
      -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \\
      -chardev socket,id=c1,path=/tmp/net.sock \\
      -netdev vhost-user,id=n0,chardev=c1,queues=2 \\
      -device virtio-net-pci,netdev=n0,mq=on,mac=52:54:00:12:34:56";

/// vhost-user-net: a virtio-net device backed by a Linux TAP.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-net", version, after_help = EXAMPLE)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Attach to the TAP of this name, or create it (multi_queue when more
    /// than one queue pair).
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,
    /// Already-open TAP queue file descriptors, one per queue pair
    /// (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR); no CAP_NET_ADMIN needed.
    #[arg(long, value_name = "FD[,FD...]", value_delimiter = ',')]
    pub tap_fd: Vec<i32>,
    /// Configure the TAP's host side with this IPv4 address and bring it up.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub host_ip: Option<String>,
    /// Guest MAC address in config space (random locally administered if omitted).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// MTU offered to the guest and set on the TAP (68..65535).
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Number of RX/TX queue pairs (one worker thread each).
    #[arg(long, default_value_t = 1)]
    pub num_queue_pairs: u32,
    /// Maximum size of each virtqueue (power of two).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u32,
    /// Keep polling the rings and the TAP this long after the last work
    /// before sleeping (0 = never poll).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub poll_us: u64,
}

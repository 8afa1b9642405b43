//! virtio-net device semantics, free of any transport.
//!
//! * [`features`]: the feature bits a net device offers and what the header
//!   length is for a given negotiation.
//! * [`header`]: the virtio-net header, parsed from guest bytes and validated
//!   against the acked features before anything reaches a TAP.
//! * [`offload`]: acked guest features → TAP `TUNSETOFFLOAD` flags.
//! * [`mrg`]: how a received frame is spread over several guest buffers with
//!   `VIRTIO_NET_F_MRG_RXBUF`.
//! * [`config`]: the device configuration space layout.
//! * [`ctrl`]: control-queue commands (RX mode, MAC table, queue pairs),
//!   parsed and checked against what was negotiated.
//!
//! Nothing here opens sockets or TAPs; unit tests drive it with plain buffers.

pub mod config;
pub mod ctrl;
pub mod features;
pub mod header;
pub mod mrg;
pub mod offload;

pub use config::NetConfigSpace;
pub use features::{device_features, vnet_hdr_len};
pub use header::{HeaderError, VirtioNetHdr};
pub use mrg::{SpreadError, spread};
pub use offload::tap_offload_flags;

//! virtio-blk: request parsing, validation, config layout and status mapping.

//! virtio-net: header handling and offload mapping.

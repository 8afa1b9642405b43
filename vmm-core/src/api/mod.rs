//! The control API (`--api-socket`): HTTP/JSON over a unix socket, like
//! Cloud Hypervisor's and Firecracker's, served by the VMM's event loop;
//! and the client `viaduct ctl` uses.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;

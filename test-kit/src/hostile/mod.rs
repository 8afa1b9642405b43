//! A hostile vhost-user frontend: hand-built messages (`proto`), one raw
//! connection (`raw`), a catalogue of bad sessions that fit any vhost-user
//! device (`scenarios`, run by [`run_all`]), and full pipes where a
//! notification fd belongs (`full_pipe`). The vhost-user-blk and
//! vhost-user-net hostile_frontend tests run every [`Scenario`] against
//! their daemon and then prove it still serves a well-behaved frontend.

pub mod full_pipe;
pub mod proto;
pub mod raw;
pub mod scenario;
pub mod scenarios;

pub use proto::*;
pub use raw::{MEM, Raw, eventfd, memfd};
pub use scenario::{Expect, Outcome, Scenario, run_all};
pub use scenarios::{scenarios, truncated_memory_then_kick};

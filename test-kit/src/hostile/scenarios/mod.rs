//! The catalogue of hostile sessions that fit any vhost-user device, by
//! what they attack. Each group lists its sessions; [`scenarios`] plays
//! the groups in this order.

mod framing;
mod memory;
mod rings;
mod state;

use super::scenario::Scenario;

pub use state::truncated_memory_then_kick;

/// Every generic hostile session.
pub fn scenarios() -> Vec<Scenario> {
    let mut all = framing::scenarios();
    all.extend(memory::scenarios());
    all.extend(rings::scenarios());
    all.extend(state::scenarios());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_every_session_once() {
        let all = scenarios();
        assert_eq!(all.len(), 49);
        let mut names: Vec<_> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate scenario names");
    }
}

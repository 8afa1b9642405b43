//! The network suite: our vhost-user-net daemon → TAP against DPDK's vhost
//! PMD → net_tap, the raw TAP as the limit and DPDK virtio_user ↔ vhost as
//! the ring-only ceiling, all inside a private network namespace.

pub mod cases;
pub mod driver;
pub mod systems;
pub mod tap;
pub mod testpmd;

use std::path::{Path, PathBuf};

use crate::model::{CaseResult, Role};
use crate::runner::{self, Contender, Progress, Timing};
use systems::Env;

/// Errors of the net suite's setup.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    #[error(transparent)]
    Netns(#[from] viaduct_test_kit::netns::NetnsError),
    #[error("{0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

/// Runs the net suite; notes on the setup are appended to `notes`.
pub fn run(
    quick: bool,
    only: Option<&str>,
    timing: &Timing,
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<CaseResult>, NetError> {
    let work = std::fs::canonicalize(dir)
        .map_err(|e| NetError::Dir(dir.into(), e))?
        .join("net-work");
    std::fs::create_dir_all(&work).map_err(|e| NetError::Dir(work.clone(), e))?;
    viaduct_test_kit::netns::enter_private_netns()?;
    notes.push(
        "All traffic stays in a private network namespace made by the suite (unshare CLONE_NEWNET); \
         frames use a local-experimental ethertype that nothing answers."
            .into(),
    );
    let dpdk_unavailable = match testpmd::setup_hugepages() {
        Ok(did) => {
            notes.push(format!(
                "DPDK 22.11 testpmd (Debian dpdk-dev): hugepages: {did}; each testpmd gets -m 256 \
                 --single-file-segments, forwarding pinned so two DPDK pollers never share a core."
            ));
            None
        }
        Err(e) => {
            notes.push(format!("DPDK systems n/a: {e}"));
            Some(e.to_string())
        }
    };
    notes.push(
        "guest→TAP counts frames the TAP received (its rx counters); TAP→guest frames come from an \
         AF_PACKET flooder thread and are counted at the guest (testpmd RX-packets, or the TAP's tx \
         counter for our driver and the raw TAP, whose readers never drop)."
            .into(),
    );
    let env = Env {
        dir: work,
        dpdk_unavailable,
    };
    let all: Vec<_> = cases::cases(quick)
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.name().contains(o)))
        .collect();
    let mut out = Vec::new();
    for (i, case) in all.iter().enumerate() {
        let progress = Progress {
            suite: "net",
            case_no: i + 1,
            cases: all.len(),
        };
        let t = case.t;
        let env = &env;
        let mut v = Vec::new();
        if !t.gso {
            v.push(Contender::new(
                "viaduct [testpmd virtio_user]",
                Role::Ours,
                move || systems::viaduct_testpmd(env, t, timing),
            ));
        }
        v.push(Contender::new(
            "viaduct [own driver]",
            Role::Ours,
            move || systems::viaduct_own(env, t, timing),
        ));
        v.push(Contender::new(
            "dpdk vhost→net_tap",
            Role::Peer,
            move || systems::dpdk_vhost_tap(env, t, timing),
        ));
        v.push(Contender::new(
            if t.dir == systems::Dir::GuestToTap {
                "raw TAP write"
            } else {
                "raw TAP read"
            },
            Role::Limit,
            move || systems::raw_tap(t, timing),
        ));
        if !t.gso {
            v.push(Contender::new(
                "dpdk virtio_user↔vhost (no TAP)",
                Role::Ceiling,
                move || systems::dpdk_ring_only(env, t, timing),
            ));
        }
        out.push(runner::run_case(
            &case.name(),
            case.unit(),
            v,
            timing,
            &progress,
        ));
    }
    Ok(out)
}

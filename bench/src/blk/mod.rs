//! The block suite: every case runs our daemon (interrupt and polling) and
//! qemu-storage-daemon (main loop and polling iothread) through the same
//! libblkio client, and fio on the same file as the limit.

pub mod cases;
pub mod client;
pub mod fio;
pub mod image;
pub mod systems;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{CaseResult, Role};
use crate::runner::{self, Contender, Progress, RunError, Timing};
use cases::BlkCase;
use systems::{Cache, Server, SystemError};

/// Size of the image every system serves.
pub const IMAGE_BYTES: u64 = 1 << 30;

/// Errors of the block suite's setup.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("{0}: {1}")]
    Dir(PathBuf, std::io::Error),
}

/// Runs the block suite; work files go to `dir`.
pub fn run(
    quick: bool,
    only: Option<&str>,
    timing: &Timing,
    dir: &Path,
) -> Result<Vec<CaseResult>, BlkError> {
    let work = dir.join("blk-work");
    std::fs::create_dir_all(&work).map_err(|e| BlkError::Dir(work.clone(), e))?;
    let img = work.join("disk.img");
    eprintln!(
        "[blk] preparing {} ({} MiB)",
        img.display(),
        IMAGE_BYTES >> 20
    );
    image::ensure(&img, IMAGE_BYTES)?;
    let all: Vec<_> = cases::cases(quick)
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.name().contains(o)))
        .collect();
    let mut out = Vec::new();
    for (i, case) in all.iter().enumerate() {
        if case.cache == Cache::Writeback && !case.null {
            image::warm(&img)?;
        }
        let progress = Progress {
            suite: "blk",
            case_no: i + 1,
            cases: all.len(),
        };
        let contenders = contenders(case, &img, &work, timing);
        out.push(runner::run_case(
            &case.name(),
            "IOPS",
            contenders,
            timing,
            &progress,
        ));
    }
    Ok(out)
}

fn servers(case: &BlkCase) -> Vec<(Server, Role)> {
    if case.null {
        return vec![
            (Server::ViaductNull { poll_us: 0 }, Role::Ours),
            (Server::ViaductNull { poll_us: 50 }, Role::Ours),
            (
                Server::QsdNull {
                    iothread_poll: false,
                },
                Role::Peer,
            ),
            (
                Server::QsdNull {
                    iothread_poll: true,
                },
                Role::Peer,
            ),
        ];
    }
    vec![
        (Server::Viaduct { poll_us: 0 }, Role::Ours),
        (Server::Viaduct { poll_us: 50 }, Role::Ours),
        (
            Server::Qsd {
                iothread_poll: false,
            },
            Role::Peer,
        ),
        (
            Server::Qsd {
                iothread_poll: true,
            },
            Role::Peer,
        ),
    ]
}

fn contenders<'a>(
    case: &'a BlkCase,
    img: &'a Path,
    work: &'a Path,
    timing: &'a Timing,
) -> Vec<Contender<'a>> {
    let mut v: Vec<Contender<'a>> = servers(case)
        .into_iter()
        .map(|(server, role)| {
            Contender::new(server.label(), role, move || {
                one_server_run(server, case, img, work, timing)
            })
        })
        .collect();
    if !case.null {
        v.push(Contender::new("fio io_uring", Role::Limit, move || {
            fio::run(img, case.cache, case.w, timing.warmup, timing.window, work).map_err(|e| {
                match e {
                    fio::FioError::Missing => RunError::Unavailable(e.to_string()),
                    other => RunError::Failed(other.to_string()),
                }
            })
        }));
    }
    v
}

fn one_server_run(
    server: Server,
    case: &BlkCase,
    img: &Path,
    work: &Path,
    timing: &Timing,
) -> Result<crate::model::Measurement, RunError> {
    let running = systems::start(server, img, IMAGE_BYTES, case.cache, case.w.queues, work)
        .map_err(|e| match e {
            SystemError::Missing(_) => RunError::Unavailable(e.to_string()),
            other => RunError::Failed(other.to_string()),
        })?;
    let result = client::run(
        &running.socket,
        case.w,
        timing.warmup,
        timing.window,
        &running.tasks(),
    );
    let tail = running.proc.log_tail();
    running.proc.stop(Duration::from_secs(5));
    let m = result.map_err(|e| RunError::Failed(format!("{e}; server log: {tail}")))?;
    if m.errors > 0 {
        return Err(RunError::Failed(format!("{} requests failed", m.errors)));
    }
    Ok(m)
}

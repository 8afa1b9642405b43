//! Runs the systems of one case interleaved (A B C A B C …, one system at a
//! time on this 2-core box) so slow drift of the machine hits all of them
//! alike, prints a progress line per run, and collects the measurements.

use std::time::Duration;

use crate::model::{CaseResult, Measurement, Role, Status, SystemResult};

/// Why a system produced no measurement.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The system cannot run on this machine (missing package, no
    /// hugepages, ...): reported as n/a with this reason.
    #[error("{0}")]
    Unavailable(String),
    /// The run itself failed.
    #[error("{0}")]
    Failed(String),
}

/// Repetitions and timing of every run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub reps: u32,
    /// Traffic before the measured window (discarded).
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
}

/// One contender of a case: a system and how to run it once.
pub struct Contender<'a> {
    pub system: String,
    pub role: Role,
    pub run: Box<dyn FnMut() -> Result<Measurement, RunError> + 'a>,
}

impl<'a> Contender<'a> {
    pub fn new(
        system: impl Into<String>,
        role: Role,
        run: impl FnMut() -> Result<Measurement, RunError> + 'a,
    ) -> Self {
        Contender {
            system: system.into(),
            role,
            run: Box::new(run),
        }
    }
}

/// Where the progress line counts from.
pub struct Progress {
    pub suite: &'static str,
    pub case_no: usize,
    pub cases: usize,
}

/// Runs every contender `reps` times, interleaved.
pub fn run_case(
    case: &str,
    unit: &str,
    mut contenders: Vec<Contender<'_>>,
    timing: &Timing,
    progress: &Progress,
) -> CaseResult {
    let mut results: Vec<SystemResult> = contenders
        .iter()
        .map(|c| SystemResult {
            system: c.system.clone(),
            role: c.role,
            status: Status::Ok,
            runs: Vec::new(),
        })
        .collect();
    for rep in 0..timing.reps {
        for (c, r) in contenders.iter_mut().zip(results.iter_mut()) {
            if !matches!(r.status, Status::Ok) {
                continue;
            }
            eprintln!(
                "[{} {}/{}] {case} | {} | rep {}/{}",
                progress.suite,
                progress.case_no,
                progress.cases,
                c.system,
                rep + 1,
                timing.reps
            );
            match (c.run)() {
                Ok(m) => r.runs.push(m),
                Err(RunError::Unavailable(why)) => {
                    eprintln!("    n/a: {why}");
                    r.status = Status::NotAvailable(why);
                }
                Err(RunError::Failed(why)) => {
                    eprintln!("    FAILED: {why}");
                    r.status = Status::Failed(why);
                }
            }
        }
    }
    CaseResult {
        case: case.into(),
        unit: unit.into(),
        systems: results,
    }
}

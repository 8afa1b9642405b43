//! The result model shared by both suites: one [`Measurement`] per timed
//! run, grouped per system and case, serialised as-is into the JSON file.

use serde::Serialize;

/// What a system is in a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One of our daemons.
    Ours,
    /// An independent implementation of the same job.
    Peer,
    /// What the host can do without any vhost-user hop (the bound).
    Limit,
    /// Rings only, no backend I/O at all (the vhost-user ceiling).
    Ceiling,
}

/// One timed run of one system on one case.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measurement {
    /// Completed operations (I/Os or frames) per second.
    pub ops_per_s: f64,
    /// Payload bytes per second.
    pub bytes_per_s: f64,
    /// Median per-request latency, when the client measures it.
    pub p50_us: Option<f64>,
    /// 99th percentile per-request latency.
    pub p99_us: Option<f64>,
    /// CPU seconds (user+system) of the daemon process(es) in the window.
    pub server_cpu_s: f64,
    /// CPU seconds of the client (thread or process) in the window.
    pub client_cpu_s: f64,
    /// Length of the measured window in seconds.
    pub secs: f64,
    /// Requests that completed with an error status.
    pub errors: u64,
}

impl Measurement {
    /// Operations per CPU-second (daemon + client), 0 when no CPU was seen.
    pub fn ops_per_cpu_s(&self) -> f64 {
        let cpu = self.server_cpu_s + self.client_cpu_s;
        if cpu > 0.0 {
            self.ops_per_s * self.secs / cpu
        } else {
            0.0
        }
    }
}

/// Whether a system could be measured at all.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Status {
    /// All runs completed.
    Ok,
    /// The system could not run here; the reason says exactly why.
    #[serde(rename = "n/a")]
    NotAvailable(String),
    /// The system started but a run failed: a bug or a broken setup.
    Failed(String),
}

/// All runs of one system on one case.
#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    pub system: String,
    pub role: Role,
    /// Serialised as `"status": "ok" | "n/a" | "failed"` plus `"reason"`.
    #[serde(flatten)]
    pub status: Status,
    pub runs: Vec<Measurement>,
}

/// One case of a suite with every system's runs.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub case: String,
    /// Unit of the headline number: "IOPS", "Mpps" or "Gbit/s".
    pub unit: String,
    pub systems: Vec<SystemResult>,
}

/// A whole suite run.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteResult {
    pub suite: String,
    pub command: String,
    pub quick: bool,
    pub started_unix: u64,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub reps: u32,
    pub warmup_s: f64,
    pub window_s: f64,
    pub notes: Vec<String>,
    pub cases: Vec<CaseResult>,
}

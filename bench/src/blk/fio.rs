//! The block limit: fio with io_uring straight on the image file, same
//! pattern, block size, depth and number of jobs as the vhost-user runs.
//! Its own JSON gives IOPS and latency; CPU comes from /proc over the window.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::blk::client::Workload;
use crate::blk::systems::Cache;
use crate::model::Measurement;
use crate::proc::{self, Task};
use crate::spawn::{self, Proc, SpawnError};

/// Errors running fio.
#[derive(Debug, thiserror::Error)]
pub enum FioError {
    #[error("fio is not installed")]
    Missing,
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("fio output {0}: {1}")]
    Output(String, String),
    #[error("cpu accounting: {0}")]
    Proc(#[from] proc::ProcError),
}

/// Runs fio for `warmup` (ramp) + `window` and returns the window figures.
pub fn run(
    image: &Path,
    cache: Cache,
    w: Workload,
    warmup: Duration,
    window: Duration,
    dir: &Path,
) -> Result<Measurement, FioError> {
    if !spawn::have("fio") {
        return Err(FioError::Missing);
    }
    let rw = match (w.write, w.random) {
        (false, true) => "randread",
        (true, true) => "randwrite",
        (false, false) => "read",
        (true, false) => "write",
    };
    let out = dir.join("fio.json");
    let mut c = Command::new("fio");
    c.arg("--name=limit")
        .arg(format!("--filename={}", image.display()))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={}", w.block))
        .arg(format!("--iodepth={}", w.qd))
        .arg(format!("--numjobs={}", w.queues))
        .arg("--thread")
        .arg("--ioengine=io_uring")
        .arg(format!(
            "--direct={}",
            if cache == Cache::None { 1 } else { 0 }
        ))
        .arg("--invalidate=0")
        .arg(format!("--ramp_time={}ms", warmup.as_millis()))
        .arg(format!("--runtime={}ms", window.as_millis()))
        .args(["--time_based", "--norandommap", "--randrepeat=0"])
        .args(["--group_reporting", "--lat_percentiles=1"])
        .arg("--output-format=json")
        .arg(format!("--output={}", out.display()));
    let started = Instant::now();
    let mut p = Proc::start("fio", c, &dir.join("fio.log"))?;
    let task = [Task::Process(p.pid())];
    // CPU over the middle of the run: after the ramp, before the end.
    let margin = Duration::from_millis(100);
    let a_at = started + warmup + margin;
    let z_at = started + warmup + window.saturating_sub(margin);
    std::thread::sleep(a_at.saturating_duration_since(Instant::now()));
    let a = proc::total_cpu_seconds(&task).unwrap_or(0.0);
    let ta = Instant::now();
    std::thread::sleep(z_at.saturating_duration_since(Instant::now()));
    let z = proc::total_cpu_seconds(&task).unwrap_or(a);
    let sampled = ta.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.check_alive().is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&out)
        .map_err(|e| FioError::Output(out.display().to_string(), e.to_string()))?;
    let mut m = parse(&text, w.write).map_err(|e| FioError::Output(p.log_tail(), e))?;
    let secs = window.as_secs_f64();
    m.secs = secs;
    m.client_cpu_s = if sampled > 0.0 {
        (z - a) * secs / sampled
    } else {
        0.0
    };
    Ok(m)
}

/// Figures from fio's JSON output (one group-reported job).
pub fn parse(text: &str, write: bool) -> Result<Measurement, String> {
    // fio may print notices before the JSON document.
    let start = text.find('{').ok_or("no JSON in fio output")?;
    let v: serde_json::Value = serde_json::from_str(&text[start..]).map_err(|e| e.to_string())?;
    let job = &v["jobs"][0][if write { "write" } else { "read" }];
    let iops = job["iops"].as_f64().ok_or("no iops")?;
    let bw = job["bw_bytes"].as_f64().unwrap_or(0.0);
    let pct = |p: &str| {
        job["lat_ns"]["percentile"][p]
            .as_f64()
            .or_else(|| job["clat_ns"]["percentile"][p].as_f64())
            .map(|ns| ns / 1000.0)
    };
    let errors = v["jobs"][0]["error"].as_u64().unwrap_or(0);
    Ok(Measurement {
        ops_per_s: iops,
        bytes_per_s: bw,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        errors,
        ..Measurement::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json() {
        let text = r#"note: something
{"jobs":[{"error":0,"read":{"iops":1234.5,"bw_bytes":5056512,
 "lat_ns":{"percentile":{"50.000000":20000,"99.000000":80000}}}}]}"#;
        let m = parse(text, false).unwrap();
        assert_eq!(m.ops_per_s, 1234.5);
        assert_eq!(m.p50_us, Some(20.0));
        assert_eq!(m.p99_us, Some(80.0));
        assert!(parse(text, true).is_err());
        assert!(parse("nothing", false).is_err());
    }
}

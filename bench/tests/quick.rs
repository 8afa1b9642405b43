//! Smoke test: `viaduct-bench all --quick` completes and its JSON holds
//! sane numbers (every system that ran has non-zero throughput and CPU,
//! none failed, our systems all ran).

use std::path::{Path, PathBuf};
use std::process::Command;

fn results_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viaduct-bench-quick");
    let _ = std::fs::create_dir_all(&d);
    d
}

fn check_suite(dir: &Path, suite: &str, min_cases: usize) {
    let path = dir.join(format!("{suite}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["suite"], suite);
    assert_eq!(v["quick"], true);
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= min_cases, "{suite}: {} cases", cases.len());
    for c in cases {
        let name = c["case"].as_str().unwrap_or("?");
        for s in c["systems"].as_array().expect("systems") {
            let sys = s["system"].as_str().unwrap_or("?");
            let status = s["status"].as_str().unwrap_or("?");
            assert_ne!(status, "failed", "{name} / {sys}: {}", s["reason"]);
            if s["role"] == "ours" {
                assert_eq!(status, "ok", "{name} / {sys} did not run: {}", s["reason"]);
            }
            if status != "ok" {
                continue;
            }
            let runs = s["runs"].as_array().expect("runs");
            assert!(!runs.is_empty(), "{name} / {sys}: no runs");
            for r in runs {
                let ops = r["ops_per_s"].as_f64().unwrap_or(0.0);
                let bytes = r["bytes_per_s"].as_f64().unwrap_or(0.0);
                let cpu = r["server_cpu_s"].as_f64().unwrap_or(0.0)
                    + r["client_cpu_s"].as_f64().unwrap_or(0.0);
                assert!(ops > 0.0 && ops.is_finite(), "{name} / {sys}: ops {ops}");
                assert!(bytes > 0.0, "{name} / {sys}: bytes {bytes}");
                assert!(cpu > 0.0, "{name} / {sys}: no CPU time accounted");
                assert_eq!(r["errors"].as_u64(), Some(0), "{name} / {sys}: I/O errors");
                if suite == "blk" {
                    let p50 = r["p50_us"].as_f64().unwrap_or(0.0);
                    let p99 = r["p99_us"].as_f64().unwrap_or(0.0);
                    assert!(
                        p50 > 0.0 && p99 >= p50,
                        "{name} / {sys}: p50 {p50} p99 {p99}"
                    );
                }
            }
        }
    }
    assert!(dir.join(format!("{suite}.svg")).is_file());
    assert!(dir.join(format!("{suite}.md")).is_file());
}

#[test]
fn all_quick_completes_with_sane_numbers() {
    let dir = results_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_viaduct-bench"))
        .args(["all", "--quick", "--out"])
        .arg(&dir)
        .output()
        .expect("run viaduct-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "viaduct-bench failed: {}\n{stderr}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("### blk suite") && stdout.contains("### net suite"));
    assert!(stderr.contains("[blk 1/"), "no progress lines");
    check_suite(&dir, "blk", 2);
    check_suite(&dir, "net", 2);
}

//! The markdown table: per case and system the median with min–max,
//! throughput, latency, work per CPU-second, and ratios to the limit and
//! (for our systems) to each peer.

use std::fmt::Write;

use crate::model::{CaseResult, Role, Status, SuiteResult};
use crate::report::{headline_spread, limit_of, median_of};

fn num(unit: &str, v: f64) -> String {
    match unit {
        "IOPS" if v >= 10_000.0 => format!("{:.0}k", v / 1000.0),
        "IOPS" => format!("{v:.0}"),
        _ => format!("{v:.2}"),
    }
}

fn per_cpu(unit: &str, v: f64) -> String {
    match unit {
        "IOPS" => format!("{:.0}k", v / 1000.0),
        _ => format!("{:.2} M", v / 1e6),
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Ours => "ours",
        Role::Peer => "peer",
        Role::Limit => "limit",
        Role::Ceiling => "ceiling",
    }
}

/// One case as a markdown table.
pub fn case_table(c: &CaseResult) -> String {
    let mut s = String::new();
    let per = if c.unit == "IOPS" {
        "IOPS/CPU-s"
    } else {
        "pkts/CPU-s"
    };
    let bw = if c.unit == "IOPS" { "MB/s" } else { "Gbit/s" };
    let _ = writeln!(s, "**{}**\n", c.case);
    let _ = writeln!(
        s,
        "| system | role | {} median (min–max) | {bw} | p50 µs | p99 µs | {per} | × limit | × peers |",
        c.unit
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let limit = limit_of(c).map(|(_, sp)| sp.median);
    for sys in &c.systems {
        let Some(sp) = headline_spread(&c.unit, sys) else {
            let why = match &sys.status {
                Status::NotAvailable(r) => format!("n/a: {r}"),
                Status::Failed(r) => format!("FAILED: {r}"),
                Status::Ok => "no runs".into(),
            };
            let why = why.replace('|', "/").replace('\n', " ");
            let why: String = why.chars().take(160).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {why} | | | | | | |",
                sys.system,
                role(sys.role)
            );
            continue;
        };
        let bwv = if c.unit == "IOPS" {
            median_of(sys, |m| Some(m.bytes_per_s / 1e6)).map(|v| format!("{v:.0}"))
        } else {
            median_of(sys, |m| Some(m.bytes_per_s * 8.0 / 1e9)).map(|v| format!("{v:.2}"))
        };
        let us = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
        let p50 = us(median_of(sys, |m| m.p50_us));
        let p99 = us(median_of(sys, |m| m.p99_us));
        let cpu = median_of(sys, |m| {
            let v = m.ops_per_cpu_s();
            (v > 0.0).then_some(v)
        })
        .map(|v| per_cpu(&c.unit, v))
        .unwrap_or_else(|| "–".into());
        let vs_limit = match limit {
            Some(l) if sys.role != Role::Limit && l > 0.0 => format!("{:.2}", sp.median / l),
            _ => String::new(),
        };
        let vs_peers = if sys.role == Role::Ours {
            c.systems
                .iter()
                .filter(|p| p.role == Role::Peer)
                .filter_map(|p| {
                    headline_spread(&c.unit, p)
                        .filter(|x| x.median > 0.0)
                        .map(|x| format!("{:.2} {}", sp.median / x.median, p.system))
                })
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} ({}–{}) | {} | {p50} | {p99} | {cpu} | {vs_limit} | {vs_peers} |",
            sys.system,
            role(sys.role),
            num(&c.unit, sp.median),
            num(&c.unit, sp.min),
            num(&c.unit, sp.max),
            bwv.unwrap_or_default(),
        );
    }
    s
}

/// A whole suite: header with the command and load, then every case.
pub fn suite_markdown(r: &SuiteResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### {} suite\n", r.suite);
    let _ = writeln!(
        s,
        "Command: `{}` — {} reps per system, {:.1} s warm-up + {:.1} s window per run, systems interleaved. \
         Load average before/after: {} / {}.\n",
        r.command, r.reps, r.warmup_s, r.window_s, r.loadavg_before, r.loadavg_after
    );
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if !r.notes.is_empty() {
        s.push('\n');
    }
    for c in &r.cases {
        s.push_str(&case_table(c));
        s.push('\n');
    }
    s
}

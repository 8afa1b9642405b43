//! Output of a suite: the markdown table, the raw JSON and an SVG chart.

pub mod json;
pub mod svg;
pub mod table;

use crate::model::{CaseResult, Measurement, Status, SystemResult};
use crate::stats::{self, Spread};

/// The headline number of a run in the case's unit.
pub fn headline(unit: &str, m: &Measurement) -> f64 {
    match unit {
        "Mpps" => m.ops_per_s / 1e6,
        "Gbit/s" => m.bytes_per_s * 8.0 / 1e9,
        _ => m.ops_per_s,
    }
}

/// Spread of the headline number over a system's runs (None if it has none).
pub fn headline_spread(unit: &str, s: &SystemResult) -> Option<Spread> {
    if !matches!(s.status, Status::Ok) {
        return None;
    }
    let v: Vec<f64> = s.runs.iter().map(|m| headline(unit, m)).collect();
    stats::spread(&v)
}

/// Median of any per-run figure over a system's runs.
pub fn median_of(s: &SystemResult, f: impl Fn(&Measurement) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = s.runs.iter().filter_map(f).collect();
    stats::spread(&v).map(|x| x.median)
}

/// The limit row of a case, if it ran.
pub fn limit_of(c: &CaseResult) -> Option<(&SystemResult, Spread)> {
    c.systems
        .iter()
        .filter(|s| s.role == crate::model::Role::Limit)
        .find_map(|s| headline_spread(&c.unit, s).map(|sp| (s, sp)))
}

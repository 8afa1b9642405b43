//! A hand-written SVG chart per suite: one group of horizontal bars per
//! case, bar length relative to the case's best system, median labelled,
//! min–max drawn as a whisker.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::model::{Role, SuiteResult};
use crate::report::headline_spread;

/// Errors writing the chart.
#[derive(Debug, thiserror::Error)]
pub enum SvgError {
    #[error("{0}: {1}")]
    Write(PathBuf, std::io::Error),
}

const ROW: f64 = 16.0;
const LABEL_W: f64 = 230.0;
const BAR_W: f64 = 420.0;

fn colour(r: Role) -> &'static str {
    match r {
        Role::Ours => "#2b6cb0",
        Role::Peer => "#dd6b20",
        Role::Limit => "#718096",
        Role::Ceiling => "#38a169",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart as SVG text.
pub fn render(r: &SuiteResult) -> String {
    let mut body = String::new();
    let mut y = 30.0;
    for c in &r.cases {
        let spreads: Vec<_> = c
            .systems
            .iter()
            .map(|s| headline_spread(&c.unit, s))
            .collect();
        let top = spreads
            .iter()
            .flatten()
            .map(|s| s.max)
            .fold(0.0f64, f64::max);
        let _ = writeln!(
            body,
            r#"<text x="4" y="{:.0}" font-weight="bold">{} ({})</text>"#,
            y + 12.0,
            esc(&c.case),
            esc(&c.unit)
        );
        y += ROW + 2.0;
        for (s, sp) in c.systems.iter().zip(&spreads) {
            let _ = writeln!(
                body,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
                LABEL_W - 6.0,
                y + 11.0,
                esc(&s.system)
            );
            match sp {
                Some(sp) if top > 0.0 => {
                    let w = BAR_W * sp.median / top;
                    let (x0, x1) = (
                        LABEL_W + BAR_W * sp.min / top,
                        LABEL_W + BAR_W * sp.max / top,
                    );
                    let _ = writeln!(
                        body,
                        r#"<rect x="{LABEL_W}" y="{:.0}" width="{w:.1}" height="{:.0}" fill="{}"/><line x1="{x0:.1}" x2="{x1:.1}" y1="{:.0}" y2="{:.0}" stroke="black"/><text x="{:.0}" y="{:.0}">{}</text>"#,
                        y + 2.0,
                        ROW - 4.0,
                        colour(s.role),
                        y + ROW / 2.0,
                        y + ROW / 2.0,
                        LABEL_W + w.max(x1 - LABEL_W) + 6.0,
                        y + 11.0,
                        if c.unit == "IOPS" {
                            format!("{:.0}k", sp.median / 1000.0)
                        } else {
                            format!("{:.2}", sp.median)
                        }
                    );
                }
                _ => {
                    let _ = writeln!(
                        body,
                        r#"<text x="{LABEL_W}" y="{:.0}" fill="gray">n/a</text>"#,
                        y + 11.0
                    );
                }
            }
            y += ROW;
        }
        y += 8.0;
    }
    let width = LABEL_W + BAR_W + 90.0;
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="4" y="16" font-size="13" font-weight="bold">viaduct-bench {} — medians, whiskers min–max (blue ours, orange peers, grey limit, green ring-only ceiling)</text>
{body}</svg>
"#,
        y + 10.0,
        esc(&r.suite)
    )
}

/// Writes the chart of `r` to `path`.
pub fn write(path: &Path, r: &SuiteResult) -> Result<(), SvgError> {
    std::fs::write(path, render(r)).map_err(|e| SvgError::Write(path.into(), e))
}

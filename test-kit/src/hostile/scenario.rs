//! What a hostile session is (a name, what it must get back, how it is
//! played), what the daemon did with it, and the run over the whole
//! catalogue with a health check after each.

use std::path::Path;

use super::raw::Raw;
use super::scenarios::scenarios;

/// What the daemon did with a hostile session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It hung up.
    Closed,
    /// It answered a NEED_REPLY with a non-zero (failure) ack.
    Nacked,
    /// It went on answering (input accepted or ignored).
    Served,
}

/// What a scenario must get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nacked or Closed.
    Rejected,
    /// Any outcome; only the daemon's survival matters (the protocol lets
    /// a backend accept this).
    Survives,
}

/// A hostile session: its name, what it must get, how it is played.
#[derive(Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub expect: Expect,
    pub play: fn(&mut Raw) -> Outcome,
}

/// Plays every scenario, calling `healthy` after each (which must prove
/// the daemon alive and serving); returns one report line per scenario and
/// the names whose outcome broke their expectation.
pub fn run_all(socket: &Path, mut healthy: impl FnMut(&str)) -> (Vec<String>, Vec<String>) {
    let mut report = Vec::new();
    let mut broken = Vec::new();
    for sc in scenarios() {
        let mut r = Raw::connect(socket);
        let out = (sc.play)(&mut r);
        drop(r);
        healthy(sc.name);
        let ok = match sc.expect {
            Expect::Rejected => out != Outcome::Served,
            Expect::Survives => true,
        };
        report.push(format!("{:<48} {:?}", sc.name, out));
        if !ok {
            broken.push(format!("{} -> {out:?}", sc.name));
        }
    }
    (report, broken)
}

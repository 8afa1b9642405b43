//! The result protocol guests speak on their serial console.
//!
//! A scenario script prints `VIADUCT-RESULT key=value [key=value...]` lines
//! and ends with `VIADUCT-DONE`. The harness collects every pair; a boot
//! fails with the console's tail when it hangs, panics, or a result is missing.

use std::collections::BTreeMap;

/// Marker that starts a result line.
pub const RESULT_MARKER: &str = "VIADUCT-RESULT";
/// Marker printed when the scenario finished.
pub const DONE_MARKER: &str = "VIADUCT-DONE";

/// What a guest said on its console.
#[derive(Debug, Clone, Default)]
pub struct Console {
    text: String,
}

/// A check on a console's results failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("guest kernel panicked\n--- console tail ---\n{0}")]
    Panic(String),
    #[error("scenario did not finish (no {DONE_MARKER})\n--- console tail ---\n{0}")]
    NotDone(String),
    #[error("result `{key}` missing\n--- console tail ---\n{tail}")]
    Missing { key: String, tail: String },
    #[error("result `{key}` is `{got}`, expected `{want}`\n--- console tail ---\n{tail}")]
    Mismatch {
        key: String,
        got: String,
        want: String,
        tail: String,
    },
}

impl Console {
    pub fn new(text: String) -> Self {
        Self { text }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Every `key=value` pair from result lines; later values win.
    pub fn results(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for line in self.text.lines() {
            let Some(pos) = line.find(RESULT_MARKER) else {
                continue;
            };
            let rest = &line[pos + RESULT_MARKER.len()..];
            for pair in rest.split_whitespace() {
                if let Some((k, v)) = pair.split_once('=') {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
        out
    }

    pub fn finished(&self) -> bool {
        self.text
            .lines()
            .any(|l| l.trim_end().ends_with(DONE_MARKER))
    }

    pub fn panicked(&self) -> bool {
        self.text.contains("Kernel panic - not syncing")
    }

    /// Fails on a panic or an unfinished scenario.
    pub fn check_finished(&self) -> Result<(), ConsoleError> {
        if self.panicked() {
            return Err(ConsoleError::Panic(self.tail(40)));
        }
        if !self.finished() {
            return Err(ConsoleError::NotDone(self.tail(40)));
        }
        Ok(())
    }

    /// The value of a result, or an error with the console tail.
    pub fn get(&self, key: &str) -> Result<String, ConsoleError> {
        self.results()
            .remove(key)
            .ok_or_else(|| ConsoleError::Missing {
                key: key.to_string(),
                tail: self.tail(40),
            })
    }

    /// Checks that a result has the expected value.
    pub fn expect(&self, key: &str, want: &str) -> Result<(), ConsoleError> {
        let got = self.get(key)?;
        if got == want {
            Ok(())
        } else {
            Err(ConsoleError::Mismatch {
                key: key.to_string(),
                got,
                want: want.to_string(),
                tail: self.tail(40),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results_anywhere_on_a_line() {
        let c = Console::new(
            "boot noise\n[l2] VIADUCT-RESULT cpus=2 disk=ok\nVIADUCT-RESULT cpus=3\nVIADUCT-DONE\n"
                .into(),
        );
        let r = c.results();
        assert_eq!(r.get("cpus").map(String::as_str), Some("3"));
        assert_eq!(r.get("disk").map(String::as_str), Some("ok"));
        assert!(c.finished());
        c.check_finished().unwrap();
        c.expect("disk", "ok").unwrap();
        assert!(matches!(
            c.expect("disk", "bad"),
            Err(ConsoleError::Mismatch { .. })
        ));
        assert!(matches!(c.get("nope"), Err(ConsoleError::Missing { .. })));
    }

    #[test]
    fn panic_and_unfinished_are_errors() {
        let c = Console::new("x\nKernel panic - not syncing: VFS\nVIADUCT-DONE\n".into());
        assert!(matches!(c.check_finished(), Err(ConsoleError::Panic(_))));
        let c = Console::new("VIADUCT-RESULT a=1\n".into());
        assert!(matches!(c.check_finished(), Err(ConsoleError::NotDone(_))));
    }

    #[test]
    fn tail_is_bounded() {
        let text: String = (0..100).map(|i| format!("line{i}\n")).collect();
        let c = Console::new(text);
        let t = c.tail(3);
        assert_eq!(t, "line97\nline98\nline99");
    }
}

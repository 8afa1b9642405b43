//! Shell scripts the test hosts run are files under `tests/scripts/`
//! (readable, shellcheckable), included with `include_str!`. What a run
//! varies (tags, paths, counts, the daemon command) is set by a prelude of
//! shell variables and functions written before each script.

use std::fmt::Display;

/// Shell variable assignments and functions that precede a script.
#[derive(Debug, Default, Clone)]
pub struct Prelude(String);

impl Prelude {
    pub fn new() -> Self {
        Self::default()
    }

    /// `NAME='value'`, quoted so the value reaches the script unchanged.
    pub fn var(mut self, name: &str, value: impl Display) -> Self {
        self.0
            .push_str(&format!("{name}={}\n", quote(&value.to_string())));
        self
    }

    /// A function `name` that replaces its shell with `command` (`exec`):
    /// started as `name ... &`, `$!` is the command's own PID, which the
    /// scripts signal and inspect. Only ever start it in the background.
    pub fn exec_function(mut self, name: &str, command: &str) -> Self {
        self.0
            .push_str(&format!("{name}() {{\n  exec {command}\n}}\n"));
        self
    }

    /// The prelude followed by `script`.
    pub fn then(&self, script: &str) -> String {
        format!("{}{script}", self.0)
    }
}

/// `s` in single quotes, with embedded single quotes closed and escaped.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` under `sh` and returns what it printed.
    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{script}\n{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn values_reach_the_script_unchanged() {
        let odd = "it's $HOME `x` \"q\" \\ a  b";
        let s = Prelude::new().var("V", odd).then("printf '%s' \"$V\"");
        assert_eq!(sh(&s), odd);
    }

    #[test]
    fn a_background_exec_function_is_the_command_itself() {
        let s = Prelude::new()
            .exec_function("napper", "sleep 5")
            .then(
                "napper & p=$!
                 for i in $(seq 40); do [ \"$(cat /proc/$p/comm)\" = sleep ] && break; sleep 0.05; done
                 cat /proc/$p/comm; kill $p",
            );
        assert_eq!(sh(&s).trim(), "sleep");
    }
}

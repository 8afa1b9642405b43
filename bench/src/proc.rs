//! CPU accounting from procfs: utime+stime of a process (all its threads,
//! `/proc/<pid>/stat`) or of one thread of ours (`/proc/self/task/<tid>/stat`).

use std::path::PathBuf;

/// Errors reading procfs.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("unexpected format in {0}")]
    Format(PathBuf),
}

/// What to account.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    /// A whole process (every thread it has, including exited ones).
    Process(u32),
    /// One thread of this process.
    OwnThread(i32),
}

impl Task {
    /// The calling thread.
    pub fn current_thread() -> Task {
        // SAFETY: gettid has no preconditions.
        Task::OwnThread(unsafe { libc::gettid() })
    }

    fn stat_path(self) -> PathBuf {
        match self {
            Task::Process(pid) => PathBuf::from(format!("/proc/{pid}/stat")),
            Task::OwnThread(tid) => PathBuf::from(format!("/proc/self/task/{tid}/stat")),
        }
    }
}

/// Clock ticks per second for the stat fields.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Parses utime+stime (fields 14 and 15) of a stat line, in ticks.
pub fn parse_stat(line: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: skip
    // past its last ')'.
    let rest = &line[line.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds used so far by `task`.
pub fn cpu_seconds(task: Task) -> Result<f64, ProcError> {
    let path = task.stat_path();
    let line = std::fs::read_to_string(&path).map_err(|e| ProcError::Read(path.clone(), e))?;
    let ticks = parse_stat(&line).ok_or(ProcError::Format(path))?;
    Ok(ticks as f64 / ticks_per_s())
}

/// Sum of [`cpu_seconds`] over several tasks.
pub fn total_cpu_seconds(tasks: &[Task]) -> Result<f64, ProcError> {
    tasks.iter().map(|t| cpu_seconds(*t)).sum()
}

/// The load average line, for the report's load conditions.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat(line), Some(300));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_thread_burns_cpu() {
        let t = Task::current_thread();
        let a = cpu_seconds(t).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 120 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let b = cpu_seconds(t).unwrap();
        assert!(b - a >= 0.05, "{a} -> {b}");
    }
}

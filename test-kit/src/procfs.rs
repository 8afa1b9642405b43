//! What /proc says about a daemon under test: its open eventfds, the open
//! flags of a file it holds, its seccomp state, and the CPU time of its
//! threads by name.

use std::path::Path;

/// `/proc/{pid}`, or `/proc/self` for None.
fn proc_dir(pid: Option<u32>) -> String {
    pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"))
}

/// How many eventfds process `pid` (None: this process) has open.
pub fn eventfds(pid: Option<u32>) -> usize {
    std::fs::read_dir(format!("{}/fd", proc_dir(pid)))
        .expect("read the fd directory")
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|p| p.to_string_lossy().contains("eventfd"))
                .unwrap_or(false)
        })
        .count()
}

/// Where process `pid` has `path` open, the open flags (from fdinfo).
pub fn open_flags(pid: u32, path: &Path) -> Vec<i32> {
    let want = std::fs::canonicalize(path).expect("canonical path");
    let mut flags = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the fd directory")
        .flatten()
    {
        if std::fs::read_link(e.path()).ok().as_deref() == Some(want.as_path()) {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .expect("read fdinfo");
            let f = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .expect("fdinfo has a flags line")
                .trim();
            flags.push(i32::from_str_radix(f, 8).expect("octal flags"));
        }
    }
    flags
}

/// Process `pid`'s `Seccomp:` and `Seccomp_filters:` status fields.
pub fn seccomp_status(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    (field("Seccomp:"), field("Seccomp_filters:"))
}

/// On-CPU time (ns) of this process's threads named `comm`, from
/// schedstat, and how many there are.
pub fn threads_cpu_ns(comm: &str) -> (u64, usize) {
    let mut total = 0;
    let mut threads = 0;
    for t in std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .flatten()
    {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        threads += 1;
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (total, threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_an_eventfd_this_process_opens() {
        let before = eventfds(None);
        let e = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
        assert!(eventfds(None) > before);
        drop(e);
    }

    #[test]
    fn reads_the_flags_of_an_open_file() {
        let path = std::env::temp_dir().join(format!("kit-flags-{}", std::process::id()));
        let f = std::fs::File::create(&path).expect("create");
        let flags = open_flags(std::process::id(), &path);
        let _ = std::fs::remove_file(&path);
        drop(f);
        assert!(!flags.is_empty());
        assert!(
            flags
                .iter()
                .all(|fl| fl & libc::O_ACCMODE == libc::O_WRONLY)
        );
    }
}

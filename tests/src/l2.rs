//! Scenarios where our own VMM (`viaduct`) runs inside test host B and
//! boots an L2 guest: the L2 initramfs, the L1 script that starts
//! `viaduct`, and the checks on what both printed.
//!
//! L2's serial console is viaduct's stdout, which is L1's console, so L2's
//! `VIADUCT-RESULT` lines reach the harness directly. Each L2 run gets a
//! tag (passed on the kernel command line, which Linux hands to init as an
//! environment variable) that prefixes its result keys.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::binaries::project_binary;
use crate::console::Console;
use crate::host_b::{HostB, L1_BIN_DIR};
use crate::initramfs::Initramfs;
use crate::kernel::GuestKernel;
use crate::selftest::{Report, SelfTestError};

/// Where L1 keeps L2's kernel images and initramfs.
pub const L1_GUEST_DIR: &str = "/opt/viaduct/guest";

/// How viaduct is asked to boot the L2 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Format {
    /// The bzImage through the 64-bit Linux boot protocol.
    BzImage,
    /// The uncompressed vmlinux through its PVH entry.
    Pvh,
}

impl L2Format {
    /// Result-key prefix and file name inside L1.
    pub fn tag(self) -> &'static str {
        match self {
            L2Format::BzImage => "bz",
            L2Format::Pvh => "pvh",
        }
    }
}

/// The L2 scenario: CPUs seen, uptime at init, kernel release.
pub const L2_SCENARIO: &str = r#"
T=${L2TAG:-l2}
result ${T}_cpus=$(nproc) ${T}_online=$(cat /sys/devices/system/cpu/online)
result ${T}_uptime=$(cut -d' ' -f1 /proc/uptime) ${T}_kernel=$(uname -r)
result ${T}_banner=$(dmesg | grep -c 'Linux version')
"#;

/// The L1 script that boots one L2 per format and reports viaduct's status.
pub fn l1_script(formats: &[L2Format], cpus: u32, memory: &str) -> String {
    let mut s = String::from(". /etc/viaduct/lib.sh\n");
    for f in formats {
        let t = f.tag();
        s.push_str(&format!(
            r#"a=$(cut -d' ' -f1 /proc/uptime)
RUST_LOG=info {L1_BIN_DIR}/viaduct --kernel {L1_GUEST_DIR}/{t} --initramfs {L1_GUEST_DIR}/l2.cpio \
  --cmdline 'console=ttyS0 reboot=k panic=-1 quiet L2TAG={t}' --cpus {cpus} --memory {memory} </dev/null
result {t}_exit=$?
b=$(cut -d' ' -f1 /proc/uptime)
result {t}_vmm_secs=$(echo "$a $b" | awk '{{printf "%.2f", $2-$1}}')
"#
        ));
    }
    s
}

/// Peak RSS viaduct logged for its run (the `peak RSS N KiB` log line), in order.
pub fn logged_rss_kib(console: &Console) -> Vec<u64> {
    console
        .text()
        .lines()
        .filter_map(|l| {
            let rest = l.split("peak RSS ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Boots test host B and, inside it, an L2 guest under viaduct per format.
pub fn boot_l2(
    kernel: &GuestKernel,
    work: &Path,
    formats: &[L2Format],
) -> Result<Report, SelfTestError> {
    let start = Instant::now();
    let viaduct = project_binary("viaduct")?;
    let mut l2 = Initramfs::new();
    l2.busybox()?.scenario(L2_SCENARIO);
    let l2_path = work.join("l2.cpio");
    l2.write(&l2_path)?;

    let mut img = HostB::base_initramfs(kernel, &[("viaduct", &viaduct)])?;
    img.host_file(&format!("{L1_GUEST_DIR}/l2.cpio"), &l2_path, 0o644)?;
    for f in formats {
        let src = match f {
            L2Format::BzImage => &kernel.bzimage,
            L2Format::Pvh => &kernel.vmlinux,
        };
        img.host_file(&format!("{L1_GUEST_DIR}/{}", f.tag()), src, 0o644)?;
    }
    img.scenario(&l1_script(formats, 2, "256M"));
    let initrd = work.join("l1.cpio");
    img.write(&initrd)?;

    let run = HostB::new(kernel).boot(
        &initrd,
        Duration::from_secs(300),
        Some(work.join("l1.console")),
    )?;
    if run.timed_out || !run.status.is_some_and(|s| s.success()) {
        return Err(SelfTestError::Guest {
            what: "test host B did not power off cleanly".into(),
            detail: run.describe(),
        });
    }
    let c = &run.console;
    c.check_finished()?;
    let mut facts = vec![format!(
        "L1 booted, ran {} L2 guest(s) under viaduct and powered off in {:.1}s",
        formats.len(),
        run.elapsed.as_secs_f64()
    )];
    let rss = logged_rss_kib(c);
    for (i, f) in formats.iter().enumerate() {
        let t = f.tag();
        c.expect(&format!("{t}_exit"), "0")?;
        c.expect(&format!("{t}_cpus"), "2")?;
        c.expect(&format!("{t}_online"), "0-1")?;
        c.expect(&format!("{t}_kernel"), &kernel.version)?;
        c.expect(&format!("{t}_banner"), "1")?;
        facts.push(format!(
            "{f:?}: L2 saw 2 CPUs, reached init {}s after its kernel started; viaduct ran {}s (L1 clock), peak RSS {} KiB",
            c.get(&format!("{t}_uptime"))?,
            c.get(&format!("{t}_vmm_secs"))?,
            rss.get(i).map_or("?".into(), |r| r.to_string()),
        ));
    }
    Ok(Report {
        name: "viaduct boots L2 in test host B",
        elapsed: start.elapsed(),
        facts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_script_boots_each_format_with_its_tag() {
        let s = l1_script(&[L2Format::BzImage, L2Format::Pvh], 2, "256M");
        assert!(s.contains("--kernel /opt/viaduct/guest/bz "));
        assert!(s.contains("--kernel /opt/viaduct/guest/pvh "));
        assert!(s.contains("L2TAG=pvh' --cpus 2 --memory 256M"));
        assert!(s.contains("result bz_exit=$?"));
    }

    #[test]
    fn rss_lines_are_parsed() {
        let c = Console::new(
            "[x INFO vmm_core::vm] guest powered off after 3.1s; peak RSS 51234 KiB\nnoise\n"
                .into(),
        );
        assert_eq!(logged_rss_kib(&c), vec![51234]);
    }
}

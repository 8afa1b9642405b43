//! A single-node Ceph cluster for the RBD tests, from Debian's packages
//! (`ceph-mon ceph-osd ceph-mgr ceph-common`, installed by
//! `scripts/install-host-deps.sh`): one monitor, one manager and one OSD
//! with BlueStore in a 2 GiB sparse file, on 127.0.0.1 only (msgr2, free
//! ports), `auth ... = none`, pool size 1, in a scratch directory; a pool
//! `rbd` with one 256 MiB image `img`. Every daemon runs in the foreground
//! as our child and is stopped (SIGTERM, then SIGKILL) on drop, and the
//! directory removed. Start-up is about 11 s, most of it the pool's
//! placement groups peering before the first `rbd create` answers.
//!
//! [`Cluster::shared`] hands every test of one binary the same cluster
//! (each test makes its own image), stopped when the last holder drops it.
//! An OSD restarted with [`Cluster::restart_osd`] keeps its data
//! (BlueStore on a file; `memstore` would come back empty).

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Why the cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum CephError {
    /// A Ceph binary is missing.
    #[error("{0} not found: install Ceph with scripts/install-host-deps.sh")]
    Missing(&'static str),
    /// Scratch directory or configuration file.
    #[error("filesystem error on {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A command could not be run.
    #[error("cannot run {0}")]
    Spawn(String, #[source] std::io::Error),
    /// A command failed.
    #[error("{what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// No free port block on loopback.
    #[error("no free ports on 127.0.0.1")]
    Ports,
    /// A daemon exited while starting.
    #[error("{0} exited during start-up; see {1}")]
    Died(&'static str, PathBuf),
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `auth ... required = none`: any client name is accepted.
    None,
    /// cephx, every key (mon., client.admin, osd.0, mgr.x) in one keyring
    /// (DIR/keyring) that ceph.conf names: a wrong client name or key is
    /// refused.
    Cephx,
}

/// A running one-node cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    mon_port: u16,
    mon: Option<Child>,
    mgr: Option<Child>,
    osd: Mutex<Option<Child>>,
    /// Time from nothing to the image answering `rbd create`.
    pub started_in: Duration,
}

/// The pool every test image lives in.
pub const POOL: &str = "rbd";
/// The image [`Cluster::start`] creates.
pub const IMAGE: &str = "img";
/// Its size.
pub const IMAGE_SIZE: u64 = 256 << 20;

static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

impl Cluster {
    /// The cluster every caller in this process shares while any holds it;
    /// started on first use.
    pub fn shared() -> Result<Arc<Cluster>, CephError> {
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.upgrade() {
            return Ok(c);
        }
        let c = Arc::new(Cluster::start("shared")?);
        *slot = Arc::downgrade(&c);
        Ok(c)
    }

    /// A new cluster (no authentication) in a scratch directory tagged `tag`.
    pub fn start(tag: &str) -> Result<Cluster, CephError> {
        Cluster::start_with(tag, Auth::None)
    }

    /// A new cluster with `auth` in a scratch directory tagged `tag`.
    pub fn start_with(tag: &str, auth: Auth) -> Result<Cluster, CephError> {
        for bin in [
            "ceph-mon",
            "ceph-osd",
            "ceph-mgr",
            "ceph",
            "rbd",
            "monmaptool",
            "ceph-authtool",
        ] {
            if !in_path(bin) {
                return Err(CephError::Missing(bin));
            }
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("viaduct-ceph-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| CephError::Io(dir.clone(), e))?;
        let t0 = Instant::now();
        let port = free_port_block(41).ok_or(CephError::Ports)?;
        let fsid = uuid()?;
        let conf = dir.join("ceph.conf");
        let text = config(&dir, &fsid, port, auth);
        std::fs::write(&conf, text).map_err(|e| CephError::Io(conf.clone(), e))?;
        let mut cluster = Cluster {
            dir,
            conf,
            mon_port: port,
            mon: None,
            mgr: None,
            osd: Mutex::new(None),
            started_in: Duration::ZERO,
        };
        if auth == Auth::Cephx {
            cluster.keyring()?;
        }
        cluster.bootstrap(&fsid)?;
        cluster.started_in = t0.elapsed();
        eprintln!(
            "ceph: cluster in {} up in {:.1} s (mon 127.0.0.1:{port})",
            cluster.dir.display(),
            cluster.started_in.as_secs_f64()
        );
        Ok(cluster)
    }

    /// DIR/keyring with a key for every daemon and client.admin.
    fn keyring(&self) -> Result<(), CephError> {
        let keyring = self.dir.join("keyring");
        let entities: [(&str, &[&str]); 4] = [
            ("mon.", &["mon", "allow *"]),
            (
                "client.admin",
                &["mon", "allow *", "osd", "allow *", "mgr", "allow *"],
            ),
            (
                "osd.0",
                &[
                    "mon",
                    "allow profile osd",
                    "osd",
                    "allow *",
                    "mgr",
                    "allow profile osd",
                ],
            ),
            ("mgr.x", &["mon", "allow profile mgr", "osd", "allow *"]),
        ];
        for (i, (name, caps)) in entities.iter().enumerate() {
            let mut cmd = Command::new("ceph-authtool");
            if i == 0 {
                cmd.arg("--create-keyring");
            }
            cmd.arg(&keyring).args(["--gen-key", "-n", name]);
            for cap in caps.chunks(2) {
                cmd.arg("--cap").args(cap);
            }
            run(&mut cmd)?;
        }
        Ok(())
    }

    fn bootstrap(&mut self, fsid: &str) -> Result<(), CephError> {
        let monmap = self.dir.join("monmap");
        let addr = format!("[v2:127.0.0.1:{}]", self.mon_port);
        run(Command::new("monmaptool")
            .args(["--create", "--fsid", fsid, "--addv", "a", &addr])
            .arg(&monmap))?;
        let mut mkfs = self.cmd("ceph-mon");
        mkfs.args(["--mkfs", "-i", "a", "--monmap"]).arg(&monmap);
        let keyring = self.dir.join("keyring");
        if keyring.exists() {
            // cephx: the monitor learns every key from it.
            mkfs.arg("--keyring").arg(&keyring);
        }
        run(&mut mkfs)?;
        self.mon = Some(self.daemon("ceph-mon", &["-i", "a"])?);
        let osd_uuid = uuid()?;
        self.ceph(&["osd", "create", &osd_uuid, "0"])?;
        let osd_dir = self.dir.join("osd.0");
        std::fs::create_dir_all(&osd_dir).map_err(|e| CephError::Io(osd_dir, e))?;
        run(self
            .cmd("ceph-osd")
            .args(["-i", "0", "--mkfs", "--osd-uuid", &osd_uuid]))?;
        self.start_osd()?;
        let mgr_dir = self.dir.join("mgr.x");
        std::fs::create_dir_all(&mgr_dir).map_err(|e| CephError::Io(mgr_dir, e))?;
        self.mgr = Some(self.daemon("ceph-mgr", &["-i", "x"])?);
        self.ceph(&["osd", "pool", "create", POOL, "8"])?;
        self.ceph(&["osd", "pool", "application", "enable", POOL, "rbd"])?;
        self.create_image(IMAGE, IMAGE_SIZE)?;
        Ok(())
    }

    /// The cluster's ceph.conf (what a client passes as `conf=`).
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The monitor's address.
    pub fn mon_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.mon_port)
    }

    /// `ceph ARGS` against this cluster; its stdout.
    pub fn ceph(&self, args: &[&str]) -> Result<String, CephError> {
        run(self.cmd("ceph").args(args))
    }

    /// `rbd ARGS` against this cluster; its stdout.
    pub fn rbd(&self, args: &[&str]) -> Result<String, CephError> {
        run(self.cmd("rbd").args(args))
    }

    /// A new image `name` of `size` bytes in [`POOL`].
    pub fn create_image(&self, name: &str, size: u64) -> Result<(), CephError> {
        let spec = format!("{POOL}/{name}");
        self.rbd(&["create", "--size", &format!("{}K", size >> 10), &spec])
            .map(drop)
    }

    /// `file`'s bytes written into image `name` from offset 0 (`rbd import`
    /// into a new image of the file's size).
    pub fn import(&self, file: &Path, name: &str) -> Result<(), CephError> {
        let spec = format!("{POOL}/{name}");
        let file = file.to_string_lossy();
        self.rbd(&["import", "--no-progress", &file, &spec])
            .map(drop)
    }

    /// The first `len` bytes of image `name` (`rbd export`).
    pub fn export(&self, name: &str, len: usize) -> Result<Vec<u8>, CephError> {
        let out = self.dir.join(format!("export-{name}"));
        let _ = std::fs::remove_file(&out);
        let spec = format!("{POOL}/{name}");
        self.rbd(&["export", "--no-progress", &spec, &out.to_string_lossy()])?;
        let mut data = std::fs::read(&out).map_err(|e| CephError::Io(out.clone(), e))?;
        let _ = std::fs::remove_file(&out);
        data.truncate(len);
        Ok(data)
    }

    /// Stops the OSD (SIGTERM, waits for it to exit) and starts it again;
    /// its data survives (BlueStore on a file).
    pub fn restart_osd(&self) -> Result<(), CephError> {
        {
            let mut osd = self.osd.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(child) = osd.take() {
                stop(child);
            }
        }
        self.start_osd()
    }

    fn start_osd(&self) -> Result<(), CephError> {
        let child = self.daemon("ceph-osd", &["-i", "0"])?;
        *self.osd.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    fn cmd(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("-c").arg(&self.conf);
        c
    }

    /// `bin ARGS -f` in the background, its output in DIR/BIN.out.
    fn daemon(&self, bin: &'static str, args: &[&str]) -> Result<Child, CephError> {
        let out_path = self.dir.join(format!("{bin}.out"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(|e| CephError::Io(out_path.clone(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| CephError::Io(out_path.clone(), e))?;
        let mut child = self
            .cmd(bin)
            .args(args)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| CephError::Spawn(bin.into(), e))?;
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(_)) = child.try_wait() {
            return Err(CephError::Died(bin, out_path));
        }
        Ok(child)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let osd = self.osd.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        for child in [self.mgr.take(), osd, self.mon.take()]
            .into_iter()
            .flatten()
        {
            stop(child);
        }
        if std::env::var_os("VIADUCT_KEEP_CEPH").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGTERM, up to 10 s to exit, then SIGKILL.
fn stop(mut child: Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    // SAFETY: kill(2) on our own child, which has not been reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run(cmd: &mut Command) -> Result<String, CephError> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CephError::Spawn(what.clone(), e))?;
    if !out.status.success() {
        return Err(CephError::Failed {
            what,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn uuid() -> Result<String, CephError> {
    let p = Path::new("/proc/sys/kernel/random/uuid");
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| CephError::Io(p.into(), e))
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
}

/// The first port of `n` consecutive ports that are free on 127.0.0.1
/// now: the monitor takes the first, the OSD and manager bind in the rest.
fn free_port_block(n: u16) -> Option<u16> {
    for _ in 0..64 {
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
        let base = probe.local_addr().ok()?.port();
        drop(probe);
        if base.checked_add(n).is_none() {
            continue;
        }
        let all_free =
            (base..base + n).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
        if all_free {
            return Some(base);
        }
    }
    None
}

/// ceph.conf for a cluster in `dir` whose monitor listens on `port`
/// (msgr2 only), daemons binding in the ports after it.
fn config(dir: &Path, fsid: &str, port: u16, auth: Auth) -> String {
    let d = dir.display();
    let (auth, keyring) = match auth {
        Auth::None => ("none", "/dev/null".to_string()),
        Auth::Cephx => ("cephx", format!("{d}/keyring")),
    };
    format!(
        "[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{port}
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind port min = {min}
ms bind port max = {max}
auth cluster required = {auth}
auth service required = {auth}
auth client required = {auth}
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg autoscale mode = off
run dir = {d}
admin socket = {d}/$name.asok
log file = {d}/$name.log
pid file = {d}/$name.pid
mon data = {d}/$name
osd data = {d}/$name
mgr data = {d}/$name
keyring = {keyring}
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 2147483648
osd memory target = 536870912
bluestore cache autotune = false
bluestore cache size = 67108864
",
        min = port + 1,
        max = port + 40,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_loopback_and_the_port_block() {
        let c = config(Path::new("/x"), "f", 20000, Auth::None);
        assert!(c.contains("mon host = v2:127.0.0.1:20000\n"));
        assert!(c.contains("ms bind port min = 20001\n"));
        assert!(c.contains("ms bind port max = 20040\n"));
        assert!(c.contains("auth client required = none\n"));
        let c = config(Path::new("/x"), "f", 20000, Auth::Cephx);
        assert!(c.contains("auth client required = cephx\n"));
        assert!(c.contains("keyring = /x/keyring\n"));
    }
}

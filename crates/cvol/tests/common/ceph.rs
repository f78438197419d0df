//! A real Ceph cluster for the tests: one monitor and one OSD (memstore) on loopback in a
//! temporary directory, no manager, no authentication, started on first use and killed
//! with the test process (`ceph-mon`, `ceph-osd` and `rbd`, installed by
//! `scripts/test.sh`). Every CLI call is bounded: without a manager some hang.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, random_hex, spawn_tied};

/// A single-node cluster; its daemons are killed and its directory removed when it is
/// dropped.
pub struct Ceph {
    dir: PathBuf,
    conf: PathBuf,
    /// The network namespace it runs in, if not this process's.
    netns: Option<String>,
    daemons: Vec<Child>,
}

/// The cluster this test binary shares, on loopback (started on first use).
pub fn ceph() -> &'static Ceph {
    static CEPH: std::sync::OnceLock<Ceph> = std::sync::OnceLock::new();
    CEPH.get_or_init(|| Ceph::start_at(None, "127.0.0.1"))
}

/// Runs `command` to its end; its stdout, or what it said when it failed.
fn try_run(command: &mut Command) -> Result<String, String> {
    let what = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (./scripts/test.sh installs Ceph)"));
    if !output.status.success() {
        return Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` to its end; its stdout, or a panic with its output.
fn run(mut command: Command) -> String {
    try_run(&mut command).unwrap_or_else(|e| panic!("{e}"))
}

impl Ceph {
    /// Starts a cluster in network namespace `netns` (if any), its monitor and OSD on
    /// `ip`, a private address of a /24 network (or loopback). A cluster that does not
    /// come up is started once more, afresh (new directory, new port): once in CI a
    /// monitor never answered, which a port taken meanwhile by another test's server
    /// would explain.
    pub fn start_at(netns: Option<&str>, ip: &str) -> Self {
        let start = || Self::try_start_at(netns, ip);
        match std::panic::catch_unwind(start) {
            Ok(ceph) => ceph,
            Err(_) => {
                eprintln!("the test Ceph cluster did not come up; starting it once more");
                start()
            }
        }
    }

    fn try_start_at(netns: Option<&str>, ip: &str) -> Self {
        let dir = super::server_dir("ceph");
        for sub in ["mon", "osd", "run"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let port = free_port();
        let fsid = uuid();
        let network = match ip.rsplit_once('.') {
            Some(("127.0.0", _)) => "127.0.0.0/8".to_string(),
            Some((net, _)) => format!("{net}.0/24"),
            None => panic!("an IPv4 address, not {ip}"),
        };
        let conf = dir.join("ceph.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "[global]\n\
                 fsid = {fsid}\n\
                 mon host = v1:{ip}:{port}\n\
                 ms bind msgr2 = false\n\
                 ms bind ipv6 = false\n\
                 public network = {network}\n\
                 cluster network = {network}\n\
                 auth cluster required = none\n\
                 auth service required = none\n\
                 auth client required = none\n\
                 osd pool default size = 1\n\
                 osd pool default min size = 1\n\
                 osd crush chooseleaf type = 0\n\
                 mon allow pool size one = true\n\
                 mon allow pool delete = true\n\
                 mon warn on pool no redundancy = false\n\
                 mon data avail warn = 1\n\
                 mon data avail crit = 1\n\
                 osd objectstore = memstore\n\
                 memstore device bytes = 8589934592\n\
                 run dir = {d}/run\n\
                 log file = {d}/$name.log\n\
                 [mon.a]\n\
                 mon data = {d}/mon\n\
                 public addr = {ip}:{port}\n\
                 [osd.0]\n\
                 osd data = {d}/osd\n\
                 public addr = {ip}\n\
                 cluster addr = {ip}\n"
            ),
        )
        .unwrap();
        let monmap = dir.join("monmap");
        let mut command = Command::new("monmaptool");
        command
            .args(["--create", "--addv", "a"])
            .arg(format!("[v1:{ip}:{port}]"))
            .args(["--fsid", &fsid])
            .arg(&monmap);
        run(command);
        let mut command = Command::new("ceph-mon");
        command
            .args(["--mkfs", "-i", "a", "--monmap"])
            .arg(&monmap)
            .arg("-c")
            .arg(&conf);
        run(command);
        let mut ceph = Self {
            dir,
            conf,
            netns: netns.map(str::to_string),
            daemons: Vec::new(),
        };
        let mon = ceph.daemon("ceph-mon", &["-i", "a"]);
        ceph.daemons.push(mon);
        let osd_uuid = uuid();
        let id = ceph.cli(&["osd", "new", &osd_uuid]).trim().to_string();
        let mut command = ceph.command("ceph-osd");
        command
            .args(["-i", &id, "--mkfs", "--osd-uuid", &osd_uuid, "-c"])
            .arg(&ceph.conf);
        run(command);
        ceph.cli(&["osd", "set-require-min-compat-client", "mimic"]);
        // An OSD started right after its monitor is sometimes refused at boot (EPERM on
        // its first commands) and never comes up: it is started again.
        for attempt in 1.. {
            let mut osd = ceph.daemon("ceph-osd", &["-i", &id]);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if ceph.cli(&["osd", "stat"]).contains("1 up") {
                    ceph.daemons.push(osd);
                    return ceph;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            assert!(
                attempt < 3,
                "the OSD did not come up: {}",
                ceph.log("osd.0")
            );
            let _ = osd.kill();
            let _ = osd.wait();
        }
        unreachable!()
    }

    /// `program`, run in the cluster's network namespace.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, program]);
                command
            }
            None => Command::new(program),
        }
    }

    /// Starts daemon `name` with `args` in the foreground, tied to this process.
    fn daemon(&self, name: &str, args: &[&str]) -> Child {
        let mut command = self.command(name);
        command
            .args(args)
            .arg("-c")
            .arg(&self.conf)
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("{name}.out"))).unwrap());
        spawn_tied(command)
            .unwrap_or_else(|e| panic!("{name}: {e} (./scripts/test.sh installs Ceph)"))
    }

    /// `ceph.conf` of the cluster.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The end of daemon `name`'s log (`mon.a`, `osd.0`).
    pub fn log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        text.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    }

    fn ceph(&self, args: &[&str]) -> Command {
        let mut command = self.command("ceph");
        command
            .arg("-c")
            .arg(&self.conf)
            .args(["--connect-timeout", "30"])
            .args(args);
        command
    }

    /// Runs `ceph ARGS` against the cluster, bounded; its stdout. Tried again for up to
    /// 60 s: the monitor answers EPERM ("problem getting command descriptions") until it
    /// has formed its quorum, and now and then later, on a busy machine. Every command
    /// the tests give is one that may be repeated.
    pub fn cli(&self, args: &[&str]) -> String {
        self.retried(|| self.ceph(args))
    }

    /// Runs `command` until it succeeds, for up to 60 s; its stdout.
    fn retried(&self, command: impl Fn() -> Command) -> String {
        let start = Instant::now();
        loop {
            match try_run(&mut command()) {
                Ok(out) => return out,
                Err(e) if start.elapsed() > Duration::from_secs(60) => {
                    panic!(
                        "{e}\n{}\n{}",
                        self.log("mon.a"),
                        std::fs::read_to_string(self.dir.join("ceph-mon.out")).unwrap_or_default()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn rbd_command(&self, args: &[&str]) -> Command {
        let mut command = self.command("timeout");
        command.args(["60", "rbd", "-c"]).arg(&self.conf).args(args);
        command
    }

    /// Runs `rbd ARGS` against the cluster; its stdout.
    pub fn rbd(&self, args: &[&str]) -> String {
        run(self.rbd_command(args))
    }

    /// Runs `rbd ARGS`, which may fail; its stdout, or what it said when it failed.
    pub fn try_rbd(&self, args: &[&str]) -> Result<String, String> {
        try_run(&mut self.rbd_command(args))
    }

    /// A new RBD pool of its own for a test.
    pub fn new_pool(&self) -> String {
        let pool = format!("cvol-{}", random_hex(4));
        self.cli(&["osd", "pool", "create", &pool, "8"]);
        // Repeatable, like the pool's creation.
        self.retried(|| self.rbd_command(&["pool", "init", &pool]));
        pool
    }

    /// The images of `pool`, as the `rbd` tool lists them.
    pub fn images(&self, pool: &str) -> Vec<String> {
        self.rbd(&["ls", pool])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The bytes of image `pool/image`, read by the `rbd` tool.
    pub fn image_bytes(&self, pool: &str, image: &str) -> Vec<u8> {
        let out = self.dir.join(format!("export-{}", random_hex(8)));
        self.rbd(&[
            "export",
            "--no-progress",
            &format!("{pool}/{image}"),
            out.to_str().unwrap(),
        ]);
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        bytes
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        // The OSD before its monitor.
        for daemon in self.daemons.iter_mut().rev() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

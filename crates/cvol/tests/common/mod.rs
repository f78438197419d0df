//! What the binary's tests share: a datastore in a temporary folder, and a mounted container.
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod ceph;
pub mod garage;
pub mod objects;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `cvol` binary under test, keeping what it reads from NFS shares between runs
/// under the build's scratch directory, not the user's.
pub fn cvol() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cvol"));
    command.env_remove("RUST_LOG").env_remove("CVOL_SHARE").env(
        "CVOL_CACHE_DIR",
        concat!(env!("CARGO_TARGET_TMPDIR"), "/cvol-cache"),
    );
    command
}

pub struct Env {
    pub tmp: tempfile::TempDir,
    /// The share's directory on this machine (for looking at it directly).
    pub share: PathBuf,
    /// How cvol is told where the share is: the directory, or an nfs:// URL serving it.
    pub share_arg: String,
    pub pool: PathBuf,
    /// The `cvol nfs serve` process serving the share, if it is served that way.
    pub server: Option<NfsServe>,
    /// The `cvol provider serve` process serving the pool, if the datastore's provider
    /// is `remote`.
    pub service: Option<ProviderServe>,
    /// Environment every cvol command of this datastore gets.
    pub vars: Vec<(String, String)>,
    /// The object pool's URL, if the pool is an object pool.
    pub object_url: Option<String>,
    /// The key of an object pool whose objects are sealed (compressed and encrypted).
    pub pool_key: Option<[u8; 32]>,
    /// The RBD pool, if the pool is an `rbd` pool in the test cluster.
    pub rbd_pool: Option<String>,
}

impl Env {
    /// Empty share and pool folders.
    pub fn empty() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        std::fs::create_dir_all(&share).unwrap();
        let share_arg = share.display().to_string();
        Self::with_share(tmp, share, share_arg)
    }

    /// A pool folder in `tmp`, and the share at `share`, which cvol is told as `share_arg`.
    fn with_share(tmp: tempfile::TempDir, share: PathBuf, share_arg: String) -> Self {
        let pool = tmp.path().join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        Self {
            tmp,
            share,
            share_arg,
            pool,
            server: None,
            service: None,
            vars: Vec::new(),
            object_url: None,
            pool_key: None,
            rbd_pool: None,
        }
    }

    /// Empty share and pool folders, the share served by nfs-ganesha and reached as an
    /// nfs:// URL.
    pub fn empty_on_nfs() -> Self {
        let ganesha = ganesha();
        let tmp = tempfile::tempdir().unwrap();
        let share = tempfile::Builder::new()
            .prefix("share")
            .tempdir_in(&ganesha.export)
            .unwrap()
            .keep();
        let share_arg = format!(
            "nfs://127.0.0.1:{}{}?mountport={}",
            ganesha.port,
            share.display(),
            ganesha.mount_port
        );
        Self::with_share(tmp, share, share_arg)
    }

    /// Empty share and pool folders, the share served by `cvol nfs serve`.
    pub fn empty_on_cvol_nfs() -> Self {
        let mut env = Self::empty();
        let server = NfsServe::start(&env.share);
        env.share_arg = server.url.clone();
        env.server = Some(server);
        env
    }

    /// A datastore with one file provider `pool`, its share served by `cvol nfs serve`.
    pub fn datastore_on_cvol_nfs() -> Self {
        let env = Self::empty_on_cvol_nfs();
        env.create_datastore();
        env
    }

    /// A datastore with one file provider `pool`, its share on nfs-ganesha.
    pub fn datastore_on_nfs() -> Self {
        let env = Self::empty_on_nfs();
        env.create_datastore();
        env
    }

    /// A datastore with one file provider `pool`.
    pub fn datastore() -> Self {
        let env = Self::empty();
        env.create_datastore();
        env
    }

    /// A datastore with one `rbd` provider `pool` on a pool of its own in the test Ceph
    /// cluster.
    pub fn datastore_on_rbd() -> Self {
        let mut env = Self::empty();
        let ceph = ceph::ceph();
        let pool = ceph.new_pool();
        env.create_datastore_with_settings(
            &format!("pool=rbd:{pool}"),
            &[&format!("pool.conf={}", ceph.conf().display())],
        );
        env.rbd_pool = Some(pool);
        env
    }

    /// A datastore with one `object` provider `pool` on a `file:///` object store.
    pub fn datastore_on_object() -> Self {
        let mut env = Self::empty();
        let url = format!("file://{}", env.pool.display());
        env.create_datastore_with(&format!("pool=object:{url}"));
        env.object_url = Some(url);
        env
    }

    /// A datastore with one `object` provider `pool` in the test S3 server (Garage),
    /// compressed and encrypted with a key file.
    pub fn datastore_on_sealed_s3() -> Self {
        let mut env = Self::empty();
        let garage = garage::garage();
        env.vars.extend(garage.vars());
        env.seal_pool(garage.new_pool_url());
        env
    }

    /// A datastore with one `object` provider `pool` on a `file:///` object store,
    /// compressed and encrypted with a key file.
    pub fn datastore_on_sealed_object() -> Self {
        let mut env = Self::empty();
        let url = format!("file://{}", env.pool.display());
        env.seal_pool(url);
        env
    }

    /// Makes the datastore with an object pool at `url`, compressed and encrypted with a
    /// key file.
    fn seal_pool(&mut self, url: String) {
        let key = [0x5a; 32];
        let key_file = self.tmp.path().join("pool.key");
        write_secret(&key_file, &hex(&key));
        self.create_datastore_with_settings(
            &format!("pool=object:{url}"),
            &[
                "pool.compression=zstd",
                &format!("pool.key_file={}", key_file.display()),
            ],
        );
        self.object_url = Some(url);
        self.pool_key = Some(key);
    }

    /// A datastore with one `object` provider `pool` in the test S3 server (Garage).
    pub fn datastore_on_s3() -> Self {
        let mut env = Self::empty();
        let garage = garage::garage();
        let url = garage.new_pool_url();
        env.vars.extend(garage.vars());
        env.create_datastore_with(&format!("pool=object:{url}"));
        env.object_url = Some(url);
        env
    }

    /// A datastore with one `remote` provider `pool`: a `cvol provider serve` of a file
    /// pool, with a bearer token.
    pub fn datastore_on_remote() -> Self {
        Self::empty().start_service(None)
    }

    /// A datastore with one `remote` provider `pool`: a `cvol provider serve` of an
    /// object pool on a `file:///` store, with a bearer token.
    pub fn datastore_on_remote_object() -> Self {
        let env = Self::empty();
        let spec = format!("object:file://{}", env.pool.display());
        env.start_service(Some(spec))
    }

    /// A datastore with one `remote` provider `pool`: a `cvol provider serve` of an
    /// object pool in the test S3 server, which the service and the host both reach.
    pub fn datastore_on_remote_s3() -> Self {
        let garage = garage::garage();
        let mut env = Self::empty();
        env.vars.extend(garage.vars());
        env.start_service(Some(format!("object:{}", garage.new_pool_url())))
    }

    /// A datastore with one `remote` provider `pool`: a `cvol provider serve` of an
    /// `rbd` pool in the test Ceph cluster. The service and the host both find the
    /// cluster's `ceph.conf` through `CEPH_CONF`, librados' own default.
    pub fn datastore_on_remote_rbd() -> Self {
        let ceph = ceph::ceph();
        let mut env = Self::empty();
        env.vars
            .push(("CEPH_CONF".into(), ceph.conf().display().to_string()));
        let pool = ceph.new_pool();
        env.rbd_pool = Some(pool.clone());
        env.start_service(Some(format!("rbd:{pool}")))
    }

    /// Makes the datastore with a `remote` provider: a service of a file pool in
    /// `self.pool`, or of `spec` (an object pool's `object:URL`, or `rbd:POOL`).
    fn start_service(mut self, spec: Option<String>) -> Self {
        let token = self.tmp.path().join("token");
        write_secret(&token, &format!("{}\n", uuid_like()));
        let object_url = spec
            .as_deref()
            .and_then(|s| s.strip_prefix("object:"))
            .map(str::to_string);
        let spec = spec.unwrap_or_else(|| format!("file:{}", self.pool.display()));
        let mut command = cvol();
        command.envs(self.vars.iter().map(|(k, v)| (k, v)));
        self.service = Some(ProviderServe::start_spec(
            &spec,
            Some(&token),
            "127.0.0.1:0",
            command,
        ));
        self.vars.push((
            "CVOL_PROVIDER_TOKEN_FILE".into(),
            token.display().to_string(),
        ));
        self.object_url = object_url;
        self.create_datastore();
        self
    }

    /// The object pool's objects, read directly (panics for a file pool).
    pub fn pool_objects(&self) -> objects::PoolObjects {
        objects::PoolObjects::open(
            self.object_url.as_deref().expect("an object pool"),
            &self.vars,
        )
    }

    fn create_datastore(&self) {
        let provider = match &self.service {
            Some(service) => format!("pool=remote:{}", service.url),
            None => format!("pool=file:{}", self.pool.display()),
        };
        self.create_datastore_with(&provider);
    }

    pub fn create_datastore_with(&self, provider: &str) {
        self.create_datastore_with_settings(provider, &[]);
    }

    /// A datastore with `provider`, made with provider settings `ID.KEY=VALUE`.
    pub fn create_datastore_with_settings(&self, provider: &str, settings: &[&str]) {
        let mut args = vec![
            "datastore",
            "create",
            "--name",
            "ds1",
            "--provider",
            provider,
        ];
        for setting in settings {
            args.extend(["--setting", setting]);
        }
        self.ok(&args);
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    pub fn run_with_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        self.command()
            .args(args)
            .envs(vars.iter().copied())
            .output()
            .unwrap()
    }

    /// `cvol --share SHARE` with this datastore's environment.
    pub fn command(&self) -> Command {
        let mut command = cvol();
        command
            .arg("--share")
            .arg(&self.share_arg)
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        command
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cvol {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail with one line on stderr; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "cvol {args:?} succeeded");
        assert_eq!(
            stderr.lines().count(),
            1,
            "cvol {args:?}: not one line: {stderr}"
        );
        stderr.trim_end().to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    pub fn volume_file(&self, vm_disk: &str) -> PathBuf {
        self.pool
            .join("volumes")
            .join(self.volume_of(vm_disk))
            .join("data")
    }

    /// Volumes in the pool.
    pub fn volumes(&self) -> usize {
        if let Some(pool) = &self.rbd_pool {
            return ceph::ceph().images(pool).len();
        }
        if !self.is_file_pool() {
            return self.pool_objects().volumes();
        }
        std::fs::read_dir(self.pool.join("volumes"))
            .map(|entries| {
                entries
                    .filter(|e| e.as_ref().unwrap().path().join("data").exists())
                    .count()
            })
            .unwrap_or(0)
    }

    /// True when the pool is a file pool (volumes are files).
    pub fn is_file_pool(&self) -> bool {
        self.object_url.is_none() && self.rbd_pool.is_none()
    }

    /// The volume id of disk `vm_disk`.
    pub fn volume_of(&self, vm_disk: &str) -> String {
        let (vm, disk) = vm_disk.split_once('/').unwrap();
        let disks = self.json(&["disk", "list", vm]);
        disks
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == disk)
            .unwrap()["volume"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The bytes of the volume of disk `vm_disk` as last flushed, read from the pool
    /// directly: a file pool's data file, or an object pool's newest manifest and chunks.
    pub fn volume_bytes(&self, vm_disk: &str) -> Vec<u8> {
        if self.is_file_pool() {
            return std::fs::read(self.volume_file(vm_disk)).unwrap();
        }
        let volume = self.volume_of(vm_disk);
        if let Some(pool) = &self.rbd_pool {
            return ceph::ceph().image_bytes(pool, &volume);
        }
        match self.pool_key {
            None => self.pool_objects().volume_bytes(&volume),
            Some(_) => self.sealed_volume_bytes(&volume),
        }
    }

    /// The bytes of `volume` in a sealed pool, which a test cannot read object by
    /// object: read as of its last flush by cvol's object pool, opened afresh (no cache
    /// shared with the daemon) in a child process of this test binary that has the
    /// pool's environment ([`read_sealed_volume`]).
    fn sealed_volume_bytes(&self, volume: &str) -> Vec<u8> {
        let out = self.tmp.path().join("volume.bin");
        let spec = format!(
            "{}\n{}\n{volume}\n{}",
            self.object_url.as_deref().unwrap(),
            hex(&self.pool_key.unwrap()),
            out.display()
        );
        let run = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "common::read_sealed_volume"])
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env(READ_SEALED, spec)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "reading {volume}: {}",
            String::from_utf8_lossy(&run.stdout)
        );
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        bytes
    }

    /// Every file and directory below the share, with contents.
    pub fn snapshot_share(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![self.share.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path.clone());
                    out.push((path, Vec::new()));
                } else {
                    out.push((path.clone(), std::fs::read(&path).unwrap()));
                }
            }
        }
        out.sort();
        out
    }
}

/// A `cvol mount` process serving a container until dropped.
pub struct Mounted {
    child: Option<Child>,
    pub mnt: PathBuf,
    log: PathBuf,
}

impl Env {
    /// Mounts the datastore at `<tmp>/mnt`, with or without passthrough.
    pub fn mount(&self, passthrough: bool) -> Mounted {
        self.mount_with(if passthrough {
            &[]
        } else {
            &["--no-passthrough"]
        })
    }

    /// Mounts the datastore at `<tmp>/mnt` with extra `cvol mount` arguments.
    pub fn mount_with(&self, extra: &[&str]) -> Mounted {
        self.mount_at("mnt", extra)
    }

    /// Mounts the datastore at `<tmp>/NAME` with extra `cvol mount` arguments.
    pub fn mount_at(&self, name: &str, extra: &[&str]) -> Mounted {
        let mnt = self.tmp.path().join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let log = self
            .tmp
            .path()
            .join(format!("{name}-{}.log", std::process::id()));
        let mut command = self.command();
        command.args(["-v", "mount"]).arg(&mnt).args(extra);
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut mounted = Mounted {
            child: Some(child),
            mnt,
            log,
        };
        mounted.wait_until_mounted();
        mounted
    }
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = format!(" {} ", path.display());
    mounts
        .lines()
        .any(|l| l.contains(&needle) && l.contains(" cvol:"))
}

impl Mounted {
    fn wait_until_mounted(&mut self) {
        let start = Instant::now();
        while !is_mounted(&self.mnt) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cvol mount exited with {status}: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "not mounted after 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A path inside the container.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Kills the daemon with SIGKILL, as a crash would, and detaches its dead mount
    /// (which the kernel keeps until then); returns its log.
    pub fn kill_9(mut self) -> String {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let status = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(status.success(), "umount -l {}", self.mnt.display());
        self.log()
    }

    /// Unmounts with `cvol umount` and waits for the daemon to exit cleanly; returns its log.
    pub fn stop(mut self) -> String {
        self.shut_down();
        self.log()
    }

    fn shut_down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let out = cvol().arg("umount").arg(&self.mnt).output().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "cvol mount exited with {status}: {}",
                    self.log()
                );
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!(
                    "cvol mount did not exit after umount ({:?}): {}",
                    out,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_mounted(&self.mnt));
    }
}

/// A `cvol up` daemon a test started, stopped when the test ends however it ends: a
/// failed assertion must not leave the daemon running and its container mounted.
pub struct Up {
    pub child: Child,
    mnt: PathBuf,
}

impl Up {
    /// Watches `child`, a `cvol up DIR` whose container is at `DIR/mnt`.
    pub fn new(child: Child, dir: &Path) -> Self {
        Self {
            child,
            mnt: dir.join("mnt"),
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = cvol().arg("umount").arg(&self.mnt).output();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(mut child) = self.child.take() {
                let _ = cvol().arg("umount").arg(&self.mnt).output();
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("daemon log:\n{}", self.log());
            }
        } else {
            self.shut_down();
        }
    }
}

/// Runs a tool that must exist and succeed; returns its stdout.
pub fn tool(name: &str, args: &[&str]) -> String {
    let out = tool_output(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a tool that must exist; returns what it did.
pub fn tool_output(name: &str, args: &[&str]) -> Output {
    Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} is needed by this test (./scripts/test.sh installs it): {e}")
    })
}

/// A `cvol nfs serve` process, killed when dropped.
pub struct NfsServe {
    pub child: Child,
    /// The share URL it printed.
    pub url: String,
    pub addr: std::net::SocketAddr,
}

impl NfsServe {
    /// Serves `dir` on a free loopback port.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, "127.0.0.1:0".parse().unwrap())
    }

    /// Serves `dir` on `addr` to cvol hosts, whose root acts as root.
    pub fn start_on(dir: &Path, addr: std::net::SocketAddr) -> Self {
        Self::start_with(dir, addr, &["--no-root-squash"], Stdio::inherit())
    }

    /// Serves `dir` on `addr` with more `cvol nfs serve` arguments, its log to `stderr`.
    pub fn start_with(
        dir: &Path,
        addr: std::net::SocketAddr,
        extra: &[&str],
        stderr: impl Into<Stdio>,
    ) -> Self {
        use std::io::BufRead;
        let mut child = cvol()
            .args(["nfs", "serve", "--listen", &addr.to_string()])
            .args(extra)
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut url = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        let url = url.trim().to_string();
        let addr = url
            .strip_prefix("nfs://")
            .and_then(|rest| rest.strip_suffix('/'))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("cvol nfs serve printed {url:?}"));
        Self { child, url, addr }
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NfsServe {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A random word, for tokens.
pub fn uuid_like() -> String {
    random_hex(16)
}

/// `bytes` random bytes in hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Spawns `command` so that it dies with this test process even if never waited for:
/// from a thread that lives as long as the process, with SIGKILL as its parent-death
/// signal (which follows the spawning thread, not the process).
pub fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (started, spawned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = started.send(command.spawn());
        loop {
            std::thread::park();
        }
    });
    spawned.recv().unwrap()
}

/// A `cvol provider serve` process, killed when dropped.
pub struct ProviderServe {
    pub child: Child,
    /// The URL it printed.
    pub url: String,
    /// What it serves, as --pool takes it.
    pub spec: String,
    pub token_file: Option<PathBuf>,
    /// The environment it was started with, for restarts.
    vars: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl ProviderServe {
    /// Serves the file pool `pool` on a free loopback port.
    pub fn start(pool: &Path, token_file: Option<&Path>) -> Self {
        let spec = format!("file:{}", pool.display());
        Self::start_spec(&spec, token_file, "127.0.0.1:0", cvol())
    }

    /// Serves `pool` on a free loopback port, logging every call to `log`.
    pub fn start_logged(pool: &Path, token_file: Option<&Path>, log: &Path) -> Self {
        let mut command = cvol();
        command
            .arg("-vv")
            .stderr(std::fs::File::create(log).unwrap());
        let spec = format!("file:{}", pool.display());
        Self::start_spec(&spec, token_file, "127.0.0.1:0", command)
    }

    /// Serves the pool `spec` (as --pool takes it) on `addr`, with `command` (a cvol).
    pub fn start_spec(
        spec: &str,
        token_file: Option<&Path>,
        addr: &str,
        mut command: Command,
    ) -> Self {
        use std::io::BufRead;
        let vars = command
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        command.args(["provider", "serve", "--listen", addr, "--pool", spec]);
        if let Some(token) = token_file {
            command.arg("--token-file").arg(token);
        }
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut url = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        let url = url.trim().to_string();
        assert!(
            url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"),
            "cvol provider serve printed {url:?}"
        );
        Self {
            child,
            url,
            spec: spec.to_string(),
            token_file: token_file.map(Path::to_path_buf),
            vars,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> &str {
        self.url.split_once("://").unwrap().1
    }

    /// Kills the service at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills it and starts it again on the same address.
    pub fn restart(&mut self) {
        self.kill();
        let addr = self.addr().to_string();
        let mut command = cvol();
        command.envs(self.vars.iter().map(|(k, v)| (k, v)));
        *self = Self::start_spec(&self.spec, self.token_file.as_deref(), &addr, command);
    }
}

impl Drop for ProviderServe {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One nfs-ganesha server for the whole test binary, exporting a scratch directory on
/// loopback; tests use subdirectories of the export as their shares. Needs rpcbind and
/// nfs-ganesha (./scripts/test.sh installs them); dies with the test process.
pub struct Ganesha {
    pub export: PathBuf,
    pub port: u16,
    pub mount_port: u16,
    /// Killed with this process (see `spawn_tied`).
    _server: Child,
}

pub fn ganesha() -> &'static Ganesha {
    static GANESHA: std::sync::OnceLock<Ganesha> = std::sync::OnceLock::new();
    GANESHA.get_or_init(start_ganesha)
}

/// A TCP port nothing listens on at 127.0.0.1 (right now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A new directory for a server of `kind` that this test process starts, named after the
/// process. Servers shared by a test binary live as long as it and leave their directory
/// behind: those of processes that are gone are removed here.
pub fn server_dir(kind: &str) -> PathBuf {
    let prefix = format!("cvol-{kind}-");
    for entry in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next());
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir()
        .unwrap()
        .keep()
}

fn start_ganesha() -> Ganesha {
    // rpcbind must run first, or ganesha fails with "Cannot register NFS V3 on UDP".
    if std::net::TcpStream::connect("127.0.0.1:111").is_err() {
        let status = Command::new("rpcbind")
            .arg("-w")
            .status()
            .expect("rpcbind is needed (apt-get install rpcbind)");
        assert!(status.success(), "rpcbind failed to start");
    }
    let dir = server_dir("ganesha");
    let export = dir.join("export");
    std::fs::create_dir_all(&export).unwrap();
    let (port, mount_port, nlm, rquota) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.join("ganesha.conf");
    std::fs::write(
        &config,
        format!(
            "NFS_CORE_PARAM {{ Protocols = 3, 4; NFS_Port = {port}; MNT_Port = {mount_port};\n\
             NLM_Port = {nlm}; Rquota_Port = {rquota}; Enable_RQUOTA = false;\n\
             Enable_NLM = false; Bind_addr = 127.0.0.1; }}\n\
             NFSV4 {{ Graceless = true; }}\n\
             EXPORT {{ Export_Id = 1; Path = {path}; Pseudo = /export; Access_Type = RW;\n\
             Squash = No_Root_Squash; SecType = sys; Protocols = 3, 4; Transports = TCP;\n\
             FSAL {{ Name = VFS; }} }}\n",
            path = export.display()
        ),
    )
    .unwrap();
    let mut command = Command::new("ganesha.nfsd");
    command
        .arg("-F")
        .arg("-f")
        .arg(&config)
        .arg("-L")
        .arg(dir.join("ganesha.log"))
        .arg("-p")
        .arg(dir.join("ganesha.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = spawn_tied(command)
        .expect("nfs-ganesha is needed (apt-get install nfs-ganesha nfs-ganesha-vfs)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = std::fs::read_to_string(dir.join("ganesha.log")).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nfs-ganesha did not start:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ganesha {
        export,
        port,
        mount_port,
        _server: child,
    }
}

/// A tmpfs mounted for a test, unmounted when dropped (also when the test fails).
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let dir_arg = dir.to_str().unwrap();
        let out = tool_output(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir_arg,
            ],
        );
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = tool_output("umount", &["-l", self.0.to_str().unwrap()]);
    }
}

/// Opens the existing file `path` to read and write (a disk, as a hypervisor does).
pub fn open_rw(path: impl AsRef<Path>) -> std::fs::File {
    let path = path.as_ref();
    std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Writes a secret (a token) to a new file only its owner can read, as cvol demands.
pub fn write_secret(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Tells [`read_sealed_volume`] what to read: pool URL, key (hex), volume, output file.
const READ_SEALED: &str = "CVOL_TEST_READ_SEALED";

#[test]
#[ignore = "run by Env::volume_bytes in a child process, with the pool's environment"]
fn read_sealed_volume() {
    use cvol_provider::object::{ObjectSettings, PoolKey};
    use cvol_provider::Provider;
    let spec = std::env::var(READ_SEALED).expect("run by Env::volume_bytes");
    let [url, key, volume, out]: [&str; 4] =
        spec.split('\n').collect::<Vec<_>>().try_into().unwrap();
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&key[2 * i..2 * i + 2], 16).unwrap();
    }
    let settings = ObjectSettings {
        key: Some(PoolKey(bytes)),
        ..Default::default()
    };
    let id = cvol_format::ProviderId::new("pool").unwrap();
    let provider = cvol_provider::ObjectProvider::open(&id, url, &settings).unwrap();
    let volume = cvol_format::VolumeId::new(volume).unwrap();
    let device = provider
        .attach_standby(&volume, "test-reader")
        .unwrap()
        .device;
    let mut data = vec![0u8; device.size() as usize];
    device.read_at(&mut data, 0).unwrap();
    std::fs::write(out, data).unwrap();
}

/// `bytes` in lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

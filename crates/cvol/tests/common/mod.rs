//! What the binary's tests share: a datastore in a temporary folder, and a mounted container.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `cvol` binary under test.
pub fn cvol() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cvol"));
    command.env_remove("RUST_LOG").env_remove("CVOL_SHARE");
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
}

impl Env {
    /// Empty share and pool folders.
    pub fn empty() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let pool = tmp.path().join("pool");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::create_dir_all(&pool).unwrap();
        let share_arg = share.display().to_string();
        Self {
            tmp,
            share,
            share_arg,
            pool,
            server: None,
            service: None,
            vars: Vec::new(),
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
        let pool = tmp.path().join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        let share_arg = format!(
            "nfs://127.0.0.1:{}{}?mountport={}",
            ganesha.port,
            share.display(),
            ganesha.mount_port
        );
        Self {
            tmp,
            share,
            share_arg,
            pool,
            server: None,
            service: None,
            vars: Vec::new(),
        }
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

    /// A datastore with one `object` provider `pool` on a `file:///` object store.
    pub fn datastore_on_object() -> Self {
        let env = Self::empty();
        env.create_datastore_with(&format!("pool=object:file://{}", env.pool.display()));
        env
    }

    /// A datastore with one `remote` provider `pool`: a `cvol provider serve` of a file
    /// pool, with a bearer token.
    pub fn datastore_on_remote() -> Self {
        Self::datastore_on_service("file:")
    }

    /// A datastore with one `remote` provider `pool`: a `cvol provider serve` of an
    /// object pool on a `file:///` store, with a bearer token.
    pub fn datastore_on_remote_object() -> Self {
        Self::datastore_on_service("object:file://")
    }

    /// A `remote` provider serving `env.pool` as a pool of `kind` (its spec's prefix).
    fn datastore_on_service(kind: &str) -> Self {
        let mut env = Self::empty();
        let token = env.tmp.path().join("token");
        std::fs::write(&token, format!("{}\n", uuid_like())).unwrap();
        let spec = format!("{kind}{}", env.pool.display());
        env.service = Some(ProviderServe::start_spec(
            &spec,
            Some(&token),
            "127.0.0.1:0",
            cvol(),
        ));
        env.vars.push((
            "CVOL_PROVIDER_TOKEN_FILE".into(),
            token.display().to_string(),
        ));
        env.create_datastore();
        env
    }

    fn create_datastore(&self) {
        let provider = match &self.service {
            Some(service) => format!("pool=remote:{}", service.url),
            None => format!("pool=file:{}", self.pool.display()),
        };
        self.create_datastore_with(&provider);
    }

    fn create_datastore_with(&self, provider: &str) {
        self.ok(&[
            "datastore",
            "create",
            "--name",
            "ds1",
            "--provider",
            provider,
        ]);
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
        let (vm, disk) = vm_disk.split_once('/').unwrap();
        let disks = self.json(&["disk", "list", vm]);
        let disk = disks
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == disk)
            .unwrap();
        self.pool
            .join("volumes")
            .join(disk["volume"].as_str().unwrap())
            .join("data")
    }

    /// Volumes in the pool (a file pool's, or an object pool's on a file:/// store).
    pub fn volumes(&self) -> usize {
        std::fs::read_dir(self.pool.join("volumes"))
            .map(|entries| {
                entries
                    .filter(|e| {
                        let dir = e.as_ref().unwrap().path();
                        dir.join("data").exists() || dir.join("volume.json").exists()
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// True when the pool is a file pool (volumes are files).
    pub fn is_file_pool(&self) -> bool {
        !self.pool.join("pool.json").exists()
    }

    /// The bytes of the volume of disk `vm_disk` as last flushed, read from the pool
    /// directly: a file pool's data file, or an object pool's newest manifest and chunks.
    pub fn volume_bytes(&self, vm_disk: &str) -> Vec<u8> {
        if self.is_file_pool() {
            return std::fs::read(self.volume_file(vm_disk)).unwrap();
        }
        let (vm, disk) = vm_disk.split_once('/').unwrap();
        let disks = self.json(&["disk", "list", vm]);
        let volume = disks
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == disk)
            .unwrap()["volume"]
            .as_str()
            .unwrap()
            .to_string();
        let manifests = self.pool.join("volumes").join(&volume).join("manifests");
        let newest = std::fs::read_dir(&manifests)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap();
        let chunk_size = manifest["chunk_size"].as_u64().unwrap() as usize;
        let size = manifest["size"].as_u64().unwrap() as usize;
        let mut bytes = vec![0u8; size.div_ceil(chunk_size) * chunk_size];
        for (index, key) in manifest["chunks"].as_object().unwrap() {
            let at = index.parse::<usize>().unwrap() * chunk_size;
            let chunk =
                std::fs::read(self.pool.join("chunks").join(key.as_str().unwrap())).unwrap();
            bytes[at..at + chunk_size].copy_from_slice(&chunk);
        }
        bytes.truncate(size);
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

    /// Serves `dir` on `addr`.
    pub fn start_on(dir: &Path, addr: std::net::SocketAddr) -> Self {
        use std::io::BufRead;
        let mut child = cvol()
            .args(["nfs", "serve", "--listen", &addr.to_string()])
            .arg(dir)
            .stdout(Stdio::piped())
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
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `cvol provider serve` process, killed when dropped.
pub struct ProviderServe {
    pub child: Child,
    /// The URL it printed.
    pub url: String,
    /// What it serves, as --pool takes it.
    pub spec: String,
    pub token_file: Option<PathBuf>,
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
            url.starts_with("http://127.0.0.1:"),
            "cvol provider serve printed {url:?}"
        );
        Self {
            child,
            url,
            spec: spec.to_string(),
            token_file: token_file.map(Path::to_path_buf),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> &str {
        self.url.strip_prefix("http://").unwrap()
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
        *self = Self::start_spec(&self.spec, self.token_file.as_deref(), &addr, cvol());
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

fn start_ganesha() -> Ganesha {
    use std::os::unix::process::CommandExt;
    // rpcbind must run first, or ganesha fails with "Cannot register NFS V3 on UDP".
    if std::net::TcpStream::connect("127.0.0.1:111").is_err() {
        let status = Command::new("rpcbind")
            .arg("-w")
            .status()
            .expect("rpcbind is needed (apt-get install rpcbind)");
        assert!(status.success(), "rpcbind failed to start");
    }
    let dir = std::env::temp_dir().join(format!("cvol-ganesha-{}", std::process::id()));
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
    // SAFETY: prctl is async-signal-safe; it makes ganesha die with the thread that
    // started it, which lives as long as this test process.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (started, spawned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = started.send(command.spawn().map(drop));
        loop {
            std::thread::park();
        }
    });
    spawned
        .recv()
        .unwrap()
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
    }
}

//! QEMU for a VM: its command line from the `.vmx`, the child process, and QMP.

use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use cvol_datastore::VmInfo;

/// How QEMU reaches a VM's disks.
#[derive(Debug, Clone, Copy)]
pub enum DiskPaths<'a> {
    /// Through the file system container mounted here (descriptors, `format=vmdk`).
    Container(&'a Path),
    /// The disks' flat extents in the container, as raw images: the host agent's way,
    /// since QEMU's vmdk driver blocks live migration.
    Extents(&'a Path),
    /// Over NBD on this unix socket (`format=raw`).
    Nbd(&'a Path),
    /// Over vhost-user-blk on the sockets under this directory, with guest RAM in
    /// shared memory so that the backend can reach the virtqueues.
    VhostUser(&'a Path),
}

/// The QEMU binary and accelerator to run VMs with.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The QEMU binary.
    pub qemu: String,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
}

/// Whether this process can use KVM (/dev/kvm opens for reading and writing).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The QEMU command line that runs `vm` as its `.vmx` describes it: memory, CPUs, disks
/// in `.vmx` order, and a kernel booted directly where `cvol.kernel` (with
/// `cvol.initrd`, `cvol.cmdline`) names one.
pub fn command(
    vm: &VmInfo,
    options: &QemuOptions,
    disks: DiskPaths,
) -> anyhow::Result<Vec<String>> {
    if vm.vmx_disks.is_empty() {
        bail!("VM {} has no disk in its .vmx to boot from", vm.name);
    }
    let accel = match options.accel.as_str() {
        "auto" if kvm_usable() => "kvm:tcg",
        "auto" => "tcg",
        other => other,
    };
    let memory_mib = vm.memory_mib.unwrap_or(1024);
    let cpus = vm.cpus.unwrap_or(1);
    let shared_memory = matches!(disks, DiskPaths::VhostUser(_));
    let mut cmd = vec![
        options.qemu.clone(),
        "-name".into(),
        vm.name.clone(),
        "-machine".into(),
        if shared_memory {
            format!("q35,accel={accel},memory-backend=mem")
        } else {
            format!("q35,accel={accel}")
        },
        "-m".into(),
        memory_mib.to_string(),
        "-smp".into(),
        cpus.to_string(),
    ];
    if shared_memory {
        cmd.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
        ]);
    }
    for (key, flag) in [
        ("cvol.kernel", "-kernel"),
        ("cvol.initrd", "-initrd"),
        ("cvol.cmdline", "-append"),
    ] {
        if let Some(value) = vm.options.get(key) {
            cmd.extend([flag.to_string(), value.clone()]);
        }
    }
    for (i, file) in vm.vmx_disks.iter().enumerate() {
        let disk = file.strip_suffix(".vmdk").unwrap_or(file);
        if let DiskPaths::VhostUser(dir) = disks {
            let socket = vhost_socket(dir, vm, file);
            // One queue per vCPU, up to what `cvol mount` offers by default.
            cmd.extend([
                "-chardev".into(),
                format!("socket,id=vhost{i},path={}", socket.display()),
                "-device".into(),
                format!(
                    "vhost-user-blk-pci,chardev=vhost{i},num-queues={}",
                    cpus.min(u32::from(cvol_vhost::DEFAULT_QUEUES))
                ),
            ]);
            continue;
        }
        let drive = match disks {
            DiskPaths::Nbd(socket) => format!(
                "file=nbd+unix:///{}/{disk}?socket={},format=raw,if=virtio,cache=none",
                vm.name,
                socket.display()
            ),
            DiskPaths::Container(mnt) => format!(
                "file={},format=vmdk,if=virtio,cache=none",
                mnt.join(&vm.name).join(file).display()
            ),
            DiskPaths::Extents(mnt) => format!(
                "file={},format=raw,if=virtio,cache=none",
                mnt.join(&vm.name)
                    .join(format!("{disk}-flat.vmdk"))
                    .display()
            ),
            DiskPaths::VhostUser(_) => unreachable!("added above"),
        };
        cmd.extend(["-drive".to_string(), drive]);
    }
    Ok(cmd)
}

/// The vhost-user socket under `dir` of `vm`'s disk whose descriptor is `file`.
fn vhost_socket(dir: &Path, vm: &VmInfo, file: &str) -> PathBuf {
    let disk = file.strip_suffix(".vmdk").unwrap_or(file);
    cvol_vhost::socket_path(dir, &format!("{}/{disk}", vm.name))
}

/// Waits up to `timeout` for the vhost-user socket of each of `vm`'s disks under `dir`:
/// the mount daemon adds a new disk's socket on its next rescan.
pub fn wait_for_vhost_sockets(vm: &VmInfo, dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for file in &vm.vmx_disks {
        let socket = vhost_socket(dir, vm, file);
        while !socket.exists() {
            if Instant::now() >= deadline {
                bail!(
                    "no vhost-user socket {} after {} s: is `cvol mount --vhost-user {}` running?",
                    socket.display(),
                    timeout.as_secs(),
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Where one VM's QEMU keeps its files under the agent's state directory.
#[derive(Debug, Clone)]
pub struct VmFiles {
    dir: PathBuf,
}

impl VmFiles {
    /// The files of VM `vm` under `state_dir`.
    pub fn new(state_dir: &Path, vm: &str) -> Self {
        Self {
            dir: state_dir.join("vms").join(vm),
        }
    }

    /// The QMP socket.
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The guest's serial console.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// QEMU's own messages (stderr).
    pub fn log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    /// The last lines of QEMU's messages, for an error.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

/// Starts `cmd` (from [`command`]) with a QMP socket, the serial console in a file and no
/// display. The child gets SIGKILL when the calling thread ends: a VM never outlives
/// the agent whose daemon serves its disks, and whose lease renewals keep it safe.
pub fn spawn(cmd: &[String], files: &VmFiles) -> anyhow::Result<Child> {
    std::fs::create_dir_all(&files.dir)
        .with_context(|| format!("cannot create {}", files.dir.display()))?;
    let _ = std::fs::remove_file(files.qmp());
    let log = std::fs::File::create(files.log())?;
    let mut command = Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", files.qmp().display()))
        .args(["-display", "none", "-serial"])
        .arg(format!("file:{}", files.console().display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl and sigprocmask are async-signal-safe, and touch only the child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent blocks termination signals to wait for them; QEMU must not
            // inherit that.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot run {}", cmd[0]))
}

/// A QMP session with a running QEMU.
pub struct Qmp {
    qmp: qapi::Qmp<qapi::Stream<io::BufReader<UnixStream>, UnixStream>>,
}

impl Qmp {
    /// Connects to the QMP socket at `path` and negotiates capabilities.
    pub fn connect(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("cannot reach QMP at {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let reader = io::BufReader::new(stream.try_clone()?);
        let mut qmp = qapi::Qmp::new(qapi::Stream::new(reader, stream));
        qmp.handshake().map_err(|e| anyhow!("QMP handshake: {e}"))?;
        Ok(Self { qmp })
    }

    /// Waits up to `limit` for QEMU (`child`) to answer on QMP, then checks that the
    /// guest runs (unless it was started `incoming`, waiting for a migration). An early
    /// exit of QEMU is an error with its last messages.
    pub fn wait_ready(
        child: &mut Child,
        files: &VmFiles,
        limit: Duration,
        incoming: bool,
    ) -> anyhow::Result<Self> {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) while starting:\n{}",
                    files.log_tail()
                );
            }
            if files.qmp().exists() {
                if let Ok(mut qmp) = Self::connect(&files.qmp()) {
                    let status = qmp.run(qapi::qmp::query_status {})?;
                    if !status.running && !incoming {
                        bail!("QEMU started, but the guest is {:?}", status.status);
                    }
                    return Ok(qmp);
                }
            }
            if start.elapsed() > limit {
                bail!(
                    "QEMU did not answer on QMP within {limit:?}:\n{}",
                    files.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs QMP `command`; an error names it.
    fn run<C: qapi::Command>(&mut self, command: C) -> anyhow::Result<C::Ok> {
        self.qmp
            .execute(&command)
            .map_err(|e| anyhow!("QMP {}: {e}", C::NAME))
    }

    /// Asks the guest to power off (ACPI power button).
    pub fn powerdown(&mut self) -> anyhow::Result<()> {
        self.run(qapi::qmp::system_powerdown {})?;
        Ok(())
    }

    /// Whether the guest runs.
    pub fn running(&mut self) -> anyhow::Result<bool> {
        let status = self.run(qapi::qmp::query_status {})?;
        Ok(status.running)
    }

    /// Pauses the guest; QEMU drains and flushes every disk before it answers.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.run(qapi::qmp::stop {})?;
        Ok(())
    }

    /// Resumes the guest (activating its disks, on a migration's destination).
    pub fn cont(&mut self) -> anyhow::Result<()> {
        self.run(qapi::qmp::cont {})?;
        Ok(())
    }

    /// Turns a migration capability on.
    pub fn enable(&mut self, capability: qapi::qmp::MigrationCapability) -> anyhow::Result<()> {
        self.run(qapi::qmp::migrate_set_capabilities {
            capabilities: vec![qapi::qmp::MigrationCapabilityStatus {
                capability,
                state: true,
            }],
        })?;
        Ok(())
    }

    /// Source: starts migrating to `uri` (`tcp:HOST:PORT`).
    pub fn migrate(&mut self, uri: &str) -> anyhow::Result<()> {
        self.run(qapi::qmp::migrate {
            uri: Some(uri.to_string()),
            channels: None,
            detach: None,
            resume: None,
        })?;
        Ok(())
    }

    /// Destination: waits for the migration on `uri`.
    pub fn migrate_incoming(&mut self, uri: &str) -> anyhow::Result<()> {
        self.run(qapi::qmp::migrate_incoming {
            uri: Some(uri.to_string()),
            channels: None,
            exit_on_error: None,
        })?;
        Ok(())
    }

    /// Source, in `pre-switchover`: go on with the switchover.
    pub fn migrate_continue(&mut self) -> anyhow::Result<()> {
        self.run(qapi::qmp::migrate_continue {
            state: qapi::qmp::MigrationStatus::pre_switchover,
        })?;
        Ok(())
    }

    /// Source: cancels the migration (the guest runs on here).
    pub fn migrate_cancel(&mut self) -> anyhow::Result<()> {
        self.run(qapi::qmp::migrate_cancel {})?;
        Ok(())
    }

    /// The migration's state, as `query-migrate` reports it.
    pub fn query_migrate(&mut self) -> anyhow::Result<MigrationInfo> {
        self.run(QueryMigrate {})
    }

    /// Ends QEMU at once (the guest is not asked).
    pub fn quit(&mut self) -> anyhow::Result<()> {
        self.run(qapi::qmp::quit {})?;
        Ok(())
    }
}

/// `query-migrate`, with only the fields cvol reads: the qapi crate's own types follow a
/// newer QEMU schema, whose statistics QEMU 7.2 does not all send.
#[derive(Debug, serde::Serialize)]
struct QueryMigrate {}

impl qapi::Command for QueryMigrate {
    type Ok = MigrationInfo;
    const NAME: &'static str = "query-migrate";
    const ALLOW_OOB: bool = false;
}

/// A migration's state (QMP `MigrationInfo`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MigrationInfo {
    /// `setup`, `active`, `pre-switchover`, `device`, `completed`, `failed`, …
    #[serde(default)]
    pub status: Option<String>,
    /// RAM statistics.
    #[serde(default)]
    pub ram: Option<RamStats>,
    /// Milliseconds the guest was stopped (once completed).
    #[serde(default)]
    pub downtime: Option<u64>,
    /// The expected downtime, in milliseconds (while active).
    #[serde(default, rename = "expected-downtime")]
    pub expected_downtime: Option<u64>,
    /// Why it failed.
    #[serde(default, rename = "error-desc")]
    pub error_desc: Option<String>,
}

/// RAM transfer statistics of a migration.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RamStats {
    /// Bytes sent.
    #[serde(default)]
    pub transferred: u64,
    /// Bytes still to send.
    #[serde(default)]
    pub remaining: u64,
    /// The guest's RAM.
    #[serde(default)]
    pub total: u64,
}

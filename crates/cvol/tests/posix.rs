//! The container as a faithful file system, beyond what the reference-model test's random
//! operations reach: ownership and modes that persist and that a second host sees,
//! disks chowned to an unprivileged hypervisor user, paths deeper than PATH_MAX, and
//! `df`. Each on a local share, on `cvol nfs serve` and on nfs-ganesha.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;

use common::{tool_output, Env, Tmpfs};

/// The unprivileged user QEMU runs as here, and a user that is not it.
const QEMU_UID: u32 = 65534;
const OTHER_UID: u32 = 1000;

/// Runs `cmd` as user and group `id`, with no supplementary groups.
fn as_user(id: u32, cmd: &[&str]) -> Output {
    let (reuid, regid) = (format!("--reuid={id}"), format!("--regid={id}"));
    let mut args = vec![reuid.as_str(), regid.as_str(), "--clear-groups"];
    args.extend_from_slice(cmd);
    tool_output("setpriv", &args)
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let md = std::fs::symlink_metadata(path).unwrap();
    (md.uid(), md.gid(), md.permissions().mode() & 0o7777)
}

/// Makes `env.tmp` reachable by unprivileged users (mountpoints live below it).
fn open_up(env: &Env) {
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn ownership_persists_and_a_second_host_sees_it(env: Env) {
    open_up(&env);
    env.ok(&["vm", "create", "web", "--disk", "4M"]);
    let m = env.mount_with(&["--allow-other"]);
    let vm = m.path("web");
    std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(0o777)).unwrap();

    // What an unprivileged user creates is theirs, with their umask.
    let made = as_user(
        QEMU_UID,
        &[
            "sh",
            "-c",
            &format!(
                "umask 027 && cd {} && echo log > qemu.log && mkdir run && mkfifo run/monitor && ln -s qemu.log latest.log && ln qemu.log qemu.log.1",
                vm.display()
            ),
        ],
    );
    assert!(made.status.success(), "{made:?}");
    // libvirt's dynamic ownership: the disk's files go to the QEMU user.
    for file in ["web.vmdk", "web-flat.vmdk"] {
        std::os::unix::fs::chown(vm.join(file), Some(QEMU_UID), Some(QEMU_UID)).unwrap();
        std::fs::set_permissions(vm.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let expected = [
        ("qemu.log", (QEMU_UID, QEMU_UID, 0o640)),
        ("run", (QEMU_UID, QEMU_UID, 0o750)),
        ("run/monitor", (QEMU_UID, QEMU_UID, 0o640)),
        ("latest.log", (QEMU_UID, QEMU_UID, 0o777)),
        ("web.vmdk", (QEMU_UID, QEMU_UID, 0o600)),
        ("web-flat.vmdk", (QEMU_UID, QEMU_UID, 0o600)),
    ];
    let check = |root: &Path, when: &str| {
        for (name, want) in expected {
            assert_eq!(
                owner_and_mode(&root.join(name)),
                want,
                "{name} {when}: (uid, gid, mode)"
            );
        }
        let md = std::fs::metadata(root.join("qemu.log")).unwrap();
        assert_eq!(md.nlink(), 2, "{when}: the hard link counts");
        assert!(std::fs::symlink_metadata(root.join("run/monitor"))
            .unwrap()
            .file_type()
            .is_fifo());
    };
    check(&vm, "as made");

    // A second host's container sees the same.
    let second = env.mount_at("mnt2", &["--allow-other"]);
    check(&second.path("web"), "on a second host");
    drop(second);

    // The owner reads the disk; another user may not even open it.
    let flat = vm.join("web-flat.vmdk");
    let flat = flat.to_str().unwrap();
    let read = |uid| as_user(uid, &["head", "-c", "4096", flat]);
    assert!(read(QEMU_UID).status.success(), "{:?}", read(QEMU_UID));
    let refused = read(OTHER_UID);
    assert!(!refused.status.success(), "another user read the disk");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{refused:?}"
    );

    drop(m);
    let m = env.mount_with(&["--allow-other"]);
    check(&m.path("web"), "after a remount");
}

#[test]
fn ownership_persists_and_a_second_host_sees_it_on_a_local_share() {
    ownership_persists_and_a_second_host_sees_it(Env::datastore());
}

#[test]
fn ownership_persists_and_a_second_host_sees_it_on_cvol_nfs() {
    ownership_persists_and_a_second_host_sees_it(Env::datastore_on_cvol_nfs());
}

#[test]
fn ownership_persists_and_a_second_host_sees_it_on_nfs() {
    ownership_persists_and_a_second_host_sees_it(Env::datastore_on_nfs());
}

/// QEMU's block layer, as an unprivileged user, writes and reads a disk chowned to it
/// through the container's descriptor (the boot of a whole VM this way is in
/// scripts/e2e-boot.sh).
fn qemu_as_an_unprivileged_user_uses_its_disk(env: Env) {
    open_up(&env);
    env.ok(&["vm", "create", "web", "--disk", "8M"]);
    let m = env.mount_with(&["--allow-other"]);
    let vmdk = m.path("web/web.vmdk");
    let vmdk = vmdk.to_str().unwrap();
    let qemu_io = |uid, cmd: &str| as_user(uid, &["qemu-io", "-c", cmd, vmdk]);
    let denied = qemu_io(QEMU_UID, "write -P 0x7e 0 64k");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "before the chown: {denied:?}"
    );
    for file in ["web.vmdk", "web-flat.vmdk"] {
        std::os::unix::fs::chown(m.path("web").join(file), Some(QEMU_UID), Some(QEMU_UID)).unwrap();
    }
    let wrote = qemu_io(QEMU_UID, "write -P 0x7e 0 64k");
    assert!(
        wrote.status.success() && !String::from_utf8_lossy(&wrote.stdout).contains("failed"),
        "{wrote:?}"
    );
    let read = qemu_io(QEMU_UID, "read -P 0x7e 0 64k");
    let out = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success() && out.contains("read 65536/65536") && !out.contains("fail"),
        "{read:?}"
    );
}

#[test]
fn qemu_as_an_unprivileged_user_uses_its_disk_on_a_local_share() {
    qemu_as_an_unprivileged_user_uses_its_disk(Env::datastore());
}

#[test]
fn qemu_as_an_unprivileged_user_uses_its_disk_on_cvol_nfs() {
    qemu_as_an_unprivileged_user_uses_its_disk(Env::datastore_on_cvol_nfs());
}

#[test]
fn qemu_as_an_unprivileged_user_uses_its_disk_on_nfs() {
    qemu_as_an_unprivileged_user_uses_its_disk(Env::datastore_on_nfs());
}

/// Directories nest deeper than one path can name (PATH_MAX, 4096 bytes): everything
/// still works at the bottom, where the share path is longer than PATH_MAX.
fn paths_deeper_than_path_max_work(env: Env) {
    use rustix::fs::{mkdirat, openat, Mode, OFlags, CWD};
    let m = env.mount(true);
    // Walked down by descriptor: no path from / can name the bottom.
    let mut dir = openat(
        CWD,
        m.path(""),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let mut depth = m.path("").as_os_str().len();
    for name in std::iter::once("deep".to_string()).chain(std::iter::repeat_n("d".repeat(250), 18))
    {
        mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        dir = openat(
            &dir,
            name.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        depth += name.len() + 1;
    }
    assert!(depth > 4096);
    let mut shell = std::process::Command::new("sh");
    shell.args([
        "-c",
        "set -e; echo hello > f; truncate -s 3 f; ln f g; mv g h; mkfifo p; ln -s h s; \
         chmod 600 f; stat -c '%s %h %a' f; cat s; ls",
    ]);
    let bottom = std::os::fd::AsRawFd::as_raw_fd(&dir);
    // SAFETY: fchdir is async-signal-safe and changes only the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut shell, move || {
            if libc::fchdir(bottom) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = shell.output().unwrap();
    drop(dir); // it would keep the mount busy
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "3 2 600\nhelf\nh\np\ns\n"
    );
    let removed = tool_output("rm", &["-rf", m.path("deep").to_str().unwrap()]);
    assert!(removed.status.success(), "{removed:?}");
    assert!(!m.path("deep").exists());
}

#[test]
fn paths_deeper_than_path_max_work_on_a_local_share() {
    paths_deeper_than_path_max_work(Env::datastore());
}

#[test]
fn paths_deeper_than_path_max_work_on_cvol_nfs() {
    paths_deeper_than_path_max_work(Env::datastore_on_cvol_nfs());
}

#[test]
fn paths_deeper_than_path_max_work_on_nfs() {
    paths_deeper_than_path_max_work(Env::datastore_on_nfs());
}

/// `df` of the container: the share's file system's real numbers.
fn df_reports_the_share(env: Env) {
    let m = env.mount(true);
    let container = rustix::fs::statvfs(m.path("").as_path()).unwrap();
    let share = rustix::fs::statvfs(&env.share).unwrap();
    let total = |s: &rustix::fs::StatVfs| s.f_blocks * s.f_frsize;
    let (got, want) = (total(&container), total(&share));
    assert!(
        got.abs_diff(want) <= 4096,
        "container {got} bytes, the share's file system {want}"
    );
    assert!(container.f_bfree * container.f_frsize <= got);
}

#[test]
fn df_reports_the_share_on_a_local_share() {
    df_reports_the_share(Env::datastore());
}

#[test]
fn df_reports_the_share_on_cvol_nfs() {
    df_reports_the_share(Env::datastore_on_cvol_nfs());
}

#[test]
fn df_reports_the_share_on_nfs() {
    df_reports_the_share(Env::datastore_on_nfs());
}

/// A pool on another file system than the share's adds its space to `df`.
#[test]
fn df_adds_a_pool_on_another_file_system() {
    let env = Env::empty();
    let tmpfs = Tmpfs::mount(&env.tmp.path().join("pool-fs"), "64m");
    env.create_datastore_with(&format!("pool=file:{}", tmpfs.0.display()));
    let m = env.mount(true);
    let container = rustix::fs::statvfs(m.path("").as_path()).unwrap();
    let share = rustix::fs::statvfs(&env.share).unwrap();
    let got = container.f_blocks * container.f_frsize;
    let want = share.f_blocks * share.f_frsize + (64 << 20);
    assert!(
        got.abs_diff(want) <= 2 * 4096,
        "container {got} bytes, the share's file system and the pool's {want}"
    );
    drop(m);
}

/// A file removed while open keeps working until closed; on NFS it waits, hidden, in
/// `.cvol/removed-open/HOST/` (as NFS clients' `.nfsXXXX`), removed at its last close or,
/// after a crash, by the host's next mount.
#[test]
fn files_removed_while_open_are_kept_until_closed_even_across_a_crash() {
    use std::io::{Read, Seek, Write};
    let env = Env::datastore_on_cvol_nfs();
    let host = hostname();
    let aside = env.share.join(".cvol/removed-open").join(&host);
    let kept = || std::fs::read_dir(&aside).map_or(0, |d| d.count());
    let m = env.mount(true);
    std::fs::create_dir(m.path("vm1")).unwrap();
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.path("vm1/scratch"))
        .unwrap();
    std::fs::remove_file(m.path("vm1/scratch")).unwrap();
    assert_eq!(kept(), 1);
    assert_eq!(std::fs::read_dir(m.path("vm1")).unwrap().count(), 0);
    f.write_all(b"still here").unwrap();
    f.rewind().unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "still here");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    // The kernel sends the release after close() returns.
    wait_until("the last close removes it", || kept() == 0);

    let f = std::fs::File::create(m.path("vm1/held")).unwrap();
    std::fs::remove_file(m.path("vm1/held")).unwrap();
    assert_eq!(kept(), 1);
    m.kill_9();
    drop(f);
    assert_eq!(kept(), 1, "a crash leaves it");
    let _m = env.mount(true);
    assert_eq!(kept(), 0, "the host's next mount removes it");
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "not within 20 s: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Every name of a multiply linked file shows its current link count and mode, whatever
/// name the change went through (pjdfstest's link/00 and rename/23).
fn hard_links_agree_on_attributes(env: Env) {
    let m = env.mount(true);
    let dir = m.path("vm1");
    std::fs::create_dir(&dir).unwrap();
    let p = |n: &str| dir.join(n);
    let links = |n: &str| std::fs::symlink_metadata(p(n)).unwrap().nlink();
    std::fs::write(p("a"), b"x").unwrap();
    std::fs::hard_link(p("a"), p("b")).unwrap();
    std::fs::hard_link(p("b"), p("c")).unwrap();
    assert_eq!((links("a"), links("b"), links("c")), (3, 3, 3));
    std::fs::set_permissions(p("b"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::remove_file(p("a")).unwrap();
    assert_eq!((links("b"), links("c")), (2, 2));
    assert_eq!(owner_and_mode(&p("c")).2, 0o604);
    std::fs::write(p("d"), b"y").unwrap();
    std::fs::rename(p("d"), p("c")).unwrap();
    assert_eq!(links("b"), 1, "the file renamed over lost a name");
    assert_eq!(std::fs::read(p("c")).unwrap(), b"y");
    // A name removed while the file is open (kept aside on NFS) is not counted.
    std::fs::hard_link(p("b"), p("e")).unwrap();
    let open = std::fs::File::open(p("e")).unwrap();
    std::fs::remove_file(p("b")).unwrap();
    assert_eq!((open.metadata().unwrap().nlink(), links("e")), (1, 1));
    std::fs::remove_file(p("e")).unwrap();
    assert_eq!(
        open.metadata().unwrap().nlink(),
        0,
        "its last name is gone too"
    );
    drop(open);
}

#[test]
fn hard_links_agree_on_attributes_on_a_local_share() {
    hard_links_agree_on_attributes(Env::datastore());
}

#[test]
fn hard_links_agree_on_attributes_on_cvol_nfs() {
    hard_links_agree_on_attributes(Env::datastore_on_cvol_nfs());
}

#[test]
fn hard_links_agree_on_attributes_on_nfs() {
    hard_links_agree_on_attributes(Env::datastore_on_nfs());
}

/// A file removed while open takes changes from its owner and from the kernel (which
/// clears set-group-ID on an unprivileged write) until it is closed.
fn files_removed_while_open_take_changes(env: Env) {
    open_up(&env);
    let m = env.mount_with(&["--allow-other"]);
    let dir = m.path("vm1");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = format!(
        "cd {} && echo a > f && chmod 2775 f && exec 3<>f && rm f && echo more >&3 \
         && chmod 600 /proc/$$/fd/3 && stat -L -c '%a %h %s' /proc/$$/fd/3",
        dir.display()
    );
    let out = as_user(OTHER_UID, &["sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "600 0 5\n");
}

#[test]
fn files_removed_while_open_take_changes_on_a_local_share() {
    files_removed_while_open_take_changes(Env::datastore());
}

#[test]
fn files_removed_while_open_take_changes_on_cvol_nfs() {
    files_removed_while_open_take_changes(Env::datastore_on_cvol_nfs());
}

#[test]
fn files_removed_while_open_take_changes_on_nfs() {
    files_removed_while_open_take_changes(Env::datastore_on_nfs());
}

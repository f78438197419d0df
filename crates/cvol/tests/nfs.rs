//! The NFS share end to end: libnfs's tools against `cvol nfs serve`, names that try to
//! escape, servers that go away, and files changed behind a client's back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{tool, tool_output, Env, NfsServe};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A libnfs URL for `path` on `server` (libnfs takes the ports as query parameters).
fn libnfs_url(server: &NfsServe, path: &str) -> String {
    let port = server.addr.port();
    format!("nfs://127.0.0.1/{path}?nfsport={port}&mountport={port}")
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn libnfs_tools_work_against_cvol_nfs_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(export.join("vm1")).unwrap();
    std::fs::write(export.join("vm1/vm1.vmx"), b"displayName = \"vm1\"\n").unwrap();
    let server = NfsServe::start(&export);

    let listing = tool("nfs-ls", &[&libnfs_url(&server, "vm1")]);
    assert!(listing.contains("vm1.vmx"), "{listing}");
    assert_eq!(
        tool("nfs-cat", &[&libnfs_url(&server, "vm1/vm1.vmx")]),
        "displayName = \"vm1\"\n"
    );

    // Several READs and WRITEs each way (libnfs moves at most 1 MiB per call).
    let data = pseudo_random(3 << 20 | 123, 7);
    let local = tmp.path().join("in.bin");
    std::fs::write(&local, &data).unwrap();
    tool("nfs-cp", &[s(&local), &libnfs_url(&server, "vm1/big.bin")]);
    assert!(std::fs::read(export.join("vm1/big.bin")).unwrap() == data);
    let back = tmp.path().join("out.bin");
    tool("nfs-cp", &[&libnfs_url(&server, "vm1/big.bin"), s(&back)]);
    assert!(std::fs::read(&back).unwrap() == data);
    assert!(tool("nfs-ls", &[&libnfs_url(&server, "vm1")]).contains("big.bin"));
}

#[test]
fn names_that_lead_out_of_the_export_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink("..", export.join("up")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), export.join("abs")).unwrap();
    let server = NfsServe::start(&export);

    for path in ["up/secret", "abs/secret", "../secret", "%2e%2e/secret"] {
        let out = tool_output("nfs-cat", &[&libnfs_url(&server, path)]);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("outside"),
            "{path} reached outside the export"
        );
    }
    // cvol's own client: a symlink is never walked through, '..' never parsed.
    let share = &server.url;
    let out = common::cvol()
        .args(["--share", &format!("{share}up"), "datastore", "info"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = common::cvol()
        .args(["--share", &format!("{share}x/../..")])
        .args(["datastore", "info"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("'..'"), "{stderr}");
}

/// Writes files through the container while the server is killed and restarted: every
/// write that was acknowledged is on the export afterwards.
#[test]
fn a_server_killed_and_restarted_mid_workload_loses_nothing() {
    let mut env = Env::datastore_on_cvol_nfs();
    env.ok(&["vm", "create", "demo", "--disk", "8M"]);
    let m = env.mount_with(&["--nfs-timeout", "60"]);
    let dir = m.path("demo");
    let writer = std::thread::spawn(move || {
        let mut written = Vec::new();
        let start = Instant::now();
        for i in 0..400 {
            let name = format!("f{i}.txt");
            let data = pseudo_random(1000 + i * 37, i as u64);
            let began = Instant::now();
            let mut f = std::fs::File::create(dir.join(&name)).unwrap();
            std::io::Write::write_all(&mut f, &data).unwrap();
            f.sync_all().unwrap();
            drop(f);
            written.push((name, data, began.elapsed()));
            if start.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        written
    });
    std::thread::sleep(Duration::from_millis(300));
    let server = env.server.as_mut().unwrap();
    let addr = server.addr;
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    env.server = Some(NfsServe::start_on(&env.share, addr));

    let written = writer.join().unwrap();
    assert!(written.len() > 50, "only {} files written", written.len());
    let longest = written.iter().map(|w| w.2).max().unwrap();
    assert!(
        longest >= Duration::from_secs(1),
        "no write waited for the server (longest {longest:?}): it was not down mid-workload"
    );
    for (name, data, _) in &written {
        let on_export = std::fs::read(env.share.join("demo").join(name)).unwrap();
        assert!(&on_export == data, "{name} differs on the export");
    }
    // The container still works, data plane included.
    tool(
        "qemu-io",
        &["-c", "write -P 0x11 0 64k", s(&m.path("demo/demo.vmdk"))],
    );
    drop(m);
    env.ok(&["datastore", "fsck"]);
}

/// A server gone longer than --nfs-timeout: calls fail with EIO and a log line naming
/// the server; the daemon stays up and works again once the server is back.
#[test]
fn a_server_gone_past_the_timeout_gives_eio_and_the_daemon_recovers() {
    let mut env = Env::datastore_on_cvol_nfs();
    env.ok(&["vm", "create", "demo", "--disk", "8M"]);
    let m = env.mount_with(&["--nfs-timeout", "2"]);
    std::fs::write(m.path("demo/before.txt"), b"before").unwrap();
    let server = env.server.as_mut().unwrap();
    let (addr, url) = (server.addr, server.url.clone());
    server.kill();

    let start = Instant::now();
    let err = std::fs::write(m.path("demo/during.txt"), b"during").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(start.elapsed() >= Duration::from_secs(2), "gave up early");
    assert!(
        m.log().contains(&format!("NFS server {url} not reachable")),
        "{}",
        m.log()
    );

    env.server = Some(NfsServe::start_on(&env.share, addr));
    std::fs::write(m.path("demo/after.txt"), b"after").unwrap();
    assert_eq!(
        std::fs::read(env.share.join("demo/after.txt")).unwrap(),
        b"after"
    );
    assert_eq!(std::fs::read(m.path("demo/before.txt")).unwrap(), b"before");
}

/// Files replaced or removed on the server while a container holds their handles: the
/// container reads the new file or nothing, never the old one.
#[test]
fn files_changed_behind_the_clients_back_are_never_served_stale() {
    let env = Env::datastore_on_cvol_nfs();
    env.ok(&["vm", "create", "demo", "--disk", "8M"]);
    let m = env.mount(true);
    let notes = m.path("demo/notes.txt");
    std::fs::write(&notes, b"old notes").unwrap();
    std::fs::write(m.path("demo/gone.txt"), b"gone").unwrap();
    assert_eq!(std::fs::read(&notes).unwrap(), b"old notes");
    assert_eq!(std::fs::read(m.path("demo/gone.txt")).unwrap(), b"gone");

    // On the server: replace notes.txt the atomic way, remove gone.txt.
    let server_dir = env.share.join("demo");
    std::fs::write(server_dir.join("notes.tmp"), b"new notes").unwrap();
    std::fs::rename(server_dir.join("notes.tmp"), server_dir.join("notes.txt")).unwrap();
    std::fs::remove_file(server_dir.join("gone.txt")).unwrap();

    // Past the kernel's 1 s FUSE cache; well within cvol's own 3 s handle cache.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(std::fs::read(&notes).unwrap(), b"new notes");
    // Opens look the name up afresh (close-to-open, as the kernel's client does).
    let err = std::fs::read(m.path("demo/gone.txt")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}

/// An ONC RPC client of just enough calls to ask as a given client address and uid.
mod rpc {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    pub const MOUNT: u32 = 100_005;
    pub const NFS: u32 = 100_003;

    /// A TCP connection to `server` from `from` (port chosen by the system).
    pub fn connect(from: &str, server: SocketAddr) -> TcpStream {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let from: SocketAddr = format!("{from}:0").parse().unwrap();
        socket.bind(&from.into()).unwrap();
        socket.connect(&server.into()).unwrap();
        let stream = TcpStream::from(socket);
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// XDR variable-length opaque: length, bytes, padding.
    pub fn opaque(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// Calls `prog` version 3 procedure `proc` with AUTH_SYS `uid`; the accepted reply's
    /// results (after accept_stat SUCCESS).
    pub fn call(stream: &mut TcpStream, prog: u32, proc: u32, uid: u32, args: &[u8]) -> Vec<u8> {
        let mut cred = 0u32.to_be_bytes().to_vec(); // stamp
        cred.extend(opaque(b"test"));
        for w in [uid, uid, 0] {
            cred.extend(w.to_be_bytes()); // uid, gid, no gids
        }
        let mut msg = Vec::new();
        // A new xid each call: the server takes a repeated one for a retransmission.
        static XID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let xid = XID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for w in [xid, 0, 2, prog, 3, proc, 1] {
            msg.extend(w.to_be_bytes()); // xid, CALL, RPC 2, prog, vers, proc, AUTH_SYS
        }
        msg.extend(opaque(&cred));
        msg.extend([0u8; 8]); // AUTH_NULL verifier
        msg.extend_from_slice(args);
        let mark = 0x8000_0000u32 | msg.len() as u32;
        stream.write_all(&mark.to_be_bytes()).unwrap();
        stream.write_all(&msg).unwrap();
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).unwrap();
        let mut reply = vec![0u8; (u32::from_be_bytes(head) & 0x7fff_ffff) as usize];
        stream.read_exact(&mut reply).unwrap();
        let word = |i: usize| u32::from_be_bytes(reply[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(
            (word(1), word(2)),
            (1, 0),
            "not an accepted reply: {reply:?}"
        );
        let verifier_len = word(4) as usize;
        let at = 20 + verifier_len.next_multiple_of(4);
        assert_eq!(word(at / 4), 0, "accept_stat: {reply:?}");
        reply[at + 4..].to_vec()
    }

    /// The first word of a reply's results: the status.
    pub fn status(results: &[u8]) -> u32 {
        u32::from_be_bytes(results[..4].try_into().unwrap())
    }
}

#[test]
fn an_export_policy_answers_other_networks_acces_squashes_root_and_a_read_only_export_refuses_changes(
) {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir_all(export.join("vm1")).unwrap();
    std::fs::write(export.join("vm1/vm1.vmx"), b"displayName = \"vm1\"\n").unwrap();
    let loopback = "127.0.0.1:0".parse().unwrap();
    let local = tmp.path().join("in.bin");
    std::fs::write(&local, b"new").unwrap();

    // Only 127.0.0.1 is allowed; a client on 127.0.0.2 is told no, call by call.
    let log = tmp.path().join("refusing.log");
    let refusing = NfsServe::start_with(
        &export,
        loopback,
        &["--allow", "127.0.0.1/32", "--allow", "10.9.9.0/24"],
        std::fs::File::create(&log).unwrap(),
    );
    let listing = tool("nfs-ls", &[&libnfs_url(&refusing, "vm1")]);
    assert!(listing.contains("vm1.vmx"), "{listing}");
    let mnt_root = rpc::opaque(b"/");
    let mut allowed = rpc::connect("127.0.0.1", refusing.addr);
    let mounted = rpc::call(&mut allowed, rpc::MOUNT, 1, 0, &mnt_root);
    assert_eq!(rpc::status(&mounted), 0, "MOUNT from an allowed client");
    let fh_len = u32::from_be_bytes(mounted[4..8].try_into().unwrap()) as usize;
    let root_fh = rpc::opaque(&mounted[8..8 + fh_len]);

    let mut other = rpc::connect("127.0.0.2", refusing.addr);
    let denied = rpc::call(&mut other, rpc::MOUNT, 1, 0, &mnt_root);
    assert_eq!(rpc::status(&denied), 13, "MOUNT answers MNT3ERR_ACCES");
    // With the root's handle learnt elsewhere: GETATTR, ACCESS, READDIRPLUS, CREATE,
    // PATHCONF all answer NFS3ERR_ACCES, and nothing is created.
    let mut create = root_fh.clone();
    create.extend(rpc::opaque(b"planted"));
    create.extend([0u8; 4]); // UNCHECKED
    create.extend([0u8; 24]); // sattr3: nothing set
    let mut access = root_fh.clone();
    access.extend(0x3fu32.to_be_bytes());
    let mut readdirplus = root_fh.clone();
    readdirplus.extend([0u8; 16]); // cookie, cookieverf
    readdirplus.extend(4096u32.to_be_bytes());
    readdirplus.extend(65536u32.to_be_bytes());
    for (proc, args) in [
        (1, &root_fh),
        (4, &access),
        (17, &readdirplus),
        (8, &create),
        (20, &root_fh),
    ] {
        let results = rpc::call(&mut other, rpc::NFS, proc, 0, args);
        assert_eq!(
            rpc::status(&results),
            13,
            "NFS procedure {proc}: NFS3ERR_ACCES"
        );
    }
    assert!(!export.join("planted").exists());
    // The allowed client, meanwhile, is served on the same handle.
    let results = rpc::call(&mut allowed, rpc::NFS, 1, 0, &root_fh);
    assert_eq!(rpc::status(&results), 0);
    drop(refusing);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("refusing a call from 127.0.0.2"),
        "{logged}"
    );

    // Root squash (the default): a root client acts as nobody, so it cannot read a
    // root-only file, and what it creates belongs to 65534; --no-root-squash trusts it.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // (libnfs mounts a URL's directory, so the files are in one below the export's root.)
    let open = tmp.path().join("open/d");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(open.join("secret"), b"root only").unwrap();
    std::fs::set_permissions(open.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let squashing = NfsServe::start_with(
        open.parent().unwrap(),
        loopback,
        &[],
        std::process::Stdio::null(),
    );
    let out = tool_output("nfs-cat", &[&libnfs_url(&squashing, "d/secret")]);
    assert!(
        !out.status.success(),
        "a squashed root read a root-only file"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ACCESS denied"), "{err}");
    tool("nfs-cp", &[s(&local), &libnfs_url(&squashing, "d/by-root")]);
    let owner = std::fs::metadata(open.join("by-root")).unwrap();
    assert_eq!(
        (owner.uid(), owner.gid()),
        (cvol_nfs_server::ANONYMOUS, cvol_nfs_server::ANONYMOUS)
    );
    drop(squashing);
    let trusting = NfsServe::start(open.parent().unwrap());
    assert_eq!(
        tool("nfs-cat", &[&libnfs_url(&trusting, "d/secret")]).as_bytes(),
        b"root only"
    );
    tool(
        "nfs-cp",
        &[s(&local), &libnfs_url(&trusting, "d/by-trusted-root")],
    );
    let owner = std::fs::metadata(open.join("by-trusted-root")).unwrap();
    assert_eq!((owner.uid(), owner.gid()), (0, 0));
    drop(trusting);

    // Loopback allowed, read-only: reads work, changes are refused and change nothing.
    let ro = NfsServe::start_with(
        &export,
        loopback,
        &["--allow", "127.0.0.0/8", "--read-only"],
        std::process::Stdio::null(),
    );
    let listing = tool("nfs-ls", &[&libnfs_url(&ro, "vm1")]);
    assert!(listing.contains("vm1.vmx"), "{listing}");
    let out = tool_output("nfs-cp", &[s(&local), &libnfs_url(&ro, "vm1/new.bin")]);
    assert!(!out.status.success(), "a read-only export took a new file");
    assert!(!export.join("vm1/new.bin").exists());
    let out = tool_output("nfs-cp", &[s(&local), &libnfs_url(&ro, "vm1/vm1.vmx")]);
    assert!(!out.status.success(), "a read-only export took a write");
    assert_eq!(
        std::fs::read(export.join("vm1/vm1.vmx")).unwrap(),
        b"displayName = \"vm1\"\n"
    );
}

/// A server keeping few file handles (`--file-handles 4`) drops the handle of a file a
/// client holds open once listings hand out many others; the client's next write with
/// it is served as if nothing happened (the server finds the file again by its inode in
/// the directory the handle was handed out in), never answered NFS3ERR_STALE.
#[test]
fn file_handles_dropped_past_the_bound_are_found_again_by_inode() {
    use std::os::unix::fs::FileExt;
    let mut env = Env::empty();
    let server = NfsServe::start_with(
        &env.share,
        "127.0.0.1:0".parse().unwrap(),
        &["--no-root-squash", "--file-handles", "4"],
        std::process::Stdio::inherit(),
    );
    env.share_arg = server.url.clone();
    env.server = Some(server);
    env.create_datastore_with(&format!("pool=file:{}", env.pool.display()));
    env.ok(&["vm", "create", "demo", "--disk", "1M"]);
    std::fs::create_dir(env.share.join("many")).unwrap();
    for i in 0..50 {
        std::fs::write(env.share.join(format!("many/f{i}")), b"x").unwrap();
    }
    let vmx = env.share.join("demo/demo.vmx");
    let before = std::fs::read(&vmx).unwrap();

    let m = env.mount(false);
    let open = common::open_rw(m.path("demo/demo.vmx"));
    let listed = std::fs::read_dir(m.path("many"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect::<Vec<_>>();
    assert_eq!(listed, vec![1; 50]);
    open.write_all_at(b"# edited\n", before.len() as u64)
        .unwrap();
    open.sync_all().unwrap();
    drop(open);
    let log = m.stop();
    let mut expected = before;
    expected.extend_from_slice(b"# edited\n");
    assert_eq!(std::fs::read(&vmx).unwrap(), expected);
    assert!(
        !log.contains("stale NFS file handle"),
        "the client was answered STALE: {log}"
    );
}

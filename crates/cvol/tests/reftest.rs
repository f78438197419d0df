//! A reference-model test in the spirit of mountpoint-s3's reftests: random sequences of
//! metadata operations go to a VM directory in the container and to a plain directory,
//! and every result (value or errno) must be the same. Each operation runs as one of
//! several callers (root, and unprivileged users with their own umask) in a forked
//! child, so ownership, modes and permission checks are compared too.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::os::fd::FromRawFd;

use proptest::prelude::*;

const FILES: &[&str] = &["a", "b.vmx", "sub/c", "sub/sub/d", "nvram"];
const DIRS: &[&str] = &["sub", "sub/sub", "other"];
/// Directories to list: the VM directory itself too.
const LISTED: &[&str] = &["", "sub", "sub/sub", "other"];

#[derive(Debug, Clone)]
enum Op {
    Write {
        file: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Read {
        file: usize,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Mkdir {
        dir: usize,
    },
    Rmdir {
        dir: usize,
    },
    Unlink {
        file: usize,
    },
    RenameFile {
        from: usize,
        to: usize,
    },
    RenameDir {
        from: usize,
        to: usize,
    },
    List {
        dir: usize,
    },
    Stat {
        file: usize,
    },
    Symlink {
        file: usize,
        target: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    Mkfifo {
        file: usize,
    },
    BindSocket {
        file: usize,
    },
    MknodChar {
        file: usize,
    },
    Chmod {
        file: usize,
        mode: u32,
    },
    Chown {
        file: usize,
        uid: u32,
        gid: u32,
    },
    /// Open, remove, then write, stat and read through the open descriptor.
    WriteRemovedWhileOpen {
        file: usize,
        data: Vec<u8>,
    },
}

/// Who runs an operation.
#[derive(Debug, Clone, Copy)]
struct Caller {
    uid: u32,
    gid: u32,
    umask: u32,
}

const CALLERS: &[Caller] = &[
    Caller {
        uid: 0,
        gid: 0,
        umask: 0o022,
    },
    Caller {
        uid: 65534,
        gid: 65534,
        umask: 0,
    },
    Caller {
        uid: 1000,
        gid: 1000,
        umask: 0o077,
    },
];

fn caller() -> impl Strategy<Value = Caller> {
    prop_oneof![
        3 => Just(CALLERS[0]),
        2 => Just(CALLERS[1]),
        2 => Just(CALLERS[2]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES.len();
    let dir = 0..DIRS.len();
    prop_oneof![
        4 => (file.clone(), 0u64..9000, proptest::collection::vec(any::<u8>(), 0..3000))
            .prop_map(|(file, offset, data)| Op::Write { file, offset, data }),
        3 => file.clone().prop_map(|file| Op::Read { file }),
        1 => (file.clone(), 0u64..12000).prop_map(|(file, size)| Op::Truncate { file, size }),
        2 => dir.clone().prop_map(|dir| Op::Mkdir { dir }),
        1 => file.clone().prop_map(|file| Op::Unlink { file }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| Op::RenameFile { from, to }),
        1 => (dir.clone(), dir.clone()).prop_map(|(from, to)| Op::RenameDir { from, to }),
        3 => (0..LISTED.len()).prop_map(|dir| Op::List { dir }),
        1 => dir.prop_map(|dir| Op::Rmdir { dir }),
        2 => file.clone().prop_map(|file| Op::Stat { file }),
        1 => (file.clone(), file.clone()).prop_map(|(file, target)| Op::Symlink { file, target }),
        1 => (file.clone(), file.clone()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => file.clone().prop_map(|file| Op::Mkfifo { file }),
        1 => file.clone().prop_map(|file| Op::BindSocket { file }),
        1 => file.clone().prop_map(|file| Op::MknodChar { file }),
        2 => (file.clone(), proptest::sample::select(vec![0o644, 0o600, 0o4755, 0o2775, 0o777, 0o1777]))
            .prop_map(|(file, mode)| Op::Chmod { file, mode }),
        1 => (file.clone(), proptest::sample::select(vec![0, 1000, 65534]), proptest::sample::select(vec![0, 1000, 65534]))
            .prop_map(|(file, uid, gid)| Op::Chown { file, uid, gid }),
        2 => (file, proptest::collection::vec(any::<u8>(), 1..100))
            .prop_map(|(file, data)| Op::WriteRemovedWhileOpen { file, data }),
    ]
}

/// What an operation returned: its value, or the errno it failed with.
type Outcome = Result<String, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// True when `path` leads to a FIFO, socket or device node. Operations that open files
/// leave them alone: opening a FIFO waits for a peer, and the container is mounted
/// `nodev` (as NFS mounts usually are), so its device nodes are stored, listed and
/// stat'ed but never opened as devices.
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |rel: &str| root.join(rel);
    match op {
        Op::Write { file, .. }
        | Op::Read { file }
        | Op::Truncate { file, .. }
        | Op::WriteRemovedWhileOpen { file, .. }
            if is_special(&p(FILES[*file])) =>
        {
            Ok("special file, not opened".to_string())
        }
        Op::Write { file, offset, data } => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(p(FILES[*file]))
                .map_err(errno)?;
            f.seek(SeekFrom::Start(*offset)).map_err(errno)?;
            f.write_all(data).map_err(errno)?;
            Ok(String::new())
        }
        Op::Read { file } => {
            let mut buf = Vec::new();
            std::fs::File::open(p(FILES[*file]))
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(errno)?;
            Ok(format!(
                "{} bytes, sum {}",
                buf.len(),
                buf.iter().map(|&b| u64::from(b)).sum::<u64>()
            ))
        }
        Op::Truncate { file, size } => std::fs::OpenOptions::new()
            .write(true)
            .open(p(FILES[*file]))
            .and_then(|f| f.set_len(*size))
            .map(|()| String::new())
            .map_err(errno),
        Op::Mkdir { dir } => std::fs::create_dir(p(DIRS[*dir]))
            .map(|()| String::new())
            .map_err(errno),
        Op::Rmdir { dir } => std::fs::remove_dir(p(DIRS[*dir]))
            .map(|()| String::new())
            .map_err(errno),
        Op::Unlink { file } => std::fs::remove_file(p(FILES[*file]))
            .map(|()| String::new())
            .map_err(errno),
        Op::RenameFile { from, to } => std::fs::rename(p(FILES[*from]), p(FILES[*to]))
            .map(|()| String::new())
            .map_err(errno),
        Op::RenameDir { from, to } => std::fs::rename(p(DIRS[*from]), p(DIRS[*to]))
            .map(|()| String::new())
            .map_err(errno),
        Op::List { dir } => {
            let mut names: Vec<String> = std::fs::read_dir(p(LISTED[*dir]))
                .map_err(errno)?
                .map(|e| {
                    e.map(|e| e.file_name().to_string_lossy().into_owned())
                        .map_err(errno)
                })
                .collect::<Result<_, _>>()?;
            names.sort();
            Ok(names.join(","))
        }
        Op::Stat { file } => {
            let md = std::fs::symlink_metadata(p(FILES[*file])).map_err(errno)?;
            Ok(format!(
                "type={:o} mode={:o} owner={}:{} links={} len={} rdev={:x}",
                md.mode() & libc::S_IFMT,
                md.permissions().mode() & 0o7777,
                md.uid(),
                md.gid(),
                if md.is_dir() { 0 } else { md.nlink() },
                if md.is_file() { md.len() } else { 0 },
                md.rdev()
            ))
        }
        Op::Link { from, to } => std::fs::hard_link(p(FILES[*from]), p(FILES[*to]))
            .map(|()| String::new())
            .map_err(errno),
        Op::Mkfifo { file } => nix_call(&p(FILES[*file]), |c| unsafe { libc::mkfifo(c, 0o666) }),
        Op::MknodChar { file } => nix_call(&p(FILES[*file]), |c| unsafe {
            libc::mknod(c, libc::S_IFCHR | 0o644, libc::makedev(1, 3))
        }),
        Op::BindSocket { file } => std::os::unix::net::UnixListener::bind(p(FILES[*file]))
            .map(|_| String::new())
            .map_err(errno),
        Op::Chmod { file, mode } => {
            std::fs::set_permissions(p(FILES[*file]), std::fs::Permissions::from_mode(*mode))
                .map(|()| String::new())
                .map_err(errno)
        }
        Op::Chown { file, uid, gid } => {
            std::os::unix::fs::lchown(p(FILES[*file]), Some(*uid), Some(*gid))
                .map(|()| String::new())
                .map_err(errno)
        }
        Op::WriteRemovedWhileOpen { file, data } => {
            use std::os::unix::fs::FileExt;
            let path = p(FILES[*file]);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(errno)?;
            std::fs::remove_file(&path).map_err(errno)?;
            f.write_all_at(data, 3).map_err(errno)?;
            let md = f.metadata().map_err(errno)?;
            let mut back = vec![0; data.len()];
            f.read_exact_at(&mut back, 3).map_err(errno)?;
            Ok(format!(
                "len={} links={} same={}",
                md.len(),
                md.nlink(),
                back == *data
            ))
        }
        Op::Symlink { file, target } => {
            // Downward only (no `..`): a link renamed into another directory may then
            // dangle, as it would anywhere, but never lead out of the VM directory, which
            // the container refuses by design (EPERM) while a plain directory follows it.
            std::os::unix::fs::symlink(FILES[*target], p(FILES[*file]))
                .map(|()| String::new())
                .map_err(errno)
        }
    }
}

/// Calls `f` with `path` as a C string; the errno of a -1 return is the error.
fn nix_call(path: &Path, f: impl FnOnce(*const libc::c_char) -> libc::c_int) -> Outcome {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    if f(c.as_ptr()) == 0 {
        Ok(String::new())
    } else {
        Err(errno(std::io::Error::last_os_error()))
    }
}

/// Applies `op` as `caller`, in a child process that takes the caller's identity and
/// umask (identities are per process; the test's other threads must keep theirs).
fn apply_as(caller: Caller, root: &Path, op: &Op) -> Outcome {
    let mut fds = [0; 2];
    // Close-on-exec: a server another test thread spawns meanwhile must not inherit the
    // write end, or this read never sees its end.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: the child only switches identity, runs the operation (plain system calls
    // and allocation, which glibc keeps usable after fork) and exits without unwinding.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        unsafe {
            libc::close(read_fd);
            let ok = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(caller.gid, caller.gid, caller.gid) == 0
                && libc::setresuid(caller.uid, caller.uid, caller.uid) == 0;
            libc::umask(caller.umask);
            let out = if ok {
                match apply(root, op) {
                    Ok(s) => format!("O{s}"),
                    Err(e) => format!("E{e}"),
                }
            } else {
                "Xcannot switch identity".to_string()
            };
            let mut pipe = std::fs::File::from_raw_fd(write_fd);
            let _ = pipe.write_all(out.as_bytes());
            drop(pipe);
            libc::_exit(0);
        }
    }
    unsafe { libc::close(write_fd) };
    let mut out = String::new();
    unsafe { std::fs::File::from_raw_fd(read_fd) }
        .read_to_string(&mut out)
        .unwrap();
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    match out.split_at_checked(1) {
        Some(("O", s)) => Ok(s.to_string()),
        Some(("E", e)) => Err(e.parse().unwrap()),
        _ => panic!("operation child failed: {out:?} (status {status})"),
    }
}

fn container_behaves_like_a_plain_directory(env: common::Env) {
    let model_root = env.tmp.path().join("model");
    std::fs::create_dir(&model_root).unwrap();
    // Unprivileged callers must reach both trees.
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = env.mount_with(&["--allow-other"]);
    let case = AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec((caller(), op()), 1..40))| {
        let n = case.fetch_add(1, Ordering::SeqCst);
        let model = model_root.join(format!("vm{n}"));
        let real = m.path(&format!("vm{n}"));
        for dir in [&model, &real] {
            std::fs::create_dir(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        for (i, (caller, op)) in ops.iter().enumerate() {
            let expected = apply_as(*caller, &model, op);
            let got = apply_as(*caller, &real, op);
            prop_assert_eq!(&got, &expected, "operation {} ({:?} as {:?}) of {:?}", i, op, caller, ops);
        }
    });
}

#[test]
fn container_on_a_local_share_behaves_like_a_plain_directory() {
    container_behaves_like_a_plain_directory(common::Env::datastore());
}

#[test]
fn container_on_nfs_behaves_like_a_plain_directory() {
    container_behaves_like_a_plain_directory(common::Env::datastore_on_nfs());
}

#[test]
fn container_on_cvol_nfs_behaves_like_a_plain_directory() {
    container_behaves_like_a_plain_directory(common::Env::datastore_on_cvol_nfs());
}

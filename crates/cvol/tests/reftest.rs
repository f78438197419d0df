//! A reference-model test in the spirit of mountpoint-s3's reftests: random sequences of
//! metadata operations go to a VM directory in the container and to a plain directory,
//! and every result (value or errno) must be the same.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

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
        1 => (file.clone(), file).prop_map(|(file, target)| Op::Symlink { file, target }),
    ]
}

/// What an operation returned: its value, or the errno it failed with.
type Outcome = Result<String, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |rel: &str| root.join(rel);
    match op {
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
                "dir={} link={} len={}",
                md.is_dir(),
                md.is_symlink(),
                if md.is_file() { md.len() } else { 0 }
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

fn container_behaves_like_a_plain_directory(env: common::Env) {
    let model_root = env.tmp.path().join("model");
    std::fs::create_dir(&model_root).unwrap();
    let m = env.mount(true);
    let case = AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..40))| {
        let n = case.fetch_add(1, Ordering::SeqCst);
        let model = model_root.join(format!("vm{n}"));
        let real = m.path(&format!("vm{n}"));
        std::fs::create_dir(&model).unwrap();
        std::fs::create_dir(&real).unwrap();
        for (i, op) in ops.iter().enumerate() {
            let expected = apply(&model, op);
            let got = apply(&real, op);
            prop_assert_eq!(&got, &expected, "operation {} ({:?}) of {:?}", i, op, ops);
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

//! Copying a volume's file for clones and snapshots: a reflink where the file system
//! shares extents (XFS, Btrfs), otherwise a copy of the allocated ranges only, so sparse
//! volumes stay sparse and holes cost nothing.

use std::fs::File;
use std::io;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::CopyProgress;

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// The file system shares the extents: instant, no space used.
    Reflink,
    /// The allocated ranges were copied.
    SparseCopy,
}

/// Bytes moved by one copy_file_range call: small enough for smooth progress.
const COPY_STEP: usize = 8 << 20;

/// Makes `dst` (empty, writable) a copy of `src`.
pub fn copy_file(src: &File, dst: &File, progress: &dyn CopyProgress) -> io::Result<CopyMethod> {
    match rustix::fs::ioctl_ficlone(dst, src) {
        Ok(()) => return Ok(CopyMethod::Reflink),
        // These say "this file system cannot share extents here"; anything else is real.
        Err(
            Errno::OPNOTSUPP
            | Errno::XDEV
            | Errno::INVAL
            | Errno::NOTTY
            | Errno::NOSYS
            | Errno::PERM,
        ) => {}
        Err(e) => return Err(e.into()),
    }
    let size = src.metadata()?.len();
    dst.set_len(size)?;
    progress.start(size);
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(data) => data,
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))?.min(size);
        progress.advance(data - pos);
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let step = (hole - off_in).min(COPY_STEP as u64) as usize;
            let before = off_in;
            let copied =
                rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), step)?;
            if copied == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source file shrank during the copy",
                ));
            }
            progress.advance(off_in - before);
        }
        pos = hole;
    }
    progress.advance(size.saturating_sub(pos));
    progress.finish();
    dst.sync_all()?;
    Ok(CopyMethod::SparseCopy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Count(AtomicU64, AtomicU64);
    impl CopyProgress for Count {
        fn start(&self, total: u64) {
            self.0.store(total, Ordering::SeqCst);
        }
        fn advance(&self, n: u64) {
            self.1.fetch_add(n, Ordering::SeqCst);
        }
        fn finish(&self) {}
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("src"))
            .unwrap();
        let size = 64u64 << 20;
        src.set_len(size).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(&vec![0xa5; 1 << 20], 20 << 20).unwrap();
        src.write_all_at(b"tail", size - 4).unwrap();
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("dst"))
            .unwrap();
        let count = Count(AtomicU64::new(0), AtomicU64::new(0));
        copy_file(&src, &dst, &count).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), size);
        let (a, b) = (
            std::fs::read(dir.path().join("src")).unwrap(),
            std::fs::read(dir.path().join("dst")).unwrap(),
        );
        assert!(a == b, "content differs");
        // Sparse: far fewer than 64 MiB allocated (st_blocks counts 512-byte units).
        assert!(dst.metadata().unwrap().blocks() * 512 < 8 << 20);
        assert_eq!(count.0.load(Ordering::SeqCst), size);
        assert_eq!(
            count.1.load(Ordering::SeqCst),
            size,
            "progress covers the whole file"
        );
    }
}

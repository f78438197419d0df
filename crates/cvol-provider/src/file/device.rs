//! The data plane of a file-pool volume: positioned I/O on its sparse file, every change
//! fenced by the attachment generation.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::FallocateFlags;
use rustix::io::Errno;

use super::fence::Fence;
use crate::{BlockDevice, BlockError, BlockExtent};

/// An attached file-pool volume.
pub(crate) struct FileBlockDevice {
    file: File,
    fence: Fence,
    passthrough: bool,
}

impl FileBlockDevice {
    /// Opens the volume file `data` for the holder of attachment `generation`, fenced by
    /// the fence file `fence`. With `passthrough`, the container may hand the file to the
    /// kernel, whose writes then bypass the fence: only for pools no other host can take
    /// a volume over from (the in-process `file` provider).
    pub(crate) fn open(
        data: &Path,
        fence: &Path,
        generation: u64,
        passthrough: bool,
    ) -> io::Result<Self> {
        let file = File::options().read(true).write(true).open(data)?;
        // No readahead on a disk's file: the guest reads ahead itself, and the large
        // page-cache folios host readahead leaves behind make every later small write
        // into them several times slower (ext4 walks the whole folio; BENCHMARKS.md).
        // Only a hint: a file system that refuses it still serves the disk.
        if let Err(e) = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random) {
            tracing::debug!(file = %data.display(), "no POSIX_FADV_RANDOM: {e}");
        }
        Ok(Self {
            file,
            fence: Fence::open(fence, generation)?,
            passthrough,
        })
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> Result<(), Errno> {
        rustix::fs::fallocate(&self.file, flags | FallocateFlags::KEEP_SIZE, offset, len)
    }
}

/// Zeros written per call when the file system cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

impl BlockDevice for FileBlockDevice {
    fn size(&self) -> u64 {
        // Asked of the file each time: a resize through the provider shows at once.
        self.file.metadata().map_or(0, |m| m.len())
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, BlockError> {
        self.check_range(offset, len)?;
        let end = offset + len;
        let mut runs = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(pos)) {
                Ok(data) => data.min(end),
                Err(Errno::NXIO) => end,
                Err(e) => return Err(io::Error::from(e).into()),
            };
            if data > pos {
                runs.push(BlockExtent {
                    length: data - pos,
                    hole: true,
                });
            }
            if data >= end {
                break;
            }
            let hole = rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(data))
                .map_err(io::Error::from)?
                .min(end);
            runs.push(BlockExtent {
                length: hole - data,
                hole: false,
            });
            pos = hole;
        }
        Ok(runs)
    }

    fn may_block(&self) -> bool {
        false
    }

    fn backing_file(&self) -> Option<&File> {
        self.passthrough.then_some(&self.file)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        Ok(self.file.read_exact_at(buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        self.fence
            .guard(|| Ok(self.file.write_all_at(buf, offset)?))
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.fence.guard(|| Ok(self.file.sync_data()?))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(offset, len)?;
        self.fence.guard(|| self.punch(offset, len))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(offset, len)?;
        self.fence.guard(|| self.zero(offset, len))
    }
}

impl FileBlockDevice {
    fn punch(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        match self.fallocate(FallocateFlags::PUNCH_HOLE, offset, len) {
            Ok(()) => Ok(()),
            // A discard is a hint; a file system that cannot punch still reads zeros
            // after write_zeroes.
            Err(Errno::OPNOTSUPP) => self.zero(offset, len),
            Err(e) => Err(io::Error::from(e).into()),
        }
    }

    fn zero(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        match self.fallocate(FallocateFlags::ZERO_RANGE, offset, len) {
            Ok(()) => return Ok(()),
            Err(Errno::OPNOTSUPP) => {}
            Err(e) => return Err(io::Error::from(e).into()),
        }
        let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

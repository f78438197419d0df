//! The data plane of a file-pool volume: positioned I/O on its sparse file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::FallocateFlags;
use rustix::io::Errno;

use crate::{BlockDevice, BlockError, BlockExtent};

/// An attached file-pool volume.
pub struct FileBlockDevice {
    file: File,
}

impl FileBlockDevice {
    /// Wraps the open volume file.
    pub fn new(file: File) -> Self {
        Self { file }
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

    fn backing_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        Ok(self.file.read_exact_at(buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        Ok(self.file.write_all_at(buf, offset)?)
    }

    fn flush(&self) -> Result<(), BlockError> {
        Ok(self.file.sync_data()?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(offset, len)?;
        match self.fallocate(FallocateFlags::PUNCH_HOLE, offset, len) {
            Ok(()) => Ok(()),
            // A discard is a hint; a file system that cannot punch still reads zeros
            // after write_zeroes.
            Err(Errno::OPNOTSUPP) => self.write_zeroes(offset, len),
            Err(e) => Err(io::Error::from(e).into()),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(offset, len)?;
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

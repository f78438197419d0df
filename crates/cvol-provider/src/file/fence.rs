//! Fencing of a file-pool volume: a holder whose attachment was taken over can no longer
//! change the volume.
//!
//! `volumes/<id>/fence` holds the generation of the volume's newest attachment (8 bytes,
//! little endian). A device checks it before every change, holding a shared `flock` on
//! the file from the check until the change is done. A takeover first writes the new
//! generation, then takes the lock exclusively: that waits for every change that passed
//! its check, and every later check fails. So once a takeover returns, the old holder has
//! nothing in flight and can start nothing.
//!
//! `flock` locks belong to an open file description, shared by the threads of a device;
//! the device therefore counts its changes in flight and holds the shared lock from the
//! first to the last.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use rustix::fs::FlockOperation;

use crate::BlockError;

/// Reads and advances a volume's fence generation.
pub(crate) struct FenceFile {
    file: File,
}

impl FenceFile {
    /// Opens the fence at `path`, creating it at generation 0.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self { file })
    }

    /// The newest generation.
    pub(crate) fn current(&self) -> io::Result<u64> {
        let mut bytes = [0u8; 8];
        match self.file.read_exact_at(&mut bytes, 0) {
            Ok(()) => Ok(u64::from_le_bytes(bytes)),
            // Created but never advanced (or the creator died before the first write).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Makes `generation` the newest and waits until no change checked against an older
    /// one is in flight.
    pub(crate) fn advance(&self, generation: u64) -> io::Result<()> {
        self.file.write_all_at(&generation.to_le_bytes(), 0)?;
        self.file.sync_data()?;
        rustix::fs::flock(&self.file, FlockOperation::LockExclusive)?;
        rustix::fs::flock(&self.file, FlockOperation::Unlock)?;
        Ok(())
    }
}

/// A device's side of the fence: the generation it holds.
pub(crate) struct Fence {
    file: File,
    generation: u64,
    in_flight: Mutex<usize>,
}

impl Fence {
    /// Fences changes by the holder of `generation` with the fence file at `path`.
    pub(crate) fn open(path: &Path, generation: u64) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            generation,
            in_flight: Mutex::new(0),
        })
    }

    /// Runs `change` if this device's generation is still the newest, with no takeover
    /// able to complete meanwhile.
    pub(crate) fn guard<T>(
        &self,
        change: impl FnOnce() -> Result<T, BlockError>,
    ) -> Result<T, BlockError> {
        self.enter()?;
        let result = self.check().and_then(|()| change());
        self.leave();
        result
    }

    fn enter(&self) -> io::Result<()> {
        let mut n = self.in_flight.lock().expect("fence lock");
        if *n == 0 {
            rustix::fs::flock(&self.file, FlockOperation::LockShared)?;
        }
        *n += 1;
        Ok(())
    }

    fn leave(&self) {
        let mut n = self.in_flight.lock().expect("fence lock");
        *n -= 1;
        if *n == 0 {
            // Unlocking a held lock cannot fail; closing the file would release it anyway.
            let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
        }
    }

    fn check(&self) -> Result<(), BlockError> {
        let mut bytes = [0u8; 8];
        self.file.read_exact_at(&mut bytes, 0)?;
        let current = u64::from_le_bytes(bytes);
        if current != self.generation {
            return Err(BlockError::Fenced {
                generation: self.generation,
                current,
            });
        }
        Ok(())
    }
}

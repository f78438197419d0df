//! The data plane of an `rbd` volume: librbd reads and writes the image, with the
//! cluster connection of its own that holds the image's exclusive lock. A takeover breaks
//! that lock, which blocklists the connection: from then on the cluster refuses what it
//! sends (ESHUTDOWN), and this device answers `Fenced`.

use std::sync::atomic::{AtomicBool, Ordering};

use super::cluster::{CephError, Image};
use crate::{BlockDevice, BlockError, BlockExtent};

/// errno of a client the cluster blocklisted (`EBLOCKLISTED` is `ESHUTDOWN`).
const ESHUTDOWN: i32 = 108;
/// errno of a write to an image whose exclusive lock this client lost.
const EROFS: i32 = 30;

/// An attached image.
pub(crate) struct RbdDevice {
    image: Image,
    generation: u64,
    /// Detached or taken over: every call fails `Fenced`.
    fenced: AtomicBool,
}

impl RbdDevice {
    pub(crate) fn new(image: Image, generation: u64) -> Self {
        Self {
            image,
            generation,
            fenced: AtomicBool::new(false),
        }
    }

    /// The image, for the control plane's calls made through the lock holder's handle.
    pub(crate) fn image(&self) -> &Image {
        &self.image
    }

    /// From now on every call fails `Fenced`.
    pub(crate) fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    fn fenced_error(&self) -> BlockError {
        BlockError::Fenced {
            generation: self.generation,
            current: self.generation + 1,
        }
    }

    /// Runs `call` unless fenced; a blocklisted or unlocked client's error is `Fenced`.
    fn run(&self, what: &str, call: impl FnOnce() -> isize) -> Result<isize, BlockError> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(self.fenced_error());
        }
        let rc = call();
        if rc >= 0 {
            return Ok(rc);
        }
        let errno = (-rc) as i32;
        if errno == ESHUTDOWN || errno == EROFS {
            self.fence();
            return Err(self.fenced_error());
        }
        let e = CephError {
            what: format!("{what} of image {}", self.image.name),
            errno,
        };
        Err(BlockError::Io(std::io::Error::other(e.to_string())))
    }

    fn lib(&self) -> &'static super::ffi::Lib {
        self.image.lib()
    }
}

impl BlockDevice for RbdDevice {
    fn size(&self) -> u64 {
        self.image.size().unwrap_or(0)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: open image; the buffer holds `rest.len()` bytes.
            let n = self.run("read", || unsafe {
                (self.lib().rbd_read)(
                    self.image.raw,
                    offset + done as u64,
                    rest.len(),
                    rest.as_mut_ptr().cast(),
                )
            })?;
            if n == 0 {
                // Past the end of the image (it shrank meanwhile): zeros.
                rest.fill(0);
                break;
            }
            done += n as usize;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            let rest = &buf[done..];
            // SAFETY: open image; the buffer holds `rest.len()` bytes.
            let n = self.run("write", || unsafe {
                (self.lib().rbd_write)(
                    self.image.raw,
                    offset + done as u64,
                    rest.len(),
                    rest.as_ptr().cast(),
                )
            })?;
            done += n as usize;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        // SAFETY: open image.
        self.run("flush", || unsafe {
            (self.lib().rbd_flush)(self.image.raw) as isize
        })
        .map(drop)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(offset, len)?;
        // SAFETY: open image.
        self.run("discard", || unsafe {
            (self.lib().rbd_discard)(self.image.raw, offset, len) as isize
        })
        .map(drop)
    }

    /// From librbd's object map: what was never written or was discarded is a hole
    /// (a clone's parent counts as data).
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, BlockError> {
        self.check_range(offset, len)?;
        unsafe extern "C" fn note(
            at: u64,
            len: usize,
            exists: std::ffi::c_int,
            arg: *mut std::ffi::c_void,
        ) -> std::ffi::c_int {
            // SAFETY: `arg` is the Vec `extents` passes, alive for the call.
            let found = unsafe { &mut *arg.cast::<Vec<(u64, u64, bool)>>() };
            found.push((at, len as u64, exists != 0));
            0
        }
        let mut found: Vec<(u64, u64, bool)> = Vec::new();
        // SAFETY: open image; the callback only appends to `found`, which outlives the
        // call; NULL compares with nothing (the whole image's allocation).
        self.run("map", || unsafe {
            (self.lib().rbd_diff_iterate2)(
                self.image.raw,
                std::ptr::null(),
                offset,
                len,
                1,
                0,
                note,
                (&mut found as *mut Vec<(u64, u64, bool)>).cast(),
            ) as isize
        })?;
        found.sort_unstable();
        let mut runs: Vec<BlockExtent> = Vec::new();
        let mut push = |length: u64, hole: bool| match runs.last_mut() {
            Some(last) if last.hole == hole => last.length += length,
            _ if length > 0 => runs.push(BlockExtent { length, hole }),
            _ => {}
        };
        let mut at = offset;
        for (start, length, exists) in found {
            let start = start.max(at);
            let end = (start + length).min(offset + len);
            if end <= start {
                continue;
            }
            push(start - at, true);
            push(end - start, !exists);
            at = end;
        }
        push(offset + len - at, true);
        Ok(runs)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(offset, len)?;
        // SAFETY: open image; no flags.
        self.run("write zeroes", || unsafe {
            (self.lib().rbd_write_zeroes)(self.image.raw, offset, len as usize, 0, 0) as isize
        })
        .map(drop)
    }
}

//! The data plane of an `rbd` volume: librbd reads and writes the image, with the
//! cluster connection of its own that holds the image's exclusive lock. A takeover breaks
//! that lock, which blocklists the connection: from then on the cluster refuses what it
//! sends (ESHUTDOWN), and this device answers `Fenced`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::cluster::{CephError, Image};
use crate::{AsyncIo, BlockDevice, BlockError, BlockExtent};

/// errno of a client the cluster blocklisted (`EBLOCKLISTED` is `ESHUTDOWN`).
const ESHUTDOWN: i32 = 108;
/// errno of a write to an image whose exclusive lock this client lost.
const EROFS: i32 = 30;

/// An attached image.
pub(crate) struct RbdDevice {
    image: Image,
    state: Arc<FenceState>,
}

/// Whether a device is fenced, shared with its aio in flight.
struct FenceState {
    image: String,
    generation: u64,
    /// Detached or taken over: every call fails `Fenced`.
    fenced: AtomicBool,
}

impl FenceState {
    fn fenced_error(&self) -> BlockError {
        BlockError::Fenced {
            generation: self.generation,
            current: self.generation + 1,
        }
    }

    fn check(&self) -> Result<(), BlockError> {
        match self.fenced.load(Ordering::Acquire) {
            true => Err(self.fenced_error()),
            false => Ok(()),
        }
    }

    /// What librbd's `rc` for `what` means: a blocklisted or unlocked client is fenced
    /// from then on.
    fn outcome(&self, what: &str, rc: isize) -> Result<isize, BlockError> {
        if rc >= 0 {
            return Ok(rc);
        }
        let errno = (-rc) as i32;
        if errno == ESHUTDOWN || errno == EROFS {
            self.fenced.store(true, Ordering::Release);
            return Err(self.fenced_error());
        }
        let e = CephError {
            what: format!("{what} of image {}", self.image),
            errno,
        };
        Err(BlockError::Io(std::io::Error::other(e.to_string())))
    }
}

/// An aio in flight: what its completion needs.
struct Pending {
    io: AsyncIo,
    state: Arc<FenceState>,
    lib: &'static super::ffi::Lib,
    len: usize,
}

/// librbd's completion callback of [`RbdDevice::start`].
unsafe extern "C" fn finished(completion: super::ffi::Completion, arg: *mut std::ffi::c_void) {
    // SAFETY: `arg` is the state `start` boxed for this completion, taken back once.
    let mut pending = unsafe { Box::from_raw(arg.cast::<Pending>()) };
    let lib = pending.lib;
    // SAFETY: the completion librbd calls back with, released once, here.
    let rc = unsafe {
        let rc = (lib.rbd_aio_get_return_value)(completion);
        (lib.rbd_aio_release)(completion);
        rc
    };
    let what = if pending.io.write { "write" } else { "read" };
    let result = pending.state.outcome(what, rc).map(|done| {
        let done = (done as usize).min(pending.len);
        if !pending.io.write {
            // Past the end of the image (it shrank meanwhile): zeros.
            let start = pending.io.start;
            pending.io.buf[start + done..].fill(0);
        }
    });
    (pending.io.done)(pending.io.buf, result);
}

impl RbdDevice {
    pub(crate) fn new(image: Image, generation: u64) -> Self {
        let state = Arc::new(FenceState {
            image: image.name.clone(),
            generation,
            fenced: AtomicBool::new(false),
        });
        Self { image, state }
    }

    /// The image, for the control plane's calls made through the lock holder's handle.
    pub(crate) fn image(&self) -> &Image {
        &self.image
    }

    /// From now on every call fails `Fenced`.
    pub(crate) fn fence(&self) {
        self.state.fenced.store(true, Ordering::Release);
    }

    /// Runs `call` unless fenced; a blocklisted or unlocked client's error is `Fenced`.
    fn run(&self, what: &str, call: impl FnOnce() -> isize) -> Result<isize, BlockError> {
        self.state.check()?;
        self.state.outcome(what, call())
    }

    /// Starts `io` (checked) with librbd's aio; `io.done` is called from librbd's thread,
    /// or from this one if librbd refuses the request.
    fn start(&self, io: AsyncIo) {
        let len = io.buf.len() - io.start;
        let lib = self.lib();
        let write = io.write;
        let mut pending = Box::new(Pending {
            io,
            state: self.state.clone(),
            lib,
            len,
        });
        let data = pending.io.buf[pending.io.start..].as_mut_ptr();
        let offset = pending.io.offset;
        let arg = Box::into_raw(pending).cast::<std::ffi::c_void>();
        let mut completion = std::ptr::null_mut();
        // SAFETY: `arg` is the boxed state `finished` takes back exactly once.
        let rc = unsafe { (lib.rbd_aio_create_completion)(arg, finished, &mut completion) };
        if rc < 0 {
            // SAFETY: not handed to librbd: still ours.
            pending = unsafe { Box::from_raw(arg.cast::<Pending>()) };
            let e = self.state.outcome("start an aio", rc as isize).unwrap_err();
            (pending.io.done)(pending.io.buf, Err(e));
            return;
        }
        // SAFETY: open image; `data` points into the buffer owned by the boxed state,
        // which lives (unmoved: a Vec's heap storage) until the completion runs.
        let rc = unsafe {
            if write {
                (lib.rbd_aio_write)(self.image.raw, offset, len, data.cast(), completion)
            } else {
                (lib.rbd_aio_read)(self.image.raw, offset, len, data.cast(), completion)
            }
        };
        if rc < 0 {
            // SAFETY: librbd refused the request: the completion never runs, so the
            // state is still ours.
            unsafe { (lib.rbd_aio_release)(completion) };
            let pending = unsafe { Box::from_raw(arg.cast::<Pending>()) };
            let what = if write { "write" } else { "read" };
            let e = pending.state.outcome(what, rc as isize).unwrap_err();
            (pending.io.done)(pending.io.buf, Err(e));
        }
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

    fn submit(&self, io: AsyncIo) {
        let len = (io.buf.len() - io.start) as u64;
        match self
            .check_range(io.offset, len)
            .and_then(|()| self.state.check())
        {
            Ok(()) => self.start(io),
            Err(e) => (io.done)(io.buf, Err(e)),
        }
    }

    fn submits_async(&self) -> bool {
        true
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

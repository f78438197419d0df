//! The part of librados and librbd (Ceph 16, `librados.so.2`, `librbd.so.1`) an `rbd`
//! pool uses, loaded when the first pool is opened.
//!
//! Written by hand because no crate covers RBD on Ceph 16 (`ceph` has RADOS only,
//! `ceph-rbd` no writes, the newest bindings need librbd 1.17), and loaded at run time
//! rather than linked so that a cvol built anywhere runs on hosts without Ceph: only an
//! `rbd` pool needs the libraries (Debian: `librbd1`), and says so when they are missing.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// A cluster handle (`rados_t`).
pub(crate) type Rados = *mut c_void;
/// A pool's I/O context (`rados_ioctx_t`).
pub(crate) type IoCtx = *mut c_void;
/// An open image (`rbd_image_t`).
pub(crate) type Image = *mut c_void;

/// `rbd_snap_info_t`.
#[repr(C)]
pub(crate) struct SnapInfo {
    pub(crate) id: u64,
    pub(crate) size: u64,
    pub(crate) name: *const c_char,
}

/// `struct timespec`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct Timespec {
    pub(crate) sec: i64,
    pub(crate) nsec: i64,
}

/// `rbd_completion_t`.
pub(crate) type Completion = *mut c_void;
/// `rbd_callback_t`: what librbd calls, on a thread of its own, when an aio ends.
pub(crate) type CompletionCallback = unsafe extern "C" fn(Completion, *mut c_void);

/// `librbd_progress_fn_t`: offset, total, the argument given.
pub(crate) type ProgressCallback = unsafe extern "C" fn(u64, u64, *mut c_void) -> c_int;

/// `RBD_SNAP_CREATE_SKIP_QUIESCE`: no quiesce round trip to the image's watchers.
pub(crate) const SNAP_CREATE_SKIP_QUIESCE: u32 = 1;

/// What `rbd_diff_iterate2` calls for each extent: offset, length, whether it holds
/// data, and the argument given.
pub(crate) type DiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `RBD_SNAP_NAMESPACE_TYPE_USER`: a snapshot someone took (not one in the trash).
pub(crate) const SNAP_NAMESPACE_USER: c_int = 0;

/// `RBD_LOCK_MODE_EXCLUSIVE`.
pub(crate) const LOCK_EXCLUSIVE: c_int = 0;

macro_rules! library {
    ($($name:ident: fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// The functions, resolved.
        #[allow(non_snake_case)]
        pub(crate) struct Lib {
            _rados: libloading::Library,
            _rbd: libloading::Library,
            $(pub(crate) $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl Lib {
            fn load() -> Result<Self, String> {
                let open = |name: &str| {
                    // SAFETY: loading Ceph's client libraries runs their initialisers,
                    // which only set up their own state.
                    unsafe { libloading::Library::new(name) }.map_err(|e| {
                        format!("{name}: {e} (an rbd pool needs Ceph's client libraries: apt-get install librbd1)")
                    })
                };
                let rados = open("librados.so.2")?;
                let rbd = open("librbd.so.1")?;
                $(
                    // SAFETY: each signature is the one in librados.h / librbd.h.
                    let $name = unsafe {
                        let symbol: Result<libloading::Symbol<unsafe extern "C" fn($($arg),*) -> $ret>, _> =
                            if stringify!($name).starts_with("rados_") {
                                rados.get(stringify!($name).as_bytes())
                            } else {
                                rbd.get(stringify!($name).as_bytes())
                            };
                        *symbol.map_err(|e| format!("{}: {e}", stringify!($name)))?
                    };
                )*
                Ok(Self { _rados: rados, _rbd: rbd, $($name,)* })
            }
        }
    };
}

library! {
    rados_create2: fn(*mut Rados, *const c_char, *const c_char, u64) -> c_int;
    rados_conf_read_file: fn(Rados, *const c_char) -> c_int;
    rados_conf_set: fn(Rados, *const c_char, *const c_char) -> c_int;
    rados_connect: fn(Rados) -> c_int;
    rados_shutdown: fn(Rados) -> ();
    rados_ioctx_create: fn(Rados, *const c_char, *mut IoCtx) -> c_int;
    rados_ioctx_destroy: fn(IoCtx) -> ();
    rbd_create2: fn(IoCtx, *const c_char, u64, u64, *mut c_int) -> c_int;
    rbd_clone2: fn(IoCtx, *const c_char, *const c_char, IoCtx, *const c_char, u64, *mut c_int, u64, c_int) -> c_int;
    rbd_remove: fn(IoCtx, *const c_char) -> c_int;
    rbd_trash_move: fn(IoCtx, *const c_char, u64) -> c_int;
    rbd_list: fn(IoCtx, *mut c_char, *mut usize) -> c_int;
    rbd_open: fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd_open_read_only: fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int;
    rbd_close: fn(Image) -> c_int;
    rbd_get_size: fn(Image, *mut u64) -> c_int;
    rbd_resize: fn(Image, u64) -> c_int;
    rbd_read: fn(Image, u64, usize, *mut c_char) -> isize;
    rbd_write: fn(Image, u64, usize, *const c_char) -> isize;
    rbd_flush: fn(Image) -> c_int;
    rbd_aio_create_completion: fn(*mut c_void, CompletionCallback, *mut Completion) -> c_int;
    rbd_aio_read: fn(Image, u64, usize, *mut c_char, Completion) -> c_int;
    rbd_aio_write: fn(Image, u64, usize, *const c_char, Completion) -> c_int;
    rbd_aio_get_return_value: fn(Completion) -> isize;
    rbd_aio_release: fn(Completion) -> ();
    rbd_discard: fn(Image, u64, u64) -> c_int;
    rbd_write_zeroes: fn(Image, u64, usize, c_int, c_int) -> c_int;
    rbd_diff_iterate2: fn(Image, *const c_char, u64, u64, u8, u8, DiffCallback, *mut c_void) -> c_int;
    rbd_snap_create2: fn(Image, *const c_char, u32, ProgressCallback, *mut c_void) -> c_int;
    rbd_snap_remove: fn(Image, *const c_char) -> c_int;
    rbd_snap_rollback: fn(Image, *const c_char) -> c_int;
    rbd_snap_list: fn(Image, *mut SnapInfo, *mut c_int) -> c_int;
    rbd_snap_list_end: fn(*mut SnapInfo) -> ();
    rbd_snap_get_timestamp: fn(Image, u64, *mut Timespec) -> c_int;
    rbd_snap_get_namespace_type: fn(Image, u64, *mut c_int) -> c_int;
    rbd_get_create_timestamp: fn(Image, *mut Timespec) -> c_int;
    rbd_metadata_get: fn(Image, *const c_char, *mut c_char, *mut usize) -> c_int;
    rbd_metadata_set: fn(Image, *const c_char, *const c_char) -> c_int;
    rbd_lock_acquire: fn(Image, c_int) -> c_int;
    rbd_lock_release: fn(Image) -> c_int;
    rbd_lock_get_owners: fn(Image, *mut c_int, *mut *mut c_char, *mut usize) -> c_int;
    rbd_lock_get_owners_cleanup: fn(*mut *mut c_char, usize) -> ();
    rbd_lock_break: fn(Image, c_int, *const c_char) -> c_int;
}

/// The libraries, loaded once.
pub(crate) fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(Lib::load).as_ref().map_err(Clone::clone)
}

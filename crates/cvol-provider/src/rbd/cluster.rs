//! Safe handles over librados and librbd: a connection to a cluster with a pool's I/O
//! context, and an open image. Every failure is an errno, said with what was done.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::ffi::{self, Lib};

/// A failed librados / librbd call: what was done, and the errno it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CephError {
    pub(crate) what: String,
    pub(crate) errno: i32,
}

impl std::fmt::Display for CephError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cause = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "{}: {cause}", self.what)
    }
}

/// `rc` as a result: negative is an errno.
pub(crate) fn check(rc: c_int, what: impl FnOnce() -> String) -> Result<c_int, CephError> {
    if rc < 0 {
        return Err(CephError {
            what: what(),
            errno: -rc,
        });
    }
    Ok(rc)
}

fn c(text: &str) -> CString {
    CString::new(text).expect("names without NUL")
}

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `ceph.conf`; librados' default search when `None`.
    pub(crate) conf: Option<PathBuf>,
    /// The client's name without `client.`.
    pub(crate) client: String,
    /// Its keyring, if not the conf's.
    pub(crate) keyring: Option<PathBuf>,
    /// How long a monitor or OSD call, or the connection, may take.
    pub(crate) timeout: Duration,
    /// The pool.
    pub(crate) pool: String,
}

/// A connected cluster client and its I/O context on the pool.
pub(crate) struct Cluster {
    pub(crate) lib: &'static Lib,
    rados: ffi::Rados,
    pub(crate) io: ffi::IoCtx,
}

// SAFETY: librados and librbd handles may be used from any thread (their documentation:
// "all functions are thread-safe"); what one image handle does at once is librbd's to
// order.
unsafe impl Send for Cluster {}
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Connects to the cluster `target` names, as client `client.<target.client>`, and
    /// opens its pool. Gives up after the timeout rather than librados' 300 s.
    pub(crate) fn connect(target: &Target) -> Result<Self, CephError> {
        let lib = ffi::lib().map_err(|what| CephError {
            what,
            errno: libc_enoent(),
        })?;
        let mut rados = std::ptr::null_mut();
        let name = c(&format!("client.{}", target.client));
        // SAFETY: out-pointer and C strings valid for the call.
        check(
            unsafe { (lib.rados_create2)(&mut rados, c("ceph").as_ptr(), name.as_ptr(), 0) },
            || "create a cluster handle".into(),
        )?;
        let mut cluster = Self {
            lib,
            rados,
            io: std::ptr::null_mut(),
        };
        let conf = target.conf.as_ref().map(|p| c(&p.display().to_string()));
        let conf_ptr = conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: handle created above; NULL asks for the default search path.
        check(
            unsafe { (lib.rados_conf_read_file)(rados, conf_ptr) },
            || match &target.conf {
                Some(path) => format!("read {}", path.display()),
                None => "read /etc/ceph/ceph.conf".into(),
            },
        )?;
        let seconds = target.timeout.as_secs().max(1).to_string();
        let mut options = vec![
            ("client_mount_timeout", seconds.clone()),
            ("rados_mon_op_timeout", seconds.clone()),
            ("rados_osd_op_timeout", seconds),
            // Clones need no protected snapshot, and a snapshot with clones can go.
            ("rbd_default_clone_format", "2".into()),
        ];
        if let Some(keyring) = &target.keyring {
            options.push(("keyring", keyring.display().to_string()));
        }
        for (key, value) in &options {
            // SAFETY: handle and C strings valid for the call.
            check(
                unsafe { (lib.rados_conf_set)(rados, c(key).as_ptr(), c(value).as_ptr()) },
                || format!("set {key}"),
            )?;
        }
        // SAFETY: configured handle.
        check(unsafe { (lib.rados_connect)(rados) }, || {
            format!(
                "connect to the cluster as client.{} (within {} s)",
                target.client,
                target.timeout.as_secs()
            )
        })?;
        let mut io = std::ptr::null_mut();
        // SAFETY: connected handle; out-pointer valid.
        check(
            unsafe { (lib.rados_ioctx_create)(rados, c(&target.pool).as_ptr(), &mut io) },
            || format!("open pool {:?}", target.pool),
        )?;
        cluster.io = io;
        Ok(cluster)
    }

    /// The names of the pool's images.
    pub(crate) fn list(&self) -> Result<Vec<String>, CephError> {
        let mut size = 4096usize;
        loop {
            let mut buf = vec![0u8; size];
            // SAFETY: buffer of `size` bytes; librbd writes at most that.
            let rc = unsafe { (self.lib.rbd_list)(self.io, buf.as_mut_ptr().cast(), &mut size) };
            if rc == -34 {
                continue;
            }
            check(rc, || "list images".into())?;
            return Ok(buf[..size.min(buf.len())]
                .split(|&b| b == 0)
                .filter(|name| !name.is_empty())
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect());
        }
    }

    /// Opens image `name` (read-only: no lock taken, no writes).
    pub(crate) fn open(self: &Arc<Self>, name: &str, read_only: bool) -> Result<Image, CephError> {
        let mut image = std::ptr::null_mut();
        let open = if read_only {
            self.lib.rbd_open_read_only
        } else {
            self.lib.rbd_open
        };
        // SAFETY: I/O context valid; NULL snapshot is the head.
        check(
            unsafe { open(self.io, c(name).as_ptr(), &mut image, std::ptr::null()) },
            || format!("open image {name}"),
        )?;
        Ok(Image {
            cluster: self.clone(),
            raw: image,
            name: name.to_string(),
        })
    }

    /// Calls `f` with the I/O context and `name` as a C string; its result checked.
    pub(crate) fn call(
        &self,
        what: impl FnOnce() -> String,
        f: impl FnOnce(&'static Lib, ffi::IoCtx) -> c_int,
    ) -> Result<c_int, CephError> {
        check(f(self.lib, self.io), what)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: handles made by `connect`, used by nobody any more.
        unsafe {
            if !self.io.is_null() {
                (self.lib.rados_ioctx_destroy)(self.io);
            }
            (self.lib.rados_shutdown)(self.rados);
        }
    }
}

fn libc_enoent() -> i32 {
    2
}

// SAFETY: as for `Cluster`: an image handle may be used from any thread.
unsafe impl Send for Image {}
unsafe impl Sync for Image {}

/// An open image of a [`Cluster`]; closed when dropped.
pub(crate) struct Image {
    cluster: Arc<Cluster>,
    pub(crate) raw: ffi::Image,
    pub(crate) name: String,
}

impl Image {
    pub(crate) fn lib(&self) -> &'static Lib {
        self.cluster.lib
    }

    /// Checks `rc` of an operation `what` on this image.
    pub(crate) fn check(&self, rc: c_int, what: &str) -> Result<c_int, CephError> {
        check(rc, || format!("{what} of image {}", self.name))
    }

    pub(crate) fn size(&self) -> Result<u64, CephError> {
        let mut size = 0;
        // SAFETY: open image; out-pointer valid.
        self.check(
            unsafe { (self.lib().rbd_get_size)(self.raw, &mut size) },
            "size",
        )?;
        Ok(size)
    }

    pub(crate) fn resize(&self, size: u64) -> Result<(), CephError> {
        // SAFETY: open image.
        self.check(unsafe { (self.lib().rbd_resize)(self.raw, size) }, "resize")
            .map(drop)
    }

    /// The value of metadata `key`, `None` if unset.
    pub(crate) fn metadata(&self, key: &str) -> Result<Option<String>, CephError> {
        let mut len = 256usize;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: buffer of `len` bytes; librbd writes at most that.
            let rc = unsafe {
                (self.lib().rbd_metadata_get)(
                    self.raw,
                    c(key).as_ptr(),
                    buf.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            match rc {
                -2 => return Ok(None),
                -34 => continue,
                rc => {
                    self.check(rc, &format!("read metadata {key}"))?;
                    let text = CStr::from_bytes_until_nul(&buf)
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    return Ok(Some(text));
                }
            }
        }
    }

    pub(crate) fn set_metadata(&self, key: &str, value: &str) -> Result<(), CephError> {
        // SAFETY: open image; C strings valid for the call.
        let rc =
            unsafe { (self.lib().rbd_metadata_set)(self.raw, c(key).as_ptr(), c(value).as_ptr()) };
        self.check(rc, &format!("write metadata {key}")).map(drop)
    }

    /// Calls `f` with this image's handle and `name` as a C string; its result checked.
    pub(crate) fn snap_call(
        &self,
        what: &str,
        name: &str,
        f: impl FnOnce(&'static Lib, ffi::Image, *const c_char) -> c_int,
    ) -> Result<c_int, CephError> {
        let name = c(name);
        self.check(f(self.lib(), self.raw, name.as_ptr()), what)
    }

    /// Takes snapshot `name`. Without RBD's quiesce round trip to the image's watchers:
    /// that is for `rbd-nbd` hooks, and a running VM's consistency is its agent's to
    /// make (it pauses the guest for a snapshot).
    pub(crate) fn snap_create(&self, name: &str) -> Result<(), CephError> {
        unsafe extern "C" fn no_progress(_: u64, _: u64, _: *mut std::ffi::c_void) -> c_int {
            0
        }
        self.snap_call("snapshot", name, |lib, raw, n| unsafe {
            // SAFETY: open image; C string valid for the call; no progress state.
            (lib.rbd_snap_create2)(
                raw,
                n,
                ffi::SNAP_CREATE_SKIP_QUIESCE,
                no_progress,
                std::ptr::null_mut(),
            )
        })
        .map(drop)
    }

    /// The image's snapshots, oldest first: id, name, size (not those in the trash).
    pub(crate) fn snapshots(&self) -> Result<Vec<(u64, String, u64)>, CephError> {
        let mut max: c_int = 16;
        loop {
            let mut snaps: Vec<ffi::SnapInfo> = (0..max)
                .map(|_| ffi::SnapInfo {
                    id: 0,
                    size: 0,
                    name: std::ptr::null(),
                })
                .collect();
            // SAFETY: array of `max` entries; librbd fills at most that.
            let rc = unsafe { (self.lib().rbd_snap_list)(self.raw, snaps.as_mut_ptr(), &mut max) };
            if rc == -34 {
                continue;
            }
            let count = self.check(rc, "list snapshots")? as usize;
            let list = snaps[..count]
                .iter()
                .filter(|s| {
                    let mut kind = ffi::SNAP_NAMESPACE_USER;
                    // SAFETY: open image; out-pointer valid.
                    unsafe { (self.lib().rbd_snap_get_namespace_type)(self.raw, s.id, &mut kind) };
                    // A removed snapshot that clones still build on waits in the trash.
                    kind == ffi::SNAP_NAMESPACE_USER
                })
                .map(|s| {
                    // SAFETY: names librbd filled in, valid until snap_list_end.
                    let name = unsafe { CStr::from_ptr(s.name) }
                        .to_string_lossy()
                        .into_owned();
                    (s.id, name, s.size)
                })
                .collect();
            // SAFETY: the array rbd_snap_list filled.
            unsafe { (self.lib().rbd_snap_list_end)(snaps.as_mut_ptr()) };
            return Ok(list);
        }
    }

    /// When snapshot `id` was taken, in seconds since the epoch.
    pub(crate) fn snapshot_time(&self, id: u64) -> Result<u64, CephError> {
        let mut time = ffi::Timespec::default();
        // SAFETY: open image; out-pointer valid.
        let rc = unsafe { (self.lib().rbd_snap_get_timestamp)(self.raw, id, &mut time) };
        self.check(rc, "read a snapshot's time")?;
        Ok(time.sec.max(0) as u64)
    }

    /// When the image was made, in seconds since the epoch.
    pub(crate) fn created(&self) -> Result<u64, CephError> {
        let mut time = ffi::Timespec::default();
        // SAFETY: open image; out-pointer valid.
        let rc = unsafe { (self.lib().rbd_get_create_timestamp)(self.raw, &mut time) };
        self.check(rc, "read its creation time")?;
        Ok(time.sec.max(0) as u64)
    }

    /// The clients holding the image's exclusive lock.
    pub(crate) fn lock_owners(&self) -> Result<Vec<String>, CephError> {
        let mut mode: c_int = 0;
        let mut owners: [*mut c_char; 8] = [std::ptr::null_mut(); 8];
        let mut count = owners.len();
        // SAFETY: array of `count` pointers; librbd fills at most that.
        let rc = unsafe {
            (self.lib().rbd_lock_get_owners)(self.raw, &mut mode, owners.as_mut_ptr(), &mut count)
        };
        if rc == -2 {
            return Ok(Vec::new());
        }
        self.check(rc, "read the lock's owners")?;
        let names = owners[..count]
            .iter()
            // SAFETY: strings librbd filled in, freed below.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        // SAFETY: what rbd_lock_get_owners filled.
        unsafe { (self.lib().rbd_lock_get_owners_cleanup)(owners.as_mut_ptr(), count) };
        Ok(names)
    }

    /// Takes the image's exclusive lock for this client, in managed mode: it is kept, not
    /// handed to another client that asks, until released or broken.
    pub(crate) fn lock(&self) -> Result<(), CephError> {
        // SAFETY: open image.
        let rc = unsafe { (self.lib().rbd_lock_acquire)(self.raw, ffi::LOCK_EXCLUSIVE) };
        self.check(rc, "take the exclusive lock").map(drop)
    }

    /// Breaks `owner`'s lock: librbd blocklists the owner's client, so that what it has
    /// in flight and sends later fails (`rbd_blocklist_on_break_lock`).
    pub(crate) fn break_lock(&self, owner: &str) -> Result<(), CephError> {
        // SAFETY: open image; C string valid for the call.
        let rc = unsafe {
            (self.lib().rbd_lock_break)(self.raw, ffi::LOCK_EXCLUSIVE, c(owner).as_ptr())
        };
        self.check(rc, &format!("break the lock of {owner}"))
            .map(drop)
    }

    pub(crate) fn unlock(&self) -> Result<(), CephError> {
        // SAFETY: open image.
        let rc = unsafe { (self.lib().rbd_lock_release)(self.raw) };
        self.check(rc, "release the exclusive lock").map(drop)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: opened by `Cluster::open`, used by nobody any more.
        unsafe { (self.lib().rbd_close)(self.raw) };
    }
}

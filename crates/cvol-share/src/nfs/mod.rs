//! A share reached over NFSv3 from user space (no kernel client needed), with the
//! `nfs3_client` crate speaking the protocol.
//!
//! Paths are resolved to file handles by LOOKUP, one component at a time; handles and
//! attributes are cached for a short, configurable time like the kernel client's
//! `actimeo`. A stale handle (the server renamed or removed something, or restarted)
//! drops the cache and the call is resolved again, so no call ever acts on the wrong
//! file. Symlinks are never followed: an operation on a symlink acts on the link (or
//! fails), so nothing on the server can lead outside the export.
//!
//! Calls run on a pool of connections, each call on the calling thread over a blocking
//! socket, which gives up on a server that sends nothing for the share's timeout. Every
//! call is repeated across reconnects until that timeout, and the server's "try later"
//! (NFS3ERR_JUKEBOX) is waited out the same way. A call that is not idempotent (CREATE,
//! REMOVE, RENAME, …) whose reply was lost with its connection may have been done
//! already: its repeat answering "exists" (or "no such file") is taken as that earlier
//! success, as kernel clients do.

mod cache;
mod pipeline;
mod pool;
mod saved_contents;
mod transport;

#[cfg(feature = "fuzzing")]
pub use transport::fuzzing;

use std::io;
use std::time::{Duration, Instant, SystemTime};

use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use self::cache::Cache;
use self::pool::{Checkout, Connection, Pool};
use crate::nfs_url::NfsUrl;
use crate::open_file::OpenedBy;
use crate::{
    DirEntry, FileKind, Metadata, OpenFile, SetAttributes, SetTime, Share, ShareError, SharePath,
    ShareStats,
};

/// Bytes moved by one READ or WRITE.
const IO_SIZE: u32 = 1 << 20;

/// How an NFS share behaves towards its server.
#[derive(Debug, Clone)]
pub struct NfsOptions {
    /// How long a call keeps trying while the server does not answer before it fails
    /// with EIO.
    pub timeout: Duration,
    /// How long looked-up handles and attributes are trusted without asking the server
    /// (zero: always ask). Changes made through this share are seen at once; changes by
    /// other clients within this time.
    pub attribute_cache: Duration,
    /// Connections to the server, at most; calls beyond them wait for one.
    pub connections: usize,
    /// A local directory where the content of small files read (the `.vmx` and
    /// descriptors) is kept between runs, each used only for the version of the file it
    /// was read at (`None`: kept in memory only).
    pub content_cache_dir: Option<std::path::PathBuf>,
}

impl Default for NfsOptions {
    /// 60 s timeout, 3 s attribute cache (the kernel's `acregmin`), 8 connections, no
    /// content kept between runs.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            attribute_cache: Duration::from_secs(3),
            connections: 8,
            content_cache_dir: None,
        }
    }
}

/// An NFSv3 share.
pub struct NfsShare {
    url: NfsUrl,
    options: NfsOptions,
    pool: Pool,
    cache: Cache,
    /// Where the content cache is saved when the share is dropped, if it is.
    saved_contents: Option<std::path::PathBuf>,
    /// Since when the server has not answered for a whole timeout, if it has not.
    down_since: std::sync::Mutex<Option<Instant>>,
    /// RPCs sent, repeats included.
    sent: std::sync::atomic::AtomicU64,
    /// The handles of the directories being listed again by [`NfsShare::refresh_parent`].
    relisting: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// Why a call failed.
enum CallError {
    /// The server answered with an error status.
    Status(nfsstat3),
    /// No answer: the connection failed, until the timeout.
    Transport(String),
}

fn status_error(path: &SharePath, op: &'static str, status: nfsstat3) -> ShareError {
    use rustix::io::Errno;
    let errno = match status {
        nfsstat3::NFS3ERR_NOENT => return ShareError::NotFound(path.clone()),
        nfsstat3::NFS3ERR_EXIST => return ShareError::AlreadyExists(path.clone()),
        // RFC 1813 numbers these after the errnos of its day; from 63 on, Linux differs.
        nfsstat3::NFS3ERR_NAMETOOLONG => Errno::NAMETOOLONG,
        nfsstat3::NFS3ERR_NOTEMPTY => Errno::NOTEMPTY,
        nfsstat3::NFS3ERR_DQUOT => Errno::DQUOT,
        nfsstat3::NFS3ERR_STALE => Errno::STALE,
        nfsstat3::NFS3ERR_REMOTE => Errno::REMOTE,
        nfsstat3::NFS3ERR_NOTSUPP => Errno::NOTSUP,
        s if (s as i32) < 63 => Errno::from_raw_os_error(s as i32),
        _ => Errno::IO,
    };
    ShareError::Io {
        path: path.clone(),
        op,
        source: io::Error::from_raw_os_error(errno.raw_os_error()),
    }
}

fn time_of(t: &nfstime3) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(u64::from(t.seconds), t.nseconds.min(999_999_999))
}

fn metadata_of(a: &fattr3) -> Metadata {
    Metadata {
        kind: match a.type_ {
            ftype3::NF3REG => FileKind::File,
            ftype3::NF3DIR => FileKind::Dir,
            ftype3::NF3LNK => FileKind::Symlink,
            ftype3::NF3FIFO => FileKind::Fifo,
            ftype3::NF3SOCK => FileKind::Socket,
            ftype3::NF3CHR => FileKind::CharDevice,
            ftype3::NF3BLK => FileKind::BlockDevice,
        },
        inode: a.fileid,
        size: a.size,
        allocated: a.used,
        mode: a.mode & 0o7777,
        nlink: a.nlink,
        rdev: rustix::fs::makedev(a.rdev.specdata1, a.rdev.specdata2),
        uid: a.uid,
        gid: a.gid,
        accessed: time_of(&a.atime),
        modified: time_of(&a.mtime),
        changed: time_of(&a.ctime),
    }
}

fn name(n: &str) -> filename3<'_> {
    filename3(Opaque::borrowed(n.as_bytes()))
}

fn set_time(t: Option<SetTime>) -> (bool, Option<nfstime3>) {
    match t {
        None => (false, None),
        Some(SetTime::Now) => (true, None),
        Some(SetTime::At(t)) => (true, nfstime3::try_from(t).ok()),
    }
}

fn sattr(changes: &SetAttributes) -> sattr3 {
    let opt = |v: Option<u32>| v.map_or(Nfs3Option::None, Nfs3Option::Some);
    let atime = match set_time(changes.accessed) {
        (false, _) => set_atime::DONT_CHANGE,
        (true, None) => set_atime::SET_TO_SERVER_TIME,
        (true, Some(t)) => set_atime::SET_TO_CLIENT_TIME(t),
    };
    let mtime = match set_time(changes.modified) {
        (false, _) => set_mtime::DONT_CHANGE,
        (true, None) => set_mtime::SET_TO_SERVER_TIME,
        (true, Some(t)) => set_mtime::SET_TO_CLIENT_TIME(t),
    };
    sattr3 {
        mode: opt(changes.mode),
        uid: opt(changes.uid),
        gid: opt(changes.gid),
        size: changes.size.map_or(Nfs3Option::None, Nfs3Option::Some),
        atime,
        mtime,
    }
}

thread_local! {
    /// Whether the change the current share operation makes (each makes at most one) was
    /// sent without an answer coming back. Kept per operation, not per call: a repeat may
    /// come only after the operation resolved its handles afresh (the server restarted).
    static MUTATION_UNANSWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `$call` on a pooled connection, repeating it across reconnects and JUKEBOX
/// answers until the share's timeout. Idempotent calls give the reply; the others name
/// the status (`done_if`) that a repeat of an already-done call answers, and give `None`
/// when that is what happened.
macro_rules! rpc {
    ($share:expr, |$c:ident| $r:ident.$proc:ident($($args:tt)*)) => {
        rpc!(@ $share, None, |$c| $r.$proc($($args)*)).map(|reply| reply.expect("an idempotent call"))
    };
    ($share:expr, done_if = $status:expr, |$c:ident| $r:ident.$proc:ident($($args:tt)*)) => {
        rpc!(@ $share, Some($status), |$c| $r.$proc($($args)*))
    };
    // The call's method names the procedure its time and repeats are recorded under.
    (@ $share:expr, $done_if:expr, |$c:ident| $r:ident.$proc:ident($($args:tt)*)) => {{
        let share: &NfsShare = $share;
        let done_if: Option<nfsstat3> = $done_if;
        let procedure = stringify!($proc);
        let started = Instant::now();
        let patience = share.patience();
        let mut delay = Duration::from_millis(50);
        let outcome = loop {
            share.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = match share.connection() {
                Err(e) => Err(CallError::Transport(e)),
                Ok(mut connection) => {
                    let result = {
                        let $c = &mut connection;
                        // Ready at once: the connection's socket blocks (see `transport`).
                        futures::executor::block_on($r.$proc($($args)*))
                    };
                    match result {
                        Ok(Nfs3Result::Ok(ok)) => {
                            share.pool.put(connection);
                            Ok(Some(ok))
                        }
                        Ok(Nfs3Result::Err((status, _))) => {
                            share.pool.put(connection);
                            Err(CallError::Status(status))
                        }
                        Err(e) => {
                            drop(connection);
                            share.pool.discard();
                            share.pool.drain();
                            if done_if.is_some() {
                                MUTATION_UNANSWERED.set(true);
                            }
                            Err(CallError::Transport(e.to_string()))
                        }
                    }
                }
            };
            match outcome {
                Err(CallError::Status(s)) if Some(s) == done_if && MUTATION_UNANSWERED.get() => {
                    break Ok(None);
                }
                Err(CallError::Status(nfsstat3::NFS3ERR_JUKEBOX) | CallError::Transport(_))
                    if started.elapsed() < patience =>
                {
                    metrics::counter!("cvol_nfs_client_retries_total", "procedure" => procedure)
                        .increment(1);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(CallError::Transport(e)) => {
                    share.mark_down();
                    metrics::counter!("cvol_nfs_client_failures_total", "procedure" => procedure)
                        .increment(1);
                    break Err(CallError::Transport(e));
                }
                other => {
                    share.mark_up();
                    break other;
                }
            }
        };
        metrics::histogram!("cvol_nfs_client_rpc_seconds", "procedure" => procedure)
            .record(started.elapsed());
        outcome
    }};
}

/// How many listings read together are held at once (see [`NfsShare::list_together`]).
const LISTED_TOGETHER_HELD: usize = 256;

/// The READDIRPLUS of directory `dir` from `cookie` on: up to 64 KiB of names and
/// 256 KiB of reply, so a VM folder, or a thousand names, come in one reply.
fn readdirplus_from(dir: &nfs_fh3, cookie: u64, verf: cookieverf3) -> READDIRPLUS3args {
    READDIRPLUS3args {
        dir: dir.clone(),
        cookie,
        cookieverf: verf,
        dircount: 64 << 10,
        maxcount: 256 << 10,
    }
}

fn attributes_in(a: &post_op_attr) -> Option<&fattr3> {
    match a {
        Nfs3Option::Some(a) => Some(a),
        Nfs3Option::None => None,
    }
}

impl NfsShare {
    /// Mounts the share at `url`.
    pub fn open(url: &NfsUrl, options: &NfsOptions) -> Result<Self, ShareError> {
        let share = Self {
            url: url.clone(),
            options: options.clone(),
            pool: Pool::new(url.clone(), options.connections, options.timeout),
            cache: Cache::new(options.attribute_cache),
            saved_contents: options
                .content_cache_dir
                .as_deref()
                .map(|dir| saved_contents::file_for(dir, url)),
            down_since: std::sync::Mutex::new(None),
            sent: std::sync::atomic::AtomicU64::new(0),
            relisting: std::sync::Mutex::default(),
        };
        if let Some((root, contents)) = share
            .saved_contents
            .as_deref()
            .and_then(saved_contents::load)
        {
            share.cache.preload(
                nfs_fh3 {
                    data: Opaque::owned(root),
                },
                contents,
            );
        }
        let connection = share
            .connection()
            .map_err(|e| share.call_error(&SharePath::root(), "mount", CallError::Transport(e)))?;
        share.pool.put(connection);
        Ok(share)
    }

    /// How long a call keeps trying: the timeout, or no time at all once a call has
    /// waited that long in vain, so that a server that is gone fails every call at once
    /// (with EIO) instead of each one waiting out the timeout again.
    fn patience(&self) -> Duration {
        match *self.down_since.lock().expect("NFS state lock") {
            Some(_) => Duration::ZERO,
            None => self.options.timeout,
        }
    }

    fn mark_down(&self) {
        self.down_since
            .lock()
            .expect("NFS state lock")
            .get_or_insert_with(Instant::now);
    }

    fn mark_up(&self) {
        if let Some(since) = self.down_since.lock().expect("NFS state lock").take() {
            let down = since.elapsed().as_secs();
            tracing::warn!("NFS server {} answers again (after {down} s)", self.url);
        }
    }

    /// A connection from the pool, mounting a new one if needed.
    fn connection(&self) -> Result<Box<Connection>, String> {
        match self.pool.checkout() {
            Checkout::Idle(connection) => Ok(connection),
            Checkout::Mount(builder) => match futures::executor::block_on(builder.mount()) {
                Ok(connection) => {
                    self.cache.set_root(connection.root_nfs_fh3());
                    Ok(Box::new(connection))
                }
                Err(e) => {
                    self.pool.discard();
                    Err(e.to_string())
                }
            },
        }
    }

    fn call_error(&self, path: &SharePath, op: &'static str, e: CallError) -> ShareError {
        match e {
            CallError::Status(s) => status_error(path, op, s),
            CallError::Transport(e) => {
                let message = format!(
                    "NFS server {} not reachable for {} s: {e}",
                    self.url,
                    self.options.timeout.as_secs()
                );
                tracing::error!("{path}: {op} fails: {message}");
                ShareError::Io {
                    path: path.clone(),
                    op,
                    source: io::Error::new(io::ErrorKind::TimedOut, message),
                }
            }
        }
    }

    /// Runs `f` for `path`; a stale handle is resolved afresh once.
    fn with<T>(
        &self,
        path: &SharePath,
        op: &'static str,
        f: impl Fn() -> Result<T, CallError>,
    ) -> Result<T, ShareError> {
        MUTATION_UNANSWERED.set(false);
        let result = match f() {
            Err(CallError::Status(nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE)) => {
                tracing::info!("{path}: stale NFS file handle; resolving again");
                self.cache.clear();
                f()
            }
            other => other,
        };
        result.map_err(|e| self.call_error(path, op, e))
    }

    /// The handle of `path`, by LOOKUPs from the nearest cached ancestor. A symlink on
    /// the way is not walked through: LOOKUP in it fails with NOTDIR.
    fn resolve(&self, path: &SharePath) -> Result<nfs_fh3, CallError> {
        let Some((parent, leaf)) = path.split_last() else {
            return Ok(self.cache.root());
        };
        if let Some(fh) = self.cache.handle(path) {
            return Ok(fh);
        }
        let dir = self.resolve(&parent)?;
        self.look_up(&dir, path, leaf)
    }

    /// The handle of `path` as [`NfsShare::resolve`] finds it, where a name missing from
    /// its directory's cached listing is taken as absent without asking (a negative
    /// entry, as the kernel client keeps): for the `*_recent` calls only, so that a name
    /// another host just made is found at once by any other call.
    fn resolve_recent(&self, path: &SharePath) -> Result<nfs_fh3, CallError> {
        if let Some((parent, leaf)) = path.split_last() {
            if self.cache.handle(path).is_none()
                && self
                    .cache
                    .listing(&self.resolve(&parent)?)
                    .is_some_and(|entries| !entries.iter().any(|e| e.name == leaf))
            {
                return Err(CallError::Status(nfsstat3::NFS3ERR_NOENT));
            }
        }
        self.resolve(path)
    }

    /// The handle of `path` as the server says now: a LOOKUP of its last name in `dir`.
    fn look_up(&self, dir: &nfs_fh3, path: &SharePath, leaf: &str) -> Result<nfs_fh3, CallError> {
        let found = rpc!(self, |c| c.lookup(&LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: name(leaf)
            }
        }))?;
        let attributes = attributes_in(&found.obj_attributes);
        self.cache.learn(path, &found.object, attributes);
        Ok(found.object)
    }

    /// Looks `path` up afresh (close-to-open consistency: what another host renamed into
    /// place or created is seen even within the cache lifetime), learning its handle.
    fn look_up_afresh(&self, path: &SharePath) -> Result<(), CallError> {
        self.cache.forget(path);
        if let Some((parent, leaf)) = path.split_last() {
            let dir = self.resolve(&parent)?;
            self.look_up(&dir, path, leaf)?;
        }
        Ok(())
    }

    /// The entries of directory `path` by READDIRPLUS, which brings each entry's handle
    /// and attributes too (an `ls -l` after it asks the server nothing more).
    fn list(&self, path: &SharePath) -> Result<Vec<DirEntry>, CallError> {
        let dir = self.file(path)?;
        let changes = self.cache.changes();
        let mut entries = Vec::new();
        let (mut cookie, mut verf) = (0, cookieverf3::default());
        loop {
            let ok = rpc!(self, |c| c
                .readdirplus(&readdirplus_from(&dir, cookie, verf)))?;
            verf = ok.cookieverf;
            self.cache
                .learn(path, &dir, attributes_in(&ok.dir_attributes));
            for e in &ok.reply.entries.0 {
                cookie = e.cookie;
                let Some((entry_name, kind)) = self.learn_entry(path, e) else {
                    continue;
                };
                let kind = match kind {
                    Some(kind) => kind,
                    None => {
                        let child = path
                            .join(&entry_name)
                            .map_err(|_| CallError::Status(nfsstat3::NFS3ERR_INVAL))?;
                        let fh = self.look_up(&dir, &child, &entry_name)?;
                        metadata_of(&self.getattr(&fh)?).kind
                    }
                };
                entries.push(DirEntry {
                    name: entry_name,
                    kind,
                });
            }
            if ok.reply.eof || ok.reply.entries.0.is_empty() {
                break;
            }
        }
        self.forget_vanished(path, &dir, &entries);
        self.cache
            .learn_listing(&dir, entries.as_slice().into(), changes);
        Ok(entries)
    }

    /// Forgets what is known of the entries that the last listing of directory `path`
    /// showed and its new listing `entries` does not: another host removed them, and
    /// their attributes, maybe still fresh, would show them on.
    fn forget_vanished(&self, path: &SharePath, dir: &nfs_fh3, entries: &[DirEntry]) {
        let Some(old) = self.cache.kept_listing(dir) else {
            return;
        };
        let now: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.name.as_str()).collect();
        for gone in old.iter().filter(|e| !now.contains(e.name.as_str())) {
            if let Ok(child) = path.join(&gone.name) {
                match gone.kind {
                    FileKind::Dir => self.cache.forget(&child),
                    _ => self.cache.forget_one(&child),
                }
            }
        }
    }

    /// What entry `e` of directory `path`'s READDIRPLUS says: its name, and its kind if
    /// the server sent its attributes; its handle and attributes are learnt. `None` for
    /// `.` and `..`.
    fn learn_entry(&self, path: &SharePath, e: &entryplus3) -> Option<(String, Option<FileKind>)> {
        let entry_name = String::from_utf8_lossy(e.name.as_ref()).into_owned();
        if entry_name == "." || entry_name == ".." {
            return None;
        }
        let attributes = attributes_in(&e.name_attributes);
        if let (Nfs3Option::Some(fh), Ok(child)) = (&e.name_handle, path.join(&entry_name)) {
            self.cache.learn(&child, fh, attributes);
        }
        Some((entry_name, attributes.map(|a| metadata_of(a).kind)))
    }

    /// Lists `dirs` (but for those listed from the server within `listed_within`), their
    /// READDIRPLUS pipelined on a connection of their own (see
    /// [`pipeline`]), into the cache, and says which are listed there now. A directory
    /// that fails here, or whose listing is longer than one reply, is left to be listed
    /// the usual way. `why` names the reading in the log.
    fn list_together(
        &self,
        dirs: &[SharePath],
        listed_within: Duration,
        why: &str,
    ) -> Result<Vec<bool>, String> {
        let mut listed = vec![false; dirs.len()];
        let wanted: Vec<(usize, nfs_fh3)> = dirs
            .iter()
            .enumerate()
            .filter_map(|(i, path)| Some((i, self.file_recent(path).ok()?)))
            .filter(|(i, fh)| {
                let fresh = self
                    .cache
                    .last_listed(fh)
                    .is_some_and(|age| age < listed_within.min(self.options.attribute_cache));
                listed[*i] = fresh;
                !fresh
            })
            .collect();
        if wanted.is_empty() {
            return Ok(listed);
        }
        let changes = self.cache.changes();
        let mounted = self.connection()?;
        let pipeline = self.pool.pipeline(&mounted);
        self.pool.put(mounted);
        let mut pipeline = pipeline.map_err(|e| e.to_string())?;
        // A chunk's replies are held until all are in: chunks keep that to a few MB
        // where 10,000 listings would hold tens (and the allocator keeps what it held).
        for chunk in wanted.chunks(LISTED_TOGETHER_HELD) {
            let calls: Vec<READDIRPLUS3args> = chunk
                .iter()
                .map(|(_, fh)| readdirplus_from(fh, 0, cookieverf3::default()))
                .collect();
            self.sent
                .fetch_add(calls.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let replies = match pipeline
                .call_all::<_, READDIRPLUS3res>(NFS_PROGRAM::NFSPROC3_READDIRPLUS, &calls)
            {
                Ok(replies) => replies,
                Err(e) => {
                    tracing::debug!("listings not {why} past a failure: {e}");
                    break;
                }
            };
            for ((i, fh), reply) in chunk.iter().zip(replies) {
                let Some(Nfs3Result::Ok(ok)) = reply else {
                    continue;
                };
                let path = &dirs[*i];
                self.cache
                    .learn(path, fh, attributes_in(&ok.dir_attributes));
                if !ok.reply.eof {
                    continue;
                }
                let entries: Option<Vec<DirEntry>> = ok
                    .reply
                    .entries
                    .0
                    .iter()
                    .filter_map(|e| self.learn_entry(path, e))
                    .map(|(name, kind)| Some(DirEntry { name, kind: kind? }))
                    .collect();
                if let Some(entries) = entries {
                    self.forget_vanished(path, fh, &entries);
                    listed[*i] = self.cache.learn_listing(fh, entries.into(), changes);
                }
            }
        }
        tracing::debug!(
            "{} of {} listings {why}, up to {} calls in flight",
            listed.iter().filter(|&&l| l).count(),
            wanted.len(),
            pipeline::WINDOW
        );
        Ok(listed)
    }

    /// The parent's handle and the last name of `path`.
    fn parent<'p>(&self, path: &'p SharePath) -> Result<(nfs_fh3, &'p str), CallError> {
        let (parent, leaf) = path
            .split_last()
            .ok_or(CallError::Status(nfsstat3::NFS3ERR_INVAL))?;
        Ok((self.resolve(&parent)?, leaf))
    }

    /// Lists the directory of `path` again, if it was listed not long ago, when what is
    /// known of `path` has expired: the kernel client's READDIRPLUS heuristic. A walk
    /// through a directory of 10,000 VM folders (`ls -l */`) outlasts the cache lifetime;
    /// past it, one listing brings every folder's handle and attributes again, where
    /// each would cost a LOOKUP or a GETATTR of its own. So does a folder of a few files
    /// whose listing the kernel kept while their attributes expired: one listing, not a
    /// LOOKUP per file. A look at one name long after the last listing is not worth one.
    fn refresh_parent(&self, path: &SharePath) {
        if self.cache.knows(path) {
            return;
        }
        let Some((parent, _)) = path.split_last() else {
            return;
        };
        let lifetime = self.options.attribute_cache;
        let walked = |dir: &nfs_fh3| {
            self.cache
                .last_listed(dir)
                .is_some_and(|age| age >= lifetime && age < lifetime * cache::RELISTED_WITHIN)
        };
        let Some(dir) = self
            .cache
            .handle(&parent)
            .or_else(|| parent.is_root().then(|| self.cache.root()))
        else {
            return;
        };
        if !walked(&dir) {
            return;
        }
        // One listing of a directory at a time: a call that finds one under way asks
        // for its own name as usual.
        let key = dir.data.to_vec();
        if !self
            .relisting
            .lock()
            .expect("relisting lock")
            .insert(key.clone())
        {
            return;
        }
        if walked(&dir) && !self.cache.knows(path) {
            if let Err(CallError::Transport(e)) = self.list(&parent) {
                tracing::debug!("{parent} not listed again: {e}");
            }
        }
        self.relisting.lock().expect("relisting lock").remove(&key);
    }

    fn getattr(&self, fh: &nfs_fh3) -> Result<fattr3, CallError> {
        if let Some(a) = self.cache.attributes(fh) {
            return Ok(a);
        }
        let a = rpc!(self, |c| c.getattr(&GETATTR3args { object: fh.clone() }))?.obj_attributes;
        self.cache.learn_attributes(fh, &a);
        Ok(a)
    }

    /// The handle of `path`, which must not be a symlink (they are not followed).
    fn file(&self, path: &SharePath) -> Result<nfs_fh3, CallError> {
        self.refresh_parent(path);
        self.not_symlink(self.resolve(path)?)
    }

    /// The handle of `path` as [`NfsShare::file`] finds it, from
    /// [`NfsShare::resolve_recent`].
    fn file_recent(&self, path: &SharePath) -> Result<nfs_fh3, CallError> {
        self.refresh_parent(path);
        self.not_symlink(self.resolve_recent(path)?)
    }

    fn not_symlink(&self, fh: nfs_fh3) -> Result<nfs_fh3, CallError> {
        if self.getattr(&fh)?.type_ == ftype3::NF3LNK {
            return Err(CallError::Status(nfsstat3::NFS3ERR_INVAL));
        }
        Ok(fh)
    }

    fn read_range(&self, fh: &nfs_fh3, offset: u64, len: usize) -> Result<Vec<u8>, CallError> {
        self.read_range_attributes(fh, offset, len)
            .map(|(data, _)| data)
    }

    /// Reads as [`NfsShare::read_range`] does; with the file's attributes after the last
    /// READ, when the server sent them.
    fn read_range_attributes(
        &self,
        fh: &nfs_fh3,
        offset: u64,
        len: usize,
    ) -> Result<(Vec<u8>, Option<fattr3>), CallError> {
        let mut out = Vec::new();
        let mut attributes = None;
        while out.len() < len {
            let count = (len - out.len()).min(IO_SIZE as usize) as u32;
            let at = offset + out.len() as u64;
            let ok = rpc!(self, |c| c.read(&READ3args {
                file: fh.clone(),
                offset: at,
                count
            }))?;
            attributes = attributes_in(&ok.file_attributes).cloned();
            out.extend_from_slice(ok.data.as_ref());
            if ok.eof || ok.count == 0 {
                break;
            }
        }
        if let Some(a) = &attributes {
            self.cache.learn_attributes(fh, a);
        }
        Ok((out, attributes))
    }

    /// The whole content of file `fh`, from the content cache when the attributes this
    /// share holds for it (fresh from a LOOKUP, or learnt within the attribute-cache
    /// lifetime) name a version it has read before.
    fn read_whole(&self, fh: &nfs_fh3) -> Result<Vec<u8>, CallError> {
        let before = self.getattr(fh)?;
        if let Some(data) = self.cache.content(&before) {
            return Ok(data.to_vec());
        }
        let (data, after) = self.read_range_attributes(fh, 0, usize::MAX)?;
        // Kept only if the file did not change while it was read.
        if after.is_some_and(|a| cache::same_version(&a, &before))
            && data.len() as u64 == before.size
        {
            self.cache.learn_content(&before, data.as_slice().into());
        }
        Ok(data)
    }

    fn write_range(&self, fh: &nfs_fh3, offset: u64, data: &[u8]) -> Result<(), CallError> {
        let mut done = 0;
        while done < data.len() {
            let chunk = &data[done..data.len().min(done + IO_SIZE as usize)];
            let at = offset + done as u64;
            let ok = rpc!(self, |c| c.write(&WRITE3args {
                file: fh.clone(),
                offset: at,
                count: chunk.len() as u32,
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(chunk),
            }));
            self.cache.changed(fh);
            let written = ok?.count as usize;
            if written == 0 {
                return Err(CallError::Status(nfsstat3::NFS3ERR_IO));
            }
            done += written;
        }
        Ok(())
    }

    /// GUARDED CREATE of `path`: fails with EXIST if something is there. A repeat after
    /// a lost reply that finds the file counts as done unless `exclusive`, where it stays
    /// EXIST: the file may be another caller's.
    fn create(&self, path: &SharePath, mode: u32, exclusive: bool) -> Result<nfs_fh3, CallError> {
        let (dir, leaf) = self.parent(path)?;
        let attributes = || {
            sattr(&SetAttributes {
                mode: Some(mode),
                ..SetAttributes::default()
            })
        };
        let done_if = (!exclusive).then_some(nfsstat3::NFS3ERR_EXIST);
        let created = rpc!(@ self, done_if, |c| c.create(
            &CREATE3args {
                where_: diropargs3 {
                    dir: dir.clone(),
                    name: name(leaf)
                },
                how: createhow3::GUARDED(attributes())
            }
        ))?;
        self.cache.changed(&dir);
        self.cache.forget(path);
        match created {
            Some(CREATE3resok {
                obj: Nfs3Option::Some(fh),
                obj_attributes,
                ..
            }) => {
                self.cache.learn(path, &fh, attributes_in(&obj_attributes));
                Ok(fh)
            }
            _ => self.resolve(path),
        }
    }

    fn set_attributes_of(&self, fh: &nfs_fh3, changes: &SetAttributes) -> Result<(), CallError> {
        let done = rpc!(self, |c| c.setattr(&SETATTR3args {
            object: fh.clone(),
            new_attributes: sattr(changes),
            guard: Nfs3Option::None
        }));
        self.cache.changed(fh);
        done.map(drop)
    }

    fn commit(&self, fh: &nfs_fh3) -> Result<(), CallError> {
        rpc!(self, |c| c.commit(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0
        }))?;
        Ok(())
    }

    /// Runs `f` with the handle of open file `file`. A handle the server no longer
    /// knows (it restarted) is replaced by the one its name leads to now, if that is the
    /// same file (same file id); otherwise the open file is stale, as on any NFS client.
    fn with_open<T>(
        &self,
        file: &OpenFile,
        op: &'static str,
        f: impl Fn(&nfs_fh3) -> Result<T, CallError>,
    ) -> Result<T, ShareError> {
        let OpenedBy::Nfs { handle, fileid } = &file.by else {
            return Err(status_error(&file.path, op, nfsstat3::NFS3ERR_BADHANDLE));
        };
        MUTATION_UNANSWERED.set(false);
        let current = handle.lock().expect("open file lock").clone();
        let result = match f(&current) {
            Err(CallError::Status(nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE)) => {
                self.cache.clear();
                let found = self.resolve(&file.path).and_then(|fh| {
                    if self.getattr(&fh)?.fileid == *fileid {
                        Ok(fh)
                    } else {
                        Err(CallError::Status(nfsstat3::NFS3ERR_STALE))
                    }
                });
                match found {
                    Ok(fh) => {
                        tracing::info!(
                            "{}: stale NFS file handle; found the file again",
                            file.path
                        );
                        *handle.lock().expect("open file lock") = fh.clone();
                        f(&fh)
                    }
                    Err(CallError::Status(_)) => Err(CallError::Status(nfsstat3::NFS3ERR_STALE)),
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        result.map_err(|e| self.call_error(&file.path, op, e))
    }

    /// Creates file `path` with `data` (see [`NfsShare::create`] for `exclusive`).
    fn create_with(
        &self,
        path: &SharePath,
        data: &[u8],
        exclusive: bool,
    ) -> Result<(), ShareError> {
        self.with(path, "create", || {
            let fh = self.create(path, crate::FILE_MODE, exclusive)?;
            self.write_range(&fh, 0, data)
        })
    }

    /// REMOVE (or RMDIR, for a directory) of `path`.
    fn remove(&self, path: &SharePath, op: &'static str, dir: bool) -> Result<(), ShareError> {
        self.with(path, op, || {
            let (parent, leaf) = self.parent(path)?;
            let object = || diropargs3 {
                dir: parent.clone(),
                name: name(leaf),
            };
            if dir {
                rpc!(self, done_if = nfsstat3::NFS3ERR_NOENT, |c| c
                    .rmdir(&RMDIR3args { object: object() }))?;
            } else {
                rpc!(self, done_if = nfsstat3::NFS3ERR_NOENT, |c| c
                    .remove(&REMOVE3args { object: object() }))?;
            }
            self.cache.changed(&parent);
            self.cache.forget(path);
            Ok(())
        })
    }
}

impl Drop for NfsShare {
    fn drop(&mut self) {
        if let (Some(path), Some((root, contents))) =
            (&self.saved_contents, self.cache.take_contents_to_save())
        {
            saved_contents::save(path, &root.data, &contents);
        }
    }
}

impl Share for NfsShare {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn metadata(&self, path: &SharePath) -> Result<Metadata, ShareError> {
        self.with(path, "stat", || {
            self.refresh_parent(path);
            let fh = self.resolve(path)?;
            Ok(metadata_of(&self.getattr(&fh)?))
        })
    }

    fn read_dir(&self, path: &SharePath) -> Result<Vec<DirEntry>, ShareError> {
        self.with(path, "list directory", || self.list(path))
    }

    fn prefetch_listings(&self, dirs: &[SharePath]) {
        if self.options.attribute_cache.is_zero() || dirs.len() < 2 {
            return;
        }
        if let Err(e) = self.list_together(dirs, self.options.attribute_cache, "read ahead") {
            tracing::debug!("listings not read ahead: {e}");
        }
    }

    fn attribute_cache(&self) -> Duration {
        self.options.attribute_cache
    }

    fn refresh_listings(&self, dirs: &[SharePath], listed_within: Duration) -> Vec<bool> {
        if self.options.attribute_cache.is_zero() {
            return vec![false; dirs.len()];
        }
        self.list_together(dirs, listed_within, "read together")
            .unwrap_or_else(|e| {
                tracing::debug!("listings not read together: {e}");
                vec![false; dirs.len()]
            })
    }

    fn read_dir_recent(&self, path: &SharePath) -> Result<Vec<DirEntry>, ShareError> {
        self.with(path, "list directory", || {
            match self.cache.listing(&self.file_recent(path)?) {
                Some(entries) => Ok(entries.to_vec()),
                None => self.list(path),
            }
        })
    }

    fn read(&self, path: &SharePath) -> Result<Vec<u8>, ShareError> {
        // Whole-file reads (descriptors, .vmx, datastore.toml) look the name up afresh,
        // as the kernel client does on open, and read up to the server's end-of-file, not
        // to a size learnt before; an unchanged file costs only that LOOKUP.
        self.with(path, "read", || {
            self.look_up_afresh(path)?;
            self.read_whole(&self.file(path)?)
        })
    }

    fn read_recent(&self, path: &SharePath) -> Result<Vec<u8>, ShareError> {
        self.with(path, "read", || self.read_whole(&self.file_recent(path)?))
    }

    fn write_atomic(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError> {
        let (parent, leaf) = path.split_last().ok_or_else(|| ShareError::InvalidPath {
            path: String::new(),
            reason: "the share's root cannot be written",
        })?;
        let tmp_name = format!(".{leaf}.cvol-tmp-{}", uuid::Uuid::new_v4().simple());
        let tmp = parent.join(&tmp_name[..tmp_name.len().min(255)])?;
        let renamed = self
            .create_new(&tmp, data)
            .and_then(|()| self.rename(&tmp, path));
        if renamed.is_err() {
            let _ = self.remove_file(&tmp);
        }
        renamed
    }

    fn create_new(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError> {
        self.create_with(path, data, false)
    }

    fn create_exclusive(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError> {
        self.create_with(path, data, true)
    }

    fn create_dir(&self, path: &SharePath) -> Result<(), ShareError> {
        self.with(path, "mkdir", || {
            let (dir, leaf) = self.parent(path)?;
            let attributes = || {
                sattr(&SetAttributes {
                    mode: Some(0o755),
                    ..SetAttributes::default()
                })
            };
            rpc!(self, done_if = nfsstat3::NFS3ERR_EXIST, |c| c.mkdir(
                &MKDIR3args {
                    where_: diropargs3 {
                        dir: dir.clone(),
                        name: name(leaf)
                    },
                    attributes: attributes()
                }
            ))?;
            self.cache.changed(&dir);
            Ok(())
        })
    }

    fn remove_file(&self, path: &SharePath) -> Result<(), ShareError> {
        self.remove(path, "remove", false)
    }

    fn remove_dir(&self, path: &SharePath) -> Result<(), ShareError> {
        self.remove(path, "rmdir", true)
    }

    fn rename(&self, from: &SharePath, to: &SharePath) -> Result<(), ShareError> {
        self.with(from, "rename", || {
            let (from_dir, from_leaf) = self.parent(from)?;
            let (to_dir, to_leaf) = self.parent(to)?;
            rpc!(self, done_if = nfsstat3::NFS3ERR_NOENT, |c| c.rename(
                &RENAME3args {
                    from: diropargs3 {
                        dir: from_dir.clone(),
                        name: name(from_leaf)
                    },
                    to: diropargs3 {
                        dir: to_dir.clone(),
                        name: name(to_leaf)
                    },
                }
            ))?;
            self.cache.changed(&from_dir);
            self.cache.changed(&to_dir);
            self.cache.forget(from);
            self.cache.forget(to);
            Ok(())
        })
    }

    fn read_at(&self, path: &SharePath, offset: u64, len: usize) -> Result<Vec<u8>, ShareError> {
        self.with(path, "read", || {
            let fh = self.file(path)?;
            self.read_range(&fh, offset, len)
        })
    }

    fn write_at(&self, path: &SharePath, offset: u64, data: &[u8]) -> Result<(), ShareError> {
        self.with(path, "write", || {
            let fh = self.file(path)?;
            self.write_range(&fh, offset, data)
        })
    }

    fn create_file(&self, path: &SharePath, mode: u32) -> Result<(), ShareError> {
        self.with(path, "create", || self.create(path, mode, false).map(drop))
    }

    fn set_attributes(&self, path: &SharePath, changes: &SetAttributes) -> Result<(), ShareError> {
        self.with(path, "set attributes", || {
            self.set_attributes_of(&self.resolve(path)?, changes)
        })
    }

    fn symlink(&self, path: &SharePath, target: &str) -> Result<(), ShareError> {
        self.with(path, "symlink", || {
            let (dir, leaf) = self.parent(path)?;
            rpc!(self, done_if = nfsstat3::NFS3ERR_EXIST, |c| c.symlink(
                &SYMLINK3args {
                    where_: diropargs3 {
                        dir: dir.clone(),
                        name: name(leaf)
                    },
                    symlink: symlinkdata3 {
                        symlink_attributes: sattr3::default(),
                        symlink_data: nfspath3(Opaque::borrowed(target.as_bytes()))
                    },
                }
            ))?;
            self.cache.changed(&dir);
            Ok(())
        })
    }

    fn read_link(&self, path: &SharePath) -> Result<String, ShareError> {
        self.with(path, "readlink", || {
            let fh = self.resolve(path)?;
            let ok = rpc!(self, |c| c.readlink(&READLINK3args {
                symlink: fh.clone()
            }))?;
            Ok(String::from_utf8_lossy(ok.data.as_ref()).into_owned())
        })
    }

    fn sync(&self, path: &SharePath) -> Result<(), ShareError> {
        // Every WRITE is FILE_SYNC already; COMMIT makes that explicit for any other writer.
        self.with(path, "fsync", || self.commit(&self.file(path)?))
    }

    fn stats(&self) -> Result<ShareStats, ShareError> {
        self.with(&SharePath::root(), "statvfs", || {
            let fh = self.cache.root();
            let ok = rpc!(self, |c| c.fsstat(&FSSTAT3args { fsroot: fh.clone() }))?;
            Ok(ShareStats {
                block_size: 4096,
                blocks: ok.tbytes / 4096,
                blocks_free: ok.fbytes / 4096,
                blocks_available: ok.abytes / 4096,
                files: ok.tfiles,
                files_free: ok.ffiles,
                name_max: 255,
                fs_id: None,
            })
        })
    }

    fn make_node(
        &self,
        path: &SharePath,
        kind: FileKind,
        mode: u32,
        rdev: u64,
    ) -> Result<(), ShareError> {
        self.with(path, "mknod", || {
            let (dir, leaf) = self.parent(path)?;
            let attributes = || {
                sattr(&SetAttributes {
                    mode: Some(mode & 0o7777),
                    ..SetAttributes::default()
                })
            };
            let device = || devicedata3 {
                dev_attributes: attributes(),
                spec: specdata3 {
                    specdata1: rustix::fs::major(rdev),
                    specdata2: rustix::fs::minor(rdev),
                },
            };
            if matches!(kind, FileKind::File | FileKind::Dir | FileKind::Symlink) {
                return Err(CallError::Status(nfsstat3::NFS3ERR_INVAL));
            }
            let what = || match kind {
                FileKind::Fifo => mknoddata3::NF3FIFO(attributes()),
                FileKind::Socket => mknoddata3::NF3SOCK(attributes()),
                FileKind::CharDevice => mknoddata3::NF3CHR(device()),
                _ => mknoddata3::NF3BLK(device()),
            };
            rpc!(self, done_if = nfsstat3::NFS3ERR_EXIST, |c| c.mknod(
                &MKNOD3args {
                    where_: diropargs3 {
                        dir: dir.clone(),
                        name: name(leaf)
                    },
                    what: what(),
                }
            ))?;
            self.cache.changed(&dir);
            self.cache.forget(path);
            Ok(())
        })
    }

    fn hard_link(&self, existing: &SharePath, new: &SharePath) -> Result<(), ShareError> {
        self.with(new, "link", || {
            let file = self.resolve(existing)?;
            let (dir, leaf) = self.parent(new)?;
            rpc!(self, done_if = nfsstat3::NFS3ERR_EXIST, |c| c.link(
                &LINK3args {
                    file: file.clone(),
                    link: diropargs3 {
                        dir: dir.clone(),
                        name: name(leaf)
                    },
                }
            ))?;
            self.cache.changed(&dir);
            self.cache.changed(&file);
            self.cache.forget(new);
            Ok(())
        })
    }

    fn open_file(&self, path: &SharePath) -> Result<OpenFile, ShareError> {
        self.with(path, "open", || {
            self.look_up_afresh(path)?;
            let handle = self.file(path)?;
            let fileid = self.getattr(&handle)?.fileid;
            Ok(OpenFile {
                path: path.clone(),
                by: OpenedBy::Nfs {
                    handle: std::sync::Mutex::new(handle),
                    fileid,
                },
            })
        })
    }

    fn keeps_removed_open_files(&self) -> bool {
        false
    }

    fn file_read(&self, file: &OpenFile, offset: u64, len: usize) -> Result<Vec<u8>, ShareError> {
        self.with_open(file, "read", |fh| self.read_range(fh, offset, len))
    }

    fn file_write(&self, file: &OpenFile, offset: u64, data: &[u8]) -> Result<(), ShareError> {
        self.with_open(file, "write", |fh| self.write_range(fh, offset, data))
    }

    fn file_metadata(&self, file: &OpenFile) -> Result<Metadata, ShareError> {
        self.with_open(file, "stat", |fh| Ok(metadata_of(&self.getattr(fh)?)))
    }

    fn file_set_attributes(
        &self,
        file: &OpenFile,
        changes: &SetAttributes,
    ) -> Result<(), ShareError> {
        self.with_open(file, "set attributes", |fh| {
            self.set_attributes_of(fh, changes)
        })
    }

    fn file_sync(&self, file: &OpenFile) -> Result<(), ShareError> {
        self.with_open(file, "fsync", |fh| self.commit(fh))
    }

    fn requests_sent(&self) -> Option<u64> {
        Some(self.sent.load(std::sync::atomic::Ordering::Relaxed))
    }
}

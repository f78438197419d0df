//! Who a call is served as: the export policy's client networks, checked on every call,
//! and the identity the call acts as on the exported directory.
//!
//! A server running as root acts as each call's AUTH_SYS identity, the way the kernel's
//! nfsd and nfs-ganesha do: for the time the call runs, the serving thread's file system
//! ids (`setfsuid`/`setfsgid`) and supplementary groups are the caller's, so the kernel
//! checks permissions and new files belong to whoever made them. Root is squashed to
//! the anonymous identity unless the policy opts out; AUTH_NULL calls are always
//! anonymous. A server running as another user has no identities to take on: every call
//! acts as that user.
//!
//! The ids are per thread (the raw system calls; glibc's `setgroups` would change every
//! thread of the process), so an [`ActingAs`] is taken and dropped within one
//! synchronous stretch of a handler, never across an `.await`: it is `!Send`. Nothing
//! in that stretch may start a thread, which would inherit the caller's ids for good.

use std::marker::PhantomData;

use cvol_share::{FileKind, Metadata};
use ipnet::IpNet;
use nfs3_server::caller::{with_caller, Caller};
use nfs3_server::nfs3_types::nfs3::{
    nfsstat3, ACCESS3_DELETE, ACCESS3_EXECUTE, ACCESS3_EXTEND, ACCESS3_LOOKUP, ACCESS3_MODIFY,
    ACCESS3_READ,
};
use nfs3_server::nfs3_types::rpc::auth_unix;

/// The user and group squashed and AUTH_NULL callers act as (`nobody`/`nogroup`).
pub const ANONYMOUS: u32 = 65_534;

/// The checks and identity mapping every call goes through.
pub(crate) struct Admission {
    /// Client networks served; empty serves every client.
    allow: Vec<IpNet>,
    /// Callers claiming uid or gid 0 act as [`ANONYMOUS`].
    root_squash: bool,
    /// The server's own ids, restored after each call.
    server: Identity,
}

/// File system ids a call acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl Identity {
    fn anonymous() -> Self {
        Self {
            uid: ANONYMOUS,
            gid: ANONYMOUS,
            groups: Vec::new(),
        }
    }

    fn of_server() -> Self {
        Self {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            groups: rustix::process::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
        }
    }
}

impl Admission {
    pub(crate) fn new(allow: Vec<IpNet>, root_squash: bool) -> Self {
        Self {
            allow,
            root_squash,
            server: Identity::of_server(),
        }
    }

    /// Admits the call being served and acts as its caller until the result is dropped;
    /// NFS3ERR_ACCES (logged) for a client outside the allowed networks. Outside an RPC
    /// call (the export used directly) it acts as the server.
    pub(crate) fn enter(&self) -> Result<ActingAs, nfsstat3> {
        with_caller(|caller| {
            let Some(caller) = caller else {
                return Ok(ActingAs::server(&self.server));
            };
            if !self.admits(caller) {
                tracing::warn!(
                    "refusing a call from {}: not in the allowed networks",
                    caller.addr
                );
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
            let server = &self.server;
            let identity = self.identity(caller.auth.as_ref());
            if server.uid != 0 || (identity.uid == server.uid && identity.gid == server.gid) {
                return Ok(ActingAs::server(server));
            }
            ActingAs::switch(identity, server)
        })
    }

    fn admits(&self, caller: &Caller) -> bool {
        let ip = caller.addr.ip().to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Whom a credential acts as: AUTH_NULL is anonymous; under root squash so are uid 0
    /// and gid 0 (each on its own, as the kernel's nfsd squashes them).
    fn identity(&self, auth: Option<&auth_unix>) -> Identity {
        let Some(auth) = auth else {
            return Identity::anonymous();
        };
        let squash = |id: u32| {
            if self.root_squash && id == 0 {
                ANONYMOUS
            } else {
                id
            }
        };
        Identity {
            uid: squash(auth.uid),
            gid: squash(auth.gid),
            groups: auth.gids.iter().copied().map(squash).collect(),
        }
    }
}

/// The serving thread acting as a caller; back to the server's own ids when dropped.
pub(crate) struct ActingAs {
    /// The ids in effect.
    identity: Identity,
    /// The ids to restore, when they were changed.
    restore: Option<Identity>,
    /// Per-thread state: never moved to another thread.
    _thread: PhantomData<*const ()>,
}

impl ActingAs {
    fn server(server: &Identity) -> Self {
        Self {
            identity: server.clone(),
            restore: None,
            _thread: PhantomData,
        }
    }

    fn switch(to: Identity, server: &Identity) -> Result<Self, nfsstat3> {
        let acting = Self {
            restore: Some(server.clone()),
            identity: to,
            _thread: PhantomData,
        };
        if set_thread_ids(&acting.identity) {
            Ok(acting)
        } else {
            tracing::error!(
                "cannot act as uid {} gid {}",
                acting.identity.uid,
                acting.identity.gid
            );
            Err(nfsstat3::NFS3ERR_SERVERFAULT)
        }
    }

    /// Which of the `requested` ACCESS3 rights on a file with attributes `m` the ids in
    /// effect have, by the mode bits as the kernel checks them (root: everything, but
    /// execute only where some execute bit is set).
    pub(crate) fn granted(&self, m: &Metadata, requested: u32) -> u32 {
        let id = &self.identity;
        let dir = m.kind == FileKind::Dir;
        let (read, write, execute) = if id.uid == 0 {
            (true, true, dir || m.mode & 0o111 != 0)
        } else {
            let shift = if id.uid == m.uid {
                6
            } else if id.gid == m.gid || id.groups.contains(&m.gid) {
                3
            } else {
                0
            };
            let bits = (m.mode >> shift) & 0o7;
            (bits & 0o4 != 0, bits & 0o2 != 0, bits & 0o1 != 0)
        };
        let mut granted = 0;
        for (right, has) in [
            (ACCESS3_READ, read),
            (ACCESS3_MODIFY, write),
            (ACCESS3_EXTEND, write),
            (ACCESS3_LOOKUP, dir && execute),
            (ACCESS3_DELETE, dir && write),
            (ACCESS3_EXECUTE, !dir && execute),
        ] {
            if has {
                granted |= right;
            }
        }
        requested & granted
    }
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        if let Some(server) = &self.restore {
            assert!(
                set_thread_ids(server),
                "cannot return to the server's own ids"
            );
        }
    }
}

/// Sets this thread's supplementary groups and file system ids; whether all took.
fn set_thread_ids(id: &Identity) -> bool {
    // SAFETY: plain system calls on this thread's credentials with a valid buffer of
    // `groups.len()` gids; setfsuid/setfsgid answer the previous id, and asked for an
    // invalid id (-1) they change nothing and answer the current one, which is how
    // their success is checked.
    unsafe {
        let groups_set =
            libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) == 0;
        libc::setfsgid(id.gid);
        libc::setfsuid(id.uid);
        groups_set
            && libc::setfsgid(u32::MAX) as u32 == id.gid
            && libc::setfsuid(u32::MAX) as u32 == id.uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(uid: u32, gid: u32, gids: &[u32]) -> auth_unix {
        auth_unix {
            uid,
            gid,
            gids: gids.to_vec(),
            ..auth_unix::default()
        }
    }

    fn metadata(kind: FileKind, mode: u32, uid: u32, gid: u32) -> Metadata {
        Metadata {
            kind,
            inode: 1,
            size: 0,
            allocated: 0,
            mode,
            nlink: 1,
            rdev: 0,
            uid,
            gid,
            accessed: std::time::SystemTime::UNIX_EPOCH,
            modified: std::time::SystemTime::UNIX_EPOCH,
            changed: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn access_is_answered_by_the_mode_bits_for_the_identity_in_effect() {
        let all = ACCESS3_READ
            | ACCESS3_LOOKUP
            | ACCESS3_MODIFY
            | ACCESS3_EXTEND
            | ACCESS3_DELETE
            | ACCESS3_EXECUTE;
        let acting = |uid, gid, groups: &[u32]| {
            ActingAs::server(&Identity {
                uid,
                gid,
                groups: groups.to_vec(),
            })
        };
        let file = metadata(FileKind::File, 0o640, 1000, 100);
        let rw = ACCESS3_READ | ACCESS3_MODIFY | ACCESS3_EXTEND;
        assert_eq!(acting(1000, 5, &[]).granted(&file, all), rw);
        assert_eq!(acting(2000, 5, &[100]).granted(&file, all), ACCESS3_READ);
        assert_eq!(acting(ANONYMOUS, ANONYMOUS, &[]).granted(&file, all), 0);
        assert_eq!(acting(0, 0, &[]).granted(&file, all), rw);
        let dir = metadata(FileKind::Dir, 0o755, 0, 0);
        assert_eq!(
            acting(ANONYMOUS, ANONYMOUS, &[]).granted(&dir, all),
            ACCESS3_READ | ACCESS3_LOOKUP
        );
        assert_eq!(
            acting(0, 0, &[]).granted(&dir, all),
            ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE
        );
        assert_eq!(
            acting(1000, 5, &[]).granted(&file, ACCESS3_READ),
            ACCESS3_READ
        );
    }

    #[test]
    fn root_is_squashed_unless_the_policy_opts_out_and_auth_null_is_anonymous() {
        let squashing = Admission::new(Vec::new(), true);
        let trusting = Admission::new(Vec::new(), false);
        let root = auth(0, 0, &[0, 10]);
        assert_eq!(
            squashing.identity(Some(&root)),
            Identity {
                uid: ANONYMOUS,
                gid: ANONYMOUS,
                groups: vec![ANONYMOUS, 10]
            }
        );
        assert_eq!(
            trusting.identity(Some(&root)),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![0, 10]
            }
        );
        let user = auth(1000, 0, &[]);
        assert_eq!(squashing.identity(Some(&user)).uid, 1000);
        assert_eq!(squashing.identity(Some(&user)).gid, ANONYMOUS);
        assert_eq!(trusting.identity(None), Identity::anonymous());
    }

    #[test]
    fn a_thread_acting_as_a_caller_is_denied_what_the_caller_may_not_do_and_gets_root_back() {
        if !rustix::process::geteuid().is_root() {
            panic!("this test checks per-thread ids and must run as root");
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // Another thread, started before (a new thread inherits its creator's ids).
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn({
            let secret = secret.clone();
            move || {
                wait.recv().unwrap();
                std::fs::read(secret).unwrap()
            }
        });
        let server = Identity::of_server();
        let acting = ActingAs::switch(Identity::anonymous(), &server).unwrap();
        let err = std::fs::read(&secret).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        // The other thread is still root meanwhile.
        go.send(()).unwrap();
        assert_eq!(other.join().unwrap(), b"root only");
        drop(acting);
        assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
    }
}

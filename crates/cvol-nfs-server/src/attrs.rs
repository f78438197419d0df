//! Share attributes and errors in NFSv3's terms (RFC 1813).

use std::time::{Duration, SystemTime};

use cvol_share::{FileKind, Metadata, SetAttributes, SetTime, ShareError};
use nfs3_server::nfs3_types::nfs3::{
    fattr3, ftype3, nfsstat3, nfstime3, sattr3, set_atime, set_mtime, specdata3, Nfs3Option,
};
use rustix::io::Errno;

/// The attributes of a share entry; `fsid` tells clients which export it is on.
pub(crate) fn fattr_of(m: &Metadata, fsid: u64) -> fattr3 {
    fattr3 {
        type_: match m.kind {
            FileKind::File => ftype3::NF3REG,
            FileKind::Dir => ftype3::NF3DIR,
            FileKind::Symlink => ftype3::NF3LNK,
            FileKind::Fifo => ftype3::NF3FIFO,
            FileKind::Socket => ftype3::NF3SOCK,
            FileKind::CharDevice => ftype3::NF3CHR,
            FileKind::BlockDevice => ftype3::NF3BLK,
        },
        mode: m.mode,
        nlink: m.nlink,
        uid: m.uid,
        gid: m.gid,
        size: m.size,
        used: m.allocated,
        rdev: specdata3 {
            specdata1: rustix::fs::major(m.rdev),
            specdata2: rustix::fs::minor(m.rdev),
        },
        fsid,
        fileid: m.inode,
        atime: nfstime_of(m.accessed),
        mtime: nfstime_of(m.modified),
        ctime: nfstime_of(m.changed),
    }
}

fn nfstime_of(t: SystemTime) -> nfstime3 {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    nfstime3 {
        seconds: u32::try_from(since.as_secs()).unwrap_or(u32::MAX),
        nseconds: since.subsec_nanos(),
    }
}

fn time_of(t: &nfstime3) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(u64::from(t.seconds), t.nseconds.min(999_999_999))
}

/// The changes a SETATTR (or the attributes of a CREATE) asks for.
pub(crate) fn changes_of(s: &sattr3) -> SetAttributes {
    let opt = |o: &Nfs3Option<u32>| match o {
        Nfs3Option::Some(v) => Some(*v),
        Nfs3Option::None => None,
    };
    SetAttributes {
        mode: opt(&s.mode),
        uid: opt(&s.uid),
        gid: opt(&s.gid),
        size: match s.size {
            Nfs3Option::Some(v) => Some(v),
            Nfs3Option::None => None,
        },
        accessed: match &s.atime {
            set_atime::DONT_CHANGE => None,
            set_atime::SET_TO_SERVER_TIME => Some(SetTime::Now),
            set_atime::SET_TO_CLIENT_TIME(t) => Some(SetTime::At(time_of(t))),
        },
        modified: match &s.mtime {
            set_mtime::DONT_CHANGE => None,
            set_mtime::SET_TO_SERVER_TIME => Some(SetTime::Now),
            set_mtime::SET_TO_CLIENT_TIME(t) => Some(SetTime::At(time_of(t))),
        },
    }
}

/// The status a failed share operation answers.
pub(crate) fn status_of(e: &ShareError) -> nfsstat3 {
    match e {
        ShareError::NotFound(_) => nfsstat3::NFS3ERR_NOENT,
        ShareError::AlreadyExists(_) => nfsstat3::NFS3ERR_EXIST,
        ShareError::InvalidPath { reason, .. } if reason.contains("255") => {
            nfsstat3::NFS3ERR_NAMETOOLONG
        }
        ShareError::InvalidPath { .. } => nfsstat3::NFS3ERR_INVAL,
        ShareError::Escapes(_) => {
            tracing::warn!("{e}");
            nfsstat3::NFS3ERR_ACCES
        }
        ShareError::Io { source, .. } => {
            let errno = source.raw_os_error().map(Errno::from_raw_os_error);
            match errno {
                Some(Errno::PERM) => nfsstat3::NFS3ERR_PERM,
                Some(Errno::ACCESS) => nfsstat3::NFS3ERR_ACCES,
                Some(Errno::NOTDIR) => nfsstat3::NFS3ERR_NOTDIR,
                Some(Errno::ISDIR) => nfsstat3::NFS3ERR_ISDIR,
                Some(Errno::INVAL) => nfsstat3::NFS3ERR_INVAL,
                // O_NOFOLLOW met a symlink: the operation wants a file.
                Some(Errno::LOOP) => nfsstat3::NFS3ERR_INVAL,
                Some(Errno::FBIG) => nfsstat3::NFS3ERR_FBIG,
                Some(Errno::NOSPC) => nfsstat3::NFS3ERR_NOSPC,
                Some(Errno::ROFS) => nfsstat3::NFS3ERR_ROFS,
                Some(Errno::MLINK) => nfsstat3::NFS3ERR_MLINK,
                Some(Errno::NAMETOOLONG) => nfsstat3::NFS3ERR_NAMETOOLONG,
                Some(Errno::NOTEMPTY) => nfsstat3::NFS3ERR_NOTEMPTY,
                Some(Errno::DQUOT) => nfsstat3::NFS3ERR_DQUOT,
                Some(Errno::XDEV) => nfsstat3::NFS3ERR_XDEV,
                Some(Errno::NXIO) => nfsstat3::NFS3ERR_NXIO,
                Some(Errno::NOTSUP) => nfsstat3::NFS3ERR_NOTSUPP,
                _ => {
                    tracing::warn!("{e}");
                    nfsstat3::NFS3ERR_IO
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvol_share::SharePath;

    #[test]
    fn errnos_map_to_their_nfs_statuses_not_to_their_numbers() {
        let io = |errno: Errno| ShareError::Io {
            path: SharePath::root(),
            op: "test",
            source: std::io::Error::from_raw_os_error(errno.raw_os_error()),
        };
        // Linux numbers ENOTEMPTY 39 where NFS says 66: a numeric copy would be wrong.
        assert_eq!(status_of(&io(Errno::NOTEMPTY)), nfsstat3::NFS3ERR_NOTEMPTY);
        assert_eq!(status_of(&io(Errno::NOTDIR)), nfsstat3::NFS3ERR_NOTDIR);
        assert_eq!(status_of(&io(Errno::BADF)), nfsstat3::NFS3ERR_IO);
        let long = SharePath::root().join(&"x".repeat(256)).unwrap_err();
        assert_eq!(status_of(&long), nfsstat3::NFS3ERR_NAMETOOLONG);
        let dots = SharePath::root().join("..").unwrap_err();
        assert_eq!(status_of(&dots), nfsstat3::NFS3ERR_INVAL);
    }
}

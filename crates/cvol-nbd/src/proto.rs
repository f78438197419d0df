//! The NBD protocol's wire format, as the NBD specification (`doc/proto.md` of the
//! NetworkBlockDevice/nbd project) defines it. Each item cites its section.
//!
//! Written by hand: the one Rust NBD server crate (`tokio-nbd`) is GPL-2.0+ and has no
//! structured replies or metadata contexts, which `qemu-img map` and `nbdcopy` need to
//! skip holes. Everything here is pure (no I/O), so it can be fuzzed and tested alone.

// "Newstyle negotiation"
/// First magic of the server's greeting: "NBDMAGIC".
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Second magic of the greeting, and of every option request: "IHAVEOPT".
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every option reply.
pub const REPLY_MAGIC: u64 = 0x3_e889_0455_65a9;

// "Handshake flags"
/// NBD_FLAG_FIXED_NEWSTYLE
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// NBD_FLAG_NO_ZEROES
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
// "Client flags"
/// NBD_FLAG_C_FIXED_NEWSTYLE
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// NBD_FLAG_C_NO_ZEROES
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// "Transmission flags"
/// NBD_FLAG_HAS_FLAGS
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// NBD_FLAG_READ_ONLY
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// NBD_FLAG_SEND_FLUSH
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// NBD_FLAG_SEND_FUA
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// NBD_FLAG_SEND_TRIM
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// NBD_FLAG_SEND_WRITE_ZEROES
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// NBD_FLAG_SEND_DF
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// NBD_FLAG_CAN_MULTI_CONN
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// NBD_FLAG_SEND_CACHE
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// NBD_FLAG_SEND_FAST_ZERO
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// "Option types"
/// NBD_OPT_EXPORT_NAME
pub const OPT_EXPORT_NAME: u32 = 1;
/// NBD_OPT_ABORT
pub const OPT_ABORT: u32 = 2;
/// NBD_OPT_LIST
pub const OPT_LIST: u32 = 3;
/// NBD_OPT_STARTTLS
pub const OPT_STARTTLS: u32 = 5;
/// NBD_OPT_INFO
pub const OPT_INFO: u32 = 6;
/// NBD_OPT_GO
pub const OPT_GO: u32 = 7;
/// NBD_OPT_STRUCTURED_REPLY
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// NBD_OPT_LIST_META_CONTEXT
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// NBD_OPT_SET_META_CONTEXT
pub const OPT_SET_META_CONTEXT: u32 = 10;

// "Option reply types"
/// NBD_REP_ACK
pub const REP_ACK: u32 = 1;
/// NBD_REP_SERVER
pub const REP_SERVER: u32 = 2;
/// NBD_REP_INFO
pub const REP_INFO: u32 = 3;
/// NBD_REP_META_CONTEXT
pub const REP_META_CONTEXT: u32 = 4;
/// NBD_REP_ERR_UNSUP
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// NBD_REP_ERR_POLICY
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// NBD_REP_ERR_INVALID
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// NBD_REP_ERR_TLS_REQD
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
/// NBD_REP_ERR_UNKNOWN
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// NBD_REP_ERR_TOO_BIG
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// "Info types"
/// NBD_INFO_EXPORT
pub const INFO_EXPORT: u16 = 0;
/// NBD_INFO_BLOCK_SIZE
pub const INFO_BLOCK_SIZE: u16 = 3;

// "Request message" and "Request types"
/// NBD_REQUEST_MAGIC
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Bytes in a request header.
pub const REQUEST_LEN: usize = 28;
/// NBD_CMD_READ
pub const CMD_READ: u16 = 0;
/// NBD_CMD_WRITE
pub const CMD_WRITE: u16 = 1;
/// NBD_CMD_DISC
pub const CMD_DISC: u16 = 2;
/// NBD_CMD_FLUSH
pub const CMD_FLUSH: u16 = 3;
/// NBD_CMD_TRIM
pub const CMD_TRIM: u16 = 4;
/// NBD_CMD_CACHE
pub const CMD_CACHE: u16 = 5;
/// NBD_CMD_WRITE_ZEROES
pub const CMD_WRITE_ZEROES: u16 = 6;
/// NBD_CMD_BLOCK_STATUS
pub const CMD_BLOCK_STATUS: u16 = 7;

// "Command flags"
/// NBD_CMD_FLAG_FUA
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// NBD_CMD_FLAG_NO_HOLE
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// NBD_CMD_FLAG_DF
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// NBD_CMD_FLAG_REQ_ONE
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// NBD_CMD_FLAG_FAST_ZERO
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// "Simple reply message" and "Structured reply chunk message"
/// NBD_SIMPLE_REPLY_MAGIC
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// NBD_STRUCTURED_REPLY_MAGIC
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// NBD_REPLY_FLAG_DONE
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// NBD_REPLY_TYPE_NONE
pub const REPLY_TYPE_NONE: u16 = 0;
/// NBD_REPLY_TYPE_OFFSET_DATA
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// NBD_REPLY_TYPE_OFFSET_HOLE
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// NBD_REPLY_TYPE_BLOCK_STATUS
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// NBD_REPLY_TYPE_ERROR
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// "Error values"
/// NBD_EPERM
pub const EPERM: u32 = 1;
/// NBD_EIO
pub const EIO: u32 = 5;
/// NBD_EINVAL
pub const EINVAL: u32 = 22;
/// NBD_ENOSPC
pub const ENOSPC: u32 = 28;
/// NBD_EOVERFLOW
pub const EOVERFLOW: u32 = 75;
/// NBD_ENOTSUP
pub const ENOTSUP: u32 = 95;

// "base:allocation metadata context"
/// The one metadata context served.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// NBD_STATE_HOLE
pub const STATE_HOLE: u32 = 1 << 0;
/// NBD_STATE_ZERO
pub const STATE_ZERO: u32 = 1 << 1;

/// One transmission-phase request header ("Request message").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// The client's cookie (handle), echoed in the reply.
    pub cookie: u64,
    /// Offset in bytes.
    pub offset: u64,
    /// Length in bytes (of the payload, for WRITE).
    pub length: u32,
}

/// A request header that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad request magic {0:#010x}")]
pub struct BadMagic(pub u32);

impl Request {
    /// Decodes a request header.
    pub fn parse(b: &[u8; REQUEST_LEN]) -> Result<Self, BadMagic> {
        let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
        if magic != REQUEST_MAGIC {
            return Err(BadMagic(magic));
        }
        Ok(Self {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            cookie: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            length: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
        })
    }

    /// Encodes a request header (clients and tests use it).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply ("Simple reply message"), followed by `data` for a successful READ.
pub fn simple_reply(cookie: u64, error: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The header of a structured reply chunk ("Structured reply chunk message").
pub fn chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// A final NBD_REPLY_TYPE_ERROR chunk ("Structured reply types").
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(4096)];
    let mut b = Vec::with_capacity(26 + message.len());
    chunk_header(
        &mut b,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + message.len() as u32,
    );
    b.extend_from_slice(&error.to_be_bytes());
    b.extend_from_slice(&(message.len() as u16).to_be_bytes());
    b.extend_from_slice(message);
    b
}

/// An option reply ("Option reply").
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// Reads big-endian fields out of an option's data, failing on truncation.
pub struct Fields<'a>(pub &'a [u8]);

/// Option data that ends early or says more than it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("option data is truncated or malformed")]
pub struct Truncated;

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.0.len() < n {
            return Err(Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// A u16.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    /// A u32.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// A u32 length followed by that many bytes of UTF-8.
    pub fn string(&mut self) -> Result<&'a str, Truncated> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| Truncated)
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What NBD_OPT_INFO and NBD_OPT_GO ask for ("NBD_OPT_INFO and NBD_OPT_GO").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// The export's name.
    pub name: &'a str,
    /// The information items asked for.
    pub items: Vec<u16>,
}

impl<'a> InfoRequest<'a> {
    /// Decodes the option's data.
    pub fn parse(data: &'a [u8]) -> Result<Self, Truncated> {
        let mut f = Fields(data);
        let name = f.string()?;
        let count = f.u16()?;
        let items = (0..count).map(|_| f.u16()).collect::<Result<_, _>>()?;
        if !f.is_empty() {
            return Err(Truncated);
        }
        Ok(Self { name, items })
    }
}

/// What NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    /// The export's name.
    pub name: &'a str,
    /// The queries.
    pub queries: Vec<&'a str>,
}

impl<'a> MetaContextRequest<'a> {
    /// Decodes the option's data.
    pub fn parse(data: &'a [u8]) -> Result<Self, Truncated> {
        let mut f = Fields(data);
        let name = f.string()?;
        let count = f.u32()?;
        // Each query takes at least 4 bytes: a count beyond that is a lie, not a reason
        // to allocate.
        if count as usize > f.0.len() / 4 {
            return Err(Truncated);
        }
        let queries = (0..count).map(|_| f.string()).collect::<Result<_, _>>()?;
        if !f.is_empty() {
            return Err(Truncated);
        }
        Ok(Self { name, queries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip_and_magic() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 7,
            offset: 4096,
            length: 512,
        };
        assert_eq!(Request::parse(&r.encode()), Ok(r));
        let mut bad = r.encode();
        bad[0] = 0;
        assert!(Request::parse(&bad).is_err());
    }

    #[test]
    fn info_and_meta_requests() {
        let mut data = Vec::new();
        data.extend_from_slice(&9u32.to_be_bytes());
        data.extend_from_slice(b"demo/demo");
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let info = InfoRequest::parse(&data).unwrap();
        assert_eq!(
            (info.name, info.items.as_slice()),
            ("demo/demo", &[INFO_BLOCK_SIZE][..])
        );
        assert!(InfoRequest::parse(&data[..data.len() - 1]).is_err());
        let mut meta = Vec::new();
        meta.extend_from_slice(&0u32.to_be_bytes());
        meta.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            MetaContextRequest::parse(&meta).is_err(),
            "a huge count is refused, not allocated"
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = InfoRequest::parse(&data);
            let _ = MetaContextRequest::parse(&data);
            if data.len() >= REQUEST_LEN {
                let _ = Request::parse(data[..REQUEST_LEN].try_into().unwrap());
            }
        }
    }
}

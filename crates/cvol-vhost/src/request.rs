//! virtio-blk requests (VIRTIO 1.2, 5.2.6), parsed from the shape of a descriptor chain.
//!
//! Written here because no published crate parses virtio-blk requests. A driver may
//! frame a request however it likes (VERSION_1 implies ANY_LAYOUT), so a chain is seen
//! as two byte streams: what the device reads (the 16-byte header, then a write's data
//! or discard segments) and, after it, what the device writes (a read's data or the
//! id, then the one status byte). Everything here is pure arithmetic on those lengths
//! and on bytes already copied out of guest memory, so it is fuzzed without a guest.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

/// The unit of every virtio-blk offset, whatever the device's block size.
pub const SECTOR: u64 = 512;
/// Bytes in a request header: type, reserved, sector.
pub const HEADER_LEN: u64 = 16;
/// Bytes in one discard or write-zeroes segment: sector, sectors, flags.
pub const SEGMENT_LEN: u64 = 16;
/// Bytes in the answer to GET_ID.
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// A request's outcome, written into its status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Ok,
    /// Malformed, out of range, or the device failed (fenced included).
    IoErr,
    /// A request type or flag this device does not offer.
    Unsupported,
}

impl Status {
    /// The status byte.
    pub fn byte(self) -> u8 {
        (match self {
            Status::Ok => VIRTIO_BLK_S_OK,
            Status::IoErr => VIRTIO_BLK_S_IOERR,
            Status::Unsupported => VIRTIO_BLK_S_UNSUPP,
        }) as u8
    }
}

/// How a descriptor chain is laid out: bytes the device may read, then bytes it may
/// write, and how many descriptors hold data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Device-readable bytes, header included.
    pub readable: u64,
    /// Device-writable bytes, status byte included.
    pub writable: u64,
    /// Descriptors beyond the header's and the status byte's, at most.
    pub data_descriptors: usize,
    /// A device-readable descriptor came after a device-writable one.
    pub out_of_order: bool,
}

/// What the device promised the driver (its config space); requests beyond it fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The device's size in bytes.
    pub size: u64,
    /// Writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// Data descriptors per request (`seg_max`).
    pub max_data_descriptors: usize,
    /// Segments per discard or write-zeroes request.
    pub max_segments: u32,
    /// Sectors per discard or write-zeroes segment.
    pub max_segment_sectors: u32,
}

/// A parsed request header: what to do, before any segment is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes at `offset` into the writable data.
    Read {
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Write the `len` readable bytes after the header at `offset`.
    Write {
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Make every completed write durable.
    Flush,
    /// Answer the device's serial, `len` bytes of it (at most [`ID_LEN`]).
    GetId {
        /// Bytes the driver left for it.
        len: u64,
    },
    /// `count` discard segments follow the header.
    Discard {
        /// Segments.
        count: u32,
    },
    /// `count` write-zeroes segments follow the header.
    WriteZeroes {
        /// Segments.
        count: u32,
    },
}

/// One range of a discard or write-zeroes request, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Write-zeroes may deallocate the range (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).
    pub unmap: bool,
}

/// Why a request is answered with an error; `Unanswerable` has no status byte to say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The chain has no device-writable byte for the status: it is returned unanswered.
    #[error("no status byte in the descriptor chain")]
    Unanswerable,
    /// The request is answered with this status.
    #[error("{reason}")]
    Status {
        /// IOERR or UNSUPP.
        status: Status,
        /// For the log.
        reason: &'static str,
    },
}

fn ioerr(reason: &'static str) -> Refused {
    Refused::Status {
        status: Status::IoErr,
        reason,
    }
}

fn unsupported(reason: &'static str) -> Refused {
    Refused::Status {
        status: Status::Unsupported,
        reason,
    }
}

/// Parses a request from its chain's `shape` and the first [`HEADER_LEN`] readable
/// bytes (`header`, shorter when the chain is).
pub fn parse(header: &[u8], shape: Shape, limits: &Limits) -> Result<Command, Refused> {
    if shape.writable == 0 {
        return Err(Refused::Unanswerable);
    }
    if shape.out_of_order {
        return Err(ioerr(
            "device-readable descriptor after a device-writable one",
        ));
    }
    if shape.readable < HEADER_LEN || header.len() < HEADER_LEN as usize {
        return Err(ioerr("descriptor chain shorter than a request header"));
    }
    if shape.data_descriptors > limits.max_data_descriptors {
        return Err(ioerr("more data descriptors than seg_max"));
    }
    let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let after_header = shape.readable - HEADER_LEN;
    let before_status = shape.writable - 1;
    match kind {
        VIRTIO_BLK_T_IN => {
            if after_header != 0 {
                return Err(ioerr("read with device-readable data"));
            }
            let offset = data_range(sector, before_status, limits)?;
            Ok(Command::Read {
                offset,
                len: before_status,
            })
        }
        VIRTIO_BLK_T_OUT => {
            if before_status != 0 {
                return Err(ioerr("write with device-writable data"));
            }
            if limits.read_only {
                return Err(ioerr("write to a read-only device"));
            }
            let offset = data_range(sector, after_header, limits)?;
            Ok(Command::Write {
                offset,
                len: after_header,
            })
        }
        VIRTIO_BLK_T_FLUSH => {
            if after_header != 0 || before_status != 0 {
                return Err(ioerr("flush with data"));
            }
            Ok(Command::Flush)
        }
        VIRTIO_BLK_T_GET_ID => {
            if after_header != 0 {
                return Err(ioerr("get-id with device-readable data"));
            }
            Ok(Command::GetId { len: before_status })
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if before_status != 0 {
                return Err(ioerr("discard or write-zeroes with device-writable data"));
            }
            if limits.read_only {
                return Err(ioerr("discard or write-zeroes on a read-only device"));
            }
            if after_header == 0 || !after_header.is_multiple_of(SEGMENT_LEN) {
                return Err(ioerr("discard or write-zeroes data is not whole segments"));
            }
            let count = after_header / SEGMENT_LEN;
            if count > u64::from(limits.max_segments) {
                return Err(ioerr(
                    "more discard or write-zeroes segments than advertised",
                ));
            }
            let count = count as u32;
            Ok(if kind == VIRTIO_BLK_T_DISCARD {
                Command::Discard { count }
            } else {
                Command::WriteZeroes { count }
            })
        }
        _ => Err(unsupported("request type not offered")),
    }
}

/// The byte offset of `len` bytes at `sector`, if they are whole sectors on the device.
fn data_range(sector: u64, len: u64, limits: &Limits) -> Result<u64, Refused> {
    if !len.is_multiple_of(SECTOR) {
        return Err(ioerr("data is not a whole number of sectors"));
    }
    let offset = sector
        .checked_mul(SECTOR)
        .ok_or(ioerr("sector number overflows"))?;
    match offset.checked_add(len) {
        Some(end) if end <= limits.size => Ok(offset),
        _ => Err(ioerr("request beyond the end of the device")),
    }
}

/// Parses the segments of a discard (`write_zeroes` false) or write-zeroes request from
/// the bytes after its header.
pub fn parse_segments(
    bytes: &[u8],
    write_zeroes: bool,
    limits: &Limits,
) -> Result<Vec<Range>, Refused> {
    let mut ranges = Vec::with_capacity(bytes.len() / SEGMENT_LEN as usize);
    for segment in bytes.chunks_exact(SEGMENT_LEN as usize) {
        let sector = u64::from_le_bytes(segment[0..8].try_into().expect("8 bytes"));
        let sectors = u32::from_le_bytes(segment[8..12].try_into().expect("4 bytes"));
        let flags = u32::from_le_bytes(segment[12..16].try_into().expect("4 bytes"));
        let allowed = if write_zeroes {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(unsupported("unknown discard or write-zeroes flags"));
        }
        if sectors > limits.max_segment_sectors {
            return Err(ioerr(
                "discard or write-zeroes segment larger than advertised",
            ));
        }
        let len = u64::from(sectors) * SECTOR;
        let offset = data_range(sector, len, limits)?;
        ranges.push(Range {
            offset,
            len,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        size: 1 << 20,
        read_only: false,
        max_data_descriptors: 4,
        max_segments: 2,
        max_segment_sectors: 64,
    };

    fn header(kind: u32, sector: u64) -> Vec<u8> {
        let mut h = kind.to_le_bytes().to_vec();
        h.extend(0u32.to_le_bytes());
        h.extend(sector.to_le_bytes());
        h
    }

    fn shape(readable: u64, writable: u64) -> Shape {
        Shape {
            readable,
            writable,
            data_descriptors: 1,
            out_of_order: false,
        }
    }

    fn status_of(r: Result<Command, Refused>) -> Status {
        match r {
            Err(Refused::Status { status, .. }) => status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_and_writes_are_whole_sectors_within_the_device() {
        assert_eq!(
            parse(&header(VIRTIO_BLK_T_IN, 2), shape(16, 4097), &LIMITS),
            Ok(Command::Read {
                offset: 1024,
                len: 4096
            })
        );
        assert_eq!(
            parse(&header(VIRTIO_BLK_T_OUT, 0), shape(16 + 512, 1), &LIMITS),
            Ok(Command::Write {
                offset: 0,
                len: 512
            })
        );
        let last = (1 << 20) / 512 - 1;
        assert!(parse(&header(VIRTIO_BLK_T_IN, last), shape(16, 513), &LIMITS).is_ok());
        for (sector, writable) in [(last, 1025), (last + 1, 513), (u64::MAX, 513)] {
            assert_eq!(
                status_of(parse(
                    &header(VIRTIO_BLK_T_IN, sector),
                    shape(16, writable),
                    &LIMITS
                )),
                Status::IoErr,
                "sector {sector}"
            );
        }
        assert_eq!(
            status_of(parse(&header(VIRTIO_BLK_T_IN, 0), shape(16, 100), &LIMITS)),
            Status::IoErr
        );
    }

    #[test]
    fn malformed_chains_are_refused_with_ioerr_or_left_unanswered() {
        let h = header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(parse(&h, shape(16, 0), &LIMITS), Err(Refused::Unanswerable));
        assert_eq!(
            status_of(parse(&h[..8], shape(8, 513), &LIMITS)),
            Status::IoErr
        );
        assert_eq!(
            status_of(parse(&h, shape(16 + 512, 513), &LIMITS)),
            Status::IoErr
        );
        let w = header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            status_of(parse(&w, shape(16 + 512, 513), &LIMITS)),
            Status::IoErr
        );
        let mut reordered = shape(16 + 512, 1);
        reordered.out_of_order = true;
        assert_eq!(status_of(parse(&w, reordered, &LIMITS)), Status::IoErr);
        let mut many = shape(16 + 512 * 5, 1);
        many.data_descriptors = 5;
        assert_eq!(status_of(parse(&w, many, &LIMITS)), Status::IoErr);
        let f = header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(parse(&f, shape(16, 1), &LIMITS), Ok(Command::Flush));
        assert_eq!(status_of(parse(&f, shape(16, 513), &LIMITS)), Status::IoErr);
        assert_eq!(
            status_of(parse(&header(99, 0), shape(16, 1), &LIMITS)),
            Status::Unsupported
        );
    }

    #[test]
    fn read_only_devices_refuse_every_change() {
        let ro = Limits {
            read_only: true,
            ..LIMITS
        };
        for (kind, readable) in [
            (VIRTIO_BLK_T_OUT, 16 + 512),
            (VIRTIO_BLK_T_DISCARD, 32),
            (VIRTIO_BLK_T_WRITE_ZEROES, 32),
        ] {
            assert_eq!(
                status_of(parse(&header(kind, 0), shape(readable, 1), &ro)),
                Status::IoErr
            );
        }
        assert!(parse(&header(VIRTIO_BLK_T_IN, 0), shape(16, 513), &ro).is_ok());
    }

    fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend(sectors.to_le_bytes());
        s.extend(flags.to_le_bytes());
        s
    }

    #[test]
    fn discard_segments_are_counted_bounded_and_checked() {
        let d = header(VIRTIO_BLK_T_DISCARD, 0);
        assert_eq!(
            parse(&d, shape(16 + 32, 1), &LIMITS),
            Ok(Command::Discard { count: 2 })
        );
        assert_eq!(
            status_of(parse(&d, shape(16 + 48, 1), &LIMITS)),
            Status::IoErr
        );
        assert_eq!(
            status_of(parse(&d, shape(16 + 20, 1), &LIMITS)),
            Status::IoErr
        );
        assert_eq!(status_of(parse(&d, shape(16, 1), &LIMITS)), Status::IoErr);

        let mut two = segment(0, 8, 0);
        two.extend(segment(100, 64, 0));
        assert_eq!(
            parse_segments(&two, false, &LIMITS).unwrap(),
            vec![
                Range {
                    offset: 0,
                    len: 4096,
                    unmap: false
                },
                Range {
                    offset: 51200,
                    len: 32768,
                    unmap: false
                }
            ]
        );
        let refused = |bytes: Vec<u8>, wz: bool| match parse_segments(&bytes, wz, &LIMITS) {
            Err(Refused::Status { status, .. }) => status,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(refused(segment(0, 65, 0), false), Status::IoErr);
        assert_eq!(refused(segment(2047, 2, 0), false), Status::IoErr);
        assert_eq!(refused(segment(u64::MAX / 2, 1, 0), false), Status::IoErr);
        assert_eq!(refused(segment(0, 1, 1), false), Status::Unsupported);
        assert_eq!(refused(segment(0, 1, 2), true), Status::Unsupported);
        assert!(parse_segments(&segment(0, 1, 1), true, &LIMITS).unwrap()[0].unmap);
    }

    proptest::proptest! {
        #[test]
        fn any_header_and_shape_parse_to_a_request_within_the_device_or_a_refusal(
            kind in 0u32..16, sector in proptest::num::u64::ANY,
            readable in 0u64..100_000, writable in 0u64..100_000, descs in 0usize..8,
        ) {
            let s = Shape { readable, writable, data_descriptors: descs, out_of_order: false };
            match parse(&header(kind, sector), s, &LIMITS) {
                Ok(Command::Read { offset, len }) | Ok(Command::Write { offset, len }) => {
                    proptest::prop_assert!(offset + len <= LIMITS.size);
                    proptest::prop_assert_eq!(len % SECTOR, 0);
                }
                Ok(Command::Discard { count }) | Ok(Command::WriteZeroes { count }) => {
                    proptest::prop_assert!((1..=LIMITS.max_segments).contains(&count));
                }
                Ok(_) | Err(_) => {}
            }
        }
    }
}

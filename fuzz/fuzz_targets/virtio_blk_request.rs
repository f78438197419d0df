//! virtio-blk request parsing (cvol-vhost): any header, chain shape and segment bytes
//! give a request within the device or a refusal, never a panic.
#![no_main]

use cvol_vhost::request::{parse, parse_segments, Command, Limits, Shape, SECTOR};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 25 {
        return;
    }
    let (header, rest) = data.split_at(16);
    let shape = Shape {
        readable: u64::from(u32::from_le_bytes(rest[0..4].try_into().unwrap())),
        writable: u64::from(u32::from_le_bytes(rest[4..8].try_into().unwrap())),
        data_descriptors: usize::from(rest[8] & 0x7f),
        out_of_order: rest[8] & 0x80 != 0,
    };
    let limits = Limits {
        size: 1 << 30,
        read_only: rest[8] & 1 != 0,
        max_data_descriptors: 64,
        max_segments: 16,
        max_segment_sectors: 1 << 21,
    };
    match parse(header, shape, &limits) {
        Ok(Command::Read { offset, len }) | Ok(Command::Write { offset, len }) => {
            assert!(offset + len <= limits.size && len % SECTOR == 0);
        }
        Ok(Command::Discard { .. }) | Ok(Command::WriteZeroes { .. }) => {
            for write_zeroes in [false, true] {
                if let Ok(ranges) = parse_segments(&rest[9..], write_zeroes, &limits) {
                    for r in ranges {
                        assert!(r.offset + r.len <= limits.size);
                    }
                }
            }
        }
        Ok(_) | Err(_) => {}
    }
});

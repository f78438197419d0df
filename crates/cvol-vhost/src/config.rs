//! What the device offers: its feature bits and its config space.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::request::{Limits, SECTOR};

/// Bytes of the config space laid out by [`config_space`]: up to `write_zeroes_may_unmap`
/// and its padding (VIRTIO 1.2, 5.2.4).
pub const CONFIG_LEN: usize = 60;
/// Offset of the `writeback` byte, the one field a driver may write (CONFIG_WCE).
pub const WRITEBACK_OFFSET: usize = 32;

/// The virtio feature bits offered.
pub fn features(read_only: bool) -> u64 {
    let mut bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ]
    .iter()
    .fold(0u64, |acc, bit| acc | 1 << bit);
    if read_only {
        bits |= 1 << VIRTIO_BLK_F_RO;
    }
    bits | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// The vhost-user protocol features offered: QEMU refuses a block backend without
/// CONFIG; MQ lets it ask for the queue count.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::REPLY_ACK
}

/// The config space of a device within `limits`, with `queues` queues and the write
/// cache on (`writeback`) or off.
pub fn config_space(limits: &Limits, queues: u16, writeback: bool) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put =
        |offset: usize, bytes: &[u8]| c[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &(limits.size / SECTOR).to_le_bytes()); // capacity
    put(12, &(limits.max_data_descriptors as u32).to_le_bytes()); // seg_max
    put(20, &(SECTOR as u32).to_le_bytes()); // blk_size
    put(WRITEBACK_OFFSET, &[u8::from(writeback)]);
    put(34, &queues.to_le_bytes()); // num_queues
    put(36, &limits.max_segment_sectors.to_le_bytes()); // max_discard_sectors
    put(40, &limits.max_segments.to_le_bytes()); // max_discard_seg
    put(44, &1u32.to_le_bytes()); // discard_sector_alignment
    put(48, &limits.max_segment_sectors.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &limits.max_segments.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use virtio_bindings::virtio_blk::virtio_blk_config as C;

    use super::*;

    #[test]
    fn the_layout_is_the_kernels() {
        assert_eq!(offset_of!(C, capacity), 0);
        assert_eq!(offset_of!(C, seg_max), 12);
        assert_eq!(offset_of!(C, blk_size), 20);
        assert_eq!(offset_of!(C, wce), WRITEBACK_OFFSET);
        assert_eq!(offset_of!(C, num_queues), 34);
        assert_eq!(offset_of!(C, max_discard_sectors), 36);
        assert_eq!(offset_of!(C, max_discard_seg), 40);
        assert_eq!(offset_of!(C, discard_sector_alignment), 44);
        assert_eq!(offset_of!(C, max_write_zeroes_sectors), 48);
        assert_eq!(offset_of!(C, max_write_zeroes_seg), 52);
        assert_eq!(offset_of!(C, write_zeroes_may_unmap), 56);
        assert!(std::mem::size_of::<C>() >= CONFIG_LEN);
    }

    #[test]
    fn capacity_is_in_sectors_and_read_only_is_offered_only_when_asked() {
        let limits = Limits {
            size: 1 << 30,
            read_only: false,
            max_data_descriptors: 126,
            max_segments: 1,
            max_segment_sectors: 1 << 16,
        };
        let c = config_space(&limits, 4, true);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 1 << 21);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
        assert_eq!(features(false) & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(features(true) & (1 << VIRTIO_BLK_F_RO), 0);
    }
}

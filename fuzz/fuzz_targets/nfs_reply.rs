//! cvol's NFS client (record framing and reply decoding) on arbitrary server replies:
//! every call must end with a reply or an error, never a panic, a hang or an allocation
//! the reply did not pay for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cvol_share::fuzzing::answer_nfs_calls_with(data);
});

//! Whole NBD connections from arbitrary client bytes: negotiation, then requests.
//! Run with `cargo +nightly fuzz run nbd_connection` (from this directory's parent).
#![no_main]

use std::time::Duration;

use cvol_nbd::memory::serve_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(serve_bytes(input, Duration::from_secs(5)))
        .expect("the server hung or panicked");
});

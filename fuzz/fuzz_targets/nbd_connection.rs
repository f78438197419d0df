//! Whole NBD connections from arbitrary client bytes: negotiation, then requests.
//! Run with `cargo +nightly fuzz run nbd_connection` (from this directory's parent).
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use cvol_nbd::memory::{MemoryDevice, MemoryExports};
use cvol_nbd::{NbdServer, Settings};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|input: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let input = input.to_vec();
    rt.block_on(async move {
        let server = NbdServer::new(
            Arc::new(MemoryExports(Arc::new(MemoryDevice::new(1 << 20)))),
            Settings::default(),
        );
        let (mut client, conn) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(async move { server.serve_connection(conn, "fuzz").await });
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut sink)).await;
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("hung")
            .unwrap();
    });
});

//! A vhost-user-blk load generator on libblkio (`blkio` crate), for
//! `scripts/bench-vhost.sh`: keeps DEPTH requests in flight on one queue for SECONDS and
//! prints one JSON line with IOPS and MiB/s. The same binary drives cvol and
//! qemu-storage-daemon, so the ratio between them is the driver's cost taken out.
//!
//! usage: vhost-load SOCKET randread|randwrite|read|write BLOCK_SIZE DEPTH SECONDS|pass
//!
//! `pass` instead of SECONDS reads or writes every block once (sequential modes): the
//! benchmark warms a server's cache that way, as a guest reading its disk would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use blkio::ReqFlags;
use cvol_vhost::client::{wait, VhostClient};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!(
            "usage: vhost-load SOCKET randread|randwrite|read|write BLOCK_SIZE DEPTH SECONDS|pass"
        );
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let mode = args[2].as_str();
    let bs: usize = args[3].parse().expect("BLOCK_SIZE");
    let depth: usize = args[4].parse().expect("DEPTH");
    let seconds: Option<u64> = match args[5].as_str() {
        "pass" => None,
        s => Some(s.parse().expect("SECONDS")),
    };
    let (random, write) = match mode {
        "randread" => (true, false),
        "randwrite" => (true, true),
        "read" => (false, false),
        "write" => (false, true),
        other => panic!("unknown mode {other}"),
    };
    let mut c = VhostClient::connect(&socket, 1, bs * depth).expect("connect");
    c.buffer().fill(0x5a);
    let blocks = c.capacity() / bs as u64;
    assert!(seconds.is_some() || !random, "pass needs a sequential mode");
    assert!(depth as u64 <= blocks, "DEPTH exceeds the disk's blocks");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut sequential = 0u64;
    let mut next_offset = || {
        if random {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % blocks) * bs as u64
        } else {
            sequential = (sequential + 1) % blocks;
            sequential * bs as u64
        }
    };
    let submit = |c: &mut VhostClient, slot: usize, offset: u64| {
        let buf = c.buffer_ptr(slot * bs);
        if write {
            c.queue(0).write(offset, buf, bs, slot, ReqFlags::empty());
        } else {
            c.queue(0).read(offset, buf, bs, slot, ReqFlags::empty());
        }
    };
    for slot in 0..depth {
        let offset = next_offset();
        submit(&mut c, slot, offset);
    }
    let start = Instant::now();
    let deadline = seconds.map(|s| start + Duration::from_secs(s));
    let mut submitted = depth as u64;
    let more = |submitted: u64| match deadline {
        Some(deadline) => Instant::now() < deadline,
        None => submitted < blocks,
    };
    let mut done = 0u64;
    while more(submitted) {
        for completion in wait(c.queue(0), 1, None).expect("do_io") {
            assert_eq!(completion.ret, 0, "a request failed");
            done += 1;
            if more(submitted) {
                let offset = next_offset();
                submit(&mut c, completion.user_data, offset);
                submitted += 1;
            }
        }
    }
    let in_flight = (submitted - done) as usize;
    let drained = wait(c.queue(0), in_flight, Some(Duration::from_secs(30))).expect("drain");
    assert_eq!(
        drained.len(),
        in_flight,
        "requests still in flight after 30 s"
    );
    assert!(drained.iter().all(|c| c.ret == 0), "a request failed");
    done += in_flight as u64;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"bs\":{bs},\"depth\":{depth},\"iops\":{:.0},\"mib_s\":{:.1}}}",
        done as f64 / secs,
        (done * bs as u64) as f64 / secs / (1 << 20) as f64
    );
}

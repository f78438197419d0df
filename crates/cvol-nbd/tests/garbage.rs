//! Whatever bytes a client sends, the server neither panics nor hangs: it answers or
//! closes. (The same input drives the `nbd_connection` fuzz target under `fuzz/`.)

use std::time::Duration;

use cvol_nbd::memory::serve_bytes;
use cvol_nbd::proto::*;
use proptest::prelude::*;

fn run(input: Vec<u8>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(serve_bytes(&input, Duration::from_secs(10)))
        .unwrap();
}

/// A valid opening: client flags, structured replies, then NBD_OPT_GO on `mem`.
fn valid_prefix() -> Vec<u8> {
    let mut b = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    for (option, data) in [
        (OPT_STRUCTURED_REPLY, vec![]),
        (
            OPT_GO,
            [&3u32.to_be_bytes()[..], b"mem", &0u16.to_be_bytes()].concat(),
        ),
    ] {
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(&data);
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_negotiation_bytes(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        run(input);
    }

    #[test]
    fn random_requests_after_a_valid_negotiation(
        requests in proptest::collection::vec((0u16..10, any::<u16>(), any::<u64>(), 0u32..70000), 0..20),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut input = valid_prefix();
        for (kind, flags, offset, length) in requests {
            let offset = if offset % 2 == 0 { offset % (1 << 21) } else { offset };
            input.extend_from_slice(&Request { flags, kind, cookie: 1, offset, length }.encode());
            if kind == CMD_WRITE {
                input.extend(std::iter::repeat_n(0xab, length.min(5000) as usize));
            }
        }
        input.extend_from_slice(&tail);
        run(input);
    }
}

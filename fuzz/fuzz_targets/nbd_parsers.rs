//! The NBD request header and option-data parsers on arbitrary bytes.
#![no_main]

use cvol_nbd::proto::{InfoRequest, MetaContextRequest, Request, REQUEST_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = InfoRequest::parse(data);
    let _ = MetaContextRequest::parse(data);
    if let Some(header) = data.get(..REQUEST_LEN) {
        let _ = Request::parse(header.try_into().unwrap());
    }
});

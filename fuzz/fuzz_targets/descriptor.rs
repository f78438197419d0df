//! VMDK descriptors (cvol-format) on arbitrary text: a parse error or a descriptor that
//! writes back as text parsing to the same descriptor, and cVol fields that survive the
//! round trip; never a panic.
#![no_main]

use cvol_format::{CvolDisk, Descriptor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(descriptor) = Descriptor::parse(text, "fuzz.vmdk") else {
        return;
    };
    let written = descriptor.to_string();
    let again = Descriptor::parse(&written, "fuzz.vmdk").expect("a written descriptor parses");
    assert_eq!(again, descriptor, "the round trip changed the descriptor");
    if let Ok(disk) = CvolDisk::from_descriptor(&descriptor, "fuzz.vmdk") {
        let rebuilt = Descriptor::parse(&disk.to_descriptor().to_string(), "fuzz.vmdk")
            .expect("a cVol descriptor parses");
        assert_eq!(CvolDisk::from_descriptor(&rebuilt, "fuzz.vmdk").unwrap(), disk);
    }
});

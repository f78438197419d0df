//! `.vmx` files (cvol-format) on arbitrary text: a parse error or a configuration that
//! writes back unchanged and keeps its entries through a set; never a panic.
#![no_main]

use cvol_format::Vmx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut vmx) = Vmx::parse(text, "fuzz.vmx") else {
        return;
    };
    let again = Vmx::parse(&vmx.to_string(), "fuzz.vmx").expect("a written .vmx parses");
    assert_eq!(again, vmx, "the round trip changed the .vmx");
    vmx.set("cvol.fuzz", "a \"quoted\" value");
    let set = Vmx::parse(&vmx.to_string(), "fuzz.vmx").expect("a .vmx after set parses");
    assert_eq!(set.get("cvol.fuzz"), Some("a \"quoted\" value"));
});

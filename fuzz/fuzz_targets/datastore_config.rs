//! `datastore.toml` (cvol-format) on arbitrary text: a parse error or a configuration
//! that writes back as text parsing to the same fields; never a panic.
#![no_main]

use cvol_format::DatastoreConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = DatastoreConfig::parse(text, "datastore.toml") else {
        return;
    };
    let again = DatastoreConfig::parse(&config.to_string(), "datastore.toml")
        .expect("a written datastore.toml parses");
    assert_eq!(
        (again.uuid, &again.name, again.format_version, &again.providers),
        (config.uuid, &config.name, config.format_version, &config.providers)
    );
});

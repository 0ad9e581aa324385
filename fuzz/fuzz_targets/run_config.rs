//! Run-config (`config.json`) parsing: never panics; an accepted config's canonical text parses
//! back to the same config and digests the same.
#![no_main]

use kvtier_fs::namespace::{canonical_json, digest12, pretty_json, RunConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = serde_json::from_str::<RunConfig>(text) else { return };
    let canonical = canonical_json(&cfg);
    let back: RunConfig = serde_json::from_str(&canonical).expect("canonical text parses");
    assert_eq!(back, cfg);
    assert_eq!(digest12(&back), digest12(&cfg));
    let pretty: RunConfig = serde_json::from_str(&pretty_json(&cfg)).expect("config.json text parses");
    assert_eq!(pretty, cfg);
});

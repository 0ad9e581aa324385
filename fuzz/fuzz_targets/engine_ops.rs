//! Engine operation sequences (memory tiers, scripted misbehaving tiers) against the naive
//! oracle: any difference in outputs, state, events or invariants is a crash.
#![no_main]

use kvtier_core_model::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(scenario) = Scenario::decode(data) {
        if let Err(mismatch) = scenario.check() {
            panic!("{mismatch}");
        }
    }
});

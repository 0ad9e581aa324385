//! `kvtier replay` lines: after a fixed config (memory tiers only, so no input can touch the
//! file system), every line gets exactly one JSON answer and nothing panics.
#![no_main]

use kvtier::replay::Replayer;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"{"op":"config","num_blocks":4,"block_bytes":64,"policy":"arc","promotion_deadline_steps":2,"tiers":[{"type":"memory"},{"type":"memory"}]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut replayer = Replayer::new();
    assert_eq!(replayer.handle_line(CONFIG).as_deref(), Some(r#"{"ok":true}"#));
    for line in text.lines() {
        if let Some(answer) = replayer.handle_line(line) {
            serde_json::from_str::<serde_json::Value>(&answer).expect("every answer is JSON");
        } else {
            // A line is blank once a leading byte-order mark is set aside (an editor may write one).
            let blank = line.strip_prefix('\u{feff}').unwrap_or(line).trim().is_empty();
            assert!(blank, "only blank lines go unanswered");
        }
    }
    replayer.finish();
});

//! `kvtier replay` against golden traces (expected answers written by hand from SEMANTICS.md),
//! plus malformed input and randomized runs that must never crash a replay.

use std::collections::BTreeSet;

use kvtier::replay::Replayer;
use kvtier_tests::{check_answers, is_well_formed_answer, read_golden, replay, replay_stream, traces_dir, Rng};
use serde_json::Value;

/// Runs golden trace `name` through the line API and the streaming API; both must match.
fn golden(name: &str) {
    let (trace, expected) = read_golden(name);
    let answers = replay(&trace);
    if let Err(e) = check_answers(name, &expected, &answers) {
        panic!("{e}");
    }
    assert_eq!(replay_stream(trace.as_bytes()), answers, "{name}: streaming and line-by-line runs differ");
}

macro_rules! golden_tests {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { golden(stringify!($name)); } )*
        const GOLDEN: &[&str] = &[$(stringify!($name)),*];
    };
}

golden_tests!(
    alloc_order,
    lru_eviction,
    lru_touch,
    arc,
    arc_target,
    repeated_keys,
    errors,
    config_first_line,
    config_bad,
    promotion_one_tier,
    promotion_two_tiers,
    promotion_fail_load,
    cascade,
);

#[test]
fn every_fixture_has_a_test_and_an_expectation() {
    let mut traces = BTreeSet::new();
    let mut expected = BTreeSet::new();
    for entry in std::fs::read_dir(traces_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".expected.jsonl") {
            expected.insert(stem.to_owned());
        } else if let Some(stem) = name.strip_suffix(".jsonl") {
            traces.insert(stem.to_owned());
        }
    }
    assert_eq!(traces, expected, "every trace needs an expected file and vice versa");
    let tested: BTreeSet<String> = GOLDEN.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(traces, tested, "every trace needs a golden test");
}

fn kind_of(answer: &str) -> Option<String> {
    let v: Value = serde_json::from_str(answer).ok()?;
    v.get("error")?.as_str().map(str::to_owned)
}

#[test]
fn config_lines_accepted_and_refused() {
    let cases: &[(&str, Option<&str>)] = &[
        (r#"{"op":"config","num_blocks":4}"#, None),
        (r#"{"op":"config","num_blocks":0}"#, None),
        (
            r#"{"op":"config","num_blocks":4,"block_bytes":1,"policy":"arc","promotion_deadline_steps":0,"tiers":[]}"#,
            None,
        ),
        (r#"{"op":"config","num_blocks":4,"policy":"ARC"}"#, None),
        (r#"{"op":"config","num_blocks":4,"promotion_deadline_steps":4294967295}"#, None),
        (r#"{"op":"config","num_blocks":4,"tiers":[{"type":"memory"},{"type":"memory"}]}"#, None),
        (r#"{"op":"config"}"#, Some("config")),
        (r#"{"op":"config","num_blocks":-1}"#, Some("config")),
        (r#"{"op":"config","num_blocks":2.5}"#, Some("config")),
        (r#"{"op":"config","num_blocks":"4"}"#, Some("config")),
        (r#"{"op":"config","num_blocks":null}"#, Some("config")),
        (r#"{"op":"config","num_blocks":18446744073709551615}"#, Some("config")),
        (r#"{"op":"config","num_blocks":1e30}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4294967296}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"block_bytes":0}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"block_bytes":99999999999999}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"policy":"fifo"}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"policy":1}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"promotion_deadline_steps":4294967296}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"promotion_deadline_steps":-3}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"tiers":{"type":"memory"}}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"tiers":["memory"]}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"tiers":[{}]}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"tiers":[{"type":"tape"}]}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4,"tiers":[{"type":"memory","size":3}]}"#, Some("config")),
        (
            r#"{"op":"config","num_blocks":4,"tiers":[{"type":"fs","root_dir":"/tmp/x","colour":"red"}]}"#,
            Some("config"),
        ),
        (r#"{"op":"config","num_blocks":4,"events":true}"#, Some("config")),
        (r#"{"op":"state"}"#, Some("config")),
        (r#"{"op":"bogus"}"#, Some("config")),
        (r#"{"op":"config","num_blocks":4"#, Some("invalid_request")),
        (r#"["op","config"]"#, Some("invalid_request")),
    ];
    for (line, want) in cases {
        let answers = replay(&format!("{line}\n{{\"op\":\"state\"}}\n"));
        assert_eq!(answers.len(), 2, "{line}");
        assert_eq!(kind_of(&answers[0]).as_deref(), *want, "{line} answered {}", answers[0]);
        let second = kind_of(&answers[1]);
        if want.is_none() {
            assert_eq!(second, None, "a good config must leave an engine: {}", answers[1]);
        } else {
            assert_eq!(second.as_deref(), Some("config"), "after a failed config: {}", answers[1]);
        }
    }
}

#[test]
fn answers_keep_the_documented_field_order() {
    let trace = r#"{"op":"config","num_blocks":1,"block_bytes":8,"policy":"arc"}
{"op":"prepare_store","req":"r","keys":["aaaa0000"]}
{"op":"complete_store","req":"r","keys":["aaaa0000"]}
{"op":"prepare_store","req":"r","keys":["bbbb0000"]}
{"op":"take_events"}
{"op":"state"}
{"op":"verify","keys":["bbbb0000"]}
{"op":"prepare_load","keys":["bbbb0000"]}
{"op":"lookup","key":"bbbb0000"}"#;
    let answers = replay(trace);
    assert_eq!(answers[1], r#"{"ok":true,"keys_to_store":["aaaa0000"],"block_ids":[0],"evicted":[]}"#);
    assert_eq!(answers[3], r#"{"ok":true,"keys_to_store":["bbbb0000"],"block_ids":[0],"evicted":["aaaa0000"]}"#);
    assert_eq!(
        answers[4],
        r#"{"events":[{"medium":"CPU","removed":false,"keys":["aaaa0000"]},{"medium":"CPU","removed":true,"keys":["aaaa0000"]}]}"#
    );
    assert_eq!(
        answers[5],
        r#"{"ok":true,"blocks":[{"key":"bbbb0000","slot":0,"ref_cnt":-1}],"t1":["bbbb0000"],"t2":[],"b1":["aaaa0000"],"b2":[],"target":0.0}"#
    );
    assert_eq!(answers[6], r#"{"ok":true,"keys":[{"key":"bbbb0000","ready":false,"intact":false}]}"#);
    assert!(answers[7].starts_with(r#"{"error":"not_ready","message":""#), "{}", answers[7]);
    assert_eq!(answers[8], r#"{"result":"pending"}"#);
}

#[test]
fn keys_of_every_valid_length_round_trip() {
    let mut trace = String::from("{\"op\":\"config\",\"num_blocks\":64,\"block_bytes\":100}\n");
    let mut keys = Vec::new();
    for bytes in 4..=64usize {
        let key: String = (0..bytes).map(|i| format!("{:02X}", (i * 7 + bytes) % 256)).collect();
        keys.push(key);
    }
    let list = serde_json::to_string(&keys).unwrap();
    trace.push_str(&format!("{{\"op\":\"prepare_store\",\"keys\":{list}}}\n"));
    trace.push_str(&format!("{{\"op\":\"complete_store\",\"keys\":{list}}}\n"));
    trace.push_str(&format!("{{\"op\":\"verify\",\"keys\":{list}}}\n"));
    let answers = replay(&trace);
    let verify: Value = serde_json::from_str(&answers[3]).unwrap();
    let entries = verify["keys"].as_array().unwrap();
    assert_eq!(entries.len(), keys.len());
    for (entry, key) in entries.iter().zip(&keys) {
        assert_eq!(entry["key"], Value::String(key.to_lowercase()), "keys print in lowercase");
        assert_eq!(entry["ready"], Value::Bool(true));
        assert_eq!(entry["intact"], Value::Bool(true), "{key}");
    }
}

/// Lines that are not valid requests, each of which must get exactly one error line.
fn garbage_lines() -> Vec<String> {
    let mut lines: Vec<String> = [
        "not json",
        "{",
        "}",
        "null",
        "42",
        "\"lookup\"",
        "[]",
        "{}",
        "{\"op\":null}",
        "{\"op\":[\"lookup\"]}",
        "{\"op\":\"LOOKUP\",\"key\":\"aaaa0000\"}",
        "{\"op\":\"lookup\",\"key\":null}",
        "{\"op\":\"lookup\",\"key\":\"aaaa0000\",\"req\":{}}",
        "{\"op\":\"lookup\",\"key\":\"aaaa00\\u00e90\"}",
        "{\"op\":\"lookup\",\"key\":\"ééééé\"}",
        "{\"op\":\"lookup\",\"key\":\" aaaa0000\"}",
        "{\"op\":\"lookup\",\"key\":\"0xaaaa0000\"}",
        "{\"op\":\"prepare_store\",\"keys\":null}",
        "{\"op\":\"prepare_store\",\"keys\":[[\"aaaa0000\"]]}",
        "{\"op\":\"prepare_store\",\"keys\":{\"0\":\"aaaa0000\"}}",
        "{\"op\":\"complete_store\",\"keys\":[\"aaaa0000\"],\"success\":1}",
        "{\"op\":\"complete_store\",\"keys\":[\"aaaa0000\"],\"success\":null}",
        "{\"op\":\"tier_insert\",\"tier\":1e400,\"keys\":[]}",
        "{\"op\":\"tier_insert\",\"tier\":99999999999999999999999999,\"keys\":[]}",
        "{\"op\":\"tier_insert\",\"tier\":-9223372036854775809,\"keys\":[]}",
        "{\"op\":\"tier_insert\",\"tier\":9223372036854775807,\"keys\":[]}",
        "{\"op\":\"tier_insert\",\"tier\":true,\"keys\":[]}",
        "{\"op\":\"tier_fail_next\",\"tier\":0,\"kind\":7}",
        "{\"op\":\"tier_fail_next\",\"tier\":0,\"kind\":\"LOAD\"}",
        "{\"op\":\"verify\"}",
        "{\"op\":\"touch\",\"keys\":\"\"}",
        "{\"op\":\"config\",\"num_blocks\":1}",
        "{\"op\":\"end_step\"} trailing",
        "{\"op\":\"end_step\"}{\"op\":\"end_step\"}",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let hex10k = "ab".repeat(5_000);
    lines.push(format!("{{\"op\":\"lookup\",\"key\":\"{hex10k}\"}}"));
    lines.push(format!("{{\"op\":\"prepare_store\",\"keys\":[\"aaaa0000\",\"{hex10k}\"]}}"));
    lines.push(format!("{{\"op\":\"lookup\",\"key\":\"{}\"}}", "z".repeat(10_001)));
    lines.push(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)));
    lines.push(format!("{{\"op\":\"touch\",\"keys\":{}}}", "[".repeat(5_000)));
    lines.push(format!("{{\"op\":\"{}\"}}", "x".repeat(10_000)));
    lines
}

#[test]
fn garbage_lines_each_get_one_error_line() {
    let config = "{\"op\":\"config\",\"num_blocks\":2,\"block_bytes\":16,\"tiers\":[{\"type\":\"memory\"}]}";
    let garbage = garbage_lines();
    let trace = format!("{config}\n{}\n{{\"op\":\"state\"}}\n", garbage.join("\n"));
    let answers = replay(&trace);
    assert_eq!(answers.len(), garbage.len() + 2);
    assert_eq!(answers[0], r#"{"ok":true}"#);
    for (line, answer) in garbage.iter().zip(&answers[1..]) {
        let shown: String = line.chars().take(80).collect();
        assert!(is_well_formed_answer(answer), "{shown} -> {answer}");
        assert!(kind_of(answer).is_some(), "{shown} must be refused, got {answer}");
    }
    // Nothing above changed the engine.
    assert_eq!(answers.last().unwrap(), r#"{"ok":true,"blocks":[],"lru":[]}"#);
    // The same lines before any config: the first one fails the config, the rest say so.
    let answers = replay(&garbage.join("\n"));
    assert_eq!(answers.len(), garbage.len());
    assert!(answers.iter().all(|a| is_well_formed_answer(a) && kind_of(a).is_some()));
    assert!(answers[1..].iter().all(|a| kind_of(a).as_deref() == Some("config")));
}

#[test]
fn invalid_utf8_and_odd_line_endings() {
    let mut trace = b"{\"op\":\"config\",\"num_blocks\":2}\r\n".to_vec();
    trace.extend_from_slice(b"{\"op\":\"lookup\",\"key\":\"aa\xff\xfe0000\"}\n");
    trace.extend_from_slice(b"\xc3\n");
    trace.extend_from_slice(b"\r\n  \t \n");
    trace.extend_from_slice(b"{\"op\":\"lookup\",\"key\":\"aaaa0000\"}\r\n");
    trace.extend_from_slice(b"{\"op\":\"end_step\"}"); // no final newline
    let answers = replay_stream(&trace);
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert_eq!(answers[0], r#"{"ok":true}"#);
    assert_eq!(kind_of(&answers[1]).as_deref(), Some("invalid_request"));
    assert_eq!(kind_of(&answers[2]).as_deref(), Some("invalid_request"));
    assert_eq!(answers[3], r#"{"result":"miss"}"#);
    assert_eq!(answers[4], r#"{"ok":true}"#);
}

/// Random garbage: random bytes, and mutations of valid lines. Every non-blank line gets one
/// well-formed answer, and nothing panics.
#[test]
fn random_garbage_never_crashes() {
    let mut rng = Rng::from_env(0x6b76_7469_6572);
    let valid = [
        r#"{"op":"lookup","req":"r1","key":"aaaa0000"}"#,
        r#"{"op":"prepare_store","req":"r1","keys":["aaaa0000","bbbb0000"]}"#,
        r#"{"op":"complete_store","req":"r1","keys":["aaaa0000"],"success":true}"#,
        r#"{"op":"prepare_load","req":"r1","keys":["aaaa0000"]}"#,
        r#"{"op":"complete_load","req":"r1","keys":["aaaa0000"]}"#,
        r#"{"op":"touch","req":"r1","keys":["bbbb0000"]}"#,
        r#"{"op":"tier_insert","tier":0,"keys":["cccc0000"]}"#,
        r#"{"op":"tier_fail_next","tier":0,"kind":"load"}"#,
        r#"{"op":"verify","keys":["aaaa0000"]}"#,
        r#"{"op":"end_step"}"#,
        r#"{"op":"state"}"#,
        r#"{"op":"take_events"}"#,
        r#"{"op":"drain"}"#,
    ];
    let alphabet = b"{}[]\":,0123456789abcdefABCDEF-+.eE truelfasn\\u";
    for round in 0..20 {
        let mut replayer = Replayer::new();
        let first =
            replayer.handle_line(r#"{"op":"config","num_blocks":3,"block_bytes":8,"tiers":[{"type":"memory"}]}"#);
        assert_eq!(first.as_deref(), Some(r#"{"ok":true}"#));
        for _ in 0..500 {
            let mut line: Vec<u8> = rng.pick(&valid).as_bytes().to_vec();
            match rng.below(4) {
                0 => {
                    let at = rng.below(line.len());
                    line[at] = *rng.pick(alphabet);
                }
                1 => {
                    let at = rng.below(line.len());
                    line.truncate(at);
                }
                2 => {
                    let n = rng.below(40);
                    line = (0..n).map(|_| (rng.next_u64() & 0xff) as u8).collect();
                }
                _ => {}
            }
            let blank = line.iter().all(u8::is_ascii_whitespace);
            match replayer.handle_bytes(&line) {
                Some(answer) => {
                    assert!(!blank, "round {round}: a blank line got {answer}");
                    assert!(
                        is_well_formed_answer(&answer),
                        "round {round}: {:?} -> {answer}",
                        String::from_utf8_lossy(&line)
                    );
                }
                None => assert!(
                    std::str::from_utf8(&line).is_ok_and(|s| s.trim().is_empty()) || blank,
                    "round {round}: no answer for {:?}",
                    String::from_utf8_lossy(&line)
                ),
            }
        }
        replayer.finish();
    }
}

/// A random walk of valid operations over a few keys and 0 to 2 memory tiers: every answer is
/// well-formed, every ready block's bytes are its own (data never goes astray through eviction,
/// promotion, cascade or failure), `state` agrees with `verify`, and ref counts stay sane.
#[test]
fn random_valid_runs_keep_blocks_intact() {
    let mut rng = Rng::from_env(7);
    let keys: Vec<String> = (0..10u8).map(|i| format!("{:02x}{:02x}0000", i * 17, 255 - i)).collect();
    for round in 0..40 {
        let tiers = rng.below(3);
        let policy = if rng.below(2) == 0 { "lru" } else { "arc" };
        let num_blocks = 1 + rng.below(5);
        let tier_list = vec![r#"{"type":"memory"}"#; tiers].join(",");
        let mut replayer = Replayer::new();
        let config = format!(
            r#"{{"op":"config","num_blocks":{num_blocks},"block_bytes":{},"policy":"{policy}","tiers":[{tier_list}]}}"#,
            1 + rng.below(300)
        );
        assert_eq!(replayer.handle_line(&config).as_deref(), Some(r#"{"ok":true}"#), "{config}");
        for step in 0..400 {
            let n = 1 + rng.below(3);
            let some: Vec<&String> = (0..n).map(|_| rng.pick(&keys)).collect();
            let list = serde_json::to_string(&some).unwrap();
            let req = format!("r{}", rng.below(3));
            let line = match rng.below(13) {
                0 | 1 => {
                    format!(r#"{{"op":"lookup","req":"{req}","key":{}}}"#, serde_json::to_string(some[0]).unwrap())
                }
                2 | 3 => format!(r#"{{"op":"prepare_store","req":"{req}","keys":{list}}}"#),
                4 | 5 => {
                    format!(r#"{{"op":"complete_store","req":"{req}","keys":{list},"success":{}}}"#, rng.below(5) != 0)
                }
                6 => format!(r#"{{"op":"prepare_load","req":"{req}","keys":{list}}}"#),
                7 => format!(r#"{{"op":"complete_load","req":"{req}","keys":{list}}}"#),
                8 => format!(r#"{{"op":"touch","req":"{req}","keys":{list}}}"#),
                9 if tiers > 0 => format!(r#"{{"op":"tier_insert","tier":{},"keys":{list}}}"#, rng.below(tiers)),
                10 if tiers > 0 => format!(
                    r#"{{"op":"tier_fail_next","tier":{},"kind":"{}"}}"#,
                    rng.below(tiers),
                    if rng.below(2) == 0 { "load" } else { "store" }
                ),
                11 => r#"{"op":"take_events"}"#.to_owned(),
                _ => r#"{"op":"end_step"}"#.to_owned(),
            };
            let answer = replayer.handle_line(&line).unwrap();
            assert!(is_well_formed_answer(&answer), "round {round} step {step}: {line} -> {answer}");
            if let Some(kind) = kind_of(&answer) {
                assert!(
                    matches!(kind.as_str(), "not_present" | "not_ready" | "not_pinned"),
                    "round {round} step {step}: a valid line was refused: {line} -> {answer}"
                );
            }
            check_consistency(&mut replayer, &keys, num_blocks, &format!("round {round} step {step} after {line}"));
        }
        replayer.finish();
    }
}

fn check_consistency(replayer: &mut Replayer, keys: &[String], num_blocks: usize, at: &str) {
    let state: Value = serde_json::from_str(&replayer.handle_line(r#"{"op":"state"}"#).unwrap()).unwrap();
    let list = serde_json::to_string(keys).unwrap();
    let verify: Value =
        serde_json::from_str(&replayer.handle_line(&format!(r#"{{"op":"verify","keys":{list}}}"#)).unwrap()).unwrap();
    let blocks = state["blocks"].as_array().unwrap();
    assert!(blocks.len() <= num_blocks, "{at}: {state}");
    let mut slots = BTreeSet::new();
    for b in blocks {
        let slot = b["slot"].as_u64().unwrap();
        assert!((slot as usize) < num_blocks && slots.insert(slot), "{at}: {state}");
        assert!(b["ref_cnt"].as_i64().unwrap() >= -1, "{at}: {state}");
    }
    for v in verify["keys"].as_array().unwrap() {
        let block = blocks.iter().find(|b| b["key"] == v["key"]);
        let ready = v["ready"].as_bool().unwrap();
        assert_eq!(ready, block.is_some_and(|b| b["ref_cnt"].as_i64().unwrap() >= 0), "{at}: {v} vs {state}");
        if ready {
            assert_eq!(v["intact"], Value::Bool(true), "{at}: a ready block holds the wrong bytes: {v}");
        }
        if block.is_none() {
            assert_eq!(v["intact"], Value::Bool(false), "{at}: {v}");
        }
    }
    let order: Vec<&Value> = match state.get("lru") {
        Some(lru) => lru.as_array().unwrap().iter().collect(),
        None => ["t1", "t2"].iter().flat_map(|l| state[*l].as_array().unwrap()).collect(),
    };
    assert_eq!(order.len(), blocks.len(), "{at}: the policy orders every present block once: {state}");
}

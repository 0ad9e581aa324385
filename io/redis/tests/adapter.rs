//! The Redis tier as engines and traces reach it: `[[tiers]] type = "redis"` in a TOML config
//! through `TieredCache`, a replay trace whose config line names a redis tier, and
//! authentication through the URL and through the config's `password`.

mod common;

use std::sync::Arc;

use common::*;
use kvtier::config::{CacheConfig, RedisClient, RedisConfig, TierConfig};
use kvtier::replay::Replayer;
use kvtier::TieredCache;
use kvtier_core::{LookupResult, StorePlan};
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_redis::{ClientKind, RedisTier};

#[test]
fn a_toml_config_names_a_redis_tier() {
    let Some((_server, url)) = shared_server() else { return };
    let model = unique_model("toml");
    let text = format!(
        "num_blocks = 4\nblock_bytes = 8192\n[[tiers]]\ntype = \"redis\"\nurl = \"{url}\"\nmodel_name = \"{model}\"\nconnections = 1\n"
    );
    let mut cache = TieredCache::new(&CacheConfig::from_toml(&text).unwrap()).unwrap();
    let keys: Vec<_> = (0..8).map(key).collect();
    for chunk in keys.chunks(4) {
        let mut plan = StorePlan::new();
        cache.engine().prepare_store(chunk, REQ, &mut plan).unwrap();
        for (k, &slot) in plan.keys.iter().zip(&plan.slots) {
            let i = keys.iter().position(|x| x == k).unwrap() as u64;
            let mut lease = cache.region().lease(slot, Access::Write).unwrap();
            lease.as_mut_slice().unwrap()[..8192].copy_from_slice(&pattern(i, 8192));
        }
        cache.engine().complete_store(&plan.keys, REQ, true).unwrap();
        cache.engine().end_step();
        cache.engine().drain();
        cache.engine().end_step();
    }
    // Blocks 0..4 left the primary; they come back from the server.
    for (i, k) in keys.iter().enumerate().take(4) {
        let mut answer = cache.engine().lookup(k, REQ);
        while answer != LookupResult::Ready {
            assert_ne!(answer, LookupResult::Miss, "block {i}");
            cache.engine().end_step();
            cache.engine().drain();
            answer = cache.engine().lookup(k, REQ);
        }
        let (slot, _) = cache.engine_ref().primary().find(k).unwrap();
        assert_eq!(cache.region().lease(slot, Access::Read).unwrap().block(), &pattern(i as u64, 8192)[..]);
    }
    assert_eq!(cache.engine().tier_mut::<RedisTier>(0).unwrap().stats().loaded, 4);
}

#[test]
fn a_replay_config_line_names_a_redis_tier() {
    let Some((_server, url)) = shared_server() else { return };
    let model = unique_model("replay");
    let mut r = Replayer::new();
    let config = format!(
        r#"{{"op":"config","num_blocks":1,"block_bytes":64,"tiers":[{{"type":"redis","url":"{url}","model_name":"{model}"}}]}}"#
    );
    let lines = [
        config.as_str(),
        r#"{"op":"prepare_store","req":"r","keys":["3100000000"]}"#,
        r#"{"op":"complete_store","req":"r","keys":["3100000000"],"success":true}"#,
        r#"{"op":"drain"}"#,
        r#"{"op":"end_step"}"#,
        r#"{"op":"prepare_store","req":"r","keys":["3200000000"]}"#,
        r#"{"op":"complete_store","req":"r","keys":["3200000000"],"success":true}"#,
        r#"{"op":"drain"}"#,
        r#"{"op":"end_step"}"#,
        r#"{"op":"lookup","req":"r","keys":[],"key":"3100000000"}"#,
        r#"{"op":"end_step"}"#,
        r#"{"op":"drain"}"#,
        r#"{"op":"lookup","req":"r","key":"3100000000"}"#,
        r#"{"op":"verify","keys":["3100000000"]}"#,
    ];
    let answers: Vec<String> = lines.iter().filter_map(|l| r.handle_line(l)).collect();
    r.finish();
    assert_eq!(answers[0], r#"{"ok":true}"#);
    assert_eq!(answers[9], r#"{"result":"pending"}"#, "{answers:?}");
    assert_eq!(answers[12], r#"{"result":"ready"}"#, "{answers:?}");
    assert_eq!(answers[13], r#"{"ok":true,"keys":[{"key":"3100000000","ready":true,"intact":true}]}"#);
    let mut r = Replayer::new();
    let bad = r#"{"op":"config","num_blocks":1,"tiers":[{"type":"redis","url":"redis://127.0.0.1:1","colour":"red"}]}"#;
    assert!(r.handle_line(bad).unwrap().contains(r#""error":"config""#));
}

#[test]
fn authentication_through_the_url_and_the_config() {
    if !have_server() {
        return;
    }
    let server = Server::start(&["--requirepass", "s3cret"]);
    let region = Arc::new(PrimaryRegion::anonymous(2, 4096).unwrap());
    for client in [RedisClient::Thin, RedisClient::Crate] {
        let mut with_url = RedisConfig::new(format!("redis://:s3cret@127.0.0.1:{}/3", server.port));
        with_url.client = client;
        let tier = RedisTier::open(&with_url.tier_config(), Arc::clone(&region)).unwrap();
        assert!(tier.startup().namespace_checked, "{client:?}: {:?}", tier.startup());
        let mut with_password = RedisConfig::new(server.url());
        with_password.password = Some("s3cret".into());
        with_password.client = client;
        assert!(
            RedisTier::open(&with_password.tier_config(), Arc::clone(&region)).unwrap().startup().namespace_checked
        );
        // A wrong password is not a crash: the tier starts as misses.
        let mut wrong = with_password.clone();
        wrong.password = Some("nope".into());
        let tier = RedisTier::open(&wrong.tier_config(), Arc::clone(&region)).unwrap();
        assert!(tier.startup().unreachable.is_some());
        assert!(matches!(with_url.tier_config().client, ClientKind::Thin | ClientKind::Crate));
    }
    // The record went to database 3 (from the URL), not 0.
    assert!(server.cli(&["-a", "s3cret", "--no-auth-warning", "-n", "3", "KEYS", "kvt1:*:config"]).contains(":config"));
    let _ = TierConfig::Redis(Box::new(RedisConfig::new("redis://x")));
}

//! `rediss://` (feature `tls`): the tier on a server that speaks only TLS, through the `redis`
//! crate's rustls connection, round trips intact. `.ci/run` runs it with `--features tls`.
#![cfg(feature = "tls")]

mod common;

use common::*;

#[test]
fn a_tls_only_server_round_trips() {
    if !have_server() {
        return;
    }
    let server = Server::start_tls();
    // Verified against the test's own CA.
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let mut cfg = tier_config(&url, "tls-test");
    cfg.timeout = std::time::Duration::from_secs(2);
    cfg.tls_ca_file = Some(server.dir.path().join("ca.pem"));
    let mut cache = Cache::new(&cfg, 4, 65536);
    assert!(cache.tier().startup().namespace_checked, "{:?}", cache.tier().startup());
    cache.store(0..8);
    for i in 0..4 {
        assert!(cache.promote(i), "block {i} over TLS");
    }
    assert_eq!(cache.wrong, 0);
    assert_eq!(cache.tier().stats().loaded, 4);
    // Without the CA the certificate is not trusted: the tier starts as misses...
    let region = std::sync::Arc::new(kvtier_fs::region::PrimaryRegion::anonymous(1, 4096).unwrap());
    let mut untrusted = cfg.clone();
    untrusted.tls_ca_file = None;
    let tier = kvtier_redis::RedisTier::open(&untrusted, std::sync::Arc::clone(&region)).unwrap();
    assert!(tier.startup().unreachable.is_some(), "an unverified certificate is refused");
    // ... unless the URL says `#insecure` (the redis crate's spelling; test setups only).
    untrusted.urls = vec![format!("{url}/#insecure")];
    let tier = kvtier_redis::RedisTier::open(&untrusted, std::sync::Arc::clone(&region)).unwrap();
    assert!(tier.startup().namespace_checked, "{:?}", tier.startup());
    // A plain connection to the TLS port is not a server: the tier starts as misses.
    let plain = tier_config(&format!("redis://127.0.0.1:{}", server.port), "tls-test");
    let tier = kvtier_redis::RedisTier::open(&plain, region).unwrap();
    assert!(tier.startup().unreachable.is_some());
}

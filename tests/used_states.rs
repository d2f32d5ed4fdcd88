//! Where used sign-in states are kept (`sso.store`): in memory, bounded and without a scan per
//! callback; in Dify's Redis (the real server `scripts/test-services` starts), once across
//! replicas.

mod support;

use dify_gateway::sso::used_states::{MEMORY_CAP, MemoryStates, RedisStates, UsedStates};
use std::time::{Duration, Instant};
use support::dify_services::services;

const TTL: Duration = Duration::from_secs(600);

#[test]
fn a_state_is_used_once_and_forgotten_when_it_expires() {
    let m = MemoryStates::default();
    assert!(m.consume_at("a", TTL, 1_000));
    assert!(!m.consume_at("a", TTL, 1_000), "second use refused");
    assert!(!m.consume_at("a", TTL, 1_599), "until it expires");
    assert!(m.consume_at("b", TTL, 1_600), "b is new");
    assert_eq!(m.len(), 1, "a expired and was dropped when b came");
}

/// Anyone can start sign-ins and send callbacks: the set must not grow without bound, and a
/// callback must not cost a walk over everything remembered.
#[test]
fn memory_is_bounded_and_each_callback_costs_the_same() {
    let m = MemoryStates::default();
    let started = Instant::now();
    for i in 0..(MEMORY_CAP + 5_000) {
        assert!(m.consume_at(&format!("{i:032x}"), TTL, 1_000));
    }
    assert_eq!(m.len(), MEMORY_CAP);
    // The oldest were forgotten first; the newest are still refused.
    assert!(!m.consume_at(&format!("{:032x}", MEMORY_CAP + 4_999), TTL, 1_000));
    assert!(m.consume_at(&format!("{:032x}", 0), TTL, 1_000));
    // 105,000 insertions with a full scan each would take minutes; bounded work takes well under
    // a second even in a debug build on a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn redis_keeps_a_state_once_for_every_replica_with_its_expiry() {
    let Some(s) = services().await else {
        return;
    };
    let prefix = format!(
        "test-{}:dify_gateway:sso_state:",
        uuid::Uuid::new_v4().simple()
    );
    let client = || redis::Client::open(s.redis_url.as_str()).unwrap();
    let replica_a = RedisStates::new(client(), prefix.clone());
    let replica_b = RedisStates::new(client(), prefix.clone());
    let state = "0123456789abcdef0123456789abcdef";
    assert_eq!(replica_a.consume(state, TTL).await, Ok(true));
    assert_eq!(replica_b.consume(state, TTL).await, Ok(false));
    assert_eq!(replica_a.consume(state, TTL).await, Ok(false));
    let mut conn = s.redis().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}{state}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((590..=600).contains(&ttl), "ttl {ttl}");
    // A Redis that cannot be reached is an error, never "not used".
    let dead = format!("redis://{}/0", support::dead_addr());
    let gone = RedisStates::new(redis::Client::open(dead.as_str()).unwrap(), prefix);
    assert!(gone.consume(state, TTL).await.is_err());
}

/// `sso.store: redis` with a Redis that does not answer: `-t` and start-up both refuse, with the
/// same reason, instead of a gateway whose every sign-in then fails.
#[test]
fn a_redis_store_that_cannot_be_reached_stops_check_and_start() {
    let dead = format!("redis://{}/0", support::dead_addr());
    let yaml = format!(
        "server:\n  listen: [\"{}\"]\n  admin_listen: \"{}\"\n\
         sso:\n  login_url: \"http://sso.invalid/login?ret={{callback_url}}\"\n  \
         exchange:\n    url: \"http://127.0.0.1:9/x\"\n  store: redis\n\
         dify:\n  secret_key: \"used-states-test-secret-key-0123456789\"\n  redis_url: {}\n",
        support::free_addr(),
        support::free_addr(),
        support::yq(&dead)
    );
    let (out, path, _dir) = support::check_config(&yaml);
    let all = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stderr = all
        .lines()
        .find(|l| {
            l.starts_with(
                "dify-gateway: sso.store: redis cannot keep used sign-in states: dify.redis_url:",
            )
        })
        .unwrap_or_else(|| panic!("no reason in {all}"));
    let started = support::run_cli(&["-c", support::path_str(&path)]);
    assert_eq!(started.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&started.stderr).contains(stderr.trim()),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    // --offline says what it did not check.
    let offline = support::run_cli(&["-t", "--offline", "-c", support::path_str(&path)]);
    assert_eq!(offline.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&offline.stdout).contains(
            "skipped (--offline): connecting to Dify's Redis (dify.redis_url) for sso.store"
        ),
        "{}",
        String::from_utf8_lossy(&offline.stdout)
    );
}

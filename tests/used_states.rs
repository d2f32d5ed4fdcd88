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

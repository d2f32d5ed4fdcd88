//! Shared machinery for the integration tests: start the real `dify-gateway` binary on a generated
//! YAML configuration, mock upstreams running inside the test process, and small HTTP clients that
//! send exactly the bytes and headers a test asks for.
//!
//! Everything listens on 127.0.0.1 ephemeral ports; nothing leaves the machine.
//!
//! - [`gateway`]: [`GatewayBuilder`] / [`Gateway`] (launch, readiness, captured logs, kill on drop),
//!   [`check_config`] for `-t`.
//! - [`upstream`]: [`MockUpstream`] (echo, SSE, slow, custom handler), [`WsUpstream`] (websocket
//!   echo), [`dead_addr`].
//! - [`client`]: [`Req`] / [`Resp`] over hyper's low-level HTTP/1 client, [`raw_http`] for requests
//!   no well-behaved client would send, and assertion helpers for the gateway's error answers.

#![allow(dead_code)]

pub mod client;
pub mod gateway;
pub mod upstream;

pub use client::*;
pub use gateway::*;
pub use upstream::*;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

/// How long any single wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A free 127.0.0.1 port, never the same one twice within this test binary (two tests running in
/// parallel could otherwise be handed the same just-released port).
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let mut seen = HANDED_OUT.lock().unwrap();
        if seen.get_or_insert_with(HashSet::new).insert(addr.port()) {
            return addr;
        }
    }
}

/// Polls `probe` every 25 ms until it returns `Some`, or gives up after `limit`.
pub async fn poll_until<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True when `s` is a UUID of version 4 (the trace ids the gateway generates).
pub fn is_uuid_v4(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 4)
}

/// Lower-case hex SHA-256, to compare bodies without keeping them.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
pub mod browser_sim;
pub mod cas_mock;
pub mod dify_mock;
pub mod dify_services;
pub mod dify_webapp;
pub mod identity_mock;
pub mod mock_http;
pub mod oidc_mock;
pub mod sso_env;
pub mod sso_mock;

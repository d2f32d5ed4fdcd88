//! Real PostgreSQL and Redis for the builtin minter's tests, started by `scripts/test-services`
//! (which installs them from Debian when missing). Each test gets a fresh database with Dify's
//! tables (tests/fixtures/dify_schema.sql). A [`Relay`] between the gateway and a service lets a
//! test take the service "down" and back without stopping it for the other tests.
//!
//! Without the services: under `CI=true` the tests fail with the reason; elsewhere they are skipped
//! with a notice.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

/// The fixture's workspace (tenants.id).
pub const WORKSPACE: &str = "7d5e1c2a-0000-4000-8000-00000000beef";
pub const SCHEMA: &str = include_str!("../fixtures/dify_schema.sql");

#[derive(Debug, Clone)]
pub struct Services {
    /// The server's `postgres` database (for CREATE DATABASE).
    pub pg_admin_url: String,
    pub redis_url: String,
    /// The CA that signed the PostgreSQL server's certificate (the server runs with `ssl = on`).
    pub pg_ca: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_env_file() -> Option<Services> {
    let text = std::fs::read_to_string(root().join("target/test-services.env")).ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    Some(Services {
        pg_admin_url: get("DIFY_TEST_PG_URL")?,
        redis_url: get("DIFY_TEST_REDIS_URL")?,
        // An env file without it is from services started before PostgreSQL ran with TLS:
        // scripts/test-services restarts them.
        pg_ca: get("DIFY_TEST_PG_CA")?,
    })
}

async fn answers(s: &Services) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(&s.pg_admin_url, NoTls)
        .await
        .map_err(|e| format!("PostgreSQL at {}: {e}", s.pg_admin_url))?;
    tokio::spawn(conn);
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    let redis = redis::Client::open(s.redis_url.as_str()).map_err(|e| e.to_string())?;
    let mut c = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut c)
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    Ok(())
}

/// The services, starting them with `scripts/test-services` if they do not answer. None (with a
/// notice) when they cannot be had outside CI; a panic under CI=true.
pub async fn services() -> Option<Services> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Some(s) = read_env_file()
        && answers(&s).await.is_ok()
    {
        return Some(s);
    }
    let started = STARTED.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(root().join("scripts/test-services"))
            .arg("start")
            .output()
            .map_err(|e| format!("cannot run scripts/test-services: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/test-services failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    let result = match (started, read_env_file()) {
        (Err(e), _) => Err(e.clone()),
        (Ok(()), None) => Err("scripts/test-services wrote no target/test-services.env".into()),
        (Ok(()), Some(s)) => answers(&s).await.map(|()| s),
    };
    match result {
        Ok(s) => Some(s),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("PostgreSQL and Redis are needed for the builtin minter's tests under CI: {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: PostgreSQL and Redis are not available ({e}); run scripts/test-services"
            );
            None
        }
    }
}

/// A fresh database with Dify's tables.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: tokio_postgres::Client,
}

impl Services {
    pub async fn fresh_db(&self) -> TestDb {
        self.fresh_db_with(SCHEMA).await
    }

    /// A fresh database with `schema` (e.g. a mock Dify release's [`schema_sql`]).
    ///
    /// [`schema_sql`]: super::dify_mock::DifySettings::schema_sql
    pub async fn fresh_db_with(&self, schema: &str) -> TestDb {
        let name = format!("dg_{}", uuid::Uuid::new_v4().simple());
        let (admin, conn) = tokio_postgres::connect(&self.pg_admin_url, NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = self.db_url(&name);
        let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(schema).await.unwrap();
        TestDb { name, url, client }
    }

    /// The URL of database `name` on the test server.
    pub fn db_url(&self, name: &str) -> String {
        let (base, _) = self.pg_admin_url.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub fn pg_addr(&self) -> std::net::SocketAddr {
        let u = url::Url::parse(&self.pg_admin_url).unwrap();
        format!("127.0.0.1:{}", u.port().unwrap()).parse().unwrap()
    }

    pub fn redis_addr(&self) -> std::net::SocketAddr {
        let u = url::Url::parse(&self.redis_url).unwrap();
        format!("127.0.0.1:{}", u.port().unwrap()).parse().unwrap()
    }
}

impl TestDb {
    pub async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.unwrap().get(0)
    }
}

/// A TCP relay to a service: `cut()` closes every relayed connection and refuses new ones (the
/// service is "down"), `restore()` brings it back.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Relay {
            addr,
            up,
            conns,
            accept,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by the relay's.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Dify's `serialize_redis_name` (api/extensions/redis_names.py), which its Redis client applies
/// to every key: `REDIS_KEY_PREFIX` stripped; empty: the key as it is; else `<prefix>:<key>`.
pub fn dify_redis_name(prefix: &str, key: &str) -> String {
    match prefix.trim() {
        "" => key.to_string(),
        p => format!("{p}:{key}"),
    }
}

/// Dify's `AccountService.refresh_token`, against the same Redis keys, as a Dify with
/// `REDIS_KEY_PREFIX=prefix` names them: look up `refresh_token:<t>`, then rotate both keys
/// (delete the old pair, store a new pair with the same TTL). Returns (account id, new refresh
/// token), or Dify's error text.
pub async fn dify_refresh(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    refresh_token: &str,
    ttl_secs: u64,
) -> Result<(String, String), String> {
    let key = |k: String| dify_redis_name(prefix, &k);
    let account_id: Option<String> = redis::cmd("GET")
        .arg(key(format!("refresh_token:{refresh_token}")))
        .query_async(redis)
        .await
        .unwrap();
    let account_id = account_id.ok_or("Invalid refresh token")?;
    let new_token = {
        let mut b = [0u8; 64];
        for chunk in b.chunks_mut(16) {
            chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        super::hex(&b)
    };
    // _delete_refresh_token(old, account.id) then _store_refresh_token(new, account.id)
    let _: () = redis::cmd("DEL")
        .arg(key(format!("refresh_token:{refresh_token}")))
        .query_async(redis)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(key(format!("account_refresh_token:{account_id}")))
        .query_async(redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SETEX")
        .arg(key(format!("refresh_token:{new_token}")))
        .arg(ttl_secs)
        .arg(&account_id)
        .query_async(redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SETEX")
        .arg(key(format!("account_refresh_token:{account_id}")))
        .arg(ttl_secs)
        .arg(&new_token)
        .query_async(redis)
        .await
        .unwrap();
    Ok((account_id, new_token))
}

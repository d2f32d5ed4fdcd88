//! Sign-ins per second through `sso.minter: builtin` against a real PostgreSQL and Redis (issue 7).
//! Run by `bench/minter.sh`, which starts the services; by hand:
//!
//! ```sh
//! scripts/test-services && . target/test-services.env
//! cargo run --release --example minter_bench -- "$DIFY_TEST_PG_URL" "$DIFY_TEST_REDIS_URL" [seconds] [concurrency]
//! ```
//!
//! It creates a fresh database with Dify's tables (tests/fixtures/dify_schema.sql), then measures,
//! each for `seconds` with `concurrency` sign-ins in flight: new users (every sign-in creates an
//! account, a link and a join) and returning users (a pool of existing accounts signing in again).
//! Each sign-in is the minter's whole work: one transaction (advisory lock, look-ups, inserts or
//! the login update), the Redis SETEX pair, the access token.

use dify_gateway::dify::DifyConfig;
use dify_gateway::dify::provisioning::ProvisioningConfig;
use dify_gateway::sso::minter::{MintContext, Minter};
use dify_gateway::sso::protocol::Identity;
use dify_gateway::sso::{Secret, SsoConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WORKSPACE: &str = "7d5e1c2a-0000-4000-8000-00000000beef";
const SCHEMA: &str = include_str!("../tests/fixtures/dify_schema.sql");
const RETURNING_USERS: usize = 500;

fn identity(n: usize, prefix: &str) -> Identity {
    Identity {
        issuer: "https://cas.example.com/cas".into(),
        subject: format!("{prefix}{n}"),
        email: Some(format!("{prefix}{n}@example.com")),
        email_verified: true,
        name: Some(format!("User {n}")),
        groups: vec!["staff".into()],
        id_token_hint: None,
    }
}

struct Run {
    label: &'static str,
    done: usize,
    errors: usize,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

async fn run(
    m: Arc<dyn Minter>,
    label: &'static str,
    prefix: &'static str,
    pick: fn(usize) -> usize,
    seconds: u64,
    concurrency: usize,
) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (m, next, stop, errors) = (m.clone(), next.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = pick(next.fetch_add(1, Ordering::Relaxed));
                    let ctx = MintContext {
                        trace_id: "bench",
                        protocol: "cas",
                        client_ip: Some("192.0.2.1".parse().unwrap()),
                    };
                    let t = Instant::now();
                    match m.mint(&identity(n, prefix), &ctx).await {
                        Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first error: {e}");
                            }
                        }
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies_ms = Vec::new();
    for w in workers {
        latencies_ms.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies_ms.sort_by(f64::total_cmp);
    Run {
        label,
        done: latencies_ms.len(),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_ms,
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: minter_bench PG_ADMIN_URL REDIS_URL [seconds] [concurrency]");
        std::process::exit(2);
    }
    let seconds: u64 = args.get(3).map_or(10, |s| s.parse().unwrap());
    let concurrency: usize = args.get(4).map_or(16, |s| s.parse().unwrap());

    let db = format!("dg_bench_{}", uuid::Uuid::new_v4().simple());
    let (admin, conn) = tokio_postgres::connect(&args[1], tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let db_url = format!("{}/{db}", args[1].rsplit_once('/').unwrap().0);
    let (client, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute(SCHEMA).await.unwrap();

    let sso = SsoConfig {
        enabled: true,
        protocol: dify_gateway::sso::Protocol::Cas,
        minter: dify_gateway::sso::config::MinterKind::Builtin,
        provisioning: ProvisioningConfig {
            workspace_id: WORKSPACE.into(),
            integrate_provider: "cas".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let dify = DifyConfig {
        secret_key: Secret::new("bench-secret-key-0123456789"),
        database_url: Secret::new(db_url.as_str()),
        redis_url: Secret::new(args[2].as_str()),
        ..Default::default()
    };
    let m: Arc<dyn Minter> = Arc::from(
        dify_gateway::sso::minter::build(&sso, &dify)
            .unwrap()
            .unwrap(),
    );
    // The returning users exist first (created by a first sign-in each).
    for n in 0..RETURNING_USERS {
        let ctx = MintContext {
            trace_id: "bench",
            protocol: "cas",
            client_ip: None,
        };
        m.mint(&identity(n, "ret"), &ctx).await.unwrap();
    }
    let new = run(m.clone(), "new users", "new", |n| n, seconds, concurrency).await;
    let returning = run(
        m.clone(),
        "returning users",
        "ret",
        |n| n % RETURNING_USERS,
        seconds,
        concurrency,
    )
    .await;
    let accounts: i64 = client
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "builtin minter, {concurrency} sign-ins in flight, {seconds}s per scenario, {accounts} accounts at the end"
    );
    println!("| scenario | sign-ins | errors | per second | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    for r in [&new, &returning] {
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
            r.label,
            r.done,
            r.errors,
            r.done as f64 / r.elapsed.as_secs_f64(),
            pct(&r.latencies_ms, 0.5),
            pct(&r.latencies_ms, 0.99),
            pct(&r.latencies_ms, 1.0),
        );
    }
    drop(client);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await;
}

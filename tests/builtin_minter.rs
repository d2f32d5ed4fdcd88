//! `sso.minter: builtin` (issue 7) against a real PostgreSQL with Dify's tables
//! (tests/fixtures/dify_schema.sql) and a real Redis, both started by `scripts/test-services`.
//! Most tests drive the minter as the flow does (library level); the last ones sign in through the
//! real gateway binary with a mock CAS server and a mock Dify that checks signature and CSRF.

mod support;

use base64::Engine;
use dify_gateway::dify::DifyConfig;
use dify_gateway::dify::provisioning::ProvisioningConfig;
use dify_gateway::sso::minter::{MintContext, Minter};
use dify_gateway::sso::protocol::Identity;
use dify_gateway::sso::{Secret, SsoConfig, SsoFailure};
use std::time::Duration;
use support::browser_sim::Browser;
use support::cas_mock::{CasMock, CasUser};
use support::dify_mock::{DifyMock, DifySettings};
use support::dify_services::{Relay, Services, TestDb, WORKSPACE, dify_refresh, services};
use support::{Gateway, yq};
use uuid::Uuid;

const KEY: &str = "sk-builtin-minter-test-key-0b6f3c1d9e";
const IP: &str = "203.0.113.7";

macro_rules! need_services {
    () => {
        match services().await {
            Some(s) => s,
            None => return,
        }
    };
}

fn configs(db_url: &str, redis_url: &str, prov: ProvisioningConfig) -> (SsoConfig, DifyConfig) {
    let sso = SsoConfig {
        enabled: true,
        protocol: dify_gateway::sso::Protocol::Cas,
        minter: dify_gateway::sso::config::MinterKind::Builtin,
        provisioning: prov,
        ..Default::default()
    };
    let dify = DifyConfig {
        secret_key: Secret::new(KEY),
        database_url: Secret::new(db_url),
        redis_url: Secret::new(redis_url),
        ..Default::default()
    };
    (sso, dify)
}

fn prov() -> ProvisioningConfig {
    ProvisioningConfig {
        workspace_id: WORKSPACE.into(),
        integrate_provider: "cas".into(),
        ..Default::default()
    }
}

fn minter(sso: &SsoConfig, dify: &DifyConfig) -> Box<dyn Minter> {
    // The minter's logs (why a sign-in failed) in the test output.
    let _ = env_logger::builder().is_test(true).try_init();
    dify_gateway::sso::minter::build(sso, dify)
        .expect("build")
        .expect("a minter")
}

fn identity(subject: &str, email: &str, name: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: "https://cas.example.com/cas".into(),
        subject: subject.into(),
        email: Some(email.into()),
        email_verified: true,
        name: Some(name.into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        id_token_hint: None,
    }
}

async fn mint(
    m: &dyn Minter,
    id: &Identity,
) -> Result<dify_gateway::dify::DifySession, SsoFailure> {
    let ctx = MintContext {
        trace_id: "00000000-0000-4000-8000-000000000001",
        protocol: "cas",
        client_ip: Some(IP.parse().unwrap()),
    };
    m.mint(id, &ctx).await
}

struct Env {
    svc: Services,
    db: TestDb,
    sso: SsoConfig,
    dify: DifyConfig,
}

impl Env {
    async fn new(svc: Services, prov: ProvisioningConfig) -> Env {
        let db = svc.fresh_db().await;
        let (sso, dify) = configs(&db.url, &svc.redis_url, prov);
        Env { svc, db, sso, dify }
    }

    fn minter(&self) -> Box<dyn Minter> {
        minter(&self.sso, &self.dify)
    }

    async fn account_id(&self, email: &str) -> Option<Uuid> {
        self.db
            .client
            .query_opt("SELECT id FROM accounts WHERE lower(email) = $1", &[&email])
            .await
            .unwrap()
            .map(|r| r.get(0))
    }

    async fn joins(&self, account: Uuid) -> Vec<(Uuid, String, bool)> {
        self.db
            .client
            .query(
                "SELECT tenant_id, role, current FROM tenant_account_joins WHERE account_id = $1 ORDER BY created_at",
                &[&account],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// Inserts an account as Dify would have (e.g. through its own sign-up or an invitation).
    async fn insert_account(&self, email: &str, status: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.db
            .client
            .execute(
                "INSERT INTO accounts (id, name, email, status, interface_language, timezone, initialized_at, last_login_at, last_login_ip) \
                 VALUES ($1, 'Existing', $2, $3, 'de-DE', 'Europe/Berlin', now(), '2020-01-01', '10.0.0.1')",
                &[&id, &email, &status],
            )
            .await
            .unwrap();
        id
    }
}

fn workspace() -> Uuid {
    Uuid::parse_str(WORKSPACE).unwrap()
}

fn claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn redis_get(svc: &Services, key: &str) -> (Option<String>, i64) {
    let mut r = svc.redis().await;
    let v: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut r)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(key)
        .query_async(&mut r)
        .await
        .unwrap();
    (v, ttl)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn new_user_gets_an_active_account_a_join_a_link_and_dify_tokens() {
    let env = Env::new(need_services!(), prov()).await;
    let m = env.minter();
    let s = mint(&*m, &identity("ann", "ann@example.com", "Ann Example", &[]))
        .await
        .unwrap();
    let id = env
        .account_id("ann@example.com")
        .await
        .expect("account created");
    let row = env
        .db
        .client
        .query_one(
            "SELECT name, email, status, password, interface_language, interface_theme, timezone, \
             initialized_at IS NOT NULL, last_login_at IS NOT NULL, last_login_ip, \
             abs(extract(epoch FROM (last_login_at - (now() AT TIME ZONE 'UTC')))) < 60 FROM accounts WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Ann Example");
    assert_eq!(row.get::<_, String>(1), "ann@example.com");
    assert_eq!(row.get::<_, String>(2), "active");
    assert_eq!(row.get::<_, Option<String>>(3), None, "no password");
    assert_eq!(row.get::<_, String>(4), "en-US");
    assert_eq!(row.get::<_, String>(5), "light");
    assert_eq!(row.get::<_, String>(6), "UTC");
    assert!(row.get::<_, bool>(7), "initialized_at set");
    assert!(row.get::<_, bool>(8), "last_login_at set");
    assert_eq!(row.get::<_, String>(9), IP);
    assert!(
        row.get::<_, bool>(10),
        "timestamps are naive UTC like Dify's"
    );
    assert_eq!(
        env.joins(id).await,
        vec![(workspace(), "normal".to_string(), true)]
    );
    let link = env
        .db
        .client
        .query_one(
            "SELECT provider, open_id, encrypted_token FROM account_integrates WHERE account_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            link.get::<_, String>(0),
            link.get::<_, String>(1),
            link.get::<_, String>(2)
        ),
        ("cas".into(), "ann".into(), String::new())
    );
    // The access token exactly as Dify's get_account_jwt_token makes it.
    let c = claims(&s.access_token);
    let obj = c.as_object().unwrap();
    assert_eq!(obj.len(), 4, "{c}");
    assert_eq!(c["user_id"], id.to_string());
    assert_eq!(c["iss"], "SELF_HOSTED");
    assert_eq!(c["sub"], "Console API Passport");
    let exp = c["exp"].as_u64().unwrap();
    assert!(
        exp + 5 >= now_secs() + 3600 && exp <= now_secs() + 3600,
        "{exp}"
    );
    assert_eq!(
        dify_gateway::dify::tokens::verify_access_token(KEY, &s.access_token),
        Ok(id.to_string())
    );
    assert_eq!(s.refresh_token.len(), 128);
    assert!(s.refresh_token.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[tokio::test]
async fn redis_keys_and_ttls_are_exactly_dify_s() {
    let svc = need_services!();
    let mut env = Env::new(svc, prov()).await;
    env.dify.refresh_token_expire_days = 7;
    let m = env.minter();
    let s = mint(&*m, &identity("kim", "kim@example.com", "Kim", &[]))
        .await
        .unwrap();
    let id = env.account_id("kim@example.com").await.unwrap().to_string();
    let (v, ttl) = redis_get(&env.svc, &format!("refresh_token:{}", s.refresh_token)).await;
    assert_eq!(v.as_deref(), Some(id.as_str()));
    assert!((7 * 86400 - 5..=7 * 86400).contains(&ttl), "ttl {ttl}");
    let (v, ttl) = redis_get(&env.svc, &format!("account_refresh_token:{id}")).await;
    assert_eq!(v.as_deref(), Some(s.refresh_token.as_str()));
    assert!((7 * 86400 - 5..=7 * 86400).contains(&ttl), "ttl {ttl}");
    // A second sign-in replaces the account's key, as Dify's login does.
    let s2 = mint(&*m, &identity("kim", "kim@example.com", "Kim", &[]))
        .await
        .unwrap();
    let (v, _) = redis_get(&env.svc, &format!("account_refresh_token:{id}")).await;
    assert_eq!(v.as_deref(), Some(s2.refresh_token.as_str()));
}

#[tokio::test]
async fn existing_user_is_found_by_email_whatever_its_case() {
    let env = Env::new(need_services!(), prov()).await;
    let existing = env.insert_account("Bob@Example.COM", "active").await;
    // Bob already has a current workspace elsewhere: the new join must not steal `current`.
    let other = Uuid::new_v4();
    env.db
        .client
        .execute(
            "INSERT INTO tenant_account_joins (tenant_id, account_id, role, current) VALUES ($1, $2, 'owner', true)",
            &[&other, &existing],
        )
        .await
        .unwrap();
    let m = env.minter();
    let s = mint(
        &*m,
        &identity("bob", "bob@example.com", "Bob New Name", &[]),
    )
    .await
    .unwrap();
    assert_eq!(
        dify_gateway::dify::tokens::verify_access_token(KEY, &s.access_token),
        Ok(existing.to_string())
    );
    assert_eq!(env.db.count("SELECT count(*) FROM accounts").await, 1);
    let row = env
        .db
        .client
        .query_one(
            "SELECT name, interface_language, last_login_ip, last_login_at > '2020-01-02' FROM accounts WHERE id = $1",
            &[&existing],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Existing", "the name is Dify's");
    assert_eq!(row.get::<_, String>(1), "de-DE", "preferences are kept");
    assert_eq!(row.get::<_, String>(2), IP);
    assert!(row.get::<_, bool>(3), "last_login_at updated");
    let joins = env.joins(existing).await;
    assert_eq!(joins.len(), 2, "{joins:?}");
    assert!(joins.contains(&(other, "owner".into(), true)));
    assert!(joins.contains(&(workspace(), "normal".into(), false)));
}

#[tokio::test]
async fn existing_user_without_a_join_is_joined_again_and_made_current() {
    let env = Env::new(need_services!(), prov()).await;
    let existing = env.insert_account("carol@example.com", "active").await;
    let m = env.minter();
    mint(&*m, &identity("carol", "carol@example.com", "Carol", &[]))
        .await
        .unwrap();
    assert_eq!(
        env.joins(existing).await,
        vec![(workspace(), "normal".into(), true)]
    );
    // Removed from the workspace in Dify (join deleted): the next sign-in adds it back.
    env.db
        .client
        .execute("DELETE FROM tenant_account_joins", &[])
        .await
        .unwrap();
    mint(&*m, &identity("carol", "carol@example.com", "Carol", &[]))
        .await
        .unwrap();
    assert_eq!(
        env.joins(existing).await,
        vec![(workspace(), "normal".into(), true)]
    );
    // A join that lost `current` gets it back when the account has no current workspace.
    env.db
        .client
        .execute("UPDATE tenant_account_joins SET current = false", &[])
        .await
        .unwrap();
    mint(&*m, &identity("carol", "carol@example.com", "Carol", &[]))
        .await
        .unwrap();
    assert_eq!(
        env.joins(existing).await,
        vec![(workspace(), "normal".into(), true)]
    );
    assert_eq!(env.db.count("SELECT count(*) FROM accounts").await, 1);
}

#[tokio::test]
async fn banned_and_closed_users_are_refused_and_nothing_is_written() {
    let env = Env::new(need_services!(), prov()).await;
    let m = env.minter();
    for (email, status) in [("dan@example.com", "banned"), ("eve@example.com", "closed")] {
        let id = env.insert_account(email, status).await;
        let err = mint(&*m, &identity(status, email, "X", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 403, "{err}");
        assert_eq!(err.code(), "sso_not_allowed");
        assert!(err.to_string().contains(&format!("is {status}")), "{err}");
        assert!(
            env.joins(id).await.is_empty(),
            "no join for a {status} user"
        );
        let (v, _) = redis_get(&env.svc, &format!("account_refresh_token:{id}")).await;
        assert_eq!(v, None, "no refresh token for a {status} user");
        let ip: String = env
            .db
            .client
            .query_one("SELECT last_login_ip FROM accounts WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(ip, "10.0.0.1", "login not recorded");
    }
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM account_integrates")
            .await,
        0
    );
}

#[tokio::test]
async fn pending_invited_account_is_activated_like_dify_s_login() {
    let env = Env::new(need_services!(), prov()).await;
    let id = env.insert_account("pat@example.com", "pending").await;
    mint(
        &*env.minter(),
        &identity("pat", "pat@example.com", "Pat", &[]),
    )
    .await
    .unwrap();
    let status: String = env
        .db
        .client
        .query_one("SELECT status FROM accounts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "active");
}

#[tokio::test]
async fn roles_come_from_the_group_map_else_the_default() {
    let mut p = prov();
    p.default_role = "editor".into();
    p.role_map = [("dify-admins", "admin"), ("analysts", "dataset_operator")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut env = Env::new(need_services!(), p).await;
    // Dify runs with DATASET_OPERATOR_ENABLED=true, else that role is refused (see config tests).
    env.dify.dataset_operator_enabled = Some(true);
    let m = env.minter();
    for (who, groups, role) in [
        ("adm", &["staff", "dify-admins"][..], "admin"),
        ("ana", &["analysts"][..], "dataset_operator"),
        ("nob", &["staff"][..], "editor"),
    ] {
        let email = format!("{who}@example.com");
        mint(&*m, &identity(who, &email, who, groups))
            .await
            .unwrap();
        let id = env.account_id(&email).await.unwrap();
        assert_eq!(
            env.joins(id).await,
            vec![(workspace(), role.to_string(), true)],
            "{who}"
        );
    }
}

/// `role_sync: on_sign_in`: promotion and demotion follow the groups at every sign-in, except
/// that the owner is never touched and the last admin is not demoted; `first_sign_in` (the
/// default) leaves a join's role alone.
#[tokio::test]
async fn role_sync_follows_the_directory_but_spares_the_owner_and_the_last_admin() {
    let role_map = |p: &mut ProvisioningConfig| {
        p.role_map = [("dify-admins", "admin"), ("devs", "editor")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    };
    let mut p = prov();
    role_map(&mut p);
    p.role_sync = dify_gateway::dify::provisioning::RoleSync::OnSignIn;
    let env = Env::new(need_services!(), p).await;
    let m = env.minter();
    let role = |email: &'static str| {
        let env = &env;
        async move {
            let id = env.account_id(email).await.unwrap();
            env.joins(id).await[0].1.clone()
        }
    };
    let sign_in = |who: &'static str, groups: &'static [&'static str]| {
        let m = &m;
        async move {
            let email = format!("{who}@example.com");
            mint(&**m, &identity(who, &email, who, groups))
                .await
                .unwrap();
        }
    };
    sign_in("ann", &["dify-admins"]).await;
    sign_in("bob", &["dify-admins"]).await;
    sign_in("cid", &[]).await;
    assert_eq!(role("cid@example.com").await, "normal");
    // Promotion and demotion.
    sign_in("cid", &["devs"]).await;
    assert_eq!(role("cid@example.com").await, "editor");
    sign_in("ann", &["devs"]).await;
    assert_eq!(role("ann@example.com").await, "editor");
    // Bob is now the last admin: leaving the group does not demote him.
    sign_in("bob", &[]).await;
    assert_eq!(role("bob@example.com").await, "admin");
    // The owner keeps the owner role whatever the directory says.
    let owner = env.account_id("cid@example.com").await.unwrap();
    env.db
        .client
        .execute(
            "UPDATE tenant_account_joins SET role = 'owner' WHERE account_id = $1",
            &[&owner],
        )
        .await
        .unwrap();
    sign_in("cid", &[]).await;
    assert_eq!(role("cid@example.com").await, "owner");

    // first_sign_in: the role set at the join stays.
    let mut p = prov();
    role_map(&mut p);
    let env = Env::new(need_services!(), p).await;
    let m = env.minter();
    mint(&*m, &identity("dan", "dan@example.com", "dan", &["devs"]))
        .await
        .unwrap();
    mint(
        &*m,
        &identity("dan", "dan@example.com", "dan", &["dify-admins"]),
    )
    .await
    .unwrap();
    let id = env.account_id("dan@example.com").await.unwrap();
    assert_eq!(env.joins(id).await[0].1, "editor");
}

#[tokio::test]
async fn unknown_user_is_refused_when_accounts_are_not_created() {
    let mut p = prov();
    p.create_accounts = false;
    let env = Env::new(need_services!(), p).await;
    let err = mint(
        &*env.minter(),
        &identity("zed", "zed@example.com", "Zed", &[]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "sso_not_allowed");
    assert!(err.to_string().contains("no Dify account"), "{err}");
    assert_eq!(env.db.count("SELECT count(*) FROM accounts").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_first_logins_make_one_account_and_one_join() {
    let env = Env::new(need_services!(), prov()).await;
    let m: std::sync::Arc<dyn Minter> = std::sync::Arc::from(env.minter());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(
                async move { mint(&*m, &identity("fay", "Fay@Example.com", "Fay", &[])).await },
            )
        })
        .collect();
    let mut users = std::collections::HashSet::new();
    for t in tasks {
        let s = t.await.unwrap().expect("every concurrent sign-in succeeds");
        users
            .insert(dify_gateway::dify::tokens::verify_access_token(KEY, &s.access_token).unwrap());
    }
    assert_eq!(users.len(), 1, "one account id for all 20: {users:?}");
    assert_eq!(env.db.count("SELECT count(*) FROM accounts").await, 1);
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM tenant_account_joins")
            .await,
        1
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) FROM account_integrates")
            .await,
        1
    );
}

#[tokio::test]
async fn a_minted_refresh_token_is_rotated_by_dify_s_refresh_logic() {
    let env = Env::new(need_services!(), prov()).await;
    let s = mint(
        &*env.minter(),
        &identity("gus", "gus@example.com", "Gus", &[]),
    )
    .await
    .unwrap();
    let id = env.account_id("gus@example.com").await.unwrap().to_string();
    let mut r = env.svc.redis().await;
    let (account, new_token) = dify_refresh(&mut r, "", &s.refresh_token, 30 * 86400)
        .await
        .expect("Dify accepts the gateway's refresh token");
    assert_eq!(account, id);
    assert_eq!(
        redis_get(&env.svc, &format!("refresh_token:{}", s.refresh_token))
            .await
            .0,
        None,
        "the old token is gone"
    );
    assert_eq!(
        redis_get(&env.svc, &format!("account_refresh_token:{id}"))
            .await
            .0
            .as_deref(),
        Some(new_token.as_str())
    );
    assert_eq!(
        dify_refresh(&mut r, "", &s.refresh_token, 30 * 86400).await,
        Err("Invalid refresh token".into()),
        "an old token cannot be replayed"
    );
}

#[tokio::test]
async fn database_down_is_an_error_page_and_leaves_no_partial_rows() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    let relay = Relay::start(svc.pg_addr()).await;
    let (sso, dify) = configs(&relay.url(&db.url), &svc.redis_url, prov());
    let m = minter(&sso, &dify);
    relay.cut();
    let err = mint(&*m, &identity("hal", "hal@example.com", "Hal", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (503, "sso_dify_unavailable"),
        "{err}"
    );
    assert!(err.to_string().contains("database"), "{err}");
    // Fails half-way (the join insert): the account insert is rolled back with it.
    relay.restore();
    db.client
        .batch_execute("ALTER TABLE tenant_account_joins RENAME TO tenant_account_joins_gone")
        .await
        .unwrap();
    let err = mint(&*m, &identity("hal", "hal@example.com", "Hal", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "sso_dify_unavailable", "{err}");
    assert_eq!(db.count("SELECT count(*) FROM accounts").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM account_integrates").await, 0);
    db.client
        .batch_execute("ALTER TABLE tenant_account_joins_gone RENAME TO tenant_account_joins")
        .await
        .unwrap();
    mint(&*m, &identity("hal", "hal@example.com", "Hal", &[]))
        .await
        .expect("works once the database is back");
    assert_eq!(db.count("SELECT count(*) FROM accounts").await, 1);
}

#[tokio::test]
async fn redis_down_is_an_error_page_and_the_next_login_works() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    let relay = Relay::start(svc.redis_addr()).await;
    let (sso, dify) = configs(&db.url, &relay.url(&svc.redis_url), prov());
    let m = minter(&sso, &dify);
    // Once with a working connection, so the cut also breaks an open one.
    mint(&*m, &identity("ida", "ida@example.com", "Ida", &[]))
        .await
        .unwrap();
    relay.cut();
    let err = mint(&*m, &identity("jon", "jon@example.com", "Jon", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (503, "sso_dify_unavailable"),
        "{err}"
    );
    assert!(err.to_string().contains("Redis"), "{err}");
    assert_eq!(
        db.count("SELECT count(*) FROM accounts WHERE email = 'jon@example.com'")
            .await,
        0,
        "rolled back: no account without a session"
    );
    relay.restore();
    let s = mint(&*m, &identity("jon", "jon@example.com", "Jon", &[]))
        .await
        .expect("the next sign-in works");
    let id = dify_gateway::dify::tokens::verify_access_token(KEY, &s.access_token).unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM accounts WHERE email = 'jon@example.com'")
            .await,
        1
    );
    assert_eq!(
        redis_get(&svc, &format!("account_refresh_token:{id}"))
            .await
            .0
            .as_deref(),
        Some(s.refresh_token.as_str())
    );
}

#[tokio::test]
async fn startup_check_names_a_missing_column_and_a_missing_workspace() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    let (sso, dify) = configs(&db.url, &svc.redis_url, prov());
    let ok = dify_gateway::sso::builtin_minter::preflight(&sso, &dify)
        .await
        .unwrap();
    assert!(ok.contains("Test workspace"), "{ok}");
    db.client
        .batch_execute("ALTER TABLE accounts DROP COLUMN last_active_at")
        .await
        .unwrap();
    let err = dify_gateway::sso::builtin_minter::preflight(&sso, &dify)
        .await
        .unwrap_err();
    assert!(
        err.contains("lacks column accounts.last_active_at") && err.contains("not supported"),
        "{err}"
    );
    let db2 = svc.fresh_db().await;
    let mut p = prov();
    p.workspace_id = Uuid::new_v4().to_string();
    let (sso, dify) = configs(&db2.url, &svc.redis_url, p);
    let err = dify_gateway::sso::builtin_minter::preflight(&sso, &dify)
        .await
        .unwrap_err();
    assert!(
        err.contains("sso.provisioning.workspace_id: there is no workspace"),
        "{err}"
    );
    let (sso, dify) = configs(
        &db2.url,
        &format!("redis://{}", support::dead_addr()),
        prov(),
    );
    let err = dify_gateway::sso::builtin_minter::preflight(&sso, &dify)
        .await
        .unwrap_err();
    assert!(err.starts_with("dify.redis_url"), "{err}");
}

// --- Through the real binary -------------------------------------------------------------------

fn gateway_yaml(cas: &CasMock, db_url: &str, redis_url: &str) -> String {
    format!(
        "sso:\n  protocol: cas\n  state_secret: {}\n  cas:\n    server: {}\n  minter: builtin\n  provisioning:\n    workspace_id: {}\n    integrate_provider: cas\n    role_map: {{dify-admins: admin}}\n\
         dify:\n  secret_key: {}\n  database_url: {}\n  redis_url: {}\n",
        yq("state-secret-0123456789abcdef-builtin"),
        yq(&cas.base()),
        yq(WORKSPACE),
        yq(KEY),
        yq(db_url),
        yq(redis_url),
    )
}

#[tokio::test]
async fn sign_in_through_the_gateway_creates_the_account_and_dify_accepts_the_session() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    let cas = CasMock::start().await;
    let dify = DifyMock::start(DifySettings::new(KEY)).await;
    let gw = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .upstream("web", &[dify.addr()])
        .extra_yaml(&gateway_yaml(&cas, &db.url, &svc.redis_url))
        .start()
        .await;
    assert!(
        gw.stderr().contains("Redis answers"),
        "the startup check ran: {}",
        gw.stderr()
    );
    cas.sign_in_as(CasUser::new(
        "lee",
        "Lee@Example.com",
        "Lee Example",
        &["dify-admins"],
    ));
    let mut b = Browser::new();
    let first = b.get(&gw.url("/signin?redirect_url=/apps")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    // /signin -> CAS /login -> the callback, which answers 303 to /sso/continue with the cookies.
    let at_cas = b.hop(&first).await;
    assert_eq!(at_cas.status, 302, "{}", at_cas.body);
    let callback = b.hop(&at_cas).await;
    assert_eq!(callback.status, 303, "{}: {}", callback.url, callback.body);
    let id = db
        .client
        .query_one(
            "SELECT id, name FROM accounts WHERE email = 'lee@example.com'",
            &[],
        )
        .await
        .unwrap();
    let (id, name): (Uuid, String) = (id.get(0), id.get(1));
    assert_eq!(name, "Lee Example");
    let role: String = db
        .client
        .query_one(
            "SELECT role FROM tenant_account_joins WHERE account_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "admin");
    let ip: String = db
        .client
        .query_one("SELECT last_login_ip FROM accounts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ip, "127.0.0.1");
    dify.add_account(&id.to_string(), &name);
    let landing = b.follow(callback, 5).await;
    assert_eq!(landing.status, 200, "{}: {}", landing.url, landing.body);
    assert!(landing.url.ends_with("/apps"), "{}", landing.url);
    assert!(
        landing.body.contains("Signed in as Lee Example"),
        "{}",
        landing.body
    );
    // The console API with the CSRF header, as Dify's front end calls it.
    let csrf = b.cookie(&gw.url("/"), "csrf_token").expect("csrf cookie");
    let profile = b
        .request(
            "GET",
            &gw.url("/console/api/account/profile"),
            None,
            Some(&gw.url("/apps")),
            &[("X-CSRF-Token", &csrf)],
        )
        .await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert!(profile.body.contains(&id.to_string()), "{}", profile.body);
    // Dify's refresh accepts the refresh cookie the gateway set.
    let refresh = b
        .cookie(&gw.url("/"), "refresh_token")
        .expect("refresh cookie");
    let mut r = svc.redis().await;
    let (account, _) = dify_refresh(&mut r, "", &refresh, 30 * 86400)
        .await
        .unwrap();
    assert_eq!(account, id.to_string());
}

#[tokio::test]
async fn gateway_refuses_to_start_on_an_unsupported_schema() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    db.client
        .batch_execute("ALTER TABLE tenant_account_joins DROP COLUMN current")
        .await
        .unwrap();
    let cas = CasMock::start().await;
    let builder = Gateway::builder().extra_yaml(&gateway_yaml(&cas, &db.url, &svc.redis_url));
    let path = builder.temp_path("gateway.yaml");
    std::fs::write(&path, builder.to_yaml()).unwrap();
    let mut child = std::process::Command::new(support::BIN)
        .arg("-c")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the gateway started on a schema without tenant_account_joins.current");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("lacks column tenant_account_joins.current"),
        "{stderr}"
    );
}

// --- dify.database_url's sslmode, against the test PostgreSQL (ssl = on, its own CA) -----------

/// `dify-gateway -t` (or `-t --offline`) on `yaml`, with `env` added to the environment.
fn check(yaml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = std::process::Command::new(support::BIN);
    cmd.arg("-t")
        .args(extra_args)
        .arg("-c")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .env_remove("RUST_LOG")
        .env_remove("REDIS_KEY_PREFIX")
        .env_remove("DATASET_OPERATOR_ENABLED");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    // What -t says to the operator, without the process log's JSON lines (warnings).
    let said: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        said.concat(),
    )
}

/// A database URL in libpq's key=value form, naming the server `host` (checked by verify-full)
/// but connecting to 127.0.0.1.
fn key_value_url(svc: &Services, db: &TestDb, host: &str, extra: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user=postgres dbname={} {extra}",
        svc.pg_addr().port(),
        db.name
    )
}

/// Whether a connection made as the gateway makes it is encrypted (PostgreSQL's pg_stat_ssl).
async fn connects_with_tls(url: &str) -> Result<bool, String> {
    let db = dify_gateway::dify::store::parse_url(url)?;
    let (client, conn) = db
        .config
        .connect(db.tls.clone())
        .await
        .map_err(|e| db.explain(&e))?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// A CA the server's certificate was not signed by, in a PEM file.
fn other_ca(dir: &std::path::Path) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn sslmode_means_what_it_means_to_libpq_against_a_server_with_its_own_ca() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = other_ca(dir.path());
    let ca = svc.pg_ca.clone();
    let url = |q: &str| format!("{}{q}", db.url);
    // (URL, encrypted?) for the modes that connect; the server's certificate is unknown to the
    // public roots, as Debian's snakeoil one is.
    let connects = [
        (url(""), true),
        (url("?sslmode=disable"), false),
        (url("?sslmode=allow"), true),
        (url("?sslmode=prefer"), true),
        (url("?sslmode=require"), true),
        (url(&format!("?sslmode=require&sslrootcert={ca}")), true),
        (url(&format!("?sslmode=verify-ca&sslrootcert={ca}")), true),
        (url(&format!("?sslmode=verify-full&sslrootcert={ca}")), true),
        (
            key_value_url(
                &svc,
                &db,
                "not-the-server.test",
                &format!("sslmode=verify-ca sslrootcert='{ca}'"),
            ),
            true,
        ),
        (
            key_value_url(&svc, &db, "localhost", "sslmode=require"),
            true,
        ),
    ];
    for (u, tls) in &connects {
        assert_eq!(connects_with_tls(u).await, Ok(*tls), "{u}");
    }
    // What libpq refuses, and why.
    let refused = [
        (url("?sslmode=verify-ca"), "UnknownIssuer"),
        (url("?sslmode=verify-full"), "UnknownIssuer"),
        (
            url(&format!("?sslmode=require&sslrootcert={wrong_ca}")),
            "UnknownIssuer",
        ),
        (
            url(&format!("?sslmode=verify-ca&sslrootcert={wrong_ca}")),
            "UnknownIssuer",
        ),
        (
            key_value_url(
                &svc,
                &db,
                "not-the-server.test",
                &format!("sslmode=verify-full sslrootcert={ca}"),
            ),
            "certificate not valid for name \"not-the-server.test\"",
        ),
    ];
    for (u, why) in &refused {
        let e = connects_with_tls(u).await.unwrap_err();
        assert!(
            e.contains("invalid peer certificate") && e.contains(why),
            "{u}: {e}"
        );
        assert!(
            e.contains("sslmode=verify") || e.contains("sslmode=require"),
            "{e}"
        );
    }

    // The same through the binary: -t connects as start-up does, and says why it cannot.
    let cas = CasMock::start().await;
    for (u, _) in &connects {
        let (code, stdout, stderr) = check(&gateway_yaml(&cas, u, &svc.redis_url), &[], &[]);
        assert_eq!(code, Some(0), "{u}: {stderr}");
        assert!(stdout.contains("Redis answers"), "{stdout}");
    }
    for (u, why) in &refused {
        let (code, _, stderr) = check(&gateway_yaml(&cas, u, &svc.redis_url), &[], &[]);
        assert_eq!(code, Some(1), "{u}");
        assert!(
            stderr.contains("cannot connect to Dify's database")
                && stderr.contains(why)
                && !stderr.contains("postgres@"),
            "{u}: {stderr}"
        );
    }
}

#[test]
fn bad_sslmode_or_root_file_is_a_configuration_error_naming_the_field() {
    let yaml = |url: &str| {
        format!(
            "sso:\n  protocol: cas\n  state_secret: state-secret-0123456789abcdef-builtin\n  cas:\n    server: https://cas.example.com/cas\n  minter: builtin\n  provisioning:\n    workspace_id: {WORKSPACE}\n\
             dify:\n  secret_key: {KEY}\n  database_url: {}\n  redis_url: redis://127.0.0.1:6379/0\n",
            yq(url)
        )
    };
    let (code, _, stderr) = check(
        &yaml("postgresql://u:hunter2@db/dify?sslmode=verify"),
        &["--offline"],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(":11: dify.database_url: sslmode \"verify\" is not one of libpq's"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let (code, _, stderr) = check(
        &yaml("postgresql://db/dify?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"),
        &["--offline"],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("dify.database_url: sslrootcert \"/nonexistent/ca.pem\" cannot be read"),
        "{stderr}"
    );
}

// --- -t runs the start-up checks ---------------------------------------------------------------

#[tokio::test]
async fn check_runs_the_startup_checks_and_offline_names_what_it_skips() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    db.client
        .batch_execute("ALTER TABLE tenant_account_joins DROP COLUMN current")
        .await
        .unwrap();
    let cas = CasMock::start().await;
    let yaml = gateway_yaml(&cas, &db.url, &svc.redis_url);
    let (code, stdout, stderr) = check(&yaml, &[], &[]);
    assert_eq!(code, Some(1), "-t must fail where start-up fails: {stdout}");
    assert_eq!(
        stderr.trim(),
        "dify-gateway: sso.minter: builtin cannot work: Dify's database lacks column tenant_account_joins.current (boolean): \
         this Dify version's schema is not supported by sso.minter: builtin (supported: Dify 1.x)"
    );
    // Start-up says exactly the same.
    let builder = Gateway::builder().extra_yaml(&yaml);
    let path = builder.temp_path("gateway.yaml");
    std::fs::write(&path, builder.to_yaml()).unwrap();
    let started = std::process::Command::new(support::BIN)
        .arg("-c")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(started.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&started.stderr).contains(stderr.trim()),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );

    let (code, stdout, stderr) = check(&yaml, &["--offline"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(" is ok: "), "{stdout}");
    assert!(
        stdout.contains("skipped (--offline): connecting to Dify's PostgreSQL (dify.database_url) and Redis (dify.redis_url), Dify's schema and the workspace"),
        "{stdout}"
    );

    // Redis down: -t names it too.
    let good = svc.fresh_db().await;
    let dead = format!("redis://{}/0", support::dead_addr());
    let (code, _, stderr) = check(&gateway_yaml(&cas, &good.url, &dead), &[], &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("dify-gateway: sso.minter: builtin cannot work: dify.redis_url:"),
        "{stderr}"
    );
    let (code, stdout, _) = check(&gateway_yaml(&cas, &good.url, &svc.redis_url), &[], &[]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("sso.minter builtin: Dify's database has the tables")
            && stdout.contains("Redis answers"),
        "{stdout}"
    );
}

#[test]
fn offline_needs_test_and_says_when_there_is_nothing_to_skip() {
    // dify.version: auto (the default) asks Dify at start-up, so there is that to skip.
    let (code, stdout, stderr) = check(
        "server:\n  listen: [\"127.0.0.1:18080\"]\n",
        &["--offline"],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("skipped (--offline): asking Dify for its version"),
        "{stdout}"
    );
    let (code, stdout, stderr) = check(
        "server:\n  listen: [\"127.0.0.1:18080\"]\ndify:\n  version: \"1.14.2\"\n",
        &["--offline"],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("--offline: nothing to skip"), "{stdout}");
    let out = support::run_cli(&["--offline"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--test"));
}

// --- REDIS_KEY_PREFIX -------------------------------------------------------------------------

#[tokio::test]
async fn with_a_key_prefix_every_key_carries_it_as_dify_s_do() {
    let svc = need_services!();
    let mut env = Env::new(svc, prov()).await;
    // A trailing colon is Dify's to double, not the gateway's to drop.
    let prefix = format!("dg-{}:", Uuid::new_v4().simple());
    env.dify.redis_key_prefix = Some(prefix.clone());
    let s = mint(
        &*env.minter(),
        &identity("pia", "pia@example.com", "Pia", &[]),
    )
    .await
    .unwrap();
    let id = env.account_id("pia@example.com").await.unwrap().to_string();
    let (v, _) = redis_get(
        &env.svc,
        &format!("{prefix}:refresh_token:{}", s.refresh_token),
    )
    .await;
    assert_eq!(v.as_deref(), Some(id.as_str()));
    let (v, _) = redis_get(&env.svc, &format!("{prefix}:account_refresh_token:{id}")).await;
    assert_eq!(v.as_deref(), Some(s.refresh_token.as_str()));
    let (v, _) = redis_get(&env.svc, &format!("refresh_token:{}", s.refresh_token)).await;
    assert_eq!(v, None, "nothing unprefixed");
    let mut r = env.svc.redis().await;
    assert_eq!(
        dify_refresh(&mut r, "", &s.refresh_token, 60).await,
        Err("Invalid refresh token".into()),
        "a Dify without the prefix would not find it"
    );
    let (account, _) = dify_refresh(&mut r, &prefix, &s.refresh_token, 60)
        .await
        .expect("Dify with REDIS_KEY_PREFIX accepts the gateway's token");
    assert_eq!(account, id);
    assert_eq!(env.dify.redis_key("k"), format!("{prefix}:k"));
}

#[tokio::test]
async fn gateway_takes_redis_key_prefix_from_the_environment_and_dify_s_refresh_works() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    let cas = CasMock::start().await;
    let dify = DifyMock::start(DifySettings::new(KEY)).await;
    let prefix = format!("tenant-{}", Uuid::new_v4().simple());
    let gw = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .upstream("web", &[dify.addr()])
        .env("REDIS_KEY_PREFIX", &prefix)
        .extra_yaml(&gateway_yaml(&cas, &db.url, &svc.redis_url))
        .start()
        .await;
    cas.sign_in_as(CasUser::new("rey", "rey@example.com", "Rey", &[]));
    let mut b = Browser::new();
    let first = b.get(&gw.url("/signin?redirect_url=/apps")).await;
    let at_cas = b.hop(&first).await;
    let callback = b.hop(&at_cas).await;
    assert_eq!(callback.status, 303, "{}: {}", callback.url, callback.body);
    let refresh = b
        .cookie(&gw.url("/"), "refresh_token")
        .expect("refresh cookie");
    let mut r = svc.redis().await;
    assert_eq!(
        dify_refresh(&mut r, "", &refresh, 60).await,
        Err("Invalid refresh token".into()),
        "the key is not written unprefixed"
    );
    let (account, _) = dify_refresh(&mut r, &prefix, &refresh, 60)
        .await
        .expect("Dify with the same REDIS_KEY_PREFIX refreshes the session");
    let id: Uuid = db
        .client
        .query_one(
            "SELECT id FROM accounts WHERE email = 'rey@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(account, id.to_string());
}

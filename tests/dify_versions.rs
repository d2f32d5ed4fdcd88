//! The gateway follows the Dify release behind it (reference §3 and §9): `dify.version: auto`
//! against mock Difys answering 1.9.1, 1.14.2 and 1.17.1 (session delivery, the access token's
//! `iss`, the builtin minter's rows in that release's schema), against a Dify that is down at
//! start, and one upgraded under a running gateway; explicit settings winning; `-t`, `/readyz`
//! and the `dify_gateway_dify_info` metric telling the operator which Dify it fronts; and
//! `accounts.normalized_email` against real PostgreSQL with and without the column.

mod support;

use dify_gateway::dify::DifyConfig;
use dify_gateway::dify::provisioning::ProvisioningConfig;
use dify_gateway::sso::minter::{MintContext, Minter};
use dify_gateway::sso::protocol::Identity;
use dify_gateway::sso::{Secret, SsoConfig};
use serde_json::Value;
use support::browser_sim::Browser;
use support::cas_mock::{CasMock, CasUser};
use support::dify_mock::{DifyMock, DifySettings, NORMALIZED_EMAIL_SQL};
use support::dify_services::{SCHEMA, Services, TestDb, WORKSPACE, services};
use support::{Gateway, WAIT, check_config, free_addr, path_str, poll_until, run_cli, yq};
use uuid::Uuid;

const KEY: &str = "sk-dify-versions-test-key-5a1c9e2b7d";

macro_rules! need_services {
    () => {
        match services().await {
            Some(s) => s,
            None => return,
        }
    };
}

async fn readyz(gw: &Gateway) -> Value {
    let req = format!(
        "GET /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.admin
    );
    let resp = support::raw_http(gw.admin, req.as_bytes())
        .await
        .expect("admin answers");
    let body = String::from_utf8_lossy(&resp.body).to_string();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz is JSON ({e}): {body}"))
}

/// Polls `/readyz` until its `dify` object has `version` `want`.
async fn readyz_until_version(gw: &Gateway, want: &str) -> Value {
    let got = poll_until(WAIT, || {
        let fut = readyz(gw);
        async {
            let r = fut.await;
            (r["dify"]["version"] == want).then_some(r)
        }
    })
    .await;
    match got {
        Some(r) => r,
        None => {
            let last = readyz(gw).await;
            panic!(
                "/readyz never reported Dify {want}: {last}\n{}",
                gw.stderr()
            );
        }
    }
}

fn gateway_yaml(cas: &CasMock, db_url: &str, redis_url: &str, dify_extra: &str) -> String {
    format!(
        "sso:\n  protocol: cas\n  state_secret: {}\n  cas:\n    server: {}\n  minter: builtin\n  provisioning:\n    workspace_id: {}\n    integrate_provider: cas\n\
         dify:\n  secret_key: {}\n  database_url: {}\n  redis_url: {}\n{dify_extra}",
        yq("state-secret-0123456789abcdef-versions"),
        yq(&cas.base()),
        yq(WORKSPACE),
        yq(KEY),
        yq(db_url),
        yq(redis_url),
    )
}

async fn accounts(db: &TestDb) -> Vec<(Uuid, String)> {
    db.client
        .query("SELECT id, email FROM accounts ORDER BY created_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A person Dify already knows as `Jane.Doe+x@gmail.com` (with the normalized column filled, as
/// Dify 1.17 fills it) signs in through the gateway as `janedoe@gmail.com`, with
/// `dify.version: auto` against mock Dify `version`.
async fn release_end_to_end(version: &str) {
    let svc = need_services!();
    let settings = DifySettings::for_version(KEY, version);
    let db = svc.fresh_db_with(&settings.schema_sql()).await;
    let known = Uuid::new_v4();
    db.client
        .execute(
            "INSERT INTO accounts (id, name, email, status, interface_language, timezone, initialized_at) \
             VALUES ($1, 'Jane Doe', 'Jane.Doe+x@gmail.com', 'active', 'en-US', 'UTC', now())",
            &[&known],
        )
        .await
        .unwrap();
    db.client
        .execute(
            "INSERT INTO tenant_account_joins (tenant_id, account_id, role, current) VALUES ($1::text::uuid, $2, 'normal', true)",
            &[&WORKSPACE, &known],
        )
        .await
        .unwrap();
    let with_column = settings.schema_sql().contains("normalized_email");
    if with_column {
        db.client
            .execute(
                "UPDATE accounts SET normalized_email = 'janedoe@gmail.com' WHERE id = $1",
                &[&known],
            )
            .await
            .unwrap();
    }
    let cas = CasMock::start().await;
    let dify = DifyMock::start(settings.clone()).await;
    dify.add_account(&known.to_string(), "Jane Doe");
    let gw = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .upstream("web", &[dify.addr()])
        .extra_yaml(&gateway_yaml(&cas, &db.url, &svc.redis_url, ""))
        .start()
        .await;
    let delivery = if settings.legacy { "query" } else { "cookie" };
    let iss = settings.expected_iss();
    // What the operator sees: the start-up line, /readyz and the metric.
    assert!(
        gw.stderr().contains(&format!(
            "Dify {version} (detected): session delivery {delivery}, access token iss {iss}"
        )),
        "{}",
        gw.stderr()
    );
    let r = readyz(&gw).await;
    assert_eq!(r["dify"]["version"], version, "{r}");
    assert_eq!(r["dify"]["version_source"], "detected", "{r}");
    assert_eq!(r["dify"]["session_delivery"], delivery, "{r}");
    assert_eq!(r["dify"]["iss"], iss, "{r}");
    assert_eq!(
        gw.metric("dify_gateway_dify_info", &[("version", version)])
            .await,
        1.0
    );
    assert!(
        !gw.stderr().contains("outside the range"),
        "{} is in the tested range: {}",
        version,
        gw.stderr()
    );

    cas.sign_in_as(CasUser::new("jane", "janedoe@gmail.com", "Jane Doe", &[]));
    let mut b = Browser::new();
    let first = b.get(&gw.url("/signin?redirect_url=/apps")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    let at_cas = b.hop(&first).await;
    let callback = b.hop(&at_cas).await;
    assert!(
        matches!(callback.status, 302 | 303),
        "{}: {}",
        callback.url,
        callback.body
    );
    // The minter's rows, in this release's schema.
    let rows = accounts(&db).await;
    let signed_in_as = if with_column {
        assert_eq!(
            rows.len(),
            1,
            "Dify {version} knows janedoe@gmail.com as Jane.Doe+x@gmail.com: no second account: {rows:?}"
        );
        known
    } else {
        assert_eq!(
            rows.len(),
            2,
            "without normalized_email nothing changes: a new account as before: {rows:?}"
        );
        // Dify truncates created_at to the second, so the order of the two rows says nothing.
        let new = rows.iter().find(|(id, _)| *id != known).unwrap();
        assert_eq!(new.1, "janedoe@gmail.com");
        dify.add_account(&new.0.to_string(), "Jane Doe");
        new.0
    };
    let landing = b.follow(callback, 5).await;
    assert_eq!(landing.status, 200, "{}: {}", landing.url, landing.body);
    assert!(
        landing.body.contains("Signed in as Jane Doe"),
        "{}",
        landing.body
    );
    assert_eq!(
        landing.url.contains("access_token="),
        settings.legacy,
        "delivery {delivery}: {}",
        landing.url
    );
    if !settings.legacy {
        assert!(b.cookie(&gw.url("/"), "csrf_token").is_some());
    }
    // The access token the gateway minted carries the iss this release writes, and Dify took it.
    let seen = dify
        .requests()
        .into_iter()
        .filter(|r| r.user_id.as_deref() == Some(&signed_in_as.to_string()))
        .filter_map(|r| r.iss)
        .collect::<Vec<_>>();
    assert!(!seen.is_empty(), "Dify saw the session");
    assert!(seen.iter().all(|i| i == iss), "{seen:?}, expected {iss}");
}

#[tokio::test]
async fn dify_1_9_1_gets_tokens_on_the_landing_url_and_self_hosted() {
    release_end_to_end("1.9.1").await;
}

#[tokio::test]
async fn dify_1_14_2_gets_cookies_and_self_hosted() {
    release_end_to_end("1.14.2").await;
}

#[tokio::test]
async fn dify_1_17_1_gets_cookies_community_and_no_second_account_by_normalized_email() {
    release_end_to_end("1.17.1").await;
}

#[tokio::test]
async fn a_dify_down_at_start_is_no_reason_not_to_start_and_is_picked_up_later() {
    let addr = free_addr();
    let gw = Gateway::builder()
        .upstream("api", &[addr])
        .upstream("web", &[addr])
        .extra_yaml(
            "dify:\n  secret_key: sk-down-at-start-0123456789\n  version_check_interval: 200ms\n",
        )
        .start()
        .await;
    assert!(
        gw.stderr()
            .contains("could not tell which Dify version is behind the gateway"),
        "{}",
        gw.stderr()
    );
    let r = readyz(&gw).await;
    assert_eq!(r["dify"]["version"], Value::Null, "{r}");
    assert_eq!(r["dify"]["version_source"], "unknown", "{r}");
    assert_eq!(r["dify"]["session_delivery"], "cookie", "the default: {r}");
    assert_eq!(r["dify"]["iss"], "SELF_HOSTED", "the default: {r}");
    assert_eq!(
        gw.metric("dify_gateway_dify_info", &[("version", "unknown")])
            .await,
        1.0
    );
    // Dify comes up (an upgraded one, on the same address).
    let dify =
        DifyMock::start_on(&addr.to_string(), DifySettings::for_version(KEY, "1.17.1")).await;
    let r = readyz_until_version(&gw, "1.17.1").await;
    assert_eq!(r["dify"]["version_source"], "detected");
    assert_eq!(r["dify"]["iss"], "COMMUNITY");
    assert_eq!(
        gw.metric("dify_gateway_dify_info", &[("version", "1.17.1")])
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("dify_gateway_dify_info", &[("version", "unknown")])
            .await,
        0.0
    );
    assert!(dify.health_checks() >= 1);
}

#[tokio::test]
async fn an_upgrade_is_seen_on_reload() {
    let dify = DifyMock::start(DifySettings::for_version(KEY, "1.14.2")).await;
    let gw = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .extra_yaml(&format!(
            "dify:\n  secret_key: {}\n  version_check_interval: 1h\n",
            yq(KEY)
        ))
        .start()
        .await;
    assert_eq!(readyz(&gw).await["dify"]["version"], "1.14.2");
    dify.set_version("1.17.1");
    gw.signal(libc::SIGHUP);
    let r = readyz_until_version(&gw, "1.17.1").await;
    assert_eq!(r["dify"]["iss"], "COMMUNITY", "{r}");
    let changed = poll_until(WAIT, || {
        let text = gw.stderr();
        async move {
            text.contains("Dify's version changed from 1.14.2 to 1.17.1")
                .then_some(())
        }
    })
    .await;
    assert!(changed.is_some(), "{}", gw.stderr());
}

#[tokio::test]
async fn explicit_settings_win_over_what_dify_says() {
    let dify = DifyMock::start(DifySettings::for_version(KEY, "1.17.1")).await;
    let gw = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .extra_yaml(&format!(
            "dify:\n  secret_key: {}\n  session_delivery: query\n  edition: SELF_HOSTED\n",
            yq(KEY)
        ))
        .start()
        .await;
    let r = readyz(&gw).await;
    assert_eq!(r["dify"]["version"], "1.17.1", "{r}");
    assert_eq!(r["dify"]["session_delivery"], "query", "{r}");
    assert_eq!(r["dify"]["iss"], "SELF_HOSTED", "{r}");
    drop(gw);

    // A fixed dify.version: Dify is not asked at all.
    let dify = DifyMock::start(DifySettings::for_version(KEY, "1.17.1")).await;
    let gw = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .extra_yaml(&format!(
            "dify:\n  secret_key: {}\n  version: \"1.9.1\"\n",
            yq(KEY)
        ))
        .start()
        .await;
    let r = readyz(&gw).await;
    assert_eq!(r["dify"]["version"], "1.9.1", "{r}");
    assert_eq!(r["dify"]["version_source"], "dify.version", "{r}");
    assert_eq!(r["dify"]["session_delivery"], "query", "{r}");
    assert_eq!(r["dify"]["iss"], "SELF_HOSTED", "{r}");
    assert_eq!(dify.health_checks(), 0, "a fixed version is not asked for");
}

#[tokio::test]
async fn a_version_outside_the_tested_range_is_one_warning_naming_the_range() {
    let dify = DifyMock::start(DifySettings::for_version(KEY, "1.18.0")).await;
    let gw = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .extra_yaml(&format!(
            "dify:\n  secret_key: {}\n  version_check_interval: 100ms\n",
            yq(KEY)
        ))
        .start()
        .await;
    // Several more checks pass; the warning is still one line.
    poll_until(WAIT, || {
        let n = dify.health_checks();
        async move { (n >= 4).then_some(()) }
    })
    .await
    .expect("the gateway keeps asking");
    let lines: Vec<String> = gw
        .stderr()
        .lines()
        .filter(|l| l.contains("outside the range"))
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 1, "{}", gw.stderr());
    assert!(lines[0].contains("Dify 1.18.0"), "{}", lines[0]);
    assert!(lines[0].contains("1.9.0 to 1.17.x"), "{}", lines[0]);
}

fn base_yaml(api: std::net::SocketAddr, dify: &str) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:{}\"]\n  admin_listen: \"\"\nupstreams:\n  api: [\"{api}\"]\n  web: [\"{api}\"]\ndify:\n  secret_key: {}\n{dify}",
        free_addr().port(),
        yq(KEY)
    )
}

#[tokio::test]
async fn check_mode_names_the_dify_version_or_why_it_could_not() {
    let dify = DifyMock::start(DifySettings::for_version(KEY, "1.14.2")).await;
    let yaml = base_yaml(dify.addr(), "");
    let (out, path, _dir) = tokio::task::spawn_blocking(move || check_config(&yaml))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "Dify 1.14.2 (detected): session delivery cookie, access token iss SELF_HOSTED"
        ),
        "{stdout}"
    );
    let p = path_str(&path).to_string();
    let out = tokio::task::spawn_blocking(move || run_cli(&["-t", "--offline", "-c", &p]))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("skipped (--offline): asking Dify for its version"),
        "{stdout}"
    );
    assert_eq!(dify.health_checks(), 1, "--offline did not ask");

    let yaml = base_yaml(free_addr(), "");
    let (out, _, _dir) = tokio::task::spawn_blocking(move || check_config(&yaml))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "a Dify that is down does not fail -t: {stdout}"
    );
    assert!(
        stdout.contains("could not tell which Dify version is behind the gateway"),
        "{stdout}"
    );
    assert!(stdout.contains("Dify version unknown"), "{stdout}");
}

#[tokio::test]
async fn bad_version_and_edition_settings_name_field_and_line() {
    for (setting, field, expect) in [
        ("  version: latest\n", "dify.version", "\"latest\""),
        ("  version: 1.17\n", "dify.version", "in quotes"),
        (
            "  edition: FREE\n",
            "dify.edition",
            "SELF_HOSTED, COMMUNITY",
        ),
        (
            "  version_check_interval: 1ms\n",
            "dify.version_check_interval",
            "100ms",
        ),
    ] {
        let yaml = base_yaml(free_addr(), setting);
        let line = yaml.lines().position(|l| l == setting.trim_end()).unwrap() + 1;
        let (out, path, _dir) = check_config(&yaml);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{setting}: {stderr}");
        let want = format!("{}:{line}: {field}: ", path.display());
        assert!(
            stderr.contains(&want),
            "{setting}: want {want:?} in {stderr}"
        );
        assert!(stderr.contains(expect), "{setting}: {stderr}");
    }
}

// --- accounts.normalized_email against real PostgreSQL, with and without the column ---

fn minter(db_url: &str, redis_url: &str) -> Box<dyn Minter> {
    let _ = env_logger::builder().is_test(true).try_init();
    let sso = SsoConfig {
        enabled: true,
        protocol: dify_gateway::sso::Protocol::Cas,
        minter: dify_gateway::sso::config::MinterKind::Builtin,
        provisioning: ProvisioningConfig {
            workspace_id: WORKSPACE.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let dify = DifyConfig {
        secret_key: Secret::new(KEY),
        database_url: Secret::new(db_url),
        redis_url: Secret::new(redis_url),
        ..Default::default()
    };
    dify_gateway::sso::minter::build(&sso, &dify)
        .expect("build")
        .expect("a minter")
}

async fn sign_in(m: &dyn Minter, subject: &str, email: &str) {
    let id = Identity {
        issuer: "https://cas.example.com/cas".into(),
        subject: subject.into(),
        email: Some(email.into()),
        email_verified: true,
        name: Some("Someone".into()),
        groups: vec![],
        id_token_hint: None,
    };
    let ctx = MintContext {
        trace_id: "00000000-0000-4000-8000-000000000002",
        protocol: "cas",
        client_ip: None,
    };
    m.mint(&id, &ctx).await.expect("signed in");
}

/// By email: Dify truncates created_at to the second, so two rows made together tie.
async fn normalized_of(db: &TestDb) -> Vec<(String, Option<String>)> {
    db.client
        .query(
            "SELECT email, normalized_email FROM accounts ORDER BY email COLLATE \"C\"",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn with_column(svc: &Services) -> TestDb {
    svc.fresh_db_with(&format!("{SCHEMA}{NORMALIZED_EMAIL_SQL}"))
        .await
}

#[tokio::test]
async fn with_the_column_new_accounts_get_dify_s_normalized_email() {
    let svc = need_services!();
    let db = with_column(&svc).await;
    let m = minter(&db.url, &svc.redis_url);
    sign_in(&*m, "np", "New.Person+tag@GMAIL.com").await;
    sign_in(&*m, "ex", "Some.One+x@Example.com").await;
    assert_eq!(
        normalized_of(&db).await,
        [
            (
                "new.person+tag@gmail.com".to_string(),
                Some("newperson@gmail.com".to_string())
            ),
            (
                "some.one+x@example.com".to_string(),
                Some("some.one+x@example.com".to_string())
            ),
        ]
    );
}

#[tokio::test]
async fn with_the_column_a_known_person_is_found_by_the_normalized_form_and_filled_in() {
    let svc = need_services!();
    let db = with_column(&svc).await;
    // Made by Dify 1.17 itself.
    db.client
        .batch_execute(
            "INSERT INTO accounts (name, email, normalized_email, status) VALUES ('Jane', 'Jane.Doe+x@gmail.com', 'janedoe@gmail.com', 'active');\
             INSERT INTO accounts (name, email, status) VALUES ('Old', 'old.timer@gmail.com', 'active');",
        )
        .await
        .unwrap();
    let m = minter(&db.url, &svc.redis_url);
    sign_in(&*m, "jane", "janedoe@googlemail.com").await;
    // Made before the column existed: found by email as always, and now visible to Dify's check.
    sign_in(&*m, "old", "old.timer@gmail.com").await;
    assert_eq!(
        normalized_of(&db).await,
        [
            (
                "Jane.Doe+x@gmail.com".to_string(),
                Some("janedoe@gmail.com".to_string())
            ),
            (
                "old.timer@gmail.com".to_string(),
                Some("oldtimer@gmail.com".to_string())
            ),
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM tenant_account_joins").await,
        2,
        "both joined to the workspace"
    );
}

#[tokio::test]
async fn without_the_column_nothing_changes() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    db.client
        .batch_execute(
            "INSERT INTO accounts (name, email, status) VALUES ('Jane', 'Jane.Doe+x@gmail.com', 'active')",
        )
        .await
        .unwrap();
    let m = minter(&db.url, &svc.redis_url);
    sign_in(&*m, "jane", "janedoe@gmail.com").await;
    sign_in(&*m, "jane2", "jane.doe+x@gmail.com").await;
    let rows = db
        .client
        .query(
            "SELECT email FROM accounts ORDER BY email COLLATE \"C\"",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>();
    // As before Dify 1.17: the email (case-insensitively) is the only match.
    assert_eq!(rows, ["Jane.Doe+x@gmail.com", "janedoe@gmail.com"]);
}

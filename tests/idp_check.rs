//! The OpenID provider checked before anyone signs in (`sso.protocol: oidc`): `-t` fetches its
//! discovery document and JWKS and fails naming what is wrong (`--offline` skips it), start-up
//! warns and serves anyway, and `sso.ready_checks_idp: true` makes `/readyz` depend on it. Against
//! the mock provider of `support/oidc_mock.rs`.

mod support;

use serde_json::{Value, json};
use std::process::Output;
use support::gateway::{Gateway, yq};
use support::oidc_mock::{CLIENT_ID, Knobs, OidcMock, obj};
use support::sso_env::{SECRET_KEY, STATE_SECRET};
use support::upstream::MockUpstream;
use support::{WAIT, dead_addr, poll_until};

/// The `sso:` and `dify:` sections of an OIDC configuration for `issuer`, plus `extra` lines in
/// `sso:`.
fn sso_yaml(issuer: &str, extra: &str) -> String {
    format!(
        "sso:\n  \
           protocol: oidc\n  \
           state_secret: {state}\n  \
           oidc:\n    \
             issuer: {issuer}\n    \
             client_id: {client}\n    \
             timeout: 2s\n  \
           exchange:\n    \
             identity_url: \"http://127.0.0.1:9/dify_session\"\n{extra}\
         dify:\n  \
           secret_key: {secret}\n  \
           version: \"1.14.2\"\n",
        state = yq(STATE_SECRET),
        issuer = yq(issuer),
        client = yq(CLIENT_ID),
        secret = yq(SECRET_KEY),
    )
}

/// `dify-gateway -t [--offline] -c FILE` on an OIDC configuration, off the test's runtime so the
/// mock provider can answer meanwhile.
async fn check(issuer: &str, offline: bool) -> (Output, String, String) {
    let yaml = sso_yaml(issuer, "");
    let out = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).unwrap();
        let path = path.to_str().unwrap().to_string();
        let mut args = vec!["-t", "-c", &path];
        if offline {
            args.push("--offline");
        }
        support::gateway::run_cli(&args)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

async fn provider(knobs: Knobs) -> OidcMock {
    OidcMock::start(&["http://localhost/sso/oidc/callback"], knobs).await
}

#[tokio::test]
async fn check_fetches_discovery_and_jwks_of_a_good_provider() {
    let op = provider(Knobs::default()).await;
    let (out, stdout, stderr) = check(&op.issuer(), false).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout}\nstderr {stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "sso.oidc: discovery and JWKS of {} fetched",
            op.issuer()
        )),
        "{stdout}"
    );
    assert!(op.jwks_calls() >= 1, "the JWKS was not fetched");
}

#[tokio::test]
async fn check_fails_on_a_wrong_issuer_and_names_it() {
    let op = provider(Knobs::default()).await;
    // A path the provider does not serve: its discovery answers 404.
    let wrong = format!("{}/realms/nope", op.issuer());
    let (out, stdout, stderr) = check(&wrong, false).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {stdout}\nstderr {stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("dify-gateway: sso.oidc:"))
        .unwrap_or_else(|| panic!("no sso.oidc line in {stderr}"));
    assert!(
        line.contains(&format!("{wrong}/.well-known/openid-configuration")),
        "{line}"
    );
    assert!(line.contains("status 404"), "{line}");

    // The provider answers, but calls itself by another name.
    op.set(|k| k.discovery = obj(json!({"issuer": "https://elsewhere.example"})));
    let (out, _, stderr) = check(&op.issuer(), false).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("elsewhere.example"), "{stderr}");
    assert!(stderr.contains("not the configured"), "{stderr}");
}

#[tokio::test]
async fn check_names_the_cause_of_an_unreachable_provider() {
    let dead = format!("http://{}", dead_addr());
    let (out, stdout, stderr) = check(&dead, false).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {stdout}\nstderr {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert!(stderr.contains(&dead), "{stderr}");
}

#[tokio::test]
async fn check_fails_when_the_jwks_cannot_be_fetched() {
    let op = provider(Knobs {
        jwks_down: true,
        ..Knobs::default()
    })
    .await;
    let (out, _, stderr) = check(&op.issuer(), false).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("JWKS"), "{stderr}");
    assert!(stderr.contains("status 503"), "{stderr}");
}

#[tokio::test]
async fn offline_check_skips_the_provider_and_says_so() {
    let dead = format!("http://{}", dead_addr());
    let (out, stdout, stderr) = check(&dead, true).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout}\nstderr {stderr}"
    );
    assert!(
        stdout.contains("skipped (--offline)")
            && stdout.contains("the OpenID provider's discovery and JWKS"),
        "{stdout}"
    );
}

/// A gateway whose upstreams are all up, so that only the provider can make it not ready.
async fn gateway(issuer: &str, extra: &str) -> (Gateway, MockUpstream) {
    let dify = MockUpstream::echo("dify").await;
    let gw = Gateway::builder()
        .all_upstreams(dify.addr)
        .extra_yaml(&sso_yaml(issuer, extra))
        .start()
        .await;
    (gw, dify)
}

async fn readyz(gw: &Gateway) -> (u16, Value) {
    // reqwest needs the process's TLS provider chosen, even for plain http.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn start_up_warns_about_an_unreachable_provider_and_serves() {
    let dead = format!("http://{}", dead_addr());
    let (gw, _dify) = gateway(&dead, "").await;
    let warned = poll_until(WAIT, || async {
        gw.log_lines().into_iter().find(|l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("sso.oidc") && m.contains(&dead))
        })
    })
    .await;
    assert!(warned.is_some(), "no warning:\n{}", gw.stderr());
    // Off by default: the provider does not decide readiness.
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("idp").is_none(), "{body}");
}

#[tokio::test]
async fn ready_checks_idp_makes_readyz_follow_the_provider() {
    let dead = format!("http://{}", dead_addr());
    let (gw, _dify) = gateway(&dead, "  ready_checks_idp: true\n").await;
    let not_ready = poll_until(WAIT, || async {
        let (status, body) = readyz(&gw).await;
        (status == 503 && body["idp"]["status"] == "unreachable").then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("/readyz stayed ready:\n{}", gw.stderr()));
    assert_eq!(not_ready["idp"]["issuer"], dead.as_str(), "{not_ready}");
    assert!(
        not_ready["idp"]["error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("connection refused")),
        "{not_ready}"
    );

    let op = provider(Knobs::default()).await;
    let (gw, _dify) = gateway(&op.issuer(), "  ready_checks_idp: true\n").await;
    let ready = poll_until(WAIT, || async {
        let (status, body) = readyz(&gw).await;
        (status == 200).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("/readyz never ready:\n{}", gw.stderr()));
    assert_eq!(ready["idp"]["status"], "ok", "{ready}");
}

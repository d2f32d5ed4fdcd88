//! OpenID Connect through SsoFlow against the in-process mock provider (`mock_idp`), and the
//! management service's identity call.

use super::mock_idp::*;
use super::test_browser::*;
use crate::dify::SessionDelivery;
use crate::dify::tokens::mint_access_token;
use crate::sso::config::{AllowConfig, MinterKind, OidcConfig};
use crate::sso::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

pub fn identity_sso(idp: &MockIdp, protocol: Protocol) -> SsoConfig {
    let mut headers = BTreeMap::new();
    headers.insert("X-Api-Key".to_string(), Secret::new("mgmt-api-key-5555"));
    SsoConfig {
        enabled: true,
        protocol,
        oidc: OidcConfig {
            issuer: idp.base.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: Secret::new(CLIENT_SECRET),
            end_session: true,
            ..Default::default()
        },
        exchange: ExchangeConfig {
            identity_url: format!("{}/identity", idp.base),
            timeout: Duration::from_secs(5),
            headers,
            ..Default::default()
        },
        state_secret: Secret::new("state-secret-for-tests-0123456789"),
        ..Default::default()
    }
}

pub async fn start_idp() -> (MockIdp, String) {
    let idp = MockIdp::start().await;
    let access = mint_access_token(KEY, USER, Duration::from_secs(3600));
    let reply = json!({"access_token": access, "refresh_token": "ab".repeat(64)}).to_string();
    idp.with(|s| s.identity_reply = (200, reply));
    (idp, access)
}

pub fn flow_for(sso: &SsoConfig) -> SsoFlow {
    SsoFlow::new(sso, &dify(SessionDelivery::Cookie, KEY)).unwrap()
}

/// `/signin?redirect_url=<ret>` -> provider -> the callback URL the provider sends back.
pub async fn to_provider(b: &mut Browser, flow: &SsoFlow, idp: &MockIdp, ret: &str) -> String {
    let r = b.get(flow, &format!("/signin?redirect_url={ret}")).await;
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    idp.authorize(location(&r))
}

fn json_body(r: &SsoResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// A full sign-in; the callback's answer.
async fn sign_in(b: &mut Browser, flow: &SsoFlow, idp: &MockIdp) -> SsoResponse {
    let cb = to_provider(b, flow, idp, "/apps/x").await;
    b.get(flow, &cb).await
}

fn code_of(r: &SsoResponse) -> String {
    json_body(r)["code"].as_str().unwrap_or("").to_string()
}

async fn refused_with(
    claims: Value,
    sso_edit: impl FnOnce(&mut SsoConfig),
) -> (u16, String, String) {
    let (idp, _) = start_idp().await;
    idp.with(|s| s.claims = claims.as_object().unwrap().clone());
    let mut sso = identity_sso(&idp, Protocol::Oidc);
    sso_edit(&mut sso);
    let flow = flow_for(&sso);
    let mut b = Browser::new();
    b.accept = "application/json";
    let r = sign_in(&mut b, &flow, &idp).await;
    assert!(idp.with(|s| s.identity_requests.is_empty()) || r.status == 303);
    let body = json_body(&r);
    (
        r.status,
        code_of(&r),
        body["message"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn oidc_authorization_rules() {
    let r = refused_with(json!({"email_verified": false}), |_| {}).await;
    assert_eq!((r.0, r.1.as_str()), (403, "sso_not_allowed"), "{}", r.2);
    assert!(r.2.contains("not verified"));
    let r = refused_with(json!({"email_verified": false}), |s| {
        s.allow.unverified_email = true
    })
    .await;
    assert_eq!(r.0, 303);
    let domains = |d: &str| {
        let d = d.to_string();
        move |s: &mut SsoConfig| {
            s.allow = AllowConfig {
                email_domains: vec![d],
                ..Default::default()
            }
        }
    };
    assert_eq!(refused_with(json!({}), domains("example.com")).await.0, 303);
    let r = refused_with(json!({}), domains("other.org")).await;
    assert_eq!((r.0, r.1.as_str()), (403, "sso_not_allowed"));
    let groups = |g: &str| {
        let g = g.to_string();
        move |s: &mut SsoConfig| {
            s.allow = AllowConfig {
                groups: vec![g],
                ..Default::default()
            }
        }
    };
    assert_eq!(refused_with(json!({}), groups("staff")).await.0, 303);
    assert_eq!(refused_with(json!({}), groups("admins")).await.0, 403);
    let r = refused_with(json!({"email": "a@b@example.com"}), |_| {}).await;
    assert_eq!((r.0, r.1.as_str()), (401, "sso_invalid_identity"));
    // No email in the ID token: userinfo supplies it.
    let r = refused_with(json!({"email": null}), |_| {}).await;
    assert_eq!(r.0, 303, "{}", r.2);
}

#[tokio::test]
async fn oidc_two_tabs_sign_in_side_by_side() {
    let (idp, _) = start_idp().await;
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    let cb_a = to_provider(&mut b, &flow, &idp, "/apps/a").await;
    let cb_b = to_provider(&mut b, &flow, &idp, "/apps/b").await;
    assert_eq!(
        b.jar.keys().filter(|k| k.starts_with("dg_sso_f_")).count(),
        2
    );
    for (cb, target) in [(cb_b, "/apps/b"), (cb_a, "/apps/a")] {
        let r = b.get(&flow, &cb).await;
        assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
        let r = b.get(&flow, "/sso/continue").await;
        assert_eq!(location(&r), target);
    }
    // Many tabs: the oldest flows are dropped, a few stay.
    for _ in 0..6 {
        b.jar.remove("dg_sso_loop");
        to_provider(&mut b, &flow, &idp, "/apps").await;
    }
    let n = b.jar.keys().filter(|k| k.starts_with("dg_sso_f_")).count();
    assert!((2..=4).contains(&n), "{n}");
}

#[tokio::test]
async fn identity_call_failures_map_to_the_error_page() {
    let cases: [((u16, &str), u16, &str); 5] = [
        ((401, "{}"), 401, "sso_token_refused"),
        ((403, "{\"error\":\"banned\"}"), 401, "sso_token_refused"),
        ((500, "{}"), 502, "sso_exchange_failed"),
        ((200, "<html>"), 502, "sso_exchange_failed"),
        (
            (200, "{\"access_token\":\"x\"}"),
            502,
            "sso_exchange_failed",
        ),
    ];
    for ((status, body), want, code) in cases {
        let (idp, _) = start_idp().await;
        idp.with(|s| s.identity_reply = (status, body.into()));
        let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
        let mut b = Browser::new();
        b.accept = "application/json";
        let r = sign_in(&mut b, &flow, &idp).await;
        assert_eq!(
            (r.status, code_of(&r)),
            (want, code.into()),
            "{status} {body}"
        );
        assert!(json_body(&r)["trace_id"].is_string());
    }
    // A token not signed with Dify's key.
    let (idp, _) = start_idp().await;
    let forged = mint_access_token("another-key-0123456789", USER, Duration::from_secs(60));
    idp.with(|s| {
        s.identity_reply = (
            200,
            json!({"access_token": forged, "refresh_token": "r"}).to_string(),
        )
    });
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    b.accept = "application/json";
    let r = sign_in(&mut b, &flow, &idp).await;
    assert_eq!((r.status, code_of(&r)), (502, "sso_exchange_failed".into()));
    // Unreachable management service.
    let (idp, _) = start_idp().await;
    let mut sso = identity_sso(&idp, Protocol::Oidc);
    sso.exchange.identity_url = "http://127.0.0.1:9/identity".into();
    let flow = flow_for(&sso);
    let mut b = Browser::new();
    b.accept = "application/json";
    let r = sign_in(&mut b, &flow, &idp).await;
    assert_eq!(
        (r.status, code_of(&r)),
        (502, "sso_exchange_unreachable".into())
    );
}

#[tokio::test]
async fn oidc_provider_down_shows_the_error_page_at_signin() {
    let mut sso = identity_sso(&MockIdp::start().await, Protocol::Oidc);
    sso.oidc.issuer = "http://127.0.0.1:9".into();
    let flow = flow_for(&sso);
    let mut b = Browser::new();
    b.accept = "application/json";
    let r = b.get(&flow, "/signin").await;
    assert_eq!(
        (r.status, code_of(&r)),
        (502, "sso_provider_unreachable".into())
    );
}

#[test]
fn identity_protocol_config_validation_names_the_keys() {
    let dify = dify(SessionDelivery::Cookie, KEY);
    let check = |sso: SsoConfig| {
        let mut issues = Vec::new();
        sso.validate(&dify, &mut issues);
        issues
            .iter()
            .map(|i| format!("{}: {}", i.field, i.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let base = SsoConfig {
        enabled: true,
        protocol: Protocol::Oidc,
        ..Default::default()
    };
    let all = check(base.clone());
    for key in [
        "sso.oidc.issuer",
        "sso.oidc.client_id",
        "sso.exchange.identity_url",
    ] {
        assert!(all.contains(key), "{key} in {all}");
    }
    let mut good = base.clone();
    good.oidc.issuer = "https://id.example.com".into();
    good.oidc.client_id = "c".into();
    good.exchange.identity_url = "http://manager:8087/dify_session".into();
    assert_eq!(check(good.clone()), "");
    let mut b = good.clone();
    b.minter = MinterKind::Builtin;
    let builtin = check(b);
    for key in [
        "sso.provisioning.workspace_id",
        "dify.database_url",
        "dify.redis_url",
    ] {
        assert!(builtin.contains(key), "{key} in {builtin}");
    }
    let mut b = good.clone();
    b.oidc.algorithms = vec!["none".into()];
    assert!(check(b).contains("sso.oidc.algorithms"));
    let mut b = good.clone();
    b.oidc.algorithms = vec!["HS256".into()];
    assert!(check(b).contains("needs sso.oidc.client_secret"));
    let mut b = good.clone();
    b.oidc.scopes = vec!["email".into()];
    assert!(check(b).contains("sso.oidc.scopes"));
    let mut b = good;
    b.allow.email_domains = vec!["@".into()];
    assert!(check(b).contains("sso.allow.email_domains[0]"));
    let yaml = "enabled: true\nprotocol: oidc\noidc:\n  issuer: https://id.example.com\n  client_id: c\n  claims: {groups: roles}\nallow:\n  email_domains: example.com, example.org\nexchange:\n  identity_url: http://m/x\n";
    let parsed: SsoConfig = serde_yaml_ng::from_str(yaml).unwrap();
    assert_eq!(parsed.oidc.claims.groups, "roles");
    assert_eq!(parsed.oidc.claims.email, "email");
    assert_eq!(parsed.oidc.scopes, ["openid", "email", "profile"]);
    assert_eq!(parsed.oidc.redirect_path, "/sso/oidc/callback");
    assert_eq!(parsed.allow.email_domains, ["example.com", "example.org"]);
    assert_eq!(check(parsed), "");
}

// ---- Relying-party checks (docs/oidc-relying-party.md): each refusal is asserted as the user
// sees it (status, code, reason) and, where it matters, by what the provider was (not) asked.

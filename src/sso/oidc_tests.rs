//! OpenID Connect through SsoFlow against the in-process mock provider (`mock_idp`), and the
//! management service's identity call.

use super::config::{AllowConfig, MinterKind, OidcConfig};
use super::flow::SIGNIN_PATH;
use super::mock_idp::*;
use super::test_browser::*;
use super::*;
use crate::dify::SessionDelivery;
use crate::dify::tokens::mint_access_token;
use http::Method;
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

#[tokio::test]
async fn oidc_happy_path_rs256_lands_signed_in() {
    let (idp, access) = start_idp().await;
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    let r = b
        .get(&flow, "/signin?redirect_url=%2Fapps%2Fx%3Ftab%3D1")
        .await;
    let loc = location(&r).to_string();
    assert!(
        loc.starts_with(&format!("{}/authorize?", idp.base)),
        "{loc}"
    );
    for p in [
        "response_type=code",
        "state=",
        "nonce=",
        "code_challenge=",
        "code_challenge_method=S256",
        "scope=openid%20email%20profile",
        "redirect_uri=http%3A%2F%2Flocalhost%3A8080%2Fsso%2Foidc%2Fcallback",
    ] {
        assert!(loc.contains(p), "{p} missing in {loc}");
    }
    let flow_cookies: Vec<_> = b
        .jar
        .keys()
        .filter(|k| k.starts_with("dg_sso_f_"))
        .cloned()
        .collect();
    assert_eq!(flow_cookies.len(), 1, "{:?}", b.jar);
    // Nothing secret in the per-flow cookie: the PKCE verifier is derived, not stored.
    let cookie = &b.jar[&flow_cookies[0]];
    assert!(!cookie.contains("verifier"));

    let cb = idp.authorize(&loc);
    let r = b.get(&flow, &cb).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(location(&r), "/sso/continue");
    assert_eq!(b.jar.get("access_token"), Some(&access));
    assert!(
        !b.jar.contains_key(&flow_cookies[0]),
        "per-flow cookie cleared (single use)"
    );
    assert!(
        b.jar.contains_key("dg_sso_idt"),
        "ID token kept for the logout hint"
    );
    let r = b.get(&flow, "/sso/continue").await;
    assert_eq!((r.status, location(&r)), (302, "/apps/x?tab=1"));

    // The identity call: shape, headers.
    let (head, body) = idp.with(|s| s.identity_requests[0].clone());
    let trace = body["trace_id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&trace).is_ok());
    assert_eq!(
        body,
        json!({"trace_id": trace, "protocol": "oidc", "issuer": idp.base, "subject": "user-1",
            "email": "ann@example.com", "email_verified": true, "name": "Ann Lee",
            "groups": ["dify-users", "staff"]})
    );
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("post /identity "), "{head}");
    assert!(
        head.contains("x-api-key: mgmt-api-key-5555")
            && head.contains(&format!("x-request-id: {trace}"))
    );
    assert!(head.contains("content-type: application/json"));
    assert_eq!(idp.with(|s| s.token_calls), 1);
}

#[tokio::test]
async fn oidc_happy_path_es256() {
    let (idp, _) = start_idp().await;
    idp.with(|s| s.signing = Signing::Ec1);
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    let r = sign_in(&mut b, &flow, &idp).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn oidc_wrong_state_is_refused_before_the_code_is_redeemed() {
    let (idp, _) = start_idp().await;
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    b.accept = "application/json";
    let cb = to_provider(&mut b, &flow, &idp, "/apps").await;
    let state = cb.split("state=").nth(1).unwrap().to_string();
    // Same cookie prefix, other state; a foreign state; no state at all.
    let forged = format!("{}{}", &state[..8], "0".repeat(24));
    for bad in [
        cb.replace(&state, &forged),
        cb.replace(&state, &"f".repeat(32)),
        cb.replace(&format!("&state={state}"), ""),
        cb.replace(&state, "x"),
    ] {
        let r = b.get(&flow, &bad).await;
        assert_eq!(
            (r.status, code_of(&r)),
            (400, "sso_bad_state".into()),
            "{bad}"
        );
    }
    // Another browser (no cookie) with the genuine callback URL.
    let mut other = Browser::new();
    other.accept = "application/json";
    let r = other.get(&flow, &cb).await;
    assert_eq!((r.status, code_of(&r)), (400, "sso_bad_state".into()));
    assert_eq!(
        idp.with(|s| s.token_calls),
        0,
        "no code redeemed on a wrong state"
    );
}

#[tokio::test]
async fn oidc_replayed_state_is_refused() {
    let (idp, _) = start_idp().await;
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    b.accept = "application/json";
    let cb = to_provider(&mut b, &flow, &idp, "/apps").await;
    let saved = b.jar.clone();
    assert_eq!(b.get(&flow, &cb).await.status, 303);
    // Replay with the cookie put back (as an attacker who copied it would).
    b.jar = saved;
    let r = b.get(&flow, &cb).await;
    assert_eq!((r.status, code_of(&r)), (400, "sso_bad_state".into()));
    assert_eq!(idp.with(|s| s.token_calls), 1);
}

async fn refused_with(
    claims: Value,
    signing: Signing,
    sso_edit: impl FnOnce(&mut SsoConfig),
) -> (u16, String, String) {
    let (idp, _) = start_idp().await;
    idp.with(|s| {
        s.claims = claims.as_object().unwrap().clone();
        s.signing = signing;
    });
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
async fn oidc_id_token_checks() {
    let bad = |r: (u16, String, String), why: &str| {
        assert_eq!(
            (r.0, r.1.as_str()),
            (401, "sso_invalid_identity"),
            "{why}: {}",
            r.2
        );
        assert!(r.2.contains(why), "{why} vs {}", r.2);
    };
    bad(
        refused_with(json!({"nonce": "not-the-flows"}), Signing::Rsa1, |_| {}).await,
        "nonce",
    );
    bad(
        refused_with(json!({"nonce": null}), Signing::Rsa1, |_| {}).await,
        "nonce",
    );
    bad(
        refused_with(
            json!({"exp": super::signer::now_secs() - 3600}),
            Signing::Rsa1,
            |_| {},
        )
        .await,
        "expired",
    );
    bad(
        refused_with(json!({"aud": "another-client"}), Signing::Rsa1, |_| {}).await,
        "another client",
    );
    bad(
        refused_with(
            json!({"iss": "https://evil.example.com"}),
            Signing::Rsa1,
            |_| {},
        )
        .await,
        "another issuer",
    );
    bad(
        refused_with(
            json!({"azp": "another-client", "aud": CLIENT_ID}),
            Signing::Rsa1,
            |_| {},
        )
        .await,
        "azp",
    );
    bad(
        refused_with(json!({}), Signing::None, |_| {}).await,
        "algorithm",
    );
    bad(
        refused_with(json!({}), Signing::HsWithPublicKey, |_| {}).await,
        "algorithm",
    );
    // Even with HS256 allowed, HMAC is keyed with the client secret, never the public key.
    bad(
        refused_with(json!({}), Signing::HsWithPublicKey, |s| {
            s.oidc.algorithms = vec!["RS256".into(), "HS256".into()];
        })
        .await,
        "signature",
    );
    // Within the leeway is fine.
    let ok = refused_with(
        json!({"exp": super::signer::now_secs() - 20}),
        Signing::Rsa1,
        |_| {},
    )
    .await;
    assert_eq!(ok.0, 303, "{}", ok.2);
}

#[tokio::test]
async fn oidc_unknown_kid_refetches_the_jwks_and_keeps_stale_keys_on_error() {
    let (idp, _) = start_idp().await;
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    b.accept = "application/json";
    assert_eq!(sign_in(&mut b, &flow, &idp).await.status, 303);
    assert_eq!(idp.with(|s| s.jwks_calls), 1);
    assert_eq!(sign_in(&mut b, &flow, &idp).await.status, 303);
    assert_eq!(idp.with(|s| s.jwks_calls), 1, "cached");
    // Rotation: the provider now signs with a new key.
    idp.with(|s| {
        s.published = vec!["rsa2"];
        s.signing = Signing::Rsa2;
    });
    let r = sign_in(&mut b, &flow, &idp).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(idp.with(|s| s.jwks_calls), 2);
    // JWKS down: the cached keys still verify; an unknown key is refused, not crashed on.
    idp.with(|s| s.jwks_down = true);
    assert_eq!(sign_in(&mut b, &flow, &idp).await.status, 303);
    idp.with(|s| s.signing = Signing::Ec1);
    let r = sign_in(&mut b, &flow, &idp).await;
    assert_eq!(
        (r.status, code_of(&r)),
        (401, "sso_invalid_identity".into())
    );
}

#[tokio::test]
async fn oidc_authorization_rules() {
    let r = refused_with(json!({"email_verified": false}), Signing::Rsa1, |_| {}).await;
    assert_eq!((r.0, r.1.as_str()), (403, "sso_not_allowed"), "{}", r.2);
    assert!(r.2.contains("not verified"));
    let r = refused_with(json!({"email_verified": false}), Signing::Rsa1, |s| {
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
    assert_eq!(
        refused_with(json!({}), Signing::Rsa1, domains("example.com"))
            .await
            .0,
        303
    );
    let r = refused_with(json!({}), Signing::Rsa1, domains("other.org")).await;
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
    assert_eq!(
        refused_with(json!({}), Signing::Rsa1, groups("staff"))
            .await
            .0,
        303
    );
    assert_eq!(
        refused_with(json!({}), Signing::Rsa1, groups("admins"))
            .await
            .0,
        403
    );
    let r = refused_with(json!({"email": "a@b@example.com"}), Signing::Rsa1, |_| {}).await;
    assert_eq!((r.0, r.1.as_str()), (401, "sso_invalid_identity"));
    // No email in the ID token: userinfo supplies it.
    let r = refused_with(json!({"email": null}), Signing::Rsa1, |_| {}).await;
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
async fn oidc_logout_ends_the_provider_session_with_id_token_hint() {
    let (idp, _) = start_idp().await;
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    assert_eq!(sign_in(&mut b, &flow, &idp).await.status, 303);
    let hint = b.jar["dg_sso_idt"].clone();
    for (name, value) in flow.on_upstream_response(&Method::POST, "/console/api/logout", 200, false)
    {
        let v = value.to_str().unwrap();
        let (n, rest) = v.split_once('=').unwrap();
        assert_eq!(name, http::header::SET_COOKIE);
        b.jar
            .insert(n.into(), rest.split(';').next().unwrap().into());
    }
    let r = b.get(&flow, SIGNIN_PATH).await;
    let loc = location(&r);
    assert!(loc.starts_with(&format!("{}/logout?", idp.base)), "{loc}");
    assert!(loc.contains(&format!("id_token_hint={hint}")));
    assert!(
        loc.contains("post_logout_redirect_uri=http%3A%2F%2Flocalhost%3A8080%2Fsso%2Fsigned-out")
    );
    assert!(!b.jar.contains_key("dg_sso_idt"));
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

#[tokio::test]
async fn oidc_provider_error_callback_is_a_refusal() {
    let (idp, _) = start_idp().await;
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    b.accept = "application/json";
    let cb = to_provider(&mut b, &flow, &idp, "/apps").await;
    let state = cb.split("state=").nth(1).unwrap();
    let r = b
        .get(&flow, &format!("/sso/oidc/callback?error=access_denied&error_description=User%20said%20no&state={state}"))
        .await;
    assert_eq!(
        (r.status, code_of(&r)),
        (401, "sso_provider_refused".into())
    );
    assert!(
        json_body(&r)["message"]
            .as_str()
            .unwrap()
            .contains("User said no")
    );
    assert_eq!(idp.with(|s| s.token_calls), 0);
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

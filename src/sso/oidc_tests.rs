//! OpenID Connect through SsoFlow against the in-process mock provider (`mock_idp`), and the
//! management service's identity call.

use super::config::{AllowConfig, MinterKind, OidcConfig};
use super::flow::SIGNIN_PATH;
use super::mock_exchange::captured_logs;
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

// ---- Relying-party checks (docs/oidc-relying-party.md): each refusal is asserted as the user
// sees it (status, code, reason) and, where it matters, by what the provider was (not) asked.

/// What one sign-in attempt came to.
struct Attempt {
    status: u16,
    code: String,
    message: String,
    token_calls: usize,
    userinfo_calls: usize,
    attacker_calls: usize,
}

/// One sign-in against a provider changed by `idp_edit`, with `cb_edit` applied to the callback
/// the provider sends the browser to.
async fn attempt(
    idp_edit: impl FnOnce(&mut IdpState),
    sso_edit: impl FnOnce(&mut SsoConfig),
    cb_edit: impl FnOnce(String) -> String,
) -> Attempt {
    let (idp, _) = start_idp().await;
    idp.with(idp_edit);
    let mut sso = identity_sso(&idp, Protocol::Oidc);
    sso_edit(&mut sso);
    let flow = flow_for(&sso);
    let mut b = Browser::new();
    b.accept = "application/json";
    let cb = to_provider(&mut b, &flow, &idp, "/apps").await;
    let cb = cb_edit(cb);
    let r = b.get(&flow, &cb).await;
    let body = json_body(&r);
    Attempt {
        status: r.status,
        code: code_of(&r),
        message: body["message"].as_str().unwrap_or("").to_string(),
        token_calls: idp.with(|s| s.token_calls),
        userinfo_calls: idp.with(|s| s.userinfo_calls),
        attacker_calls: idp.with(|s| s.attacker_calls),
    }
}

fn claims_edit(claims: Value) -> impl FnOnce(&mut IdpState) {
    move |s: &mut IdpState| s.claims = claims.as_object().unwrap().clone()
}

fn no_edit<T>(_: &mut T) {}

fn same(cb: String) -> String {
    cb
}

#[track_caller]
fn assert_refused(a: &Attempt, status: u16, code: &str, why: &str) {
    assert_eq!(
        (a.status, a.code.as_str()),
        (status, code),
        "{why}: {}",
        a.message
    );
    assert!(a.message.contains(why), "{why:?} not in {:?}", a.message);
}

#[track_caller]
fn assert_signed_in(a: &Attempt) {
    assert_eq!(a.status, 303, "{} {}", a.code, a.message);
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[tokio::test]
async fn oidc_nbf_iat_and_exp_share_one_leeway() {
    let now = super::signer::now_secs();
    let leeway = super::providers::oidc::LEEWAY_SECS as u64;
    // RFC 7519 §4.1.5: nbf in the future, beyond the leeway.
    let a = attempt(claims_edit(json!({"nbf": now + 3600})), no_edit, same).await;
    assert_refused(&a, 401, "sso_invalid_identity", "not valid yet (nbf)");
    let a = attempt(
        claims_edit(json!({"nbf": now + leeway + 30})),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "not valid yet (nbf)");
    let a = attempt(claims_edit(json!({"nbf": "tomorrow"})), no_edit, same).await;
    assert_refused(&a, 401, "sso_invalid_identity", "nbf is not a time");
    // Within the leeway, and in the past: fine.
    assert_signed_in(
        &attempt(
            claims_edit(json!({"nbf": now + leeway - 20})),
            no_edit,
            same,
        )
        .await,
    );
    assert_signed_in(&attempt(claims_edit(json!({"nbf": now - 10})), no_edit, same).await);
    // iat in the future: same leeway.
    let a = attempt(
        claims_edit(json!({"iat": now + leeway + 30})),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "not valid");
    assert_signed_in(
        &attempt(
            claims_edit(json!({"iat": now + leeway - 20})),
            no_edit,
            same,
        )
        .await,
    );
    // exp just past, beyond the leeway: refused (within it: oidc_id_token_checks).
    let a = attempt(claims_edit(json!({"exp": now - leeway - 5})), no_edit, same).await;
    assert_refused(&a, 401, "sso_invalid_identity", "expired");
    // Required time claims missing, or not numbers.
    for c in [
        json!({"exp": null}),
        json!({"iat": null}),
        json!({"exp": "soon"}),
    ] {
        let a = attempt(claims_edit(c.clone()), no_edit, same).await;
        assert_refused(&a, 401, "sso_invalid_identity", "ID token");
    }
}

#[tokio::test]
async fn oidc_required_claims_sub_aud_and_azp() {
    // No subject (OIDC Core §2: sub is required).
    let a = attempt(claims_edit(json!({"sub": null})), no_edit, same).await;
    assert_refused(&a, 401, "sso_invalid_identity", "ID token");
    let a = attempt(claims_edit(json!({"sub": ""})), no_edit, same).await;
    assert_refused(&a, 401, "sso_invalid_identity", "no subject");
    // No aud, no iss.
    let a = attempt(claims_edit(json!({"aud": null})), no_edit, same).await;
    assert_refused(&a, 401, "sso_invalid_identity", "another client (aud)");
    let a = attempt(claims_edit(json!({"iss": null})), no_edit, same).await;
    assert_refused(&a, 401, "sso_invalid_identity", "missing field `iss`");
    // iss compared exactly (a trailing slash is another issuer).
    let a = attempt(
        |s: &mut IdpState| s.claims = obj(json!({"iss": format!("{}/", s.base)})),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "another issuer");
    // Several audiences: an untrusted extra audience is refused even with azp = us (§3.1.3.7
    // step 3), and without azp too (steps 4-5).
    let a = attempt(
        claims_edit(json!({"aud": [CLIENT_ID, "other-client"]})),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "another client");
    let a = attempt(
        claims_edit(json!({"aud": [CLIENT_ID, "other-client"], "azp": CLIENT_ID})),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "another client (aud)");
    // azp = us with one audience is fine.
    assert_signed_in(&attempt(claims_edit(json!({"azp": CLIENT_ID})), no_edit, same).await);
}

fn with_iss(iss: &str) -> impl FnOnce(String) -> String {
    let iss = iss.to_string();
    move |cb| {
        format!(
            "{cb}&iss={}",
            form_urlencoded::byte_serialize(iss.as_bytes()).collect::<String>()
        )
    }
}

fn advertise_iss(s: &mut IdpState) {
    s.discovery = obj(json!({"authorization_response_iss_parameter_supported": true}));
}

#[tokio::test]
async fn oidc_callback_iss_rfc9207() {
    // Advertised: iss required, exactly the issuer, checked before the code is redeemed.
    let a = attempt(advertise_iss, no_edit, same).await;
    assert_refused(
        &a,
        401,
        "sso_invalid_identity",
        "does not name its sign-in server (iss)",
    );
    assert_eq!(a.token_calls, 0, "no code redeemed without iss");
    for bad in ["https://evil.example.com", "", "http://127.0.0.1:1"] {
        let a = attempt(advertise_iss, no_edit, with_iss(bad)).await;
        assert_refused(
            &a,
            401,
            "sso_invalid_identity",
            "another sign-in server (iss)",
        );
        assert_eq!(a.token_calls, 0, "no code redeemed with iss {bad:?}");
    }
    // The right iss: signed in; the same with a trailing slash is another string (§2.4).
    let ok = attempt_with_own_iss(true, "").await;
    assert_signed_in(&ok);
    let slash = attempt_with_own_iss(true, "/").await;
    assert_refused(
        &slash,
        401,
        "sso_invalid_identity",
        "another sign-in server (iss)",
    );
    assert_eq!(slash.token_calls, 0);

    // Not advertised: no iss is fine, a wrong one is still refused before redeeming.
    assert_signed_in(&attempt(no_edit, no_edit, same).await);
    let a = attempt(no_edit, no_edit, with_iss("https://evil.example.com")).await;
    assert_refused(
        &a,
        401,
        "sso_invalid_identity",
        "another sign-in server (iss)",
    );
    assert_eq!(a.token_calls, 0);
    assert_signed_in(&attempt_with_own_iss(false, "").await);
    // Two iss parameters: which one counts? Neither: refused.
    let a = attempt(no_edit, no_edit, |cb| format!("{cb}&iss=a&iss=b")).await;
    assert_refused(&a, 400, "sso_bad_callback", "iss more than once");
    assert_eq!(a.token_calls, 0);
    let a = attempt(no_edit, no_edit, |cb| format!("{cb}&code=second")).await;
    assert_refused(&a, 400, "sso_bad_callback", "code more than once");
    assert_eq!(a.token_calls, 0);
}

/// A sign-in whose callback carries `iss` = the mock's issuer + `suffix`.
async fn attempt_with_own_iss(advertised: bool, suffix: &str) -> Attempt {
    let (idp, _) = start_idp().await;
    if advertised {
        idp.with(advertise_iss);
    }
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    b.accept = "application/json";
    let cb = to_provider(&mut b, &flow, &idp, "/apps").await;
    let cb = with_iss(&format!("{}{suffix}", idp.base))(cb);
    let r = b.get(&flow, &cb).await;
    Attempt {
        status: r.status,
        code: code_of(&r),
        message: json_body(&r)["message"].as_str().unwrap_or("").to_string(),
        token_calls: idp.with(|s| s.token_calls),
        userinfo_calls: idp.with(|s| s.userinfo_calls),
        attacker_calls: 0,
    }
}

#[tokio::test]
async fn oidc_error_callback_from_another_issuer_is_not_shown_as_the_providers() {
    let error = |cb: String, iss: Option<&str>| {
        let state = cb.split("state=").nth(1).unwrap().to_string();
        let mut u = format!(
            "/sso/oidc/callback?error=access_denied&error_description=Call%20evil%20support&state={state}"
        );
        if let Some(i) = iss {
            u.push_str(&format!(
                "&iss={}",
                form_urlencoded::byte_serialize(i.as_bytes()).collect::<String>()
            ));
        }
        u
    };
    // Wrong iss: refused as a mix-up, the other server's text is not shown.
    let a = attempt(no_edit, no_edit, |cb| {
        error(cb, Some("https://evil.example.com"))
    })
    .await;
    assert_refused(
        &a,
        401,
        "sso_invalid_identity",
        "another sign-in server (iss)",
    );
    assert!(!a.message.contains("evil support"), "{}", a.message);
    // Advertised and missing: the same.
    let a = attempt(advertise_iss, no_edit, |cb| error(cb, None)).await;
    assert_refused(&a, 401, "sso_invalid_identity", "(iss)");
    assert!(!a.message.contains("evil support"), "{}", a.message);
    // Not advertised, no iss: the provider's refusal as before (oidc_provider_error_callback_is_a_refusal).
    let a = attempt(no_edit, no_edit, |cb| error(cb, None)).await;
    assert_refused(&a, 401, "sso_provider_refused", "Call evil support");
    assert_eq!(a.token_calls, 0);
}

#[tokio::test]
async fn oidc_token_type_must_be_bearer_before_userinfo() {
    // Email only in userinfo: the access token would be sent there as a Bearer token.
    let setup = |token_type: Value| {
        move |s: &mut IdpState| {
            s.claims = obj(json!({"email": null}));
            s.token_answer = obj(json!({"token_type": token_type}));
        }
    };
    for bad in [json!("DPoP"), json!("mac"), json!(""), json!(7)] {
        let a = attempt(setup(bad.clone()), no_edit, same).await;
        assert_refused(&a, 502, "sso_provider_failed", "Bearer");
        assert_eq!(a.userinfo_calls, 0, "access token of type {bad} never used");
    }
    let a = attempt(setup(Value::Null), no_edit, same).await;
    assert_refused(
        &a,
        502,
        "sso_provider_failed",
        "no token_type (Bearer expected)",
    );
    assert_eq!(a.userinfo_calls, 0);
    // Case-insensitive (RFC 6749 §5.1): what GitHub sends, and what node-oidc-provider sends.
    for ok in ["bearer", "Bearer", "BEARER"] {
        let a = attempt(setup(json!(ok)), no_edit, same).await;
        assert_signed_in(&a);
        assert_eq!(a.userinfo_calls, 1);
    }
}

#[tokio::test]
async fn oidc_token_answer_shape() {
    let answer = |v: Value| move |s: &mut IdpState| s.token_answer = obj(v);
    // id_token is required in an OIDC token answer, and must be a string.
    for v in [
        json!({"id_token": null}),
        json!({"id_token": 42}),
        json!({"id_token": ""}),
    ] {
        let a = attempt(answer(v.clone()), no_edit, same).await;
        assert!(
            (a.status == 502 && a.message.contains("no id_token"))
                || (a.status == 401 && a.code == "sso_invalid_identity"),
            "{v}: {} {}",
            a.status,
            a.message
        );
    }
    // expires_in: a number, a string (some providers), absent: all fine (it is not used).
    for v in [
        json!({"expires_in": "300"}),
        json!({"expires_in": null}),
        json!({"expires_in": 3.5}),
    ] {
        assert_signed_in(&attempt(answer(v), no_edit, same).await);
    }
    // No access token: the ID token alone signs in; userinfo is not asked.
    let a = attempt(answer(json!({"access_token": null})), no_edit, same).await;
    assert_signed_in(&a);
    assert_eq!(a.userinfo_calls, 0);
}

#[tokio::test]
async fn oidc_at_hash_binds_the_id_token_to_the_access_token() {
    use super::mock_idp::at_hash;
    let a = attempt(
        claims_edit(json!({"at_hash": at_hash("at-1")})),
        no_edit,
        same,
    )
    .await;
    assert_signed_in(&a);
    let a = attempt(
        claims_edit(json!({"at_hash": at_hash("another")})),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "(at_hash)");
    assert_eq!(a.userinfo_calls, 0);
    // ES256 hashes with SHA-256 too.
    let a = attempt(
        |s: &mut IdpState| {
            s.signing = Signing::Ec1;
            s.claims = obj(json!({"at_hash": at_hash("at-1")}));
        },
        no_edit,
        same,
    )
    .await;
    assert_signed_in(&a);
    // HS256 (allowed, keyed with the client secret): checked too.
    let hs = |s: &mut SsoConfig| s.oidc.algorithms = vec!["RS256".into(), "HS256".into()];
    let a = attempt(
        |s: &mut IdpState| {
            s.signing = Signing::HsWithClientSecret;
            s.claims = obj(json!({"at_hash": at_hash("another")}));
        },
        hs,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "(at_hash)");
    let a = attempt(
        |s: &mut IdpState| {
            s.signing = Signing::HsWithClientSecret;
            s.claims = obj(json!({"at_hash": at_hash("at-1")}));
        },
        hs,
        same,
    )
    .await;
    assert_signed_in(&a);
}

#[tokio::test]
async fn oidc_jwks_keys_that_must_not_verify_are_dropped() {
    // RFC 7518 §3.3: a 1024-bit RSA key is dropped; a token signed with it names the reason.
    let weak = |s: &mut IdpState| {
        s.published = vec!["rsa1", "rsa-weak"];
        s.signing = Signing::RsaWeak;
    };
    let a = attempt(weak, no_edit, same).await;
    assert_refused(&a, 401, "sso_invalid_identity", "key rsa-weak");
    assert!(a.message.contains("1024 bits"), "{}", a.message);
    assert!(captured_logs().contains("JWKS: key rsa-weak is not used"));
    // The other keys of the same set still work.
    assert_signed_in(
        &attempt(
            |s: &mut IdpState| s.published = vec!["rsa1", "rsa-weak"],
            no_edit,
            same,
        )
        .await,
    );
    // `use: enc` keys never verify signatures.
    let a = attempt(
        |s: &mut IdpState| {
            s.jwk_edits.insert("rsa1", obj(json!({"use": "enc"})));
        },
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "not for signatures");
    // An EC key whose curve does not fit its alg (P-384 published for ES256)...
    let a = attempt(
        |s: &mut IdpState| {
            s.signing = Signing::Ec1;
            s.jwk_edits.insert("ec1", obj(json!({"crv": "P-384"})));
        },
        no_edit,
        same,
    )
    .await;
    assert_refused(
        &a,
        401,
        "sso_invalid_identity",
        "does not fit its algorithm",
    );
    // ... and without an alg on the key: openidconnect compares the curve with the token's alg.
    let a = attempt(
        |s: &mut IdpState| {
            s.signing = Signing::Ec1;
            s.jwk_edits
                .insert("ec1", obj(json!({"crv": "P-384", "alg": null})));
        },
        no_edit,
        same,
    )
    .await;
    assert_refused(
        &a,
        401,
        "sso_invalid_identity",
        "does not fit its algorithm",
    );
    // A key published for another algorithm (RSA key, token claims ES256 with its kid).
    let a = attempt(
        |s: &mut IdpState| {
            s.signing = Signing::Ec1;
            s.header = obj(json!({"kid": "rsa1"}));
        },
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "unknown key");
}

#[tokio::test]
async fn oidc_jose_header_attacks_rfc8725() {
    let header = |signing: Signing, h: Value| {
        move |s: &mut IdpState| {
            s.signing = signing;
            s.header = obj(h);
        }
    };
    // crit with an extension nobody here understands (RFC 7515 §4.1.11).
    let a = attempt(
        header(
            Signing::Rsa1,
            json!({"crit": ["urn:example:ext"], "urn:example:ext": 1}),
        ),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "(crit)");
    // Keys offered by the token itself are never used: jku / x5u URLs are not fetched, an
    // embedded jwk is not trusted (signed with rsa2, which the JWKS does not publish).
    for h in [
        json!({"jku": "ATTACKER/attacker/jwks"}),
        json!({"x5u": "ATTACKER/attacker/cert.pem"}),
        json!({"jwk": jwk("rsa2")}),
        json!({"x5c": ["MIIB"]}),
    ] {
        // The URLs point at the provider under test, which counts requests to /attacker/.
        let on_idp = |s: &mut IdpState| {
            let text = h.to_string().replace("ATTACKER", &s.base);
            s.signing = Signing::Rsa2;
            s.header = obj(serde_json::from_str(&text).unwrap());
        };
        let a = attempt(on_idp, no_edit, same).await;
        assert_refused(&a, 401, "sso_invalid_identity", "unknown key");
        assert_eq!(a.attacker_calls, 0, "{h}");
    }
    // kid injection: a path or SQL as kid is only ever compared with the JWKS' kids.
    for kid in ["../../../../dev/null", "rsa1' OR '1'='1", "", "rsa1\u{0}"] {
        let a = attempt(header(Signing::Rsa1, json!({"kid": kid})), no_edit, same).await;
        assert_eq!(
            (a.status, a.code.as_str()),
            (401, "sso_invalid_identity"),
            "kid {kid:?}: {}",
            a.message
        );
    }
    // HS256 with a /dev/null kid and an empty key (the classic kid + HMAC attack).
    let a = attempt(
        header(
            Signing::HsWithPublicKey,
            json!({"kid": "../../../../dev/null"}),
        ),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "algorithm");
    // alg none in other spellings.
    for alg in ["None", "NONE", "nOnE"] {
        let a = attempt(header(Signing::None, json!({"alg": alg})), no_edit, same).await;
        assert_eq!(
            (a.status, a.code.as_str()),
            (401, "sso_invalid_identity"),
            "alg {alg}: {}",
            a.message
        );
    }
    // A JWE (alg of an encryption algorithm) is not accepted as an ID token.
    let a = attempt(
        header(Signing::Rsa1, json!({"alg": "RSA-OAEP"})),
        no_edit,
        same,
    )
    .await;
    assert_eq!((a.status, a.code.as_str()), (401, "sso_invalid_identity"));
}

#[tokio::test]
async fn oidc_userinfo_about_another_user_is_refused() {
    // OIDC Core §5.3.2: the userinfo sub must be the ID token's.
    let a = attempt(
        claims_edit(json!({"email": null, "sub": "user-2"})),
        no_edit,
        same,
    )
    .await;
    assert_refused(&a, 401, "sso_invalid_identity", "about another user");
    assert_eq!(a.userinfo_calls, 1);
}

#[tokio::test]
async fn oidc_code_from_another_flow_is_refused_by_pkce_and_nonce() {
    // RFC 9700 §4.5 (code injection): a code issued for flow A, put into flow B's callback.
    let (idp, _) = start_idp().await;
    let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
    let mut b = Browser::new();
    b.accept = "application/json";
    let cb_a = to_provider(&mut b, &flow, &idp, "/apps/a").await;
    let cb_b = to_provider(&mut b, &flow, &idp, "/apps/b").await;
    let code_a = cb_a
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let code_b = cb_b
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let injected = cb_b.replace(code_b, code_a);
    let r = b.get(&flow, &injected).await;
    assert_eq!(
        (r.status, code_of(&r)),
        (401, "sso_provider_refused".into()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(idp.with(|s| s.identity_requests.is_empty()));
}

#[tokio::test]
async fn oidc_discovery_endpoints_that_are_not_http_are_not_used() {
    // end_session_endpoint `javascript:` / `data:`: no provider logout, never a Location.
    for bad in [
        "javascript:alert(document.cookie)",
        "data:text/html,<script>x</script>",
        "//evil.example.com/logout",
        "ftp://idp/logout",
    ] {
        let (idp, _) = start_idp().await;
        idp.with(|s| s.discovery = obj(json!({"end_session_endpoint": bad})));
        let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
        let mut b = Browser::new();
        assert_eq!(sign_in(&mut b, &flow, &idp).await.status, 303, "{bad}");
        for (_, value) in
            flow.on_upstream_response(&Method::POST, "/console/api/logout", 200, false)
        {
            let v = value.to_str().unwrap();
            let (n, rest) = v.split_once('=').unwrap();
            b.jar
                .insert(n.into(), rest.split(';').next().unwrap().into());
        }
        let r = b.get(&flow, SIGNIN_PATH).await;
        assert_eq!(r.status, 302);
        assert_eq!(location(&r), "/sso/signed-out", "{bad}");
        assert!(captured_logs().contains("end_session_endpoint is not an http(s) URL"));
    }
    // userinfo_endpoint not http(s): not asked; discovery itself still works.
    let a = attempt(
        |s: &mut IdpState| {
            s.discovery = obj(json!({"userinfo_endpoint": "javascript:alert(1)"}));
            s.claims = obj(json!({"email": null}));
        },
        no_edit,
        same,
    )
    .await;
    assert_eq!(a.userinfo_calls, 0);
    assert_eq!(a.token_calls, 1);
    assert_ne!(a.code, "sso_provider_failed", "{}", a.message);
}

#[tokio::test]
async fn oidc_discovery_must_name_the_configured_issuer_with_http_endpoints() {
    // OIDC Discovery §4.3: the document's issuer is the configured one, exactly; the endpoints
    // the flow cannot do without are http(s). Either way /signin shows the failure.
    for edit in [
        json!({"issuer": "https://evil.example.com"}),
        json!({"token_endpoint": "javascript:alert(1)"}),
        json!({"authorization_endpoint": "data:text/html,x"}),
        json!({"jwks_uri": "file:///etc/passwd"}),
        json!({"jwks_uri": null}),
    ] {
        let (idp, _) = start_idp().await;
        idp.with(|s| s.discovery = obj(edit.clone()));
        let flow = flow_for(&identity_sso(&idp, Protocol::Oidc));
        let mut b = Browser::new();
        b.accept = "application/json";
        let r = b.get(&flow, "/signin").await;
        assert_eq!(
            (r.status, code_of(&r)),
            (502, "sso_provider_failed".into()),
            "{edit}"
        );
        assert!(
            !r.headers.iter().any(|(n, _)| n == http::header::LOCATION),
            "{edit}"
        );
    }
}

#[tokio::test]
async fn oidc_callback_without_a_code_is_refused() {
    let a = attempt(no_edit, no_edit, |cb| {
        let state = cb.split("state=").nth(1).unwrap().to_string();
        format!("/sso/oidc/callback?state={state}")
    })
    .await;
    assert_refused(&a, 400, "sso_bad_callback", "sent no code");
    assert_eq!(a.token_calls, 0);
}

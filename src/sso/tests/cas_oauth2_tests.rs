//! CAS 3.0 and OAuth2 (GitHub-shaped) through SsoFlow against the in-process mock provider.

use super::mock_idp::*;
use super::oidc_tests::{flow_for, identity_sso, start_idp};
use super::test_browser::*;
use crate::sso::config::{OAuth2Config, OAuth2Preset};
use crate::sso::*;
use serde_json::{Value, json};

fn cas_sso(idp: &MockIdp) -> SsoConfig {
    let mut sso = identity_sso(idp, Protocol::Cas);
    sso.cas.server = format!("{}/cas", idp.base);
    sso
}

fn code_of(r: &SsoResponse) -> String {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    v["code"].as_str().unwrap_or("").to_string()
}

async fn cas_start(b: &mut Browser, flow: &SsoFlow, idp: &MockIdp, ret: &str) -> String {
    let r = b.get(flow, &format!("/signin?redirect_url={ret}")).await;
    assert_eq!(r.status, 302);
    let loc = location(&r).to_string();
    assert!(
        loc.starts_with(&format!(
            "{}/cas/login?service=http%3A%2F%2Flocalhost%3A8080%2Fsso%2Fcas%2Fcallback%3Fstate%3D",
            idp.base
        )),
        "{loc}"
    );
    loc
}

#[tokio::test]
async fn cas_success_maps_attributes_and_lands() {
    let (idp, access) = start_idp().await;
    let flow = flow_for(&cas_sso(&idp));
    let mut b = Browser::new();
    let loc = cas_start(&mut b, &flow, &idp, "/apps/c").await;
    let cb = idp.cas_login(&loc);
    let r = b.get(&flow, &cb).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(b.jar.get("access_token"), Some(&access));
    assert_eq!(location(&b.get(&flow, "/sso/continue").await), "/apps/c");
    let (_, body) = idp.with(|s| s.identity_requests[0].clone());
    assert_eq!(body["protocol"], "cas");
    assert_eq!(body["issuer"], format!("{}/cas", idp.base));
    assert_eq!(body["subject"], "ann");
    assert_eq!(body["email"], "ann@example.com");
    assert_eq!(body["email_verified"], true);
    assert_eq!(body["name"], "Ann Lee");
    assert_eq!(body["groups"], json!(["dify-users", "staff"]));
}

#[tokio::test]
async fn cas_failure_xml_wrong_service_and_replayed_ticket() {
    let (idp, _) = start_idp().await;
    let flow = flow_for(&cas_sso(&idp));
    let mut b = Browser::new();
    b.accept = "application/json";
    // A ticket the CAS server does not know: its failure XML becomes a refusal page.
    let loc = cas_start(&mut b, &flow, &idp, "/apps").await;
    let cb = idp.cas_login(&loc);
    let bogus = format!("{}ticket=ST-unknown", cb.split("ticket=").next().unwrap());
    let r = b.get(&flow, &bogus).await;
    assert_eq!(
        (r.status, code_of(&r)),
        (401, "sso_provider_refused".into())
    );
    let msg: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        msg["message"].as_str().unwrap().contains("INVALID_TICKET"),
        "{msg}"
    );

    // A ticket issued for another flow's service (tab A) brought to tab B's callback.
    let loc_a = cas_start(&mut b, &flow, &idp, "/apps/a").await;
    let loc_b = cas_start(&mut b, &flow, &idp, "/apps/b").await;
    let cb_a = idp.cas_login(&loc_a);
    let ticket_a = cb_a.split("ticket=").nth(1).unwrap();
    let cb_b = idp.cas_login(&loc_b);
    let swapped = format!("{}ticket={ticket_a}", cb_b.split("ticket=").next().unwrap());
    let r = b.get(&flow, &swapped).await;
    assert_eq!(
        (r.status, code_of(&r)),
        (401, "sso_provider_refused".into())
    );
    assert!(String::from_utf8_lossy(&r.body).contains("INVALID_SERVICE"));

    // A used ticket, replayed with the flow cookie put back: refused before CAS is asked again.
    b.jar.remove("dg_sso_loop");
    let loc = cas_start(&mut b, &flow, &idp, "/apps").await;
    let cb = idp.cas_login(&loc);
    let saved = b.jar.clone();
    assert_eq!(b.get(&flow, &cb).await.status, 303);
    let calls = idp.with(|s| s.validate_calls);
    b.jar = saved;
    let r = b.get(&flow, &cb).await;
    assert_eq!((r.status, code_of(&r)), (400, "sso_bad_state".into()));
    assert_eq!(idp.with(|s| s.validate_calls), calls);
    // And the CAS server itself refuses a ticket used before (another fresh flow, same ticket).
    let loc = cas_start(&mut b, &flow, &idp, "/apps").await;
    let state_part = loc.split("state%3D").nth(1).unwrap().to_string();
    let used_ticket = cb.split("ticket=").nth(1).unwrap();
    let r = b
        .get(
            &flow,
            &format!("/sso/cas/callback?state={state_part}&ticket={used_ticket}"),
        )
        .await;
    assert_eq!(
        (r.status, code_of(&r)),
        (401, "sso_provider_refused".into())
    );
}

fn github_sso(idp: &MockIdp) -> SsoConfig {
    let mut sso = identity_sso(idp, Protocol::Oauth2);
    sso.oauth2 = OAuth2Config {
        preset: OAuth2Preset::Github,
        authorize_url: format!("{}/login/oauth/authorize", idp.base),
        token_url: format!("{}/login/oauth/access_token", idp.base),
        userinfo_url: format!("{}/user", idp.base),
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET),
        ..Default::default()
    };
    sso
}

#[tokio::test]
async fn oauth2_github_preset_uses_the_primary_verified_email() {
    let (idp, access) = start_idp().await;
    let flow = flow_for(&github_sso(&idp));
    let mut b = Browser::new();
    let r = b.get(&flow, "/signin?redirect_url=/apps/g").await;
    let loc = location(&r).to_string();
    assert!(
        loc.contains("scope=read%3Auser%20user%3Aemail")
            && loc.contains("code_challenge_method=S256"),
        "{loc}"
    );
    let cb = idp.authorize(&loc);
    assert!(cb.starts_with("/sso/oauth2/callback?"));
    let r = b.get(&flow, &cb).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(b.jar.get("access_token"), Some(&access));
    let (_, body) = idp.with(|s| s.identity_requests[0].clone());
    assert_eq!(
        body,
        json!({"trace_id": body["trace_id"], "protocol": "oauth2", "issuer": "https://github.com",
            "subject": "4242", "email": "ann@example.com", "email_verified": true, "name": "Ann Lee", "groups": []})
    );

    // No verified primary address: refused before minting.
    idp.with(|s| {
        s.github_emails = json!([{"email": "a@example.com", "primary": true, "verified": false}])
    });
    let mut b = Browser::new();
    b.accept = "application/json";
    let cb = idp.authorize(location(&b.get(&flow, "/signin").await));
    let r = b.get(&flow, &cb).await;
    assert_eq!((r.status, code_of(&r)), (403, "sso_not_allowed".into()));
    assert_eq!(idp.with(|s| s.identity_requests.len()), 1);
}

#[tokio::test]
async fn oauth2_wrong_state_never_redeems_and_generic_pointers_work() {
    let (idp, _) = start_idp().await;
    let flow = flow_for(&github_sso(&idp));
    let mut b = Browser::new();
    b.accept = "application/json";
    let cb = idp.authorize(location(&b.get(&flow, "/signin").await));
    let r = b.get(&flow, &cb.replace("state=", "state=0")).await;
    assert_eq!((r.status, code_of(&r)), (400, "sso_bad_state".into()));
    assert_eq!(idp.with(|s| s.token_calls), 0);

    // preset none: pointers into a nested userinfo answer (served by the mock's /user).
    idp.with(|s| {
        s.github_user = json!({"data": {"uid": "u-9", "mail": "Zed@Example.com", "ok": true,
            "profile": {"display": "Zed"}, "teams": ["dify-users"]}})
    });
    let mut sso = github_sso(&idp);
    sso.oauth2.preset = OAuth2Preset::None;
    sso.oauth2.claims = crate::sso::config::OAuth2Config::default().claims;
    sso.oauth2.claims.id = "/data/uid".into();
    sso.oauth2.claims.email = "/data/mail".into();
    sso.oauth2.claims.email_verified = "/data/ok".into();
    sso.oauth2.claims.name = "/data/profile/display".into();
    sso.oauth2.claims.groups = "/data/teams".into();
    sso.allow.groups = vec!["dify-users".into()];
    let flow = flow_for(&sso);
    let mut b = Browser::new();
    let cb = idp.authorize(location(&b.get(&flow, "/signin").await));
    let r = b.get(&flow, &cb).await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    let (_, body) = idp.with(|s| s.identity_requests.last().unwrap().clone());
    assert_eq!(body["subject"], "u-9");
    assert_eq!(body["email"], "zed@example.com");
    assert_eq!(body["name"], "Zed");
    assert_eq!(body["groups"], json!(["dify-users"]));
    assert_eq!(body["issuer"], idp.base);
}

#[test]
fn oauth2_endpoints_and_issuer_must_be_http_urls() {
    let dify = dify(crate::dify::SessionDelivery::Cookie, KEY);
    let check = |edit: &dyn Fn(&mut SsoConfig)| {
        let mut sso = SsoConfig {
            enabled: true,
            protocol: Protocol::Oauth2,
            ..Default::default()
        };
        sso.oauth2 = OAuth2Config {
            authorize_url: "https://id.example.com/authorize".into(),
            token_url: "https://id.example.com/token".into(),
            userinfo_url: "https://id.example.com/userinfo".into(),
            client_id: "c".into(),
            client_secret: Secret::new("s"),
            claims: crate::sso::config_protocols::OAuth2Claims {
                id: "/id".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        sso.exchange.identity_url = "http://manager:8087/dify_session".into();
        edit(&mut sso);
        let mut issues = Vec::new();
        sso.validate(&dify, &mut issues);
        issues
            .iter()
            .map(|i| format!("{}: {}", i.field, i.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(check(&|_| {}), "");
    for bad in [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "//id.example.com/u",
    ] {
        let out = check(&|s| s.oauth2.userinfo_url = bad.into());
        assert!(out.contains("sso.oauth2.userinfo_url"), "{bad}: {out}");
        let out = check(&|s| s.oauth2.issuer = bad.into());
        assert!(out.contains("sso.oauth2.issuer"), "{bad}: {out}");
    }
    assert_eq!(
        check(&|s| s.oauth2.issuer = "https://id.example.com".into()),
        ""
    );
}

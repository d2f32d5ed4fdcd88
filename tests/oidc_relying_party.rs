//! The gateway as an OpenID Connect / OAuth 2.0 relying party, through the real binary: a
//! simulated browser signs in via `/signin` -> the mock provider (`support/oidc_mock.rs`) -> the
//! gateway's callback -> the management service's identity call (`support/identity_mock.rs`) ->
//! the mock Dify (`support/dify_mock.rs`). Each test makes the provider misbehave in one way
//! the specs say a client must refuse (docs/oidc-relying-party.md lists them) and asserts what
//! the user sees (the error page: status, reason, trace id, "Try again", no Dify session) and
//! what the provider saw (which of its endpoints were, and were not, called).
//!
//! The browser reaches the gateway as `localhost` and the provider as `127.0.0.1`: two sites, as
//! in a real cross-site sign-in.

mod support;

use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};
use support::browser_sim::{Browser, Page};
use support::dify_mock::{DifyMock, DifySettings};
use support::gateway::{Gateway, yq};
use support::identity_mock::IdentityMock;
use support::oidc_mock::{
    CLIENT_ID, CLIENT_SECRET, CallbackIss, Knobs, OidcMock, SUBJECT, Signing, TokenRefusal, jwk,
    merged, obj,
};
use support::sso_env::{SECRET_KEY, STATE_SECRET, assert_error_page, assert_signed_in};

const ANN_ID: &str = "6f1c0d2a-0000-4000-8000-0000000a0a01";
/// `LEEWAY_SECS` in src/sso/providers/oidc.rs.
const LEEWAY: u64 = 60;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Oidc,
    Oauth2,
}

/// One relying party (the gateway) with its provider, management service and Dify.
struct Rp {
    op: OidcMock,
    identity: IdentityMock,
    _dify: DifyMock,
    gateway: Gateway,
    base: String,
    proto: Proto,
}

/// What one sign-in attempt came to, and what the provider and the management service saw
/// during it.
struct Outcome {
    /// The gateway's answer to the callback.
    page: Page,
    browser: Browser,
    callback_url: String,
    tokens: usize,
    userinfo: usize,
    attacker: usize,
    identity: usize,
}

impl Rp {
    /// `yaml`: extra lines inside `sso.oidc:` (or `sso.oauth2:`), indented by the caller.
    async fn start(proto: Proto, knobs: Knobs, yaml: &str) -> Rp {
        let builder = Gateway::builder();
        let base = format!("http://localhost:{}", builder.listen.port());
        let op = OidcMock::start(
            &[
                &format!("{base}/sso/oidc/callback"),
                &format!("{base}/sso/oauth2/callback"),
            ],
            knobs,
        )
        .await;
        let identity =
            IdentityMock::start(SECRET_KEY, &[("ann.lee@example.com", ANN_ID)], None).await;
        let dify = DifyMock::start(DifySettings::new(SECRET_KEY)).await;
        dify.add_account(ANN_ID, "Ann Lee");
        let issuer = op.issuer();
        let protocol = match proto {
            Proto::Oidc => format!(
                "  protocol: oidc\n  \
                   oidc:\n    \
                     issuer: {issuer}\n    \
                     client_id: {client}\n    \
                     client_secret: \"${{RP_CLIENT_SECRET:-}}\"\n    \
                     end_session: true\n{yaml}",
                issuer = yq(&issuer),
                client = yq(CLIENT_ID),
            ),
            Proto::Oauth2 => format!(
                "  protocol: oauth2\n  \
                   oauth2:\n    \
                     authorize_url: {a}\n    \
                     token_url: {t}\n    \
                     userinfo_url: {u}\n    \
                     client_id: {client}\n    \
                     client_secret: \"${{RP_CLIENT_SECRET:-}}\"\n    \
                     scopes: [openid, email, profile]\n    \
                     claims: {{id: /sub, email: /email, email_verified: /email_verified, name: /name, groups: /groups}}\n{yaml}",
                a = yq(&op.url("/authorize")),
                t = yq(&op.url("/token")),
                u = yq(&op.url("/userinfo")),
                client = yq(CLIENT_ID),
            ),
        };
        let config = format!(
            "sso:\n{protocol}  \
               state_secret: {state}\n  \
               allow:\n    \
                 email_domains: [example.com]\n  \
               exchange:\n    \
                 identity_url: {identity}\n    \
                 timeout: 5s\n\
             dify:\n  \
               secret_key: {secret}\n",
            state = yq(STATE_SECRET),
            identity = yq(&identity.url()),
            secret = yq(SECRET_KEY),
        );
        let gateway = builder
            .upstream("api", &[dify.addr()])
            .upstream("web", &[dify.addr()])
            .env("RP_CLIENT_SECRET", CLIENT_SECRET)
            .rust_log("info,dify_gateway=debug")
            .extra_yaml(&config)
            .start()
            .await;
        Rp {
            op,
            identity,
            _dify: dify,
            gateway,
            base,
            proto,
        }
    }

    async fn oidc(knobs: Knobs) -> Rp {
        Rp::start(Proto::Oidc, knobs, "").await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn callback_path(&self) -> &'static str {
        match self.proto {
            Proto::Oidc => "/sso/oidc/callback",
            Proto::Oauth2 => "/sso/oauth2/callback",
        }
    }

    /// `/signin` -> the provider's authorization endpoint -> the callback URL it sends the browser
    /// to (not followed).
    async fn to_callback(&self, b: &mut Browser) -> String {
        let first = b.get(&self.url("/signin?redirect_url=%2Fapps%2Fx")).await;
        assert_eq!(first.status, 302, "/signin: {}", first.body);
        let authorize = first.location().expect("Location").to_string();
        assert!(
            authorize.starts_with(&self.op.url("/authorize?")),
            "/signin must go to the provider: {authorize}"
        );
        let back = b
            .request("GET", &authorize, None, Some(&first.url), &[])
            .await;
        assert_eq!(back.status, 302, "the provider refused: {}", back.body);
        let cb = back.location().expect("Location").to_string();
        assert!(cb.starts_with(&self.url(self.callback_path())), "{cb}");
        cb
    }

    /// One sign-in in a fresh browser; `tamper` may rewrite the callback URL the provider sent.
    async fn attempt(&self, tamper: impl FnOnce(String) -> String) -> Outcome {
        let mut b = Browser::new();
        let before = (
            self.op.token_calls(),
            self.op.userinfo_calls(),
            self.op.attacker_calls(),
            self.identity.calls().len(),
        );
        let cb = tamper(self.to_callback(&mut b).await);
        let page = b
            .request("GET", &cb, None, Some(&self.op.url("/authorize")), &[])
            .await;
        Outcome {
            page,
            browser: b,
            callback_url: cb,
            tokens: self.op.token_calls() - before.0,
            userinfo: self.op.userinfo_calls() - before.1,
            attacker: self.op.attacker_calls() - before.2,
            identity: self.identity.calls().len() - before.3,
        }
    }

    async fn sign_in(&self) -> Outcome {
        self.attempt(|c| c).await
    }
}

impl Outcome {
    /// The sign-in completed: the callback answered a redirect (no page that could leak the code
    /// through Referer), and the browser lands on the Dify page it started from, signed in.
    async fn lands_signed_in(mut self, rp: &Rp) -> Outcome {
        assert_eq!(
            self.page.status, 303,
            "the callback should sign in; got {}: {}",
            self.page.status, self.page.body
        );
        assert_eq!(self.page.location(), Some("/sso/continue"));
        assert_eq!(self.identity, 1);
        let landing = self.browser.follow(self.page.clone(), 5).await;
        assert_eq!(landing.url, rp.url("/apps/x"), "{:#?}", self.browser.urls());
        assert_signed_in(&landing, "Ann Lee");
        self
    }

    /// The sign-in was refused with the error page (`assert_error_page`: status, reason, trace id,
    /// "Try again", no Dify session cookie); nobody was signed in. Returns the trace id.
    #[track_caller]
    fn refused(&self, status: u16, reason: &str) -> String {
        let trace = assert_error_page(&self.page, status, reason);
        assert_eq!(self.identity, 0, "no identity call for a refused sign-in");
        let site = url::Url::parse(&self.page.url).unwrap();
        let site = format!("{}://{}/", site.scheme(), site.authority());
        for c in ["access_token", "refresh_token", "csrf_token"] {
            assert!(self.browser.cookie(&site, c).is_none(), "{c} set");
        }
        trace
    }
}

fn with_query(url: &str, extra: &[(&str, &str)]) -> String {
    let mut u = url::Url::parse(url).unwrap();
    for (k, v) in extra {
        u.query_pairs_mut().append_pair(k, v);
    }
    u.to_string()
}

fn without_query(url: &str, name: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// An error response (OIDC Core §3.1.2.6) for the flow of `callback_url`, with `iss` if given.
fn error_response(callback_url: &str, iss: Option<&str>) -> String {
    let mut u = url::Url::parse(callback_url).unwrap();
    let state = query_param(callback_url, "state").unwrap();
    u.query_pairs_mut()
        .clear()
        .append_pair("error", "access_denied")
        .append_pair("error_description", "Call evil support")
        .append_pair("state", &state);
    if let Some(i) = iss {
        u.query_pairs_mut().append_pair("iss", i);
    }
    u.to_string()
}

#[tokio::test]
async fn oidc_happy_path_lands_signed_in_with_pkce_and_no_secret_in_the_logs() {
    let rp = Rp::oidc(Knobs {
        at_hash: true,
        ..Knobs::default()
    })
    .await;
    let mut b = Browser::new();
    let first = b.get(&rp.url("/signin?redirect_url=%2Fapps%2Fx")).await;
    let authorize = first.location().unwrap().to_string();
    for (name, want) in [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", &rp.url("/sso/oidc/callback")),
        ("code_challenge_method", "S256"),
    ] {
        assert_eq!(
            query_param(&authorize, name).as_deref(),
            Some(want),
            "{name}"
        );
    }
    assert!(query_param(&authorize, "nonce").is_some_and(|n| n.len() >= 16));
    let flow_cookies: Vec<String> = b
        .cookie_names(&rp.url("/"))
        .into_iter()
        .filter(|n| n.starts_with("dg_sso_f_"))
        .collect();
    assert_eq!(flow_cookies.len(), 1, "one signed per-flow cookie");

    // The provider checked the client (Basic), the exact redirect_uri and the PKCE verifier
    // before it answered; the ID token (RS256, with at_hash) passed.
    let signed_in = rp.sign_in().await.lands_signed_in(&rp).await;
    assert_eq!(signed_in.tokens, 1);
    assert_eq!(rp.op.client_auth(), vec!["basic"]);
    assert!(
        rp.op.token_refusals().is_empty(),
        "{:?}",
        rp.op.token_refusals()
    );
    // The ID token names the email: userinfo is not asked.
    assert_eq!(signed_in.userinfo, 0);
    let call = &rp.identity.calls()[0];
    let trace = call.body["trace_id"].as_str().unwrap().to_string();
    assert_eq!(
        call.body,
        json!({"trace_id": trace, "protocol": "oidc", "issuer": rp.op.issuer(),
            "subject": SUBJECT, "email": "ann.lee@example.com", "email_verified": true,
            "name": "Ann Lee", "groups": ["dify-users", "staff"]})
    );
    let left = signed_in.browser.cookie_names(&rp.url("/"));
    assert!(!left.iter().any(|n| n.starts_with("dg_sso_f_")), "{left:?}");

    // ES256 from the same JWKS.
    rp.op.set(|k| k.signing = Signing::Ec1);
    rp.sign_in().await.lands_signed_in(&rp).await;

    let logs = format!("{}\n{}", rp.gateway.stderr(), rp.gateway.stdout());
    assert!(logs.contains(&trace), "the logs name the trace id");
    let code = query_param(&signed_in.callback_url, "code").unwrap();
    let (id_token, access_token) = rp.op.issued()[0].clone();
    for (what, secret) in [
        ("authorization code", code.as_str()),
        ("ID token", id_token.as_str()),
        ("ID token signature", id_token.rsplit('.').next().unwrap()),
        ("provider access token", access_token.as_str()),
        ("client secret", CLIENT_SECRET),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the logs:\n{logs}");
    }
}

#[tokio::test]
async fn oidc_client_secret_post_when_discovery_offers_only_that() {
    let rp = Rp::oidc(Knobs {
        discovery: obj(json!({"token_endpoint_auth_methods_supported": ["client_secret_post"]})),
        ..Knobs::default()
    })
    .await;
    rp.sign_in().await.lands_signed_in(&rp).await;
    assert_eq!(rp.op.client_auth(), vec!["post"]);
}

#[tokio::test]
async fn oidc_id_token_claims_are_checked_oidc_core_3_1_3_7() {
    let rp = Rp::oidc(Knobs::default()).await;
    let t = now();
    let refused: Vec<(Value, &str)> = vec![
        (json!({"nonce": "not-the-flows"}), "nonce"),
        (json!({"nonce": null}), "nonce"),
        (json!({"iss": "https://evil.example.com"}), "another issuer"),
        (
            json!({"iss": format!("{}/", rp.op.issuer())}),
            "another issuer",
        ),
        (json!({"iss": null}), "missing field `iss`"),
        (json!({"aud": "another-client"}), "another client"),
        (json!({"aud": null}), "another client (aud)"),
        (
            json!({"aud": [CLIENT_ID, "other-client"]}),
            "another client",
        ),
        (
            json!({"aud": [CLIENT_ID, "other-client"], "azp": CLIENT_ID}),
            "another client (aud)",
        ),
        (json!({"azp": "another-client"}), "azp"),
        (json!({"sub": null}), "ID token"),
        (json!({"sub": ""}), "no subject"),
        (json!({"exp": t - 3600}), "expired"),
        (json!({"exp": t - LEEWAY - 5}), "expired"),
        (json!({"exp": null}), "ID token"),
        (json!({"exp": "soon"}), "ID token"),
        (json!({"iat": null}), "ID token"),
        (json!({"iat": t + LEEWAY + 30}), "not valid"),
        (json!({"nbf": t + 3600}), "not valid yet (nbf)"),
        (json!({"nbf": t + LEEWAY + 30}), "not valid yet (nbf)"),
        (json!({"nbf": "tomorrow"}), "nbf is not a time"),
    ];
    for (claims, reason) in refused {
        rp.op.set(|k| k.claims = obj(claims.clone()));
        let a = rp.sign_in().await;
        a.refused(401, reason);
        assert_eq!(a.tokens, 1, "{claims}");
    }
    // One leeway for every time check: within it, and in the past, signs in.
    for claims in [
        json!({"exp": t - 20}),
        json!({"iat": t + LEEWAY - 20}),
        json!({"nbf": t + LEEWAY - 20}),
        json!({"nbf": t - 10}),
        json!({"azp": CLIENT_ID}),
    ] {
        rp.op.set(|k| k.claims = obj(claims.clone()));
        rp.sign_in().await.lands_signed_in(&rp).await;
    }
}

#[tokio::test]
async fn oidc_jose_header_attacks_are_refused_rfc8725() {
    let rp = Rp::oidc(Knobs::default()).await;
    let attacker = rp.op.url("/attacker");
    let cases: Vec<(Signing, Value, &str)> = vec![
        (Signing::None, json!({}), "algorithm"),
        (Signing::None, json!({"alg": "None"}), ""),
        (Signing::None, json!({"alg": "NONE"}), ""),
        (Signing::None, json!({"alg": "nOnE"}), ""),
        // Algorithm confusion: HMAC keyed with the published RSA public key.
        (Signing::HsWithPublicKey, json!({}), "algorithm"),
        (
            Signing::HsWithPublicKey,
            json!({"kid": "../../../../dev/null"}),
            "algorithm",
        ),
        (
            Signing::Rsa1,
            json!({"crit": ["urn:example:ext"], "urn:example:ext": 1}),
            "(crit)",
        ),
        // Keys offered by the token itself: never fetched, never trusted.
        (
            Signing::Rsa2,
            json!({"jku": format!("{attacker}/jwks")}),
            "unknown key",
        ),
        (
            Signing::Rsa2,
            json!({"x5u": format!("{attacker}/cert.pem")}),
            "unknown key",
        ),
        (Signing::Rsa2, json!({"jwk": jwk("rsa2")}), "unknown key"),
        (Signing::Rsa2, json!({"x5c": ["MIIB"]}), "unknown key"),
        // kid is only compared with the JWKS' kids.
        (Signing::Rsa1, json!({"kid": "../../../../dev/null"}), ""),
        (Signing::Rsa1, json!({"kid": "rsa1' OR '1'='1"}), ""),
        (Signing::Rsa1, json!({"kid": ""}), ""),
        (Signing::Rsa1, json!({"kid": "rsa1\u{0}"}), ""),
        // A JWE's alg: not accepted as an ID token.
        (Signing::Rsa1, json!({"alg": "RSA-OAEP"}), ""),
    ];
    for (signing, header, reason) in cases {
        rp.op.set(|k| {
            k.signing = signing;
            k.header = obj(header.clone());
        });
        let a = rp.sign_in().await;
        a.refused(401, reason);
        assert_eq!(a.attacker, 0, "{header}: a URL from the token was fetched");
    }
    assert_eq!(rp.op.attacker_calls(), 0);
    // The same gateway still signs in with an honest token.
    rp.op.set(|k| {
        k.signing = Signing::Rsa1;
        k.header = obj(json!({}));
    });
    rp.sign_in().await.lands_signed_in(&rp).await;
}

#[tokio::test]
async fn oidc_hs256_is_keyed_with_the_client_secret_and_at_hash_is_checked() {
    let rp = Rp::start(
        Proto::Oidc,
        Knobs::default(),
        "    algorithms: [RS256, ES256, HS256]\n",
    )
    .await;
    // Allowed HS256 is keyed with the client secret, never with the RSA public key.
    rp.op.set(|k| k.signing = Signing::HsWithPublicKey);
    rp.sign_in().await.refused(401, "signature");
    rp.op.set(|k| {
        k.signing = Signing::HsWithClientSecret;
        k.at_hash = true;
    });
    rp.sign_in().await.lands_signed_in(&rp).await;
    // at_hash of another access token (RS256, ES256, HS256): the access token is not used.
    for signing in [Signing::HsWithClientSecret, Signing::Rsa1, Signing::Ec1] {
        rp.op.set(|k| {
            k.signing = signing;
            k.at_hash = false;
            k.claims =
                obj(json!({"at_hash": support::oidc_mock::at_hash("another"), "email": null}));
        });
        let a = rp.sign_in().await;
        a.refused(401, "(at_hash)");
        assert_eq!(a.userinfo, 0, "{signing:?}");
    }
    for signing in [Signing::Rsa1, Signing::Ec1] {
        rp.op.set(|k| {
            k.signing = signing;
            k.at_hash = true;
            k.claims = obj(json!({}));
        });
        rp.sign_in().await.lands_signed_in(&rp).await;
    }
}

#[tokio::test]
async fn oidc_jwks_keys_that_must_not_verify_are_dropped() {
    // One JWKS with a good key, a 1024-bit RSA key, a `use: enc` key, and EC keys whose curve does
    // not fit ES256 (with and without `alg` on the key).
    let ec = jwk("ec1");
    let jwks = vec![
        jwk("rsa1"),
        jwk("rsa-weak"),
        merged(jwk("rsa2"), &obj(json!({"use": "enc"}))),
        merged(ec.clone(), &obj(json!({"kid": "ec-p384", "crv": "P-384"}))),
        merged(
            ec.clone(),
            &obj(json!({"kid": "ec-p384-noalg", "crv": "P-384", "alg": null})),
        ),
        ec,
    ];
    let rp = Rp::oidc(Knobs {
        jwks,
        ..Knobs::default()
    })
    .await;
    let cases: Vec<(Signing, Value, &str)> = vec![
        (Signing::RsaWeak, json!({}), "key rsa-weak"),
        (Signing::Rsa2, json!({}), "not for signatures"),
        (
            Signing::Ec1,
            json!({"kid": "ec-p384"}),
            "does not fit its algorithm",
        ),
        (
            Signing::Ec1,
            json!({"kid": "ec-p384-noalg"}),
            "does not fit its algorithm",
        ),
        // A key of another type than the token's alg.
        (Signing::Ec1, json!({"kid": "rsa1"}), "unknown key"),
    ];
    for (signing, header, reason) in cases {
        rp.op.set(|k| {
            k.signing = signing;
            k.header = obj(header.clone());
        });
        let a = rp.sign_in().await;
        a.refused(401, reason);
        if signing == Signing::RsaWeak {
            assert!(a.page.body.contains("1024 bits"), "{}", a.page.body);
        }
    }
    assert!(
        rp.gateway
            .stderr()
            .contains("JWKS: key rsa-weak is not used"),
        "{}",
        rp.gateway.stderr()
    );
    // The other keys of the set still verify.
    for signing in [Signing::Rsa1, Signing::Ec1] {
        rp.op.set(|k| {
            k.signing = signing;
            k.header = obj(json!({}));
        });
        rp.sign_in().await.lands_signed_in(&rp).await;
    }
}

#[tokio::test]
async fn oidc_unknown_kid_refetches_the_jwks_and_keeps_stale_keys_on_error() {
    let rp = Rp::oidc(Knobs::default()).await;
    // The start-up check of the provider fetches the JWKS once, apart from the sign-ins' cache.
    let checked = support::poll_until(support::WAIT, || async {
        (rp.op.jwks_calls() >= 1).then_some(rp.op.jwks_calls())
    })
    .await
    .expect("the start-up check fetched no JWKS");
    rp.sign_in().await.lands_signed_in(&rp).await;
    rp.sign_in().await.lands_signed_in(&rp).await;
    assert_eq!(rp.op.jwks_calls(), checked + 1, "cached");
    // Rotation: a new key, under a kid the gateway has not seen.
    rp.op.set(|k| {
        k.jwks = vec![jwk("rsa2"), jwk("ec1")];
        k.signing = Signing::Rsa2;
    });
    rp.sign_in().await.lands_signed_in(&rp).await;
    assert_eq!(rp.op.jwks_calls(), checked + 2);
    // JWKS down: the cached keys still verify; a token under a key it never had is refused.
    rp.op.set(|k| k.jwks_down = true);
    rp.sign_in().await.lands_signed_in(&rp).await;
    rp.op.set(|k| k.signing = Signing::Rsa1);
    rp.sign_in().await.refused(401, "");
}

#[tokio::test]
async fn oidc_state_is_bound_to_this_browser_before_anything_is_redeemed() {
    let rp = Rp::oidc(Knobs::default()).await;
    const BAD_STATE: &str = "could not be matched to one started in this browser";
    let forge = |cb: String| {
        let state = query_param(&cb, "state").unwrap();
        cb.replace(&state, &format!("{}{}", &state[..8], "0".repeat(24)))
    };
    for tamper in [
        Box::new(forge) as Box<dyn FnOnce(String) -> String>,
        Box::new(|cb: String| without_query(&cb, "state")),
        Box::new(|cb: String| {
            let state = query_param(&cb, "state").unwrap();
            cb.replace(&state, "x")
        }),
    ] {
        let a = rp.attempt(tamper).await;
        a.refused(400, BAD_STATE);
        assert_eq!(a.tokens, 0);
    }
    // The genuine callback in another browser (without this browser's per-flow cookie).
    let mut b = Browser::new();
    let cb = rp.to_callback(&mut b).await;
    let mut other = Browser::new();
    let page = other
        .request("GET", &cb, None, Some(&rp.op.url("/authorize")), &[])
        .await;
    assert_error_page(&page, 400, BAD_STATE);
    assert_eq!(rp.op.token_calls(), 0);
    // Single use: a replayed callback is refused before the provider is asked again, also with
    // the per-flow cookie put back (as one who copied it would).
    let mut b = Browser::new();
    let cb = rp.to_callback(&mut b).await;
    let site = rp.url("/");
    let saved: Vec<(String, String)> = b
        .cookie_names(&site)
        .into_iter()
        .filter(|n| n.starts_with("dg_sso_f_"))
        .map(|n| (n.clone(), b.cookie(&site, &n).unwrap()))
        .collect();
    assert_eq!(saved.len(), 1, "one per-flow cookie");
    let from = rp.op.url("/authorize");
    let first = b.request("GET", &cb, None, Some(&from), &[]).await;
    assert_eq!(first.status, 303, "{}", first.body);
    for replay_with_cookie in [false, true] {
        if replay_with_cookie {
            b.set_cookie_raw(&site, &saved[0].0, &saved[0].1);
        }
        let replay = b.request("GET", &cb, None, Some(&from), &[]).await;
        assert_error_page(&replay, 400, BAD_STATE);
    }
    assert_eq!(rp.op.token_calls(), 1);
    assert_eq!(rp.identity.calls().len(), 1);
}

#[tokio::test]
async fn oidc_callback_iss_rfc9207_when_advertised() {
    let rp = Rp::oidc(Knobs {
        discovery: obj(json!({"authorization_response_iss_parameter_supported": true})),
        callback_iss: CallbackIss::Issuer,
        ..Knobs::default()
    })
    .await;
    let issuer = rp.op.issuer();
    rp.sign_in().await.lands_signed_in(&rp).await;
    let a = rp.attempt(|cb| without_query(&cb, "iss")).await;
    a.refused(401, "does not name its sign-in server (iss)");
    assert_eq!(a.tokens, 0, "no code redeemed without iss");
    let slash = format!("{issuer}/");
    for bad in ["https://evil.example.com", "", "http://127.0.0.1:1", &slash] {
        let a = rp
            .attempt(|cb| with_query(&without_query(&cb, "iss"), &[("iss", bad)]))
            .await;
        a.refused(401, "another sign-in server (iss)");
        assert_eq!(a.tokens, 0, "no code redeemed with iss {bad:?}");
    }
    // An error response without the promised iss: not shown as the provider's refusal.
    let a = rp.attempt(|cb| error_response(&cb, None)).await;
    a.refused(401, "(iss)");
    assert!(!a.page.body.contains("evil support"), "{}", a.page.body);
    assert_eq!(rp.op.token_calls(), 1);
}

#[tokio::test]
async fn oidc_callback_iss_and_parameters_when_not_advertised() {
    let rp = Rp::oidc(Knobs {
        discovery: obj(json!({"authorization_response_iss_parameter_supported": false})),
        ..Knobs::default()
    })
    .await;
    let issuer = rp.op.issuer();
    // No iss is fine; the right one too; another is still a mix-up, refused before redeeming.
    rp.sign_in().await.lands_signed_in(&rp).await;
    rp.attempt(|cb| with_query(&cb, &[("iss", &issuer)]))
        .await
        .lands_signed_in(&rp)
        .await;
    let a = rp
        .attempt(|cb| with_query(&cb, &[("iss", "https://evil.example.com")]))
        .await;
    a.refused(401, "another sign-in server (iss)");
    assert_eq!(a.tokens, 0);
    // An error response from another issuer is refused as a mix-up, its text not shown.
    let a = rp
        .attempt(|cb| error_response(&cb, Some("https://evil.example.com")))
        .await;
    a.refused(401, "another sign-in server (iss)");
    assert!(!a.page.body.contains("evil support"), "{}", a.page.body);
    // The provider's own error response is its refusal.
    let a = rp.attempt(|cb| error_response(&cb, None)).await;
    a.refused(401, "Call evil support");
    assert_eq!(a.tokens, 0);
    // A parameter twice: which one would count? Neither.
    for (name, reason) in [
        ("iss", "iss more than once"),
        ("code", "code more than once"),
    ] {
        let a = rp
            .attempt(|cb| with_query(&cb, &[(name, "a"), (name, "b")]))
            .await;
        a.refused(400, reason);
        assert_eq!(a.tokens, 0);
    }
    // No code.
    let a = rp.attempt(|cb| without_query(&cb, "code")).await;
    a.refused(400, "sent no code");
    assert_eq!(a.tokens, 0);
}

#[tokio::test]
async fn oidc_code_from_another_flow_is_refused_by_pkce() {
    // RFC 9700 §4.5: a code issued for flow A, put into flow B's callback in the same browser.
    let rp = Rp::oidc(Knobs::default()).await;
    let mut b = Browser::new();
    let cb_a = rp.to_callback(&mut b).await;
    let cb_b = rp.to_callback(&mut b).await;
    let code_a = query_param(&cb_a, "code").unwrap();
    let code_b = query_param(&cb_b, "code").unwrap();
    let page = b
        .request(
            "GET",
            &cb_b.replace(&code_b, &code_a),
            None,
            Some(&rp.op.url("/authorize")),
            &[],
        )
        .await;
    assert_error_page(&page, 401, "");
    assert_eq!(rp.op.token_refusals(), vec![TokenRefusal::Pkce]);
    assert!(rp.identity.calls().is_empty());
}

#[tokio::test]
async fn oidc_token_answer_is_checked_before_the_access_token_is_used() {
    let rp = Rp::oidc(Knobs {
        // The email only in userinfo: the access token would be sent there.
        claims: obj(json!({"email": null})),
        ..Knobs::default()
    })
    .await;
    for bad in [json!("DPoP"), json!("mac"), json!(""), json!(7)] {
        rp.op
            .set(|k| k.token_answer = obj(json!({"token_type": bad.clone()})));
        let a = rp.sign_in().await;
        a.refused(502, "Bearer");
        assert_eq!(a.userinfo, 0, "an access token of type {bad} was used");
    }
    rp.op
        .set(|k| k.token_answer = obj(json!({"token_type": null})));
    let a = rp.sign_in().await;
    a.refused(502, "no token_type (Bearer expected)");
    assert_eq!(a.userinfo, 0);
    for ok in ["bearer", "Bearer", "BEARER"] {
        rp.op
            .set(|k| k.token_answer = obj(json!({"token_type": ok})));
        let a = rp.sign_in().await.lands_signed_in(&rp).await;
        assert_eq!(a.userinfo, 1);
    }
    // Userinfo about another user (OIDC Core §5.3.2).
    rp.op.set(|k| {
        k.token_answer = obj(json!({}));
        k.userinfo = obj(json!({"sub": "someone-else"}));
    });
    let a = rp.sign_in().await;
    a.refused(401, "about another user");
    assert_eq!(a.userinfo, 1);
    // id_token required, a string.
    rp.op.set(|k| {
        k.userinfo = obj(json!({}));
        k.claims = obj(json!({}));
    });
    for v in [json!(null), json!(42), json!("")] {
        rp.op
            .set(|k| k.token_answer = obj(json!({"id_token": v.clone()})));
        let a = rp.sign_in().await;
        assert!(matches!(a.page.status, 401 | 502), "{v}: {}", a.page.status);
        a.refused(a.page.status, "");
    }
    // expires_in as a number, a string or absent: fine (it is not used).
    for v in [json!("300"), json!(null), json!(3.5)] {
        rp.op
            .set(|k| k.token_answer = obj(json!({"expires_in": v.clone()})));
        rp.sign_in().await.lands_signed_in(&rp).await;
    }
    // No access token: the ID token alone signs in, userinfo is not asked.
    rp.op
        .set(|k| k.token_answer = obj(json!({"access_token": null})));
    let a = rp.sign_in().await.lands_signed_in(&rp).await;
    assert_eq!(a.userinfo, 0);
}

#[tokio::test]
async fn oidc_discovery_endpoints_that_are_not_http_are_not_used() {
    let rp = Rp::oidc(Knobs {
        discovery: obj(json!({
            "end_session_endpoint": "javascript:alert(1)",
            "userinfo_endpoint": "javascript:alert(2)",
        })),
        ..Knobs::default()
    })
    .await;
    // The email only in userinfo, which is not asked: the sign-in is refused, not an error of
    // the provider's.
    rp.op.set(|k| k.claims = obj(json!({"email": null})));
    let a = rp.sign_in().await;
    assert_eq!((a.tokens, a.userinfo), (1, 0));
    a.refused(a.page.status, "");
    assert_ne!(a.page.status, 502, "{}", a.page.body);
    // Logout: the signed-out page, never a Location to `javascript:`.
    rp.op.set(|k| k.claims = obj(json!({})));
    let mut a = rp.sign_in().await.lands_signed_in(&rp).await;
    let b = &mut a.browser;
    let from = rp.url("/apps/x");
    let out = b
        .request(
            "POST",
            &rp.url("/console/api/logout"),
            None,
            Some(&from),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    let signin = b.get(&rp.url("/signin")).await;
    assert_eq!(signin.status, 302, "{}", signin.body);
    assert_eq!(signin.location(), Some("/sso/signed-out"));
    assert!(rp.op.logouts().is_empty());
    assert!(
        rp.gateway
            .stderr()
            .contains("end_session_endpoint is not an http(s) URL"),
        "{}",
        rp.gateway.stderr()
    );
}

#[tokio::test]
async fn oidc_logout_ends_the_provider_session_with_id_token_hint() {
    let rp = Rp::oidc(Knobs::default()).await;
    let mut a = rp.sign_in().await.lands_signed_in(&rp).await;
    let (id_token, _) = rp.op.issued()[0].clone();
    let b = &mut a.browser;
    let from = rp.url("/apps/x");
    let out = b
        .request(
            "POST",
            &rp.url("/console/api/logout"),
            None,
            Some(&from),
            &[],
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    let signin = b.get(&rp.url("/signin")).await;
    let to = signin.location().unwrap_or_default().to_string();
    assert!(to.starts_with(&rp.op.url("/logout?")), "{to}");
    assert_eq!(query_param(&to, "id_token_hint"), Some(id_token));
    assert_eq!(query_param(&to, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(
        query_param(&to, "post_logout_redirect_uri"),
        Some(rp.url("/sso/signed-out"))
    );
}

#[tokio::test]
async fn oidc_discovery_must_name_the_configured_issuer_with_http_endpoints() {
    for edit in [
        json!({"issuer": "https://evil.example.com"}),
        json!({"token_endpoint": "javascript:alert(1)"}),
        json!({"authorization_endpoint": "data:text/html,x"}),
        json!({"jwks_uri": "file:///etc/passwd"}),
        json!({"jwks_uri": null}),
    ] {
        let rp = Rp::oidc(Knobs {
            discovery: obj(edit.clone()),
            ..Knobs::default()
        })
        .await;
        let mut b = Browser::new();
        let page = b.get(&rp.url("/signin")).await;
        assert_error_page(&page, 502, "");
        assert_eq!(rp.op.authorize_calls(), 0, "{edit}");
    }
}

#[tokio::test]
async fn oauth2_token_type_must_be_bearer_before_userinfo() {
    let rp = Rp::start(Proto::Oauth2, Knobs::default(), "").await;
    for bad in [json!("DPoP"), json!("mac"), json!(null), json!(1)] {
        rp.op
            .set(|k| k.token_answer = obj(json!({"token_type": bad.clone()})));
        let a = rp.sign_in().await;
        a.refused(502, "Bearer");
        assert_eq!((a.tokens, a.userinfo), (1, 0), "{bad}: access token used");
    }
    for ok in ["bearer", "Bearer"] {
        rp.op
            .set(|k| k.token_answer = obj(json!({"token_type": ok})));
        let a = rp.sign_in().await.lands_signed_in(&rp).await;
        assert_eq!(a.userinfo, 1);
    }
    assert!(
        rp.op.token_refusals().is_empty(),
        "PKCE, redirect_uri, client"
    );
}

#[tokio::test]
async fn oauth2_callback_iss_without_a_configured_issuer() {
    let rp = Rp::start(Proto::Oauth2, Knobs::default(), "").await;
    // No iss (GitHub sends none): fine; one on the authorization endpoint's origin: fine.
    rp.sign_in().await.lands_signed_in(&rp).await;
    rp.op.set(|k| k.callback_iss = CallbackIss::Issuer);
    rp.sign_in().await.lands_signed_in(&rp).await;
    // Another server's: refused before redeeming, for an error response too.
    rp.op.set(|k| {
        k.callback_iss = CallbackIss::Other("https://evil.example.com".into());
    });
    let a = rp.sign_in().await;
    a.refused(401, "another sign-in server (iss)");
    assert_eq!(a.tokens, 0);
    let a = rp
        .attempt(|cb| error_response(&cb, Some("https://evil.example.com")))
        .await;
    a.refused(401, "(iss)");
    assert!(!a.page.body.contains("evil support"), "{}", a.page.body);
    rp.op.set(|k| k.callback_iss = CallbackIss::Omit);
    let a = rp
        .attempt(|cb| with_query(&cb, &[("iss", "a"), ("iss", "b")]))
        .await;
    a.refused(400, "iss more than once");
    assert_eq!(a.tokens, 0);
}

#[tokio::test]
async fn oauth2_callback_iss_with_a_configured_issuer() {
    let rp = Rp::start(
        Proto::Oauth2,
        Knobs {
            callback_iss: CallbackIss::Other("https://id.example.com".into()),
            ..Knobs::default()
        },
        "    issuer: https://id.example.com\n",
    )
    .await;
    rp.sign_in().await.lands_signed_in(&rp).await;
    let a = rp.attempt(|cb| without_query(&cb, "iss")).await;
    a.refused(401, "does not name its sign-in server (iss)");
    assert_eq!(a.tokens, 0);
    rp.op.set(|k| {
        k.callback_iss = CallbackIss::Other("https://id.example.com/".into());
    });
    let a = rp.sign_in().await;
    a.refused(401, "another sign-in server (iss)");
    assert_eq!(a.tokens, 0);
}

/// A published app behind OIDC: the groups come from the ID token, the app sign-in makes no
/// Dify account (the management service is not asked) and no Dify console session.
#[tokio::test]
async fn oidc_app_sign_in_admits_by_the_groups_claim_and_creates_no_dify_account() {
    let apps = "  apps:\n    default: deny\n    rules:\n      EngFlow000000004: { groups: [staff] }\n      HrOnly0000000002: { groups: [hr] }\n";
    let rp = Rp::start(Proto::Oidc, Knobs::default(), apps).await;
    let mut b = Browser::new();
    let first = b.get(&rp.url("/chat/EngFlow000000004?from=mail")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    let authorize = first.location().unwrap().to_string();
    assert!(
        authorize.starts_with(&rp.op.url("/authorize?")),
        "{authorize}"
    );
    let back = b
        .request("GET", &authorize, None, Some(&first.url), &[])
        .await;
    let cb = back.location().expect("Location").to_string();
    let page = b
        .request("GET", &cb, None, Some(&rp.op.url("/authorize")), &[])
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let landing = b.follow(page, 5).await;
    assert_eq!(landing.url, rp.url("/chat/EngFlow000000004?from=mail"));
    assert!(
        landing.body.contains("Published app EngFlow000000004"),
        "{}",
        landing.body
    );
    assert!(
        rp.identity.calls().is_empty(),
        "no Dify account for an app sign-in"
    );
    for c in ["access_token", "refresh_token", "csrf_token"] {
        assert!(b.cookie(&rp.url("/"), c).is_none(), "{c} set");
    }
    // Ann is in `staff`, not in `hr`; an app no rule names is switched off (`default: deny`).
    assert_eq!(b.get(&rp.url("/chat/HrOnly0000000002")).await.status, 403);
    assert_eq!(b.get(&rp.url("/chat/OpenChat00000001")).await.status, 403);
}

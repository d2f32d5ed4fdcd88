//! Published apps' rules, paths and passports, and the gateway session's cookie.

use crate::sso::apps::*;
use crate::sso::session::{Person, SessionCodec};
use std::time::Duration;

const KEY: &str = "dify-secret-key-for-the-apps-tests";

fn person(email: &str, groups: &[&str]) -> Person {
    Person {
        issuer: "https://idp.example".into(),
        subject: "sub-1".into(),
        email: Some(email.into()),
        name: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn rule(yaml: &str) -> Result<Rule, String> {
    serde_yaml_ng::from_str::<RuleConfig>(yaml).unwrap().parse()
}

#[test]
fn rules_parse_and_admit() {
    assert_eq!(rule("public"), Ok(Rule::Public));
    assert_eq!(rule("deny"), Ok(Rule::Deny));
    assert!(rule("open").unwrap_err().contains("expected public"));
    assert!(rule("{}").unwrap_err().contains("needs groups"));
    assert!(rule("{ emails: [not-an-address] }").is_err());
    let members =
        rule("{ groups: [hr], emails: [CEO@corp.example], email_domains: [Partner.example] }")
            .unwrap();
    assert!(members.admits(&person("a@x.example", &["hr"])));
    assert!(members.admits(&person("ceo@corp.example", &[])));
    assert!(members.admits(&person("z@partner.example", &[])));
    assert!(
        !members.admits(&person("z@evil.example", &["HR"])),
        "group names are exact"
    );
    assert!(
        !members.admits(&person("z@sub.partner.example", &[])),
        "domains are exact"
    );
    assert!(!Rule::Deny.admits(&person("a@x.example", &[])));
}

#[test]
fn paths_name_their_app() {
    assert_eq!(
        classify("/chat/ABC"),
        Some(AppRequest::Page { code: Some("ABC") })
    );
    assert_eq!(
        classify("/chatbot/ABC/x"),
        Some(AppRequest::Page { code: Some("ABC") })
    );
    assert_eq!(
        classify("/workflow/ABC"),
        Some(AppRequest::Page { code: Some("ABC") })
    );
    assert_eq!(
        classify("/completion/ABC"),
        Some(AppRequest::Page { code: Some("ABC") })
    );
    assert_eq!(classify("/form/tok"), Some(AppRequest::Page { code: None }));
    assert_eq!(classify("/api/passport"), Some(AppRequest::Api));
    for other in [
        "/chat",
        "/chat/",
        "/apps/x",
        "/v1/chat-messages",
        "/console/api/apps",
        "/",
        "/chats/ABC",
        "/e/x",
    ] {
        assert_eq!(classify(other), None, "{other}");
    }
    assert!(is_app_page("/chat/ABC?x=1"));
    assert!(!is_app_page("/apps"));
}

#[test]
fn passports_bind_and_verify_with_difys_key() {
    let dify = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"iss": "app", "sub": "Web API Passport", "app_id": "app", "app_code": "C", "end_user_id": "u"}),
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    let p = verify_passport(&dify, KEY).unwrap();
    assert_eq!((p.app_code.as_deref(), p.person), (Some("C"), None));
    assert!(verify_passport(&dify, "another-key").is_none());
    let bound = bind_passport(&dify, KEY, "tag").unwrap();
    let p = verify_passport(&bound, KEY).unwrap();
    assert_eq!(p.person.as_deref(), Some("tag"));
    let answer = bind_passport_answer(
        format!("{{\"access_token\":\"{dify}\"}}").as_bytes(),
        KEY,
        "t2",
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        verify_passport(v["access_token"].as_str().unwrap(), KEY)
            .unwrap()
            .person
            .as_deref(),
        Some("t2")
    );
    assert!(bind_passport_answer(b"{}", KEY, "t").is_none());
    let cookie =
        bind_passport_cookie(&format!("passport-C={dify}; Path=/; HttpOnly"), KEY, "t3").unwrap();
    assert!(cookie.starts_with("passport-C=") && cookie.ends_with("; Path=/; HttpOnly"));
    assert!(bind_passport_cookie("access_token=x; Path=/", KEY, "t").is_none());
}

#[test]
fn user_id_is_pinned_whatever_the_client_sent() {
    assert_eq!(
        passport_query(Some("user_id=bob&x=1&user_id=eve"), "alice@corp.example"),
        "x=1&user_id=alice%40corp.example"
    );
    assert_eq!(passport_query(None, "a"), "user_id=a");
}

#[test]
fn sessions_round_trip_rotate_and_expire() {
    let a = "a-session-key-of-at-least-32-bytes-long";
    let b = "b-session-key-of-at-least-32-bytes-long";
    let day = Duration::from_secs(86400);
    let old = SessionCodec::new(&[a], day, day);
    let s = old.start(person("a@x.example", &["hr"]));
    let sealed = old.seal(&s);
    assert!(!sealed.contains("a@x.example"), "encrypted");
    assert_eq!(old.open(&sealed), Some(s.clone()));
    let rotated = SessionCodec::new(&[b, a], day, day);
    assert_eq!(
        rotated.open(&sealed),
        Some(s.clone()),
        "an old key still opens"
    );
    assert_eq!(SessionCodec::new(&[b], day, day).open(&sealed), None);
    let mut tampered = sealed.clone();
    tampered.replace_range(10..11, if &sealed[10..11] == "A" { "B" } else { "A" });
    assert_eq!(old.open(&tampered), None);
    let mut stale = s.clone();
    stale.seen -= 7200;
    assert_eq!(
        SessionCodec::new(&[a], day, Duration::from_secs(3600)).open(&old.seal(&stale)),
        None,
        "idle"
    );
    let mut ancient = s;
    ancient.signed_in -= 2 * 86400;
    assert_eq!(old.open(&old.seal(&ancient)), None, "absolute lifetime");
}

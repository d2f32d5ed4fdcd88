//! The `sso` and `dify` sections through the real loader: keys, defaults, the seed's environment,
//! and validation messages that name the field and what was expected.

use crate::config::{Config, Issue};
use crate::dify::{DifyConfig, SessionDelivery};
use crate::sso::*;
use std::collections::HashMap;
use std::time::Duration;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, Vec<crate::config::ConfigError>> {
    Config::from_text(yaml, "test.yaml", env_of(env))
}

const FULL: &str = r#"
sso:
  enabled: true
  protocol: token_exchange
  login_url: "https://sso.example.com/login.php?ret={callback_url}"
  callback_path: /qsso_backcall
  token_param: token
  exchange:
    url: http://manager:8087/get_dify_token
    timeout: 3s
    headers: { X-Api-Key: abc }
    insecure_skip_verify: false
  logout_url: https://sso.example.com/logout
  bypass_cidrs: [10.0.0.0/8, 192.168.1.5]
  enforce: true
  support_contact: it@example.com
  state_secret: 0123456789abcdef0123456789abcdef
dify:
  secret_key: sk-test-key
  session_delivery: cookie
  home: /apps
  console_web_url: https://dify.example.com
  console_api_url: https://dify.example.com
  cookie_domain: ""
  access_token_expire_minutes: 90
  refresh_token_expire_days: 7
"#;

#[test]
fn every_key_parses() {
    let c = load(FULL, &[]).unwrap();
    let s = c.sso.as_ref().unwrap();
    assert!(s.is_enabled() && s.enforce);
    assert_eq!(s.exchange.timeout, Duration::from_secs(3));
    assert_eq!(s.exchange.headers["X-Api-Key"].expose(), "abc");
    assert_eq!(s.bypass_cidrs.len(), 2);
    assert_eq!(c.dify.delivery(), SessionDelivery::Cookie);
    assert_eq!(c.dify.access_token_expire_minutes, 90);
    assert_eq!(
        s.summary(&c.dify),
        "sso token_exchange callback /qsso_backcall enforced bypass 10.0.0.0/8,192.168.1.5 states in memory"
    );
    assert!(
        !format!("{c:?}").contains("sk-test-key"),
        "secrets stay out of Debug"
    );
    assert!(SsoFlow::new(s, &c.dify).is_ok());
}

#[test]
fn a_minimal_section_takes_defaults() {
    let c = load("sso:\n  login_url: https://sso.example.com/login\n  exchange: { url: http://m:1/x }\ndify: { secret_key: k }\n", &[]).unwrap();
    let s = c.sso.unwrap();
    assert!(s.is_enabled(), "a present section is on");
    assert_eq!(
        (s.callback_path.as_str(), s.token_param.as_str()),
        ("/qsso_backcall", "token")
    );
    assert_eq!(s.exchange.timeout, Duration::from_secs(10));
    assert!(!s.enforce && !s.exchange.insecure_skip_verify && s.bypass_cidrs.is_empty());
    assert_eq!(
        (c.dify.home(), c.dify.delivery()),
        ("/apps", SessionDelivery::Cookie)
    );
}

#[test]
fn unknown_keys_and_protocols_are_refused() {
    assert!(load("sso:\n  login_ur: x\n", &[]).is_err());
    assert!(load("sso:\n  protocol: saml\n", &[]).is_err());
    assert!(load("dify:\n  secret: x\n", &[]).is_err());
}

#[test]
fn seed_environment_turns_sso_on_in_query_mode() {
    let env = [
        (
            "QSSO_LOGIN_URL",
            "https://qsso.example.com/login.php?ret=http%3A%2F%2Fdify.example.com%2Fqsso_backcall",
        ),
        (
            "DIFY_TOKEN_BY_QSSO_API_BASE_URL",
            "http://api.internal:8087/get_dify_token",
        ),
        ("DIFY_HOME_PAGE_BASE_URL", "http://dify.example.com/apps"),
    ];
    let c = load("", &env).unwrap();
    let s = c.sso.as_ref().expect("on from the environment");
    assert_eq!(s.login_url, env[0].1);
    assert_eq!(s.exchange.url, env[1].1);
    assert_eq!(c.dify.home(), "http://dify.example.com/apps");
    assert_eq!(c.dify.delivery(), SessionDelivery::Query);
}

#[test]
fn seed_environment_with_secret_key_selects_cookies() {
    for key_var in ["DIFY_SECRET_KEY", "SECRET_KEY"] {
        let env = [
            ("QSSO_LOGIN_URL", "https://qsso.example.com/login"),
            ("DIFY_TOKEN_BY_QSSO_API_BASE_URL", "http://m:8087/t"),
            (key_var, "sk-from-env"),
            ("CONSOLE_WEB_URL", "https://d.example.com"),
            ("CONSOLE_API_URL", "https://d.example.com"),
        ];
        let c = load("", &env).unwrap();
        assert_eq!(c.dify.delivery(), SessionDelivery::Cookie);
        assert_eq!(c.dify.secret_key(), Some("sk-from-env"));
        assert!(crate::dify::CookiePolicy::from_config(&c.dify).host_prefix);
    }
    // The file's own values win over the environment.
    let env = [
        ("QSSO_LOGIN_URL", "https://q/login"),
        ("DIFY_TOKEN_BY_QSSO_API_BASE_URL", "http://m/t"),
        ("SECRET_KEY", "k"),
    ];
    let c = load("dify: { session_delivery: query, home: /explore }\n", &env).unwrap();
    assert_eq!(
        (c.dify.delivery(), c.dify.home()),
        (SessionDelivery::Query, "/explore")
    );
    // No seed variables, no SSO; a file section ignores them.
    assert!(load("", &[("SECRET_KEY", "k")]).unwrap().sso.is_none());
}

#[test]
fn half_a_seed_environment_names_the_missing_variable() {
    let errs = load("", &[("QSSO_LOGIN_URL", "https://q.example.com/login")]).unwrap_err();
    assert!(
        errs.iter().any(|e| e.field == "sso.exchange.url"),
        "{errs:?}"
    );
}

fn issues(s: &SsoConfig, d: &DifyConfig) -> Vec<Issue> {
    let mut v = Vec::new();
    s.validate(d, &mut v);
    v
}

#[test]
fn semantic_errors_name_field_and_expectation() {
    let s = SsoConfig {
        enabled: true,
        login_url: "sso.example.com/login?ret={callback}".into(),
        callback_path: "/signin".into(),
        token_param: "to ken".into(),
        exchange: ExchangeConfig {
            url: "ftp://m/x".into(),
            timeout: Duration::ZERO,
            headers: [("bad header".to_string(), Secret::new("v"))].into(),
            ..Default::default()
        },
        logout_url: "/logout".into(),
        bypass_cidrs: vec!["10.0.0.0/33".into()],
        state_secret: Secret::new("short"),
        ..Default::default()
    };
    let found = issues(&s, &DifyConfig::default());
    let fields: Vec<&str> = found.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "sso.login_url",
            "sso.exchange.url",
            "sso.exchange.timeout",
            "sso.exchange.headers.bad header",
            "sso.callback_path",
            "sso.token_param",
            "sso.logout_url",
            "sso.bypass_cidrs[0]",
            "sso.state_secret",
            "dify.secret_key"
        ]
    );
    assert!(
        found.iter().all(|i| i.message.contains("expected")),
        "{found:?}"
    );
}

#[test]
fn placeholders_and_disabled_sections() {
    let mut s = SsoConfig {
        enabled: true,
        login_url: "https://sso.example.com/login?ret={callback_url}&s={nonce}".into(),
        exchange: ExchangeConfig {
            url: "http://m/x".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let d = DifyConfig {
        session_delivery: Some(SessionDelivery::Query),
        ..Default::default()
    };
    assert_eq!(
        issues(&s, &d)
            .iter()
            .map(|i| i.field.as_str())
            .collect::<Vec<_>>(),
        ["sso.login_url"]
    );
    s.enabled = false;
    assert!(
        issues(&s, &d).is_empty(),
        "a disabled section is not checked"
    );
}

//! Published apps (`/chat/<code>`, `/chatbot/<code>`, `/completion/<code>`, `/workflow/<code>`
//! and their `/api/*` calls): which app a request is for, and whether the app's rule admits the
//! person of the gateway session. Dify's community edition opens every published app to anyone
//! with its link; the rules here are the only check, so every value they rest on is one the
//! gateway verified: the session cookie (encrypted by us) and Dify's passport (signed with
//! Dify's `SECRET_KEY`, which the gateway holds).
//!
//! Passports never expire in Dify, so one obtained by one person must not serve another: when the
//! gateway hands out a passport for a protected app (`GET /api/passport`) it re-signs it with one
//! extra claim naming the person, and every later call to a protected app needs a passport whose
//! claim matches the session's person. Dify ignores the claim.

use super::session::{Person, Session};
use crate::config::units;
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The page families Dify serves a published app under; the next segment is the app code.
pub const PAGE_FAMILIES: [&str; 4] = ["chat", "chatbot", "completion", "workflow"];
/// A workflow's human-input form (`/form/<token>`): no app code in the URL.
const FORM_FAMILY: &str = "form";
/// The claim the gateway adds to a passport: a hash of the person's app user id.
pub const PERSON_CLAIM: &str = "dify_gateway_person";
/// Dify's passport subject.
const PASSPORT_SUB: &str = "Web API Passport";
pub const PASSPORT_PATH: &str = "/api/passport";

/// `sso.apps.default` and each of `sso.apps.rules`: a word, or who is admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleConfig {
    /// `public`, `signed_in` or `deny`.
    Word(String),
    Members(MembersConfig),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembersConfig {
    #[serde(deserialize_with = "units::de_string_list")]
    pub groups: Vec<String>,
    #[serde(deserialize_with = "units::de_string_list")]
    pub emails: Vec<String>,
    #[serde(deserialize_with = "units::de_string_list")]
    pub email_domains: Vec<String>,
}

/// By hand rather than `untagged`, so a wrong member rule is named as such (an unknown field,
/// a list expected) instead of "did not match any variant".
impl<'de> Deserialize<'de> for RuleConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RuleConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("public, signed_in, deny or { groups, emails, email_domains }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RuleConfig, E> {
                Ok(RuleConfig::Word(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RuleConfig, A::Error> {
                MembersConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RuleConfig::Members)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig::Word("public".into())
    }
}

/// Which value of the person Dify keeps as the app user (`end_users.session_id`, `sys.user_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserIdSource {
    /// The email address (readable in Dify's logs); the subject when there is none.
    #[default]
    Email,
    /// `<issuer>|<subject>`: stable even when someone's address changes.
    Subject,
}

/// `sso.apps`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppsConfig {
    pub default: RuleConfig,
    /// App code (the code in the share URL) -> rule.
    pub rules: BTreeMap<String, RuleConfig>,
    pub user_id: UserIdSource,
}

/// `sso.session`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Encryption keys (passphrases of at least 32 bytes); the first seals, all open. Empty =
    /// derived from `sso.state_secret`.
    pub keys: Vec<Secret>,
    #[serde(deserialize_with = "units::de_duration")]
    pub lifetime: std::time::Duration,
    #[serde(deserialize_with = "units::de_duration")]
    pub idle_timeout: std::time::Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            keys: Vec::new(),
            lifetime: std::time::Duration::from_secs(12 * 3600),
            idle_timeout: std::time::Duration::from_secs(2 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Public,
    SignedIn,
    Deny,
    Members {
        groups: BTreeSet<String>,
        emails: BTreeSet<String>,
        email_domains: BTreeSet<String>,
    },
}

impl RuleConfig {
    /// The rule, or what is wrong with it (for the configuration check).
    pub fn parse(&self) -> Result<Rule, String> {
        match self {
            RuleConfig::Word(w) => match w.as_str() {
                "public" => Ok(Rule::Public),
                "signed_in" => Ok(Rule::SignedIn),
                "deny" => Ok(Rule::Deny),
                other => Err(format!(
                    "expected public, signed_in, deny or {{ groups, emails, email_domains }}, got {other:?}"
                )),
            },
            RuleConfig::Members(m) => {
                if m.groups.is_empty() && m.emails.is_empty() && m.email_domains.is_empty() {
                    return Err("a member rule needs groups, emails or email_domains".into());
                }
                let lower = |v: &[String]| v.iter().map(|s| s.trim().to_lowercase()).collect();
                for e in &m.emails {
                    if super::allow::parse_email(e).is_none() {
                        return Err(format!("emails: {e:?} is not an email address"));
                    }
                }
                for d in &m.email_domains {
                    if d.is_empty() || d.contains(['@', '/', ' ']) || !d.contains('.') {
                        return Err(format!(
                            "email_domains: expected a domain such as example.com, got {d:?}"
                        ));
                    }
                }
                Ok(Rule::Members {
                    groups: m.groups.iter().map(|g| g.trim().to_string()).collect(),
                    emails: lower(&m.emails),
                    email_domains: lower(&m.email_domains),
                })
            }
        }
    }
}

impl Rule {
    pub fn admits(&self, person: &Person) -> bool {
        match self {
            Rule::Public | Rule::SignedIn => true,
            Rule::Deny => false,
            Rule::Members {
                groups,
                emails,
                email_domains,
            } => {
                let email = person.email.as_deref().map(str::to_lowercase);
                let domain = email
                    .as_deref()
                    .and_then(|e| e.rsplit_once('@'))
                    .map(|(_, d)| d);
                person.groups.iter().any(|g| groups.contains(g))
                    || email.as_deref().is_some_and(|e| emails.contains(e))
                    || domain.is_some_and(|d| email_domains.contains(d))
            }
        }
    }
}

/// The rules, built once per configuration snapshot.
pub struct AppPolicy {
    default: Rule,
    rules: BTreeMap<String, Rule>,
    user_id: UserIdSource,
    /// False when every app is public: then nothing here runs for any request.
    active: bool,
}

impl AppPolicy {
    pub fn new(cfg: &AppsConfig) -> Result<AppPolicy, String> {
        let default = cfg
            .default
            .parse()
            .map_err(|e| format!("sso.apps.default: {e}"))?;
        let mut rules = BTreeMap::new();
        for (code, rule) in &cfg.rules {
            let rule = rule
                .parse()
                .map_err(|e| format!("sso.apps.rules.{code}: {e}"))?;
            rules.insert(code.clone(), rule);
        }
        let active = default != Rule::Public || rules.values().any(|r| *r != Rule::Public);
        Ok(AppPolicy {
            default,
            rules,
            user_id: cfg.user_id,
            active,
        })
    }

    pub fn active(&self) -> bool {
        self.active
    }

    /// The rule for an app code (`None`: a request that names no app, such as a human-input form).
    pub fn rule(&self, code: Option<&str>) -> &Rule {
        code.and_then(|c| self.rules.get(c))
            .unwrap_or(&self.default)
    }

    /// The label metrics use for an app: its code when a rule names it, else `default` (so a
    /// client cannot grow the metric's label set with made-up codes).
    pub fn metric_label<'a>(&self, code: Option<&'a str>) -> &'a str {
        match code {
            Some(c) if self.rules.contains_key(c) => c,
            _ => "default",
        }
    }

    /// What Dify keeps as this person's app user.
    pub fn user_id(&self, person: &Person) -> String {
        match (self.user_id, &person.email) {
            (UserIdSource::Email, Some(e)) => e.clone(),
            _ => format!("{}|{}", person.issuer, person.subject),
        }
    }

    /// The value of [`PERSON_CLAIM`] for a person: not their id itself (a passport sits in the
    /// browser's storage), a hash of it.
    pub fn person_tag(&self, person: &Person) -> String {
        let digest = Sha256::digest(format!("dify-gateway person\0{}", self.user_id(person)));
        B64.encode(&digest[..16])
    }
}

/// Which published-app request this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppRequest<'a> {
    /// A page of an app (`/chat/<code>`...), or a human-input form (`code` None).
    Page { code: Option<&'a str> },
    /// A call to Dify's web-app API (`/api/*`).
    Api,
}

/// Classifies a normalised path; None = not a published app's.
pub fn classify(path: &str) -> Option<AppRequest<'_>> {
    let rest = path.strip_prefix('/')?;
    if rest.starts_with("api/") || rest == "api" {
        return Some(AppRequest::Api);
    }
    let (family, tail) = rest.split_once('/')?;
    let code = tail.split('/').next().filter(|c| !c.is_empty())?;
    if PAGE_FAMILIES.contains(&family) {
        return Some(AppRequest::Page { code: Some(code) });
    }
    (family == FORM_FAMILY).then_some(AppRequest::Page { code: None })
}

/// True for a return target that is a published app's page: a sign-in that returns there is an
/// app sign-in (no Dify console session is handed over).
pub fn is_app_page(target: &str) -> bool {
    let path = target.split(['?', '#']).next().unwrap_or("");
    matches!(classify(path), Some(AppRequest::Page { .. }))
}

/// A passport as the gateway reads it, after checking Dify's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passport {
    pub app_code: Option<String>,
    /// The gateway's person claim, when it handed this passport out.
    pub person: Option<String>,
}

/// Every passport a request carries, in every place some Dify version reads one: the
/// `passport-<code>` cookie (with `__Host-` over HTTPS), `X-App-Passport`, the
/// `web_app_access_token` query parameter, and `Authorization: Bearer` (Dify before 1.10 read
/// the passport there). `Err` when one of them is not a passport signed with Dify's key, except
/// a bearer token, which the web app also uses for other tokens.
pub struct Carried {
    pub passports: Vec<Passport>,
    pub unverified: bool,
    /// App codes named by `X-App-Code` and by passport cookies.
    pub named_codes: Vec<String>,
}

pub fn carried(headers: &HeaderMap, query: Option<&str>, secret_key: &str) -> Carried {
    let mut out = Carried {
        passports: Vec::new(),
        unverified: false,
        named_codes: Vec::new(),
    };
    let strict = |token: &str, out: &mut Carried| match verify_passport(token, secret_key) {
        Some(p) => out.passports.push(p),
        None => out.unverified = true,
    };
    if let Some(code) = headers
        .get("x-app-code")
        .and_then(|v| v.to_str().ok())
        .filter(|c| !c.is_empty())
    {
        out.named_codes.push(code.to_string());
    }
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for c in cookie::Cookie::split_parse(value).filter_map(Result::ok) {
            let name = c.name();
            let code = name
                .strip_prefix("__Host-passport-")
                .or_else(|| name.strip_prefix("passport-"));
            if let Some(code) = code {
                out.named_codes.push(code.to_string());
                strict(c.value_trimmed(), &mut out);
            }
        }
    }
    for v in headers.get_all("x-app-passport") {
        match v.to_str() {
            Ok(t) if !t.trim().is_empty() => strict(t.trim(), &mut out),
            Ok(_) => {}
            Err(_) => out.unverified = true,
        }
    }
    if let Some(q) = query.filter(|q| q.contains("web_app_access_token")) {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == "web_app_access_token" && !v.is_empty() {
                strict(&v, &mut out);
            }
        }
    }
    for v in headers.get_all(http::header::AUTHORIZATION) {
        let token = v
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if let Some(p) = token.and_then(|t| verify_passport(t, secret_key)) {
            out.passports.push(p);
        }
    }
    out
}

fn passport_validation() -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    // Dify's passports carry no `exp`: they are valid as long as SECRET_KEY is.
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    v
}

fn decode_passport(
    token: &str,
    secret_key: &str,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret_key.as_bytes()),
        &passport_validation(),
    )
    .ok()?;
    (data.claims.get("sub").and_then(|s| s.as_str()) == Some(PASSPORT_SUB)).then_some(data.claims)
}

/// The passport in `token`, if Dify's key signed it.
pub fn verify_passport(token: &str, secret_key: &str) -> Option<Passport> {
    let claims = decode_passport(token, secret_key)?;
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Some(Passport {
        app_code: text("app_code"),
        person: text(PERSON_CLAIM),
    })
}

/// Dify's passport with the gateway's person claim added, signed again with Dify's key (HS256,
/// as Dify signs it). None when the token is not a passport of this Dify.
pub fn bind_passport(token: &str, secret_key: &str, person_tag: &str) -> Option<String> {
    let mut claims = decode_passport(token, secret_key)?;
    claims.insert(PERSON_CLAIM.into(), person_tag.into());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret_key.as_bytes()),
    )
    .ok()
}

/// The verdict on one request of a published app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward as is (a public app, or nothing app-specific).
    Pass,
    /// Forward; the session admits the person (refresh its cookie if due).
    Admitted,
    /// No session (or it ran out): sign in first.
    SignIn,
    /// Signed in, but the app's rule does not admit this person (or the app is switched off).
    Refused,
    /// An API call whose passport is not this person's (or cannot be checked).
    WrongPassport,
}

impl AppPolicy {
    /// The verdict for an app page.
    pub fn page(&self, code: Option<&str>, session: Option<&Session>) -> Verdict {
        self.judge(std::iter::once(code), session)
    }

    fn judge<'a>(
        &self,
        codes: impl Iterator<Item = Option<&'a str>>,
        session: Option<&Session>,
    ) -> Verdict {
        let mut protected = false;
        for code in codes {
            match self.rule(code) {
                Rule::Public => {}
                Rule::Deny => return Verdict::Refused,
                rule => {
                    protected = true;
                    match session {
                        None => return Verdict::SignIn,
                        Some(s) if !rule.admits(&s.person) => return Verdict::Refused,
                        Some(_) => {}
                    }
                }
            }
        }
        if protected {
            Verdict::Admitted
        } else {
            Verdict::Pass
        }
    }

    /// The verdict for a web-app API call: every app it names (the `X-App-Code` header, passport
    /// cookies, the passports' own `app_code`) must admit the person, and every passport it
    /// carries must be the one handed to this person. An unverifiable passport counts as one for
    /// the default rule's app, so a wrong `dify.secret_key` fails closed.
    pub fn api(
        &self,
        carried: &Carried,
        session: Option<&Session>,
        is_passport_call: bool,
    ) -> Verdict {
        let mut codes: Vec<Option<&str>> = carried
            .named_codes
            .iter()
            .map(|c| Some(c.as_str()))
            .collect();
        codes.extend(carried.passports.iter().map(|p| p.app_code.as_deref()));
        if carried.unverified {
            codes.push(None);
        }
        let verdict = self.judge(codes.into_iter(), session);
        if verdict != Verdict::Admitted || is_passport_call {
            return verdict;
        }
        let Some(session) = session else {
            return Verdict::SignIn;
        };
        let tag = self.person_tag(&session.person);
        let all_bound = !carried.unverified
            && carried.passports.iter().all(|p| {
                self.rule(p.app_code.as_deref()) == &Rule::Public
                    || p.person.as_deref() == Some(tag.as_str())
            });
        // A protected call without any passport is Dify's to refuse (it serves nothing without one).
        if all_bound {
            Verdict::Admitted
        } else {
            Verdict::WrongPassport
        }
    }
}

/// Largest `/api/passport` answer the gateway reads to bind it (Dify's is under 1 KiB).
pub const MAX_PASSPORT_ANSWER: usize = 64 * 1024;

/// Dify's `/api/passport` answer (`{"access_token": "<passport>"}`) with the passport bound to
/// the person. None when it is not such an answer: the caller then refuses to pass it on, since
/// an unbound passport would be refused on the next call anyway.
pub fn bind_passport_answer(body: &[u8], secret_key: &str, person_tag: &str) -> Option<Vec<u8>> {
    let mut answer: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).ok()?;
    let token = answer.get("access_token")?.as_str()?;
    let bound = bind_passport(token, secret_key, person_tag)?;
    answer.insert("access_token".into(), bound.into());
    serde_json::to_vec(&answer).ok()
}

/// A `Set-Cookie` of Dify's carrying a passport (`passport-<code>`, `__Host-passport-<code>`),
/// with the passport bound to the person; None for any other cookie.
pub fn bind_passport_cookie(
    set_cookie: &str,
    secret_key: &str,
    person_tag: &str,
) -> Option<String> {
    let c = cookie::Cookie::parse(set_cookie).ok()?;
    let name = c.name();
    if !(name.starts_with("passport-") || name.starts_with("__Host-passport-"))
        || c.value().is_empty()
    {
        return None;
    }
    let bound = bind_passport(c.value(), secret_key, person_tag)?;
    let (before, after) = set_cookie.split_once(c.value())?;
    Some(format!("{before}{bound}{after}"))
}

/// Headers through which some proxies and apps pass a signed-in person's identity. A client
/// could send them to pose as someone; nothing downstream of the gateway may believe one that
/// the gateway did not set, so they are dropped from every request while apps are protected.
pub const IDENTITY_HEADERS: [&str; 12] = [
    "remote-user",
    "x-remote-user",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
];

/// A `/api/passport` query with `user_id` set to the person's (every client-sent `user_id`
/// dropped, the rest kept as sent).
pub fn passport_query(query: Option<&str>, user_id: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k != "user_id" {
            out.append_pair(&k, &v);
        }
    }
    out.append_pair("user_id", user_id);
    out.finish()
}

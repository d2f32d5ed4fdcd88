//! Which Dify the gateway fronts, and what depends on it (reference §3 and §9):
//! - session delivery: cookies from 1.9.2, tokens on the landing URL before;
//! - the access token's `iss`: `SELF_HOSTED` (Dify's `EDITION`) before 1.17, `COMMUNITY` (the
//!   deployment edition) from 1.17;
//! - the minter's schema: `accounts.normalized_email` from 1.17 (the store looks at the table
//!   itself, and looks again whenever the detected version changes).
//!
//! `dify.version: auto` asks Dify (`GET /health` on the console API's upstream answers
//! `{"status": "ok", "version": "x.y.z"}`; the `X-Version` header of the answer when the body does
//! not say) at start-up, on reload and every `dify.version_check_interval`. The answer lives in
//! one process-wide atomic ([`DETECTED`]), so the request path pays one atomic load to follow a
//! Dify that was upgraded under a running gateway. An explicit setting always wins.

use super::{DifyConfig, SessionDelivery};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The oldest and the newest minor the gateway was tested against (README, compatibility table).
pub const TESTED_RANGE: (DifyVersion, DifyVersion) =
    (DifyVersion::new(1, 9, 0), DifyVersion::new(1, 17, u16::MAX));
/// The range as an operator reads it.
pub const TESTED_RANGE_TEXT: &str = "1.9.0 to 1.17.x";
/// The version the gateway behaves as when it cannot tell: the one it is verified against.
pub const DEFAULT_BEHAVIOUR: DifyVersion = DifyVersion::new(1, 14, 2);

/// A Dify release, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DifyVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl DifyVersion {
    pub const fn new(major: u16, minor: u16, patch: u16) -> DifyVersion {
        DifyVersion {
            major,
            minor,
            patch,
        }
    }

    /// `1.17.1`, `1.17` (patch 0), `v1.17.1`, `1.17.1-rc1` (the suffix is ignored).
    pub fn parse(text: &str) -> Option<DifyVersion> {
        let t = text.trim();
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let core = t.split(['-', '+', ' ']).next()?;
        let mut parts = core.split('.');
        let mut num = |required: bool| -> Option<u16> {
            match parts.next() {
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
                None if !required => Some(0),
                _ => None,
            }
        };
        let v = DifyVersion::new(num(true)?, num(true)?, num(false)?);
        parts.next().is_none().then_some(v)
    }

    /// Dify stopped reading tokens on the landing URL at 1.9.2 (reference §3).
    pub fn delivery(self) -> SessionDelivery {
        if self >= DifyVersion::new(1, 9, 2) {
            SessionDelivery::Cookie
        } else {
            SessionDelivery::Query
        }
    }

    /// What Dify itself puts in `iss` (reference §2 and §9).
    pub fn edition(self) -> Edition {
        if self >= DifyVersion::new(1, 17, 0) {
            Edition::Community
        } else {
            Edition::SelfHosted
        }
    }

    /// Whether Dify's migrations of this release add `accounts.normalized_email`.
    pub fn has_normalized_email(self) -> bool {
        self >= DifyVersion::new(1, 17, 0)
    }

    pub fn in_tested_range(self) -> bool {
        self >= TESTED_RANGE.0 && self <= TESTED_RANGE.1
    }

    /// Non-zero for every version (0 means "unknown" in [`DETECTED`]).
    fn pack(self) -> u64 {
        (1 << 48)
            | (u64::from(self.major) << 32)
            | (u64::from(self.minor) << 16)
            | u64::from(self.patch)
    }

    fn unpack(v: u64) -> Option<DifyVersion> {
        (v != 0).then(|| DifyVersion::new((v >> 32) as u16, (v >> 16) as u16, v as u16))
    }
}

impl fmt::Display for DifyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The `iss` of a console access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edition {
    SelfHosted,
    Community,
    Enterprise,
    Cloud,
}

impl Edition {
    pub const ALL: [Edition; 4] = [
        Edition::SelfHosted,
        Edition::Community,
        Edition::Enterprise,
        Edition::Cloud,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Edition::SelfHosted => "SELF_HOSTED",
            Edition::Community => "COMMUNITY",
            Edition::Enterprise => "ENTERPRISE",
            Edition::Cloud => "CLOUD",
        }
    }

    pub fn parse(text: &str) -> Option<Edition> {
        let t = text.trim();
        Edition::ALL
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(t))
    }
}

/// `dify.version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSetting {
    /// Ask Dify.
    Auto,
    Fixed(DifyVersion),
}

impl VersionSetting {
    pub fn parse(text: &str) -> Result<VersionSetting, String> {
        if text.trim().eq_ignore_ascii_case("auto") || text.trim().is_empty() {
            return Ok(VersionSetting::Auto);
        }
        DifyVersion::parse(text).map(VersionSetting::Fixed).ok_or_else(|| {
            format!("expected auto or the version of the Dify behind the gateway such as \"1.14.2\", got {text:?}")
        })
    }
}

/// The version Dify last reported, process-wide; 0 while it could not tell.
pub struct Detected(AtomicU64);

/// What `dify.version: auto` found.
pub static DETECTED: Detected = Detected(AtomicU64::new(0));

impl Detected {
    pub fn get(&self) -> Option<DifyVersion> {
        DifyVersion::unpack(self.0.load(Ordering::Acquire))
    }

    /// A number that changes whenever the detected version does (the store's schema cache key).
    pub fn epoch(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Records `v`; returns the version it replaces when it differs.
    pub fn set(&self, v: DifyVersion) -> Option<Option<DifyVersion>> {
        let old = DifyVersion::unpack(self.0.swap(v.pack(), Ordering::AcqRel));
        (old != Some(v)).then_some(old)
    }
}

/// Where the version in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `dify.version` names it.
    Configured,
    /// Dify said so.
    Detected,
    /// Nobody knows yet: the defaults apply.
    Unknown,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Configured => "dify.version",
            Source::Detected => "detected",
            Source::Unknown => "unknown",
        }
    }
}

/// Everything that follows the Dify version, resolved per use from the explicit settings and the
/// detected version. Cheap to copy; each question is at most one atomic load.
#[derive(Debug, Clone, Copy)]
pub struct Compat {
    delivery: Option<SessionDelivery>,
    edition: Option<Edition>,
    version: VersionSetting,
}

impl Compat {
    /// Invalid values were refused by [`DifyConfig::validate`]; here they count as unset.
    pub fn from_config(dify: &DifyConfig) -> Compat {
        Compat {
            delivery: dify.session_delivery,
            edition: dify.edition.as_deref().and_then(Edition::parse),
            version: VersionSetting::parse(&dify.version).unwrap_or(VersionSetting::Auto),
        }
    }

    pub fn auto(&self) -> bool {
        self.version == VersionSetting::Auto
    }

    pub fn version(&self) -> (Option<DifyVersion>, Source) {
        match self.version {
            VersionSetting::Fixed(v) => (Some(v), Source::Configured),
            VersionSetting::Auto => match DETECTED.get() {
                Some(v) => (Some(v), Source::Detected),
                None => (None, Source::Unknown),
            },
        }
    }

    fn behaves_as(&self) -> DifyVersion {
        self.version().0.unwrap_or(DEFAULT_BEHAVIOUR)
    }

    pub fn delivery(&self) -> SessionDelivery {
        self.delivery
            .unwrap_or_else(|| self.behaves_as().delivery())
    }

    pub fn edition(&self) -> Edition {
        self.edition.unwrap_or_else(|| self.behaves_as().edition())
    }

    /// One line for logs and `-t`: the version and what follows from it.
    pub fn describe(&self) -> String {
        let (v, source) = self.version();
        let version = match (v, source) {
            (Some(v), Source::Configured) => format!("Dify {v} (dify.version)"),
            (Some(v), _) => format!("Dify {v} (detected)"),
            (None, _) => format!(
                "Dify version unknown (behaving as for {DEFAULT_BEHAVIOUR} until Dify answers)"
            ),
        };
        format!(
            "{version}: session delivery {}{}, access token iss {}{}",
            delivery_name(self.delivery()),
            if self.delivery.is_some() {
                " (dify.session_delivery)"
            } else {
                ""
            },
            self.edition().as_str(),
            if self.edition.is_some() {
                " (dify.edition)"
            } else {
                ""
            },
        )
    }
}

pub fn delivery_name(d: SessionDelivery) -> &'static str {
    match d {
        SessionDelivery::Cookie => "cookie",
        SessionDelivery::Query => "query",
    }
}

/// The one warning line for a version outside the tested range, if it is.
pub fn range_warning(v: DifyVersion) -> Option<String> {
    (!v.in_tested_range()).then(|| {
        format!(
            "Dify {v} is outside the range this gateway was tested with ({TESTED_RANGE_TEXT}): \
             sign-in may break; see the compatibility table in the README"
        )
    })
}

/// The probe's `User-Agent`, so Dify's logs (and test doubles) can tell it from client traffic.
pub const PROBE_USER_AGENT: &str = concat!(
    "dify-gateway/",
    env!("CARGO_PKG_VERSION"),
    " (dify.version: auto)"
);

/// How long one question to Dify may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The `host:port` backends of the upstream that serves Dify's console API.
pub fn api_backends(config: &crate::config::Config) -> Vec<String> {
    let table = crate::routing::RouteTable::new(&config.effective_routes());
    let name = match table.find("/console/api/setup") {
        crate::routing::RouteMatch::Proxy(r) => r.upstream.clone(),
        _ => "api".to_string(),
    };
    config
        .upstreams
        .get(&name)
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

/// Asks each backend in turn for Dify's version; the first answer wins.
pub async fn probe(backends: &[String]) -> Result<DifyVersion, String> {
    if backends.is_empty() {
        return Err("no upstream serves /console/api".into());
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .user_agent(PROBE_USER_AGENT)
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut why = Vec::new();
    for b in backends {
        let url = format!("http://{b}/health");
        match probe_one(&client, &url).await {
            Ok(v) => return Ok(v),
            Err(e) => why.push(format!("GET {url}: {e}")),
        }
    }
    Err(why.join("; "))
}

async fn probe_one(client: &reqwest::Client, url: &str) -> Result<DifyVersion, String> {
    let resp = client.get(url).send().await.map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s
    })?;
    let status = resp.status();
    let header = resp
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A short read: /health is a few bytes, and a misrouted answer must not cost memory.
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let from_body = serde_json::from_slice::<serde_json::Value>(&body[..body.len().min(64 * 1024)])
        .ok()
        .and_then(|j| {
            j.get("version")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
    for text in [from_body.as_deref(), header.as_deref()]
        .into_iter()
        .flatten()
    {
        if let Some(v) = DifyVersion::parse(text) {
            return Ok(v);
        }
    }
    Err(match (from_body, header) {
        (Some(t), _) | (None, Some(t)) => {
            format!("answered {status} with a version that is not x.y.z: {t:?}")
        }
        (None, None) => format!("answered {status} without a version (is this Dify's api?)"),
    })
}

/// Asks Dify when `dify.version` is auto and records the answer: logs a change, the range warning
/// once per new version, and the metric. Returns what to report (`-t`, logs).
pub async fn detect(config: &crate::config::Config) -> Result<Option<DifyVersion>, String> {
    let compat = Compat::from_config(&config.dify);
    if !compat.auto() {
        publish(&compat);
        return Ok(None);
    }
    let found = probe(&api_backends(config)).await;
    if let Ok(v) = &found
        && let Some(old) = DETECTED.set(*v)
    {
        match old {
            Some(old) => log::warn!(
                "Dify's version changed from {old} to {v}: {}",
                compat.describe()
            ),
            None => log::info!("{}", compat.describe()),
        }
        if let Some(w) = range_warning(*v) {
            log::warn!("{w}");
        }
    }
    publish(&compat);
    found.map(Some)
}

/// The `dify_gateway_dify_info{version}` metric for the version in force.
pub fn publish(compat: &Compat) {
    let label = compat
        .version()
        .0
        .map_or_else(|| "unknown".to_string(), |v| v.to_string());
    crate::ops::metrics::METRICS.set_dify_version(&label);
}

/// Start-up: ask once (on a runtime of its own, before Pingora starts its threads) and say what
/// the gateway will do. A Dify that does not answer is no reason not to start.
pub fn detect_at_start(config: &crate::config::Config) {
    let compat = Compat::from_config(&config.dify);
    if !compat.auto() {
        publish(&compat);
        log::info!("{}", compat.describe());
        if let (Some(v), _) = compat.version()
            && let Some(w) = range_warning(v)
        {
            log::warn!("{w}");
        }
        return;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::warn!(
                "could not tell which Dify version is behind the gateway (cannot start the check: {e}); {}",
                compat.describe()
            );
            return;
        }
    };
    if let Err(e) = rt.block_on(detect(config)) {
        log::warn!(
            "could not tell which Dify version is behind the gateway ({e}); {}; asking again every {}",
            compat.describe(),
            humantime::format_duration(config.dify.version_check_interval)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_dify_writes_them() {
        assert_eq!(
            DifyVersion::parse("1.14.2"),
            Some(DifyVersion::new(1, 14, 2))
        );
        assert_eq!(
            DifyVersion::parse("v1.17.1"),
            Some(DifyVersion::new(1, 17, 1))
        );
        assert_eq!(DifyVersion::parse("1.17"), Some(DifyVersion::new(1, 17, 0)));
        assert_eq!(
            DifyVersion::parse("1.16.0-rc1"),
            Some(DifyVersion::new(1, 16, 0))
        );
        for bad in ["", "1", "x.y.z", "1.2.3.4", "1..2", "1.99999.0", "-1.2.3"] {
            assert_eq!(DifyVersion::parse(bad), None, "{bad:?}");
        }
        assert!(DifyVersion::new(1, 9, 10) > DifyVersion::new(1, 9, 2));
    }

    #[test]
    fn what_follows_from_the_version_matches_the_reference() {
        let v = |s| DifyVersion::parse(s).unwrap();
        assert_eq!(v("1.9.1").delivery(), SessionDelivery::Query);
        assert_eq!(v("1.9.2").delivery(), SessionDelivery::Cookie);
        assert_eq!(v("1.16.9").edition(), Edition::SelfHosted);
        assert_eq!(v("1.17.0").edition(), Edition::Community);
        assert!(!v("1.16.3").has_normalized_email());
        assert!(v("1.17.1").has_normalized_email());
        assert!(range_warning(v("1.9.0")).is_none());
        assert!(range_warning(v("1.17.9")).is_none());
        let w = range_warning(v("1.18.0")).unwrap();
        assert!(w.contains("1.9.0 to 1.17.x"), "{w}");
        assert!(range_warning(v("1.8.1")).is_some());
    }

    #[test]
    fn packing_round_trips_and_never_looks_unknown() {
        for v in [
            DifyVersion::new(0, 0, 0),
            DifyVersion::new(1, 17, 1),
            DifyVersion::new(u16::MAX, u16::MAX, u16::MAX),
        ] {
            assert_ne!(v.pack(), 0);
            assert_eq!(DifyVersion::unpack(v.pack()), Some(v));
        }
        let d = Detected(AtomicU64::new(0));
        assert_eq!(d.get(), None);
        assert_eq!(d.set(DifyVersion::new(1, 14, 2)), Some(None));
        assert_eq!(
            d.set(DifyVersion::new(1, 14, 2)),
            None,
            "no change, nothing to report"
        );
        assert_eq!(
            d.set(DifyVersion::new(1, 17, 1)),
            Some(Some(DifyVersion::new(1, 14, 2)))
        );
    }

    #[test]
    fn explicit_settings_win_over_the_version() {
        let c = Compat::from_config(&DifyConfig {
            version: "1.9.1".into(),
            ..Default::default()
        });
        assert_eq!(
            c.version(),
            (Some(DifyVersion::new(1, 9, 1)), Source::Configured)
        );
        assert_eq!(c.delivery(), SessionDelivery::Query);
        assert_eq!(c.edition(), Edition::SelfHosted);
        let c = Compat::from_config(&DifyConfig {
            version: "1.17.1".into(),
            session_delivery: Some(SessionDelivery::Query),
            edition: Some("enterprise".into()),
            ..Default::default()
        });
        assert_eq!(c.delivery(), SessionDelivery::Query);
        assert_eq!(c.edition(), Edition::Enterprise);
        assert!(c.describe().contains("(dify.edition)"), "{}", c.describe());
    }

    #[test]
    fn version_setting_names_what_it_expected() {
        assert_eq!(VersionSetting::parse("auto"), Ok(VersionSetting::Auto));
        assert_eq!(VersionSetting::parse("AUTO"), Ok(VersionSetting::Auto));
        let e = VersionSetting::parse("latest").unwrap_err();
        assert!(e.contains("\"latest\"") && e.contains("auto"), "{e}");
    }
}

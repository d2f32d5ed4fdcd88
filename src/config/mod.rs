//! The configuration: YAML (with `${VAR}` expansion) -> typed [`Config`] -> validated, or a list of
//! [`ConfigError`]s that each name the file, line and field, as `nginx -t` does.

pub mod expand;
pub mod nginx_env;
pub mod source_map;
pub mod units;

use crate::dify::DifyConfig;
use crate::sso::SsoConfig;
use ipnet::IpNet;
use serde::Deserialize;
use source_map::SourceMap;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Dify's stock routing, listening on `NGINX_PORT`; used when no `-c FILE` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

/// Where a configuration comes from, for loading and for naming it in errors.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    Embedded,
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Embedded => f.write_str("<embedded default>"),
            ConfigSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Upstream name -> backends. The four stock names are always present (defaults from the
    /// environment) unless the file overrides them.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Backends>,
    /// Replaces Dify's stock table when given.
    #[serde(default)]
    pub routes: Option<Vec<RouteConfig>>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub sso: Option<SsoConfig>,
    #[serde(default)]
    pub dify: DifyConfig,
    /// A short hash of the expanded text, to tell configurations apart (metrics, reload).
    #[serde(skip)]
    pub hash: String,
    /// Every environment variable the loader looked up (the text's `${...}` and the defaults
    /// filled in), so that Dify's variables it never read can be named (see [`nginx_env`]).
    #[serde(skip)]
    pub env_read: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    #[serde(deserialize_with = "units::de_string_list")]
    pub listen: Vec<String>,
    /// Worker threads, a number or `auto` (one per CPU core); Dify's nginx runs
    /// `worker_processes auto`, so that is the default.
    #[serde(deserialize_with = "units::de_threads")]
    pub threads: usize,
    /// `/healthz`, `/readyz`; empty string turns the admin listener off.
    pub admin_listen: String,
    /// CIDRs (or single addresses) allowed to supply `X-Forwarded-*` and `X-Request-Id`.
    #[serde(deserialize_with = "units::de_string_list")]
    pub trusted_proxies: Vec<String>,
    pub tls: Option<TlsConfig>,
    /// Dify's `NGINX_ENABLE_CERTBOT_CHALLENGE`: `/.well-known/acme-challenge/` from a webroot.
    pub acme_challenge: Option<AcmeChallengeConfig>,
    /// A file for the JSON access log; stderr when absent.
    pub access_log: Option<String>,
    pub pid_file: String,
    /// The Unix socket through which `-u` takes the listeners over from the running instance.
    pub upgrade_sock: String,
    /// How long a stopping process lets requests in flight and open streams go on (Pingora's
    /// grace period); new connections are refused (SIGTERM) or go to the new process (upgrade).
    #[serde(deserialize_with = "units::de_duration")]
    pub grace_period: Duration,
    /// Then, how long the runtimes get to wind down before the process exits.
    #[serde(deserialize_with = "units::de_duration")]
    pub graceful_shutdown_timeout: Duration,
    /// Reload when the file changes on disk (a Kubernetes ConfigMap update), not only on SIGHUP.
    pub watch_config: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["0.0.0.0:80".into()],
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            admin_listen: "127.0.0.1:9901".into(),
            trusted_proxies: Vec::new(),
            tls: None,
            acme_challenge: None,
            access_log: None,
            pid_file: "/tmp/dify-gateway.pid".into(),
            upgrade_sock: "/tmp/dify-gateway-upgrade.sock".into(),
            // Kubernetes gives a pod 30 s and systemd 90 s (Pingora's own 300 s would be killed
            // midway): streams get 20 s to finish, the whole stop fits in 25 s.
            grace_period: Duration::from_secs(20),
            graceful_shutdown_timeout: Duration::from_secs(5),
            watch_config: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Off drops the whole section: the embedded default carries it for Dify's
    /// `NGINX_HTTPS_ENABLED`, which the entrypoint compares with `true` exactly.
    #[serde(default = "yes", deserialize_with = "units::de_flag")]
    pub enabled: bool,
    pub listen: String,
    /// A path, or with `cert_dirs` a file name.
    pub cert: String,
    pub key: String,
    /// Directories tried in turn for `cert` and `key`: the first holding both wins, else the last
    /// (Dify's entrypoint: `/etc/letsencrypt/live/<CERTBOT_DOMAIN>/` when both files are there,
    /// else `/etc/ssl/`). Resolved when the configuration is loaded, and again on every reload.
    #[serde(default, deserialize_with = "units::de_string_list")]
    pub cert_dirs: Vec<String>,
    /// `TLSv1.2`, `TLSv1.3`, or both (nginx's `ssl_protocols`, space- or comma-separated).
    #[serde(
        default = "both_tls_versions",
        deserialize_with = "units::de_word_list"
    )]
    pub protocols: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeChallengeConfig {
    /// Off drops the section (the embedded default sets it from `NGINX_ENABLE_CERTBOT_CHALLENGE`).
    #[serde(default = "yes", deserialize_with = "units::de_flag")]
    pub enabled: bool,
    /// Certbot's `--webroot-path`: the file is `<root>/.well-known/acme-challenge/<token>`.
    #[serde(default = "certbot_webroot")]
    pub root: String,
}

fn certbot_webroot() -> String {
    "/var/www/html".into()
}

fn yes() -> bool {
    true
}

fn both_tls_versions() -> Vec<String> {
    vec!["TLSv1.2".into(), "TLSv1.3".into()]
}

impl TlsConfig {
    /// Applies `cert_dirs` to `cert` and `key`, as Dify's nginx entrypoint does.
    fn resolve_dirs(&mut self) {
        let Some(last) = self.cert_dirs.last() else {
            return;
        };
        let in_dir = |dir: &str, file: &str| std::path::Path::new(dir).join(file);
        // A directory ending in `/` had an empty variable at its end (`CERTBOT_DOMAIN` unset):
        // skipped, as the entrypoint skips certbot's directory without a domain.
        let dir = self
            .cert_dirs
            .iter()
            .filter(|d| !d.ends_with('/'))
            .find(|d| in_dir(d, &self.cert).is_file() && in_dir(d, &self.key).is_file())
            .unwrap_or(last)
            .clone();
        self.cert = in_dir(&dir, &self.cert).display().to_string();
        self.key = in_dir(&dir, &self.key).display().to_string();
        self.cert_dirs.clear();
    }
}

/// One or more `host:port`, as a YAML list or a comma-separated string (handy from an env variable).
#[derive(Debug, Clone, PartialEq)]
pub struct Backends(pub Vec<String>);

impl<'de> Deserialize<'de> for Backends {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::de_string_list(d).map(Backends)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub upstream: String,
    /// Add `Dify-Hook-Url: <scheme>://<host><request_uri>` (Dify's plugin daemon wants it on `/e/`).
    #[serde(default)]
    pub dify_hook_url: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body; 0 means no limit, as in nginx. Use [`Limits::body_limit`].
    #[serde(deserialize_with = "units::de_size")]
    pub client_max_body_size: u64,
    #[serde(deserialize_with = "units::de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "units::de_duration")]
    pub read_timeout: Duration,
    #[serde(deserialize_with = "units::de_duration")]
    pub send_timeout: Duration,
    /// How long an idle upstream connection stays in the pool.
    #[serde(deserialize_with = "units::de_duration")]
    pub upstream_idle_timeout: Duration,
    /// How long an idle client keep-alive connection is kept (nginx `keepalive_timeout`); 0 turns
    /// keep-alive off, as in nginx: every answer carries `Connection: close`.
    #[serde(deserialize_with = "units::de_duration")]
    pub keepalive_timeout: Duration,
    /// How long a client may take to send a whole request header, from the connection's start (or
    /// from the first byte of a later request on a kept-alive connection); nginx
    /// `client_header_timeout`. A slower client's connection is closed.
    #[serde(deserialize_with = "units::de_duration")]
    pub client_header_timeout: Duration,
    /// How long the gateway waits for each read of a request body (nginx `client_body_timeout`: the
    /// time between two successive reads, not the whole body). A stalled body gets 408.
    #[serde(deserialize_with = "units::de_duration")]
    pub client_body_timeout: Duration,
    /// Read a request body whole before the upstream request is opened (nginx
    /// `proxy_request_buffering on`).
    pub request_buffering: RequestBuffering,
}

/// Which upstreams get request bodies only once the client has sent them whole, and where a body
/// waits meanwhile: a slow upload then holds a gateway connection, not one of Dify's few workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestBuffering {
    /// Upstream names; empty turns buffering off.
    #[serde(deserialize_with = "units::de_string_list")]
    pub upstreams: Vec<String>,
    /// Bytes kept in memory; the rest of a larger body goes to a temporary file.
    #[serde(deserialize_with = "units::de_size")]
    pub memory: u64,
    /// Directory of those files (created and removed at once, so nothing is left behind); empty:
    /// the system's temporary directory.
    pub temp_dir: String,
}

impl Default for RequestBuffering {
    fn default() -> Self {
        RequestBuffering {
            upstreams: vec!["api".into()],
            memory: 64 << 10,
            temp_dir: String::new(),
        }
    }
}

impl Limits {
    /// The most body bytes a request may carry: `client_max_body_size`, with 0 read as no limit.
    pub fn body_limit(&self) -> u64 {
        match self.client_max_body_size {
            0 => u64::MAX,
            n => n,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_max_body_size: 100 << 20,
            connect_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(3600),
            send_timeout: Duration::from_secs(3600),
            upstream_idle_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(65),
            client_header_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            request_buffering: RequestBuffering::default(),
        }
    }
}

/// The stock upstream names and the environment variables that override their defaults.
pub const STOCK_UPSTREAMS: [(&str, &str, &str); 4] = [
    ("api", "DIFY_API_UPSTREAM", "127.0.0.1:5001"),
    ("web", "DIFY_WEB_UPSTREAM", "127.0.0.1:3000"),
    (
        "plugin_daemon",
        "DIFY_PLUGIN_DAEMON_UPSTREAM",
        "127.0.0.1:5002",
    ),
    ("websocket", "DIFY_WEBSOCKET_UPSTREAM", "127.0.0.1:5001"),
];

/// Dify's stock nginx locations (reference §1).
pub fn stock_routes() -> Vec<RouteConfig> {
    let r = |prefix: &str, upstream: &str| RouteConfig {
        prefix: prefix.into(),
        upstream: upstream.into(),
        dify_hook_url: false,
    };
    let mut routes = vec![
        r("/console/api", "api"),
        r("/api", "api"),
        r("/v1", "api"),
        r("/openapi", "api"),
        r("/files", "api"),
        r("/mcp", "api"),
        r("/triggers", "api"),
        r("/socket.io/", "websocket"),
        r("/e/", "plugin_daemon"),
        r("/explore", "web"),
        r("/", "web"),
    ];
    routes[8].dify_hook_url = true;
    routes
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    /// Dotted path of the field (`routes[1].upstream`); empty for a syntax error.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// A semantic problem before it is placed in the file: the field path and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub field: String,
    pub message: String,
}

impl Issue {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads, expands, parses and validates. Every error names where it is.
    pub fn load(source: &ConfigSource) -> Result<Config, Vec<ConfigError>> {
        let text = match source {
            ConfigSource::Embedded => EMBEDDED_DEFAULT.to_string(),
            ConfigSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
                vec![ConfigError {
                    file: path.display().to_string(),
                    line: None,
                    field: String::new(),
                    message: format!("cannot read the file: {e}"),
                }]
            })?,
        };
        Config::from_text(&text, &source.to_string(), |k| std::env::var(k).ok())
    }

    /// The same as [`Config::load`] on text already in memory; `env` stands for the environment.
    pub fn from_text(
        text: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        let read = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let env = |name: &str| {
            read.borrow_mut().insert(name.to_string());
            env(name)
        };
        let at = |line: Option<usize>, field: &str, message: String| ConfigError {
            file: file.to_string(),
            line,
            field: field.to_string(),
            message,
        };
        let expanded = expand::expand(text, env).map_err(|errs| {
            errs.into_iter()
                .map(|e| at(Some(e.line), "", e.message))
                .collect::<Vec<_>>()
        })?;
        // An empty file is a valid, all-defaults configuration.
        let text = if expanded.trim().is_empty() {
            "{}"
        } else {
            expanded.as_str()
        };
        let map = SourceMap::build(&expanded);
        let (config, mut errors, skip) = deserialize_all(text, &map);
        let errors_at = |errors: Vec<FieldError>| -> Vec<ConfigError> {
            errors
                .into_iter()
                .map(|e| at(e.line, &e.field, e.message))
                .collect()
        };
        let Some(mut config) = config else {
            return Err(errors_at(errors));
        };
        config.fill_defaults(&env);
        config.server.tls = config.server.tls.take().filter(|t| t.enabled);
        config.server.acme_challenge = config.server.acme_challenge.take().filter(|a| a.enabled);
        if let Some(tls) = config.server.tls.as_mut() {
            tls.resolve_dirs();
        }
        // The certificate directory chosen is part of what runs: certbot's appearing is a change.
        let chosen = config.server.tls.as_ref().map(|t| (&t.cert, &t.key));
        config.hash = short_hash(&format!("{expanded}{chosen:?}"));
        config.env_read = read.borrow().clone();
        // A value that was taken out because it could not be read leaves its field at the default:
        // what validation then says about that field (or its section) would be about the default.
        let issues = config
            .validate()
            .into_iter()
            .filter(|i| !skip.iter().any(|s| related_fields(s, &i.field)));
        errors.extend(issues.map(|i| FieldError {
            line: map.line_of(&i.field),
            field: i.field,
            message: i.message,
        }));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors_at(errors))
        }
    }

    fn fill_defaults(&mut self, env: &impl Fn(&str) -> Option<String>) {
        for (name, var, default) in STOCK_UPSTREAMS {
            self.upstreams.entry(name.to_string()).or_insert_with(|| {
                // Dify's own name for the websocket upstream, below the gateway's.
                let dify = (name == "websocket")
                    .then(|| env(nginx_env::SOCKET_IO_UPSTREAM))
                    .flatten();
                let value = env(var)
                    .filter(|v| !v.trim().is_empty())
                    .or(dify.filter(|v| !v.trim().is_empty()))
                    .unwrap_or(default.into());
                Backends(value.split(',').map(|s| s.trim().to_string()).collect())
            });
        }
        self.dify.fill_from_env(env);
        self.sso = SsoConfig::resolve(self.sso.take(), &mut self.dify, env);
    }

    /// The routes in force: the file's list or Dify's stock table.
    pub fn effective_routes(&self) -> Vec<RouteConfig> {
        self.routes.clone().unwrap_or_else(stock_routes)
    }

    /// Every semantic problem, not just the first.
    pub fn validate(&self) -> Vec<Issue> {
        let mut issues = Vec::new();
        let s = &self.server;
        if s.listen.is_empty() {
            issues.push(Issue::new(
                "server.listen",
                "expected at least one address such as 0.0.0.0:80",
            ));
        }
        for (i, addr) in s.listen.iter().enumerate() {
            check_socket_addr(&mut issues, &format!("server.listen[{i}]"), addr);
        }
        if s.threads == 0 || s.threads > 1024 {
            issues.push(Issue::new(
                "server.threads",
                "expected a number of threads from 1 to 1024",
            ));
        }
        if !s.admin_listen.is_empty() {
            check_socket_addr(&mut issues, "server.admin_listen", &s.admin_listen);
            if s.listen.contains(&s.admin_listen) {
                issues.push(Issue::new(
                    "server.admin_listen",
                    "must not be one of server.listen: health and metrics never go on the public port",
                ));
            }
        }
        for (i, cidr) in s.trusted_proxies.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                issues.push(Issue::new(
                    format!("server.trusted_proxies[{i}]"),
                    format!("expected a CIDR such as 10.0.0.0/8 or an address, got {cidr:?}"),
                ));
            }
        }
        if let Some(tls) = &s.tls {
            check_socket_addr(&mut issues, "server.tls.listen", &tls.listen);
            for (field, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
                if let Err(e) = std::fs::metadata(path) {
                    issues.push(Issue::new(field, format!("cannot read {path:?}: {e}")));
                }
            }
            if let Err(e) = crate::ops::tls::Protocols::parse(&tls.protocols) {
                issues.push(Issue::new("server.tls.protocols", e));
            }
        }
        if s.graceful_shutdown_timeout.is_zero() {
            issues.push(Issue::new(
                "server.graceful_shutdown_timeout",
                "expected a duration above 0",
            ));
        }
        for (name, backends) in &self.upstreams {
            let field = format!("upstreams.{name}");
            if backends.0.is_empty() {
                issues.push(Issue::new(&field, "expected at least one host:port"));
            }
            for (i, b) in backends.0.iter().enumerate() {
                if let Err(msg) = split_host_port(b) {
                    issues.push(Issue::new(format!("{field}[{i}]"), msg));
                }
            }
        }
        if let Some(routes) = &self.routes {
            if routes.is_empty() {
                issues.push(Issue::new(
                    "routes",
                    "expected at least one route (omit the key for Dify's stock table)",
                ));
            }
            for (i, r) in routes.iter().enumerate() {
                if !r.prefix.starts_with('/') {
                    issues.push(Issue::new(
                        format!("routes[{i}].prefix"),
                        format!("expected a path starting with /, got {:?}", r.prefix),
                    ));
                }
                if !self.upstreams.contains_key(&r.upstream) {
                    let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                    issues.push(Issue::new(
                        format!("routes[{i}].upstream"),
                        format!(
                            "unknown upstream {:?}; expected one of: {}",
                            r.upstream,
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        let l = &self.limits;
        for (i, name) in l.request_buffering.upstreams.iter().enumerate() {
            if !self.upstreams.contains_key(name) {
                issues.push(Issue::new(
                    format!("limits.request_buffering.upstreams[{i}]"),
                    format!("unknown upstream {name:?}"),
                ));
            }
        }
        for (field, d) in [
            ("limits.connect_timeout", l.connect_timeout),
            ("limits.read_timeout", l.read_timeout),
            ("limits.send_timeout", l.send_timeout),
            ("limits.client_header_timeout", l.client_header_timeout),
            ("limits.client_body_timeout", l.client_body_timeout),
        ] {
            if d.is_zero() {
                issues.push(Issue::new(field, "expected a duration above 0"));
            }
        }
        if let Some(sso) = &self.sso {
            sso.validate(&self.dify, &mut issues);
        }
        self.dify.validate(&mut issues);
        issues
    }

    /// A one-line description for `-t` and the start-up log.
    pub fn summary(&self) -> String {
        let sso = match &self.sso {
            Some(s) if s.is_enabled() => s.summary(&self.dify),
            _ => "sso off".to_string(),
        };
        format!(
            "listen {}{}, {} threads, {} routes, {} upstreams, {}",
            self.server.listen.join(" "),
            self.server
                .tls
                .as_ref()
                .map(|t| format!(" tls {}", t.listen))
                .unwrap_or_default(),
            self.server.threads,
            self.effective_routes().len(),
            self.upstreams.len(),
            sso
        )
    }
}

/// A deserialisation error before it is placed in a file.
struct FieldError {
    line: Option<usize>,
    field: String,
    message: String,
}

/// At most this many fields are reported from one file, so a file that is not a configuration at
/// all (or is someone else's) does not cost a deserialisation per line.
const MAX_FIELD_ERRORS: usize = 100;

/// Deserialises `text`, and when that fails, every error in it rather than the first: serde stops
/// at the first unknown field or bad value, so each is taken out of the document and the rest read
/// again. Returns the configuration when what is left reads (unknown fields only: validation can
/// still speak), the errors, and the paths of values taken out as unreadable.
fn deserialize_all(text: &str, map: &SourceMap) -> (Option<Config>, Vec<FieldError>, Vec<String>) {
    // The common case, a good file, is read straight from the text.
    let first = match serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
    {
        Ok(config) => return (Some(config), Vec::new(), Vec::new()),
        Err(e) => e,
    };
    let first_error = || {
        let path = Step::path_of(&first);
        let message = message_of(first.inner());
        let yaml_line = first.inner().location().map(|l| l.line());
        field_error(&path, message, yaml_line, map)
    };
    // A syntax error: nothing after it can be trusted.
    let Ok(mut doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return (None, vec![first_error()], Vec::new());
    };
    let mut errors: Vec<FieldError> = Vec::new();
    let mut unreadable = Vec::new();
    // List items taken out so far (the list's path, the item's index then), to give later errors
    // the index the file has.
    let mut taken: Vec<(Vec<Step>, usize)> = Vec::new();
    loop {
        let err = match serde_path_to_error::deserialize::<_, Config>(doc.clone()) {
            Ok(_) if errors.is_empty() => {
                // The document reads but the text did not: report what the text said.
                return (None, vec![first_error()], Vec::new());
            }
            Ok(config) => {
                let usable = unreadable.is_empty();
                return (usable.then_some(config), errors, unreadable);
            }
            Err(e) => e,
        };
        let in_doc = Step::path_of(&err);
        let in_file = taken
            .iter()
            .rev()
            .fold(in_doc.clone(), |path, (list, index)| {
                Step::before_taking(path, list, *index)
            });
        let raw = err.inner().to_string();
        // A Value has no positions: the line comes from the source map.
        let e = field_error(&in_file, message_of(err.inner()), None, map);
        if errors.iter().any(|seen| seen.field == e.field) {
            break;
        }
        // A missing field names its section, which is not the thing to take out: what follows
        // would be errors about the section's absence.
        let removed = !raw.contains("missing field `") && remove_at(&mut doc, &in_doc);
        if removed && let Some((Step::Index(i), list)) = in_doc.split_last() {
            taken.push((list.to_vec(), *i));
        }
        if !raw.contains("unknown field `") {
            unreadable.push(e.field.clone());
        }
        errors.push(e);
        if !removed || errors.len() >= MAX_FIELD_ERRORS {
            break;
        }
    }
    (None, errors, unreadable)
}

/// One step of a field's path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    /// An enum variant or a place serde cannot name: nothing to take out there.
    Opaque,
}

impl Step {
    fn path_of(e: &serde_path_to_error::Error<serde_yaml_ng::Error>) -> Vec<Step> {
        use serde_path_to_error::Segment;
        e.path()
            .iter()
            .map(|s| match s {
                Segment::Map { key } => Step::Key(key.clone()),
                Segment::Seq { index } => Step::Index(*index),
                _ => Step::Opaque,
            })
            .collect()
    }

    /// `path` as it was before item `index` of `list` was taken out.
    fn before_taking(mut path: Vec<Step>, list: &[Step], index: usize) -> Vec<Step> {
        if path.starts_with(list)
            && let Some(Step::Index(i)) = path.get_mut(list.len())
            && *i >= index
        {
            *i += 1;
        }
        path
    }

    /// `routes[1].upstream`, as serde_path_to_error and [`SourceMap`] write it.
    fn dotted(path: &[Step]) -> String {
        let mut out = String::new();
        for step in path {
            match step {
                Step::Key(k) if out.is_empty() => out.push_str(k),
                Step::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
                Step::Opaque => out.push_str(if out.is_empty() { "?" } else { ".?" }),
            }
        }
        out
    }
}

/// serde_yaml_ng's message without its own "path: " in front and " at line N column M" behind.
fn message_of(e: &serde_yaml_ng::Error) -> String {
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg);
    match msg.split_once(": ") {
        Some((f, m)) if !f.contains(' ') => m.to_string(),
        _ => msg.to_string(),
    }
}

/// The field and line of one serde error.
fn field_error(
    path: &[Step],
    message: String,
    yaml_line: Option<usize>,
    map: &SourceMap,
) -> FieldError {
    let field = Step::dotted(path);
    // serde_path_to_error knows the field of every error, including those raised by our own
    // parsers (durations, sizes), where serde_yaml_ng's own position is only approximate.
    let line = match map.complete && !field.is_empty() {
        true => map.line_of(&field).or(yaml_line),
        false => yaml_line,
    };
    FieldError {
        line,
        field,
        message,
    }
}

/// Takes the value at `path` out of `doc`; false when there is no such value (the path ends at a
/// section, or passes through something that is not a mapping or a list).
fn remove_at(doc: &mut serde_yaml_ng::Value, path: &[Step]) -> bool {
    use serde_yaml_ng::Value;
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = doc;
    for step in parents {
        let next = match (step, node) {
            (Step::Key(key), Value::Mapping(m)) => m.get_mut(key.as_str()),
            (Step::Index(index), Value::Sequence(s)) => s.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = next;
    }
    match (last, node) {
        (Step::Key(key), Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        (Step::Index(index), Value::Sequence(s)) if *index < s.len() => {
            s.remove(*index);
            true
        }
        _ => false,
    }
}

/// Whether one of the two dotted paths is the other or contains it.
fn related_fields(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer.is_empty()
            || inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
    };
    within(a, b) || within(b, a)
}

fn check_socket_addr(issues: &mut Vec<Issue>, field: &str, addr: &str) {
    if addr.parse::<SocketAddr>().is_err() {
        issues.push(Issue::new(
            field,
            format!("expected ip:port such as 0.0.0.0:80 or [::]:80, got {addr:?}"),
        ));
    }
}

fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A CIDR or a single address (taken as /32 or /128).
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let t = text.trim();
    t.parse::<IpNet>()
        .ok()
        .or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from))
}

/// `host:port` or `[v6]:port`; the host may be a name, resolved later without blocking.
pub fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("expected host:port such as api:5001 or 127.0.0.1:5001, got {text:?}");
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Parses `path` for callers outside the loader (tests, `-t`).
pub fn load_path(path: &Path) -> Result<Config, Vec<ConfigError>> {
    Config::load(&ConfigSource::File(path.to_path_buf()))
}

#[cfg(test)]
mod tests;

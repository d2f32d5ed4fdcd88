//! Launching the real binary: a YAML config builder, readiness polling, captured stderr, kill on drop.

use super::{WAIT, free_addr, poll_until};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

/// Path of the binary under test, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_dify-gateway");

/// The four upstream names of Dify's stock routing table.
pub const STOCK_UPSTREAMS: [&str; 4] = ["api", "web", "plugin_daemon", "websocket"];

/// YAML double-quoted scalar (a JSON string is one).
pub fn yq(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A configuration for one gateway under test. Ports are picked at construction; every upstream not
/// set points at nothing (a dead address) so a test only describes what it uses.
pub struct GatewayBuilder {
    dir: TempDir,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    threads: usize,
    trusted_proxies: Vec<String>,
    access_log: Option<PathBuf>,
    upstreams: BTreeMap<String, Vec<String>>,
    routes: Option<Vec<(String, String)>>,
    limits: BTreeMap<String, String>,
    /// `limits.<key>` written as YAML as given (flow mappings, lists).
    limits_yaml: BTreeMap<String, String>,
    /// Raw YAML appended at top level (e.g. `sso:` sections for later tests).
    extra_yaml: String,
    /// Extra `key: value` lines inside the `server:` section.
    server_yaml: Vec<String>,
    env: Vec<(String, String)>,
    rust_log: String,
    embedded: bool,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayBuilder {
    pub fn new() -> Self {
        GatewayBuilder {
            dir: tempfile::Builder::new()
                .prefix("dify-gateway-test")
                .tempdir()
                .expect("tempdir"),
            listen: free_addr(),
            admin: free_addr(),
            threads: 1,
            trusted_proxies: Vec::new(),
            access_log: None,
            upstreams: BTreeMap::new(),
            routes: None,
            limits: BTreeMap::new(),
            limits_yaml: BTreeMap::new(),
            extra_yaml: String::new(),
            server_yaml: Vec::new(),
            env: Vec::new(),
            rust_log: "info".into(),
            embedded: false,
        }
    }

    /// Sets one upstream's backends.
    pub fn upstream(mut self, name: &str, backends: &[SocketAddr]) -> Self {
        self.upstreams.insert(
            name.into(),
            backends.iter().map(|a| a.to_string()).collect(),
        );
        self
    }

    /// Points all four stock upstreams at the same backend.
    pub fn all_upstreams(mut self, backend: SocketAddr) -> Self {
        for name in STOCK_UPSTREAMS {
            self = self.upstream(name, &[backend]);
        }
        self
    }

    pub fn trusted_proxies(mut self, cidrs: &[&str]) -> Self {
        self.trusted_proxies = cidrs.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sends the access log to a file in the test's temporary directory; see [`Gateway::access_log`].
    pub fn access_log_to_file(mut self) -> Self {
        self.access_log = Some(self.dir.path().join("access.log"));
        self
    }

    /// Adds a route; the first call replaces Dify's stock table.
    pub fn route(mut self, prefix: &str, upstream: &str) -> Self {
        self.routes
            .get_or_insert_with(Vec::new)
            .push((prefix.into(), upstream.into()));
        self
    }

    /// `limits.<key>: <value>`, e.g. `limit("read_timeout", "1s")`.
    pub fn limit(mut self, key: &str, value: &str) -> Self {
        self.limits.insert(key.into(), value.into());
        self
    }

    /// `limits.<key>: <yaml>` with the value as YAML, e.g. `limit_yaml("x", "{ a: 1 }")`.
    pub fn limit_yaml(mut self, key: &str, yaml: &str) -> Self {
        self.limits_yaml.insert(key.into(), yaml.into());
        self
    }

    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra_yaml.push_str(yaml);
        if !self.extra_yaml.ends_with('\n') {
            self.extra_yaml.push('\n');
        }
        self
    }

    /// `server.<key>: <value>` (the value is written as YAML as given), e.g. `server("grace_period", "1s")`.
    pub fn server(mut self, key: &str, value: &str) -> Self {
        self.server_yaml.push(format!("  {key}: {value}\n"));
        self
    }

    /// A path in the test's temporary directory (for pid files, sockets, configs).
    pub fn temp_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// `RUST_LOG` for the gateway (default `info`).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.into();
        self
    }

    /// Runs without `-c`, on the embedded default configuration, with the listen port, admin address
    /// and upstreams given through its environment variables (`NGINX_PORT`, which listens on
    /// 0.0.0.0, `DIFY_GATEWAY_ADMIN_LISTEN`, `DIFY_API_UPSTREAM`, ...). Only the listen port, admin
    /// address, upstreams and `env` apply.
    pub fn embedded_default(mut self) -> Self {
        self.embedded = true;
        self
    }

    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        y.push_str("server:\n");
        y.push_str(&format!("  listen: [{}]\n", yq(&self.listen.to_string())));
        y.push_str(&format!("  threads: {}\n", self.threads));
        y.push_str(&format!(
            "  admin_listen: {}\n",
            yq(&self.admin.to_string())
        ));
        let trusted: Vec<String> = self.trusted_proxies.iter().map(|s| yq(s)).collect();
        y.push_str(&format!("  trusted_proxies: [{}]\n", trusted.join(", ")));
        if let Some(p) = &self.access_log {
            y.push_str(&format!("  access_log: {}\n", yq(&p.display().to_string())));
        }
        for line in &self.server_yaml {
            y.push_str(line);
        }
        y.push_str("upstreams:\n");
        let mut upstreams = self.upstreams.clone();
        for name in STOCK_UPSTREAMS {
            upstreams
                .entry(name.into())
                .or_insert_with(|| vec![super::dead_addr().to_string()]);
        }
        for (name, backends) in &upstreams {
            let b: Vec<String> = backends.iter().map(|s| yq(s)).collect();
            y.push_str(&format!("  {name}: [{}]\n", b.join(", ")));
        }
        if let Some(routes) = &self.routes {
            y.push_str("routes:\n");
            for (prefix, upstream) in routes {
                y.push_str(&format!(
                    "  - {{ prefix: {}, upstream: {} }}\n",
                    yq(prefix),
                    yq(upstream)
                ));
            }
        }
        if !self.limits.is_empty() || !self.limits_yaml.is_empty() {
            y.push_str("limits:\n");
            for (k, v) in &self.limits {
                y.push_str(&format!("  {k}: {}\n", yq(v)));
            }
            for (k, v) in &self.limits_yaml {
                y.push_str(&format!("  {k}: {v}\n"));
            }
        }
        y.push_str(&self.extra_yaml);
        y
    }

    /// Writes the config, starts the binary and waits until it serves: admin `/healthz` answers 200
    /// and the proxy port accepts a TCP connection. Fails the test (with the gateway's stderr) if
    /// that does not happen within [`WAIT`] or the process exits.
    pub async fn start(self) -> Gateway {
        let mut gw = self.launch();
        gw.wait_ready().await;
        gw
    }

    /// Writes the config and starts the binary without waiting for it to serve (for a start-up
    /// that is meant to fail: see [`Gateway::wait_exit`]).
    pub fn launch(self) -> Gateway {
        let config_path = self.dir.path().join("gateway.yaml");
        std::fs::write(&config_path, self.to_yaml()).expect("write config");
        let mut cmd = Command::new(BIN);
        if self.embedded {
            cmd.env("NGINX_PORT", self.listen.port().to_string())
                .env("DIFY_GATEWAY_ADMIN_LISTEN", self.admin.to_string());
            for (name, var) in [
                ("api", "DIFY_API_UPSTREAM"),
                ("web", "DIFY_WEB_UPSTREAM"),
                ("plugin_daemon", "DIFY_PLUGIN_DAEMON_UPSTREAM"),
                ("websocket", "DIFY_WEBSOCKET_UPSTREAM"),
            ] {
                let backends = self.upstreams.get(name).cloned();
                let backends = backends.unwrap_or_else(|| vec![super::dead_addr().to_string()]);
                cmd.env(var, backends.join(","));
            }
            std::fs::write(&config_path, "# not used: the embedded default runs\n").ok();
        } else {
            cmd.arg("-c").arg(&config_path);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", &self.rust_log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stderr = capture(child.stderr.take().unwrap());
        let stdout = capture(child.stdout.take().unwrap());
        Gateway {
            child,
            listen: self.listen,
            admin: self.admin,
            config_path,
            access_log_path: self.access_log.clone(),
            stderr,
            stdout,
            _dir: self.dir,
        }
    }
}

fn capture(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    buf
}

/// A running gateway. Killed when dropped; if the test is failing, its stderr is printed then.
pub struct Gateway {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    access_log_path: Option<PathBuf>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    _dir: TempDir,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::new()
    }

    /// `http://127.0.0.1:PORT<path>` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the gateway process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits up to `limit` for the process to exit; its exit status, or None if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let request = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
        let resp = super::raw_http(self.admin, request)
            .await
            .expect("/metrics answers");
        assert_eq!(resp.status, 200, "/metrics");
        resp.text()
    }

    /// A metric's value: the sum of its samples whose labels include `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics_text().await;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("/metrics parses as Prometheus text");
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// The stderr lines that are JSON objects.
    pub fn log_lines(&self) -> Vec<Value> {
        json_lines(&self.stderr())
    }

    /// The access log entries so far: from `server.access_log` when the file is configured, else
    /// the stderr JSON lines that look like access entries (they carry `trace_id`, `status`,
    /// `method` and `path`).
    pub fn access_log(&self) -> Vec<Value> {
        let lines = match &self.access_log_path {
            Some(p) => json_lines(&std::fs::read_to_string(p).unwrap_or_default()),
            None => self.log_lines(),
        };
        lines
            .into_iter()
            .filter(|v| {
                ["trace_id", "status", "method", "path"]
                    .iter()
                    .all(|k| v.get(k).is_some())
            })
            .collect()
    }

    /// The raw text of the access log file (empty when not configured or not yet written).
    pub fn access_log_text(&self) -> String {
        self.access_log_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Waits (bounded) for the access log entry of `trace_id`.
    pub async fn access_entry(&self, trace_id: &str) -> Value {
        let found = poll_until(WAIT, || async {
            self.access_log()
                .into_iter()
                .find(|v| v["trace_id"].as_str() == Some(trace_id))
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "no access log entry with trace_id {trace_id} within {WAIT:?}; access log:\n{}\nstderr:\n{}",
                self.access_log_text(),
                self.stderr()
            )
        })
    }

    /// Status code of `GET path` on the admin listener, or None if it does not answer.
    pub async fn admin_status(&self, path: &str) -> Option<u16> {
        admin_get(self.admin, path).await
    }

    async fn wait_ready(&mut self) {
        let (listen, admin) = (self.listen, self.admin);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader thread a moment to drain the pipe: poll, bounded.
                let stderr = self.stderr.clone();
                let _ = poll_until(Duration::from_secs(1), || async {
                    (!stderr.lock().unwrap().is_empty()).then_some(())
                })
                .await;
                panic!(
                    "dify-gateway exited during start-up ({status})\nconfig:\n{}\nstderr:\n{}",
                    std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.stderr()
                );
            }
            let healthy = admin_get(admin, "/healthz").await == Some(200);
            if healthy && tokio::net::TcpStream::connect(listen).await.is_ok() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "dify-gateway not ready within {WAIT:?} (admin /healthz 200 on {admin} and TCP on {listen})\n\
                     config:\n{}\nstderr:\n{}",
                    std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- dify-gateway config ----\n{}\n---- dify-gateway stderr ----\n{}\n---- end ----",
                std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                self.stderr()
            );
        }
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

/// `GET path` over a fresh connection; the status code, or None when nothing answers.
async fn admin_get(addr: SocketAddr, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        super::raw_http(addr, req.as_bytes()),
    )
    .await;
    match resp {
        Ok(Ok(r)) => Some(r.status),
        _ => None,
    }
}

/// Runs `dify-gateway <args>` to completion (for `-t`, `--version`, `--help`).
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

/// Writes `yaml` to a temporary file and runs `dify-gateway -t -c FILE`. Keep the returned `TempDir`
/// alive while the path is needed.
pub fn check_config(yaml: &str) -> (Output, PathBuf, TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("dify-gateway-check")
        .tempdir()
        .expect("tempdir");
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let out = run_cli(&["-t", "-c", path_str(&path)]);
    (out, path, dir)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

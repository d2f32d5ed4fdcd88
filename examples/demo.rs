//! Try the SSO bridge without Dify: the real gateway plus a mock SSO login page, a mock management
//! service and a mock Dify (which checks cookies, JWT signatures and CSRF as Dify does), all on
//! 127.0.0.1.
//!
//! ```text
//! cargo build --profile fast && cargo run --profile fast --example demo
//! ```
//!
//! Environment: `DEMO_PORT` (gateway port, default 8080, a free one if taken), `DIFY_GATEWAY_BIN`
//! (the gateway binary; default: `dify-gateway` next to this example's build directory).
//! Runs until Ctrl-C.

#[path = "../tests/support/dify_mock.rs"]
mod dify_mock;
#[path = "../tests/support/dify_webapp.rs"]
mod dify_webapp;
#[path = "../tests/support/mock_http.rs"]
mod mock_http;
#[path = "../tests/support/sso_mock.rs"]
mod sso_mock;

use dify_mock::{DifyMock, DifySettings};
use sso_mock::{SsoMock, SsoUser};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET_KEY: &str = "demo-dify-secret-key-change-me-0123456789";
const USERS: [(&str, &str, &str, bool); 3] = [
    (
        "alice",
        "Alice Example",
        "0d3c1a52-0000-4000-8000-00000000a11c",
        false,
    ),
    (
        "bob",
        "Bob Müller",
        "0d3c1a52-0000-4000-8000-0000000000b0",
        false,
    ),
    (
        "mallory",
        "Mallory Banned",
        "0d3c1a52-0000-4000-8000-0000000000ff",
        true,
    ),
];

fn gateway_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("DIFY_GATEWAY_BIN") {
        return Ok(PathBuf::from(p));
    }
    // target/<profile>/examples/demo -> target/<profile>/dify-gateway
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or("cannot find the build directory")?;
    let bin = profile_dir.join(format!("dify-gateway{}", std::env::consts::EXE_SUFFIX));
    if bin.exists() {
        Ok(bin)
    } else {
        let profile = profile_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let flag = match profile.as_str() {
            "release" => " --release".to_string(),
            "debug" | "" => String::new(),
            other => format!(" --profile {other}"),
        };
        Err(format!(
            "{} does not exist: build the gateway first:\n\n    cargo build{flag} && cargo run{flag} --example demo\n",
            bin.display()
        ))
    }
}

fn pick_port() -> u16 {
    let wanted: u16 = std::env::var("DEMO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    if std::net::TcpListener::bind(("127.0.0.1", wanted)).is_ok() {
        return wanted;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().unwrap().port()
}

fn yq(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[tokio::main]
async fn main() {
    let bin = match gateway_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let users: Vec<SsoUser> = USERS
        .iter()
        .map(|(login, name, id, refused)| {
            let u = SsoUser::new(login, name, id);
            if *refused { u.refused() } else { u }
        })
        .collect();
    let sso = SsoMock::start(SECRET_KEY, users).await;
    let dify = DifyMock::start(DifySettings::new(SECRET_KEY)).await;
    for (_, name, id, _) in USERS {
        dify.add_account(id, name);
    }

    let port = pick_port();
    let dir = std::env::temp_dir().join(format!("dify-gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the demo directory");
    let config = dir.join("gateway.yaml");
    let log = dir.join("gateway.log");
    let yaml = format!(
        "server:\n  listen: [{listen}]\n  threads: 2\n  admin_listen: \"\"\n  pid_file: {pid}\n  upgrade_sock: {sock}\n\
         upstreams:\n  api: [{dify}]\n  web: [{dify}]\n\
         sso:\n  login_url: {login}\n  exchange:\n    url: {exchange}\n    timeout: 5s\n  support_contact: \"the demo's README\"\n\
         dify:\n  secret_key: {key}\n  session_delivery: cookie\n  home: /apps\n",
        listen = yq(&format!("127.0.0.1:{port}")),
        pid = yq(&dir.join("gateway.pid").display().to_string()),
        sock = yq(&dir.join("upgrade.sock").display().to_string()),
        dify = yq(&dify.addr().to_string()),
        login = yq(&sso.login_url_template()),
        exchange = yq(&sso.exchange_url()),
        key = yq(SECRET_KEY),
    );
    std::fs::write(&config, yaml).expect("write the demo config");
    let log_file = std::fs::File::create(&log).expect("create the gateway log");
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));

    let mut ready = false;
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "the gateway exited ({status}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::process::exit(1);
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        let _ = child.kill();
        eprintln!(
            "the gateway did not start listening on 127.0.0.1:{port}; log: {}",
            log.display()
        );
        std::process::exit(1);
    }

    println!(
        "
dify-gateway demo is running.

Open  http://localhost:{port}/apps  in a browser.

Pieces (all local):
  gateway               http://localhost:{port}   (config {config}, log {log})
  mock SSO login page   {sso_login}
  mock management svc   {exchange}
  mock Dify (api+web)   http://{dify}

Three things to try:
  1. Sign in: click \"Sign in\" (or open http://localhost:{port}/signin?redirect_url=/apps/demo)
     and choose \"Sign in as Alice Example\" on the mock SSO page. You land on the page you asked
     for, showing \"Signed in as Alice Example\"; its script calls Dify's profile API with the CSRF
     header, and the mock Dify checks cookie names, JWT signature and CSRF as Dify does.
  2. Logout sticks: click \"Log out\". The page goes to /signin as Dify's front end does, and the
     gateway answers \"You are signed out\" instead of signing you straight back in.
     \"Sign in again\" starts a normal sign-in.
  3. A failing exchange: on the mock SSO page choose \"Sign in as Mallory Banned\". The management
     service refuses that user and the gateway shows an error page with a trace id (no loop).

Ctrl-C stops everything.
",
        config = config.display(),
        log = log.display(),
        sso_login = sso.login_page.url("/login?ret=..."),
        exchange = sso.exchange_url(),
        dify = dify.addr(),
    );

    let _ = tokio::signal::ctrl_c().await;
    println!("stopping");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

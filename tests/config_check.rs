//! `dify-gateway -t`: like `nginx -t`, a one-line summary for a good file; for a bad one, every
//! problem as `FILE:LINE: field: message` (a YAML syntax error stops at the first).

mod support;

use std::path::PathBuf;
use std::process::Output;
use support::*;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stderr lines that report a problem in `file`.
fn error_lines(o: &Output, file: &str) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")))
        .map(str::to_string)
        .collect()
}

const GOOD: &str = r#"server:
  listen: ["127.0.0.1:${DGW_TEST_SURELY_UNSET_PORT:-18080}"]
  threads: 1
  admin_listen: "127.0.0.1:19901"
  trusted_proxies: ["10.0.0.0/8"]
upstreams:
  api: ["127.0.0.1:5001"]
  web: ["127.0.0.1:3000"]
  plugin_daemon: ["127.0.0.1:5002"]
  websocket: ["127.0.0.1:5001", "127.0.0.1:5003"]
limits:
  client_max_body_size: 100M
  connect_timeout: 60s
  read_timeout: 3600s
  send_timeout: 3600s
"#;

#[test]
fn good_file_passes_with_a_one_line_summary() {
    let (out, path, _dir) = check_config(GOOD);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {:?} stderr {:?}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "a one-line summary on stdout, got {text:?}");
    assert!(
        lines[0].contains("18080"),
        "the summary should show the expanded listen address: {text:?}"
    );
    assert!(error_lines(&out, path_str(&path)).is_empty());
}

#[test]
fn yaml_syntax_error_names_its_line_and_stops() {
    let yaml = "server:\n  listen: [\"127.0.0.1:18080\"]\n  threads: 1\nupstreams:\n  api: 127.0.0.1:5001: extra\n  web: [127.0.0.1:3000\n";
    let (out, path, _dir) = check_config(yaml);
    let file = path_str(&path);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", stderr(&out));
    let errors = error_lines(&out, file);
    assert_eq!(
        errors.len(),
        1,
        "a syntax error stops at the first; stderr:\n{}",
        stderr(&out)
    );
    assert!(
        errors[0].starts_with(&format!("{file}:5:")),
        "the error must name line 5, got {:?}",
        errors[0]
    );
}

#[test]
fn every_semantic_error_is_listed_with_line_and_field() {
    let yaml = r#"server:
  listen: ["127.0.0.1:18080"]
  threads: 0
  admin_listen: "127.0.0.1:19901"
  trusted_proxies: ["10.0.0.0/8", "not-a-cidr"]
upstreams:
  api: ["127.0.0.1:5001"]
  web: ["127.0.0.1:3000"]
  plugin_daemon: ["127.0.0.1:5002"]
  websocket: ["127.0.0.1:5001"]
routes:
  - { prefix: /console/api, upstream: api }
  - { prefix: /probe, upstream: nope }
  - { prefix: v1, upstream: api }
"#;
    let (out, path, _dir) = check_config(yaml);
    let file = path_str(&path);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", stderr(&out));
    let errors = error_lines(&out, file);
    let all = stderr(&out);
    for prefix in [
        format!("{file}:3: server.threads: "),
        format!("{file}:5: server.trusted_proxies[1]: "),
        format!("{file}:14: routes[2].prefix: "),
    ] {
        assert!(
            errors.iter().any(|l| l.starts_with(&prefix)),
            "missing an error starting {prefix:?}; stderr:\n{all}"
        );
    }
    let unknown = format!(
        "{file}:13: routes[1].upstream: unknown upstream \"nope\"; expected one of: api, plugin_daemon, web, websocket"
    );
    assert!(
        errors.contains(&unknown),
        "missing {unknown:?}; stderr:\n{all}"
    );
    assert_eq!(
        errors.len(),
        4,
        "exactly the four problems, one per line; stderr:\n{all}"
    );
}

#[test]
fn misspelled_key_and_bad_unit_name_their_line() {
    let typo = "server:\n  listen: [\"127.0.0.1:18080\"]\n  threads: 1\n  admin_lisen: \"127.0.0.1:19901\"\n";
    let (out, path, _dir) = check_config(typo);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", stderr(&out));
    let errors = error_lines(&out, path_str(&path));
    assert!(
        errors.iter().any(|l| l.starts_with(&format!("{}:4:", path_str(&path))) && l.contains("admin_lisen")),
        "an unknown key must be reported at line 4 by name; stderr:\n{}",
        stderr(&out)
    );

    let unit = "server:\n  listen: [\"127.0.0.1:18080\"]\nlimits:\n  client_max_body_size: 100M\n  read_timeout: soon\n";
    let (out, path, _dir) = check_config(unit);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", stderr(&out));
    let errors = error_lines(&out, path_str(&path));
    assert!(
        errors.iter().any(
            |l| l.starts_with(&format!("{}:5:", path_str(&path))) && l.contains("read_timeout")
        ),
        "a bad duration must be reported at line 5 naming read_timeout; stderr:\n{}",
        stderr(&out)
    );
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    let out = run_cli(&["-t", "-c", path_str(&path)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(path_str(&path)),
        "stderr must name the file: {:?}",
        stderr(&out)
    );
}

#[test]
fn version_and_help() {
    let out = run_cli(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(env!("CARGO_PKG_VERSION")),
        "--version: {:?}",
        stdout(&out)
    );

    let out = run_cli(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for flag in ["-c", "--config", "-t"] {
        assert!(help.contains(flag), "--help should mention {flag}: {help}");
    }
}

/// An `sso.minter: builtin` configuration with `provisioning` lines and `dify` lines added.
fn builtin(provisioning: &str, dify: &str) -> String {
    format!(
        "sso:\n  protocol: cas\n  state_secret: state-secret-0123456789abcdef-cfg\n  cas:\n    server: https://cas.example.com/cas\n  minter: builtin\n  provisioning:\n    workspace_id: 7d5e1c2a-0000-4000-8000-00000000beef\n{provisioning}\
         dify:\n  secret_key: sk-config-check\n  database_url: postgresql://db/dify\n  redis_url: redis://127.0.0.1:6379/0\n{dify}"
    )
}

/// `-t --offline` on `yaml` with `env` set (and Dify's own variables unset otherwise).
fn check_offline(yaml: &str, env: &[(&str, &str)]) -> (Output, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["-t", "--offline", "-c", path_str(&path)])
        .stdin(std::process::Stdio::null())
        .env_remove("RUST_LOG")
        .env_remove("REDIS_KEY_PREFIX")
        .env_remove("DATASET_OPERATOR_ENABLED");
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.output().unwrap(), path, dir)
}

#[test]
fn provisioning_values_dify_cannot_handle_are_refused_with_their_line() {
    let yaml = builtin(
        "    timezone: Mars/Olympus_Mons\n    interface_language: en\n    default_role: owner\n    role_map:\n      staff: superuser\n",
        "",
    );
    let (out, path, _dir) = check_offline(&yaml, &[]);
    let file = path_str(&path);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let errors = error_lines(&out, file);
    let expect = [
        (
            9,
            "sso.provisioning.timezone: expected an IANA time zone name such as UTC, Europe/Berlin or Asia/Shanghai, got \"Mars/Olympus_Mons\"",
        ),
        (
            10,
            "sso.provisioning.interface_language: expected one of Dify's interface languages (en-US, zh-Hans,",
        ),
        (
            11,
            "sso.provisioning.default_role: owner is never given by the gateway",
        ),
        (
            13,
            "sso.provisioning.role_map.staff: expected normal, editor or admin, got \"superuser\"",
        ),
    ];
    for (line, text) in expect {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("{file}:{line}: {text}"))),
            "no {line}: {text} in\n{}",
            errors.join("\n")
        );
    }
    assert_eq!(errors.len(), 4, "{}", errors.join("\n"));
    // Dify's own spellings pass.
    let yaml = builtin(
        "    timezone: America/Sao_Paulo\n    interface_language: pt-BR\n    default_role: editor\n",
        "",
    );
    let (out, _, _dir) = check_offline(&yaml, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn dataset_operator_needs_dify_s_dataset_operator_enabled() {
    let yaml = builtin("    role_map: {analysts: dataset_operator}\n", "");
    let (out, path, _dir) = check_offline(&yaml, &[]);
    assert_eq!(out.status.code(), Some(1));
    let errors = error_lines(&out, path_str(&path));
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(
        errors[0].starts_with(&format!(
            "{}:9: sso.provisioning.role_map.analysts: dataset_operator is given only when Dify runs with DATASET_OPERATOR_ENABLED=true",
            path_str(&path)
        )) && errors[0].contains("dify.dataset_operator_enabled: true"),
        "{}",
        errors[0]
    );
    let yaml = builtin("    default_role: dataset_operator\n", "");
    let (out, _, _dir) = check_offline(&yaml, &[]);
    assert!(stderr(&out).contains("sso.provisioning.default_role: dataset_operator is given only"));
    // Allowed by the file, or by Dify's own variable in the environment.
    let (out, _, _dir) = check_offline(
        &builtin(
            "    role_map: {analysts: dataset_operator}\n",
            "  dataset_operator_enabled: true\n",
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (out, _, _dir) = check_offline(
        &builtin("    role_map: {analysts: dataset_operator}\n", ""),
        &[("DATASET_OPERATOR_ENABLED", "true")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The file's false wins over the environment; a value Dify would not read is named.
    let (out, _, _dir) = check_offline(
        &builtin(
            "    role_map: {analysts: dataset_operator}\n",
            "  dataset_operator_enabled: false\n",
        ),
        &[("DATASET_OPERATOR_ENABLED", "true")],
    );
    assert_eq!(out.status.code(), Some(1));
    let (out, _, _dir) = check_offline(&builtin("", ""), &[("DATASET_OPERATOR_ENABLED", "sure")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("dify.dataset_operator_enabled: the environment variable DATASET_OPERATOR_ENABLED is \"sure\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn published_app_rules_session_and_scim_errors_name_their_line_and_field() {
    let yaml = "dify:\n  secret_key: \"k-0123456789abcdef\"\n\
sso:\n  login_url: \"http://sso.example.com/login?ret={callback_url}\"\n  exchange:\n    url: \"http://m.example.com/x\"\n  \
session:\n    keys: [\"short\"]\n  \
apps:\n    default: open\n    rules:\n      \"bad code!\": signed_in\n      Good1: { colors: [x] }\n  \
scim:\n    token: \"tiny\"\n";
    let (out, path, _dir) = check_config(yaml);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = error_lines(&out, path.to_str().unwrap());
    let all = lines.join("\n");
    for want in [
        ":8: sso.session.keys[0]: expected a random secret of at least 32 bytes",
        ":10: sso.apps.default: expected public, signed_in, deny or",
        ":12: sso.apps.rules.bad code!: expected an app code as in the share URL",
        ":13: sso.apps.rules.Good1.colors: unknown field `colors`",
        ":15: sso.scim.token: expected a random secret of at least 32 bytes",
        ":15: sso.scim.token: SCIM needs sso.minter: builtin",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

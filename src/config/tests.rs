use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "NGINX_PORT" => Some("8080".into()),
        "DIFY_API_UPSTREAM" => Some("api:5001, api2:5001".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, Vec<ConfigError>> {
    Config::from_text(text, "test.yaml", env)
}

#[test]
fn embedded_default_is_dify_stock_nginx_from_the_environment() {
    let c = Config::from_text(EMBEDDED_DEFAULT, "<embedded default>", env).unwrap();
    assert_eq!(c.server.listen, vec!["0.0.0.0:8080"]);
    assert_eq!(c.upstreams["api"].0, vec!["api:5001", "api2:5001"]);
    assert_eq!(c.upstreams["web"].0, vec!["127.0.0.1:3000"]);
    assert_eq!(c.upstreams["plugin_daemon"].0, vec!["127.0.0.1:5002"]);
    assert!(c.server.trusted_proxies.is_empty());
    assert_eq!(c.limits.client_max_body_size, 100 << 20);
    assert_eq!(c.limits.read_timeout, Duration::from_secs(3600));
    assert_eq!(c.effective_routes(), stock_routes());
}

/// Dify's nginx variables as its `.env` writes them, read with nginx's meaning.
#[test]
fn embedded_default_reads_dify_nginx_variables_as_nginx_does() {
    let dify = |name: &str| {
        match name {
            "NGINX_CLIENT_MAX_BODY_SIZE" => Some("0"),
            "NGINX_KEEPALIVE_TIMEOUT" => Some("0"),
            "NGINX_WORKER_PROCESSES" => Some("3"),
            "NGINX_SOCKET_IO_UPSTREAM" => Some("api_websocket:5001"),
            _ => None,
        }
        .map(String::from)
    };
    let c = Config::from_text(EMBEDDED_DEFAULT, "<embedded default>", dify).unwrap();
    assert_eq!(c.limits.client_max_body_size, 0);
    assert_eq!(c.limits.body_limit(), u64::MAX, "0 is no limit");
    assert_eq!(c.limits.keepalive_timeout, Duration::ZERO);
    assert_eq!(c.server.threads, 3);
    assert_eq!(c.upstreams["websocket"].0, vec!["api_websocket:5001"]);
    for read in [
        "NGINX_PORT",
        "NGINX_SOCKET_IO_UPSTREAM",
        "NGINX_WORKER_PROCESSES",
    ] {
        assert!(c.env_read.contains(read), "{read} not looked up");
    }

    // The gateway's own variable wins; `auto` is one thread per core.
    let both = |name: &str| match name {
        "DIFY_WEBSOCKET_UPSTREAM" => Some("ws:5001".to_string()),
        "NGINX_WORKER_PROCESSES" => Some("auto".to_string()),
        _ => dify(name),
    };
    let c = Config::from_text(EMBEDDED_DEFAULT, "<embedded default>", both).unwrap();
    assert_eq!(c.upstreams["websocket"].0, vec!["ws:5001"]);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert_eq!(c.server.threads, cores);
    assert!(c.env_read.contains("NGINX_SOCKET_IO_UPSTREAM"));

    // A file without a websocket upstream takes Dify's variable too.
    let c = Config::from_text("server:\n  threads: 1\n", "f.yaml", dify).unwrap();
    assert_eq!(c.upstreams["websocket"].0, vec!["api_websocket:5001"]);

    let errs = Config::from_text("server:\n  threads: \"some\"\n", "f.yaml", dify).unwrap_err();
    assert_eq!(
        (errs[0].line, errs[0].field.as_str()),
        (Some(2), "server.threads")
    );
    assert!(errs[0].message.contains("or auto"), "{}", errs[0].message);
}

#[test]
fn zero_body_size_is_no_limit_and_other_sizes_are_the_limit() {
    let c = load("limits:\n  client_max_body_size: 0\n").unwrap();
    assert_eq!(c.limits.body_limit(), u64::MAX);
    let c = load("limits:\n  client_max_body_size: 1k\n").unwrap();
    assert_eq!(c.limits.body_limit(), 1024);
}

#[test]
fn empty_file_is_all_defaults() {
    let c = load("").unwrap();
    assert_eq!(c.server.admin_listen, "127.0.0.1:9901");
    assert_eq!(c.upstreams.len(), 4);
}

#[test]
fn units_and_lists_parse() {
    let c = load(
        "limits:\n  client_max_body_size: 15MiB\n  connect_timeout: 500ms\n  read_timeout: 1h\nserver:\n  trusted_proxies: 10.0.0.0/8, 192.168.1.1\n",
    )
    .unwrap();
    assert_eq!(c.limits.client_max_body_size, 15 << 20);
    assert_eq!(c.limits.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.limits.read_timeout, Duration::from_secs(3600));
    assert_eq!(c.server.trusted_proxies, vec!["10.0.0.0/8", "192.168.1.1"]);
}

#[test]
fn syntax_error_names_its_line() {
    let errs = load("server:\n  listen: [\"a\"\n  threads: 2\n").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].line.is_some(), "{:?}", errs[0]);
}

#[test]
fn type_error_names_line_and_field() {
    let errs = load("server:\n  threads: many\n").unwrap_err();
    assert_eq!(errs[0].line, Some(2));
    assert_eq!(errs[0].field, "server.threads");
    let errs = load("limits:\n  read_timeout: forever\n").unwrap_err();
    assert_eq!(errs[0].line, Some(2));
    assert!(
        errs[0].message.contains("expected a duration"),
        "{}",
        errs[0].message
    );
}

#[test]
fn unknown_key_is_refused() {
    let errs = load("server:\n  listn: [\"0.0.0.0:80\"]\n").unwrap_err();
    assert!(
        errs[0].message.contains("unknown field `listn`"),
        "{}",
        errs[0]
    );
}

#[test]
fn every_unknown_key_and_bad_value_is_listed_not_only_the_first() {
    let text = "server:\n  listn: [\"0.0.0.0:80\"]\n  threads: many\nlimits:\n  read_timeout: forever\n  sendtimeout: 1s\nsso:\n  protocol: oidc\n  colour: blue\nroutes:\n  - prefix: /a\n    upstream: nope\n    weight: 2\n";
    let errs = load(text).unwrap_err();
    let found: Vec<(Option<usize>, &str)> =
        errs.iter().map(|e| (e.line, e.field.as_str())).collect();
    for want in [
        (Some(2), "server.listn"),
        (Some(3), "server.threads"),
        (Some(5), "limits.read_timeout"),
        (Some(6), "limits.sendtimeout"),
        (Some(9), "sso.colour"),
        (Some(13), "routes[0].weight"),
    ] {
        assert!(found.contains(&want), "missing {want:?} in {found:?}");
    }
    let unknown = errs
        .iter()
        .find(|e| e.field == "limits.sendtimeout")
        .unwrap();
    assert!(
        unknown.message.contains("unknown field `sendtimeout`"),
        "{unknown}"
    );
    let bad = errs.iter().find(|e| e.field == "server.threads").unwrap();
    assert!(bad.message.contains("\"many\""), "{bad}");
}

#[test]
fn unknown_keys_do_not_hide_the_semantic_errors() {
    let text = "server:\n  listen: [\"nowhere\"]\n  listn: [\"0.0.0.0:80\"]\nroutes:\n  - prefix: /a\n    upstream: nope\n    upstrem: api\n";
    let errs = load(text).unwrap_err();
    let found: Vec<(Option<usize>, &str)> =
        errs.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        found,
        vec![
            (Some(3), "server.listn"),
            (Some(7), "routes[0].upstrem"),
            (Some(2), "server.listen[0]"),
            (Some(6), "routes[0].upstream"),
        ]
    );
}

#[test]
fn a_value_that_does_not_read_is_not_also_blamed_on_its_default() {
    // Without the threads value the default (the CPU count) would pass; the listener's own error
    // still shows, and nothing is said twice about threads.
    let errs = load("server:\n  threads: [1]\n  listen: [\"nowhere\"]\n").unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["server.threads"], "{errs:?}");
    // A list that does not read: the fields after it are still read.
    let errs = load("server:\n  listen: [[1], \"0.0.0.0:80\"]\n  threads: lots\n").unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["server.listen", "server.threads"], "{errs:?}");
    // A bad item of a list of sections: the items after it are still read.
    let errs =
        load("routes:\n  - 5\n  - prefix: /a\n    upstream: api\n    weight: 1\n").unwrap_err();
    let found: Vec<(Option<usize>, &str)> =
        errs.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        found,
        vec![(Some(2), "routes[0]"), (Some(5), "routes[1].weight")],
        "{errs:?}"
    );
}

#[test]
fn a_file_of_nonsense_is_reported_in_bounded_time() {
    let text: String = (0..1000).map(|i| format!("key{i}: {i}\n")).collect();
    let errs = load(&text).unwrap_err();
    assert!(!errs.is_empty() && errs.len() <= 100, "{}", errs.len());
    assert_eq!(errs[0].field, "key0");
    assert_eq!(errs[0].line, Some(1));
}

#[test]
fn an_empty_variable_is_reported_as_empty() {
    let env = |name: &str| (name == "PORT_EMPTY").then(String::new);
    let errs = Config::from_text(
        "server:\n  listen: [\"0.0.0.0:${PORT_EMPTY}\"]\n",
        "t.yaml",
        env,
    )
    .unwrap_err();
    assert_eq!(errs[0].line, Some(2));
    assert!(
        errs[0].message.contains("PORT_EMPTY is set but empty"),
        "{}",
        errs[0]
    );
}

#[test]
fn every_semantic_error_is_listed_with_its_line() {
    let text = "server:\n  listen: [\"nowhere\"]\n  threads: 0\nupstreams:\n  api: [\"127.0.0.1:x\"]\nroutes:\n  - prefix: /a\n    upstream: nope\n  - { prefix: b, upstream: api }\n";
    let errs = load(text).unwrap_err();
    let found: Vec<(Option<usize>, &str)> =
        errs.iter().map(|e| (e.line, e.field.as_str())).collect();
    assert_eq!(
        found,
        vec![
            (Some(2), "server.listen[0]"),
            (Some(3), "server.threads"),
            (Some(5), "upstreams.api[0]"),
            (Some(8), "routes[0].upstream"),
            (Some(9), "routes[1].prefix"),
        ]
    );
    assert_eq!(
        errs[3].to_string(),
        "test.yaml:8: routes[0].upstream: unknown upstream \"nope\"; expected one of: api, plugin_daemon, web, websocket"
    );
}

#[test]
fn unset_variable_names_its_line() {
    let errs = load("server:\n  listen: [\"0.0.0.0:${NOT_SET}\"]\n").unwrap_err();
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.contains("NOT_SET is not set"));
}

#[test]
fn admin_listener_never_shares_the_public_port() {
    let errs =
        load("server:\n  listen: [\"0.0.0.0:80\"]\n  admin_listen: \"0.0.0.0:80\"\n").unwrap_err();
    assert_eq!(errs[0].field, "server.admin_listen");
}

#[test]
fn host_port_forms() {
    assert_eq!(split_host_port("api:5001").unwrap(), ("api".into(), 5001));
    assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1".into(), 80));
    assert!(split_host_port("api").is_err());
    assert!(split_host_port("api:0").is_err());
    assert!(split_host_port("http://api:5001").is_err());
}

#[test]
fn dify_redis_key_prefix_and_dataset_operator_default_from_dify_s_variables() {
    let dify_env = |name: &str| match name {
        "REDIS_KEY_PREFIX" => Some("tenant-a".to_string()),
        "DATASET_OPERATOR_ENABLED" => Some("true".to_string()),
        _ => None,
    };
    let c = Config::from_text("", "test.yaml", dify_env).unwrap();
    assert_eq!(
        c.dify.redis_key("refresh_token:t"),
        "tenant-a:refresh_token:t"
    );
    assert!(c.dify.dataset_operator_enabled());
    let c = Config::from_text(
        "dify:\n  redis_key_prefix: \"\"\n  dataset_operator_enabled: false\n",
        "test.yaml",
        dify_env,
    )
    .unwrap();
    assert_eq!(c.dify.redis_key("k"), "k", "the file wins");
    assert!(!c.dify.dataset_operator_enabled());
    let c = load("dify:\n  redis_key_prefix: ~\n  dataset_operator_enabled: ~\n").unwrap();
    assert_eq!(c.dify.redis_key("k"), "k");
    assert!(!c.dify.dataset_operator_enabled());
    let errors = load("dify:\n  dataset_operator_enabled: maybe\n").unwrap_err();
    assert_eq!(errors[0].field, "dify.dataset_operator_enabled");
    assert_eq!(errors[0].line, Some(2));
}

#[test]
fn the_example_configuration_loads() {
    let text = include_str!("../../conf/dify-gateway.example.yaml");
    let c = Config::from_text(text, "dify-gateway.example.yaml", |_| None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.dify.redis_key("k"), "k");
    assert!(!c.dify.dataset_operator_enabled());
}

#[test]
fn request_buffering_defaults_to_the_api_and_names_known_upstreams_only() {
    let c = load("").unwrap();
    assert_eq!(c.limits.request_buffering.upstreams, vec!["api"]);
    assert_eq!(c.limits.request_buffering.memory, 64 << 10);
    let c = load("limits:\n  request_buffering:\n    upstreams: []\n    memory: 1M\n").unwrap();
    assert!(c.limits.request_buffering.upstreams.is_empty());
    assert_eq!(c.limits.request_buffering.memory, 1 << 20);
    let errors = load("limits:\n  request_buffering:\n    upstreams: [apii]\n").unwrap_err();
    let text = format!("{errors:?}");
    assert!(
        text.contains("limits.request_buffering.upstreams[0]") && text.contains("apii"),
        "{text}"
    );
}

#[test]
fn https_off_by_default_and_the_switch_is_strict() {
    let c = Config::from_text(EMBEDDED_DEFAULT, "<embedded default>", |_| None).unwrap();
    assert_eq!(c.server.tls, None);
    let on = |v: &'static str| move |k: &str| (k == "NGINX_HTTPS_ENABLED").then(|| v.to_string());
    let errs = Config::from_text(EMBEDDED_DEFAULT, "<embedded default>", on("yes")).unwrap_err();
    assert_eq!(errs[0].field, "server.tls.enabled", "{errs:?}");
    // On, with no certificate in either directory: the /etc/ssl path is named.
    let errs = Config::from_text(EMBEDDED_DEFAULT, "<embedded default>", on("true")).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.field == "server.tls.cert" && e.message.contains("/etc/ssl/dify.crt")),
        "{errs:?}"
    );
}

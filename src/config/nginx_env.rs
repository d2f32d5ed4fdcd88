//! Dify's nginx settings (the `NGINX_*` and `CERTBOT_*` variables of Dify's `docker/.env`) that
//! the running configuration does not read. An operator who swaps Dify's nginx for the gateway
//! with the same `.env` is told, in one line, which of them have no effect, rather than finding
//! out when HTTPS or certificate renewal does not work.
//!
//! A variable counts as implemented when the configuration looked it up (the embedded default
//! reads `NGINX_PORT`, `NGINX_CLIENT_MAX_BODY_SIZE`, ...; a `-c` file reads what it names).
//! Variables that Dify's nginx itself ignores in the same setting are not named: the `NGINX_SSL_*`
//! files and ports and `CERTBOT_DOMAIN` unless `NGINX_HTTPS_ENABLED=true`, the certbot
//! container's `CERTBOT_EMAIL` and `CERTBOT_OPTIONS` unless the certbot challenge is on and not
//! served here (when it is, they are the certbot container's business and have their effect).

use std::collections::BTreeSet;

/// Dify's variable for the websocket (`/socket.io/`) upstream, `api_websocket:5001` in its `.env`.
pub const SOCKET_IO_UPSTREAM: &str = "NGINX_SOCKET_IO_UPSTREAM";

/// Dify's `server_name`: accepted, and nothing to do (see [`EnvReport::server_name`]).
pub const SERVER_NAME: &str = "NGINX_SERVER_NAME";

/// Only read by Dify's nginx entrypoint when `NGINX_HTTPS_ENABLED` is `true` (the embedded
/// default reads them always; a `-c` file without `${...}` for them gets them named).
const HTTPS_ONLY: [&str; 5] = [
    "NGINX_SSL_PORT",
    "NGINX_SSL_CERT_FILENAME",
    "NGINX_SSL_CERT_KEY_FILENAME",
    "NGINX_SSL_PROTOCOLS",
    "CERTBOT_DOMAIN",
];

/// Read by Dify's certbot container, which only runs for the certbot challenge.
const CERTBOT_ONLY: [&str; 2] = ["CERTBOT_EMAIL", "CERTBOT_OPTIONS"];

/// What the environment asks of Dify's nginx that the gateway does not do.
#[derive(Debug, Default, PartialEq)]
pub struct EnvReport {
    /// Set, meaningful to Dify's nginx, and not read here: named in the start-up warning.
    pub unimplemented: Vec<String>,
    /// `NGINX_SERVER_NAME`, when set. Dify's nginx has one server block, which answers every
    /// `Host` whatever its `server_name`; so does the gateway.
    pub server_name: Option<String>,
}

impl EnvReport {
    /// The one warning line, when there is something to warn about.
    pub fn warning(&self) -> Option<String> {
        (!self.unimplemented.is_empty()).then(|| {
            format!(
                "Dify nginx settings set in the environment but not implemented by dify-gateway, \
                 so without effect: {} (README, \"Dify's .env\")",
                self.unimplemented.join(", ")
            )
        })
    }

    /// The line saying what `NGINX_SERVER_NAME` does here.
    pub fn server_name_note(&self) -> Option<String> {
        self.server_name.as_ref().map(|name| {
            format!(
                "{SERVER_NAME}={name}: accepted; every Host is answered, as by Dify's single nginx \
                 server block"
            )
        })
    }
}

/// Sorts the environment's Dify nginx variables (`vars`: name, value) into what `read` (the
/// variables the configuration looked up) leaves unimplemented.
pub fn report(
    read: &BTreeSet<String>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> EnvReport {
    let vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, value)| {
            (name.starts_with("NGINX_") || name.starts_with("CERTBOT_")) && !value.trim().is_empty()
        })
        .collect();
    // The entrypoint compares with "true" exactly.
    let on = |toggle: &str| vars.iter().any(|(n, v)| n == toggle && v == "true");
    let (https, certbot) = (
        on("NGINX_HTTPS_ENABLED"),
        on("NGINX_ENABLE_CERTBOT_CHALLENGE"),
    );
    let mut out = EnvReport::default();
    for (name, value) in &vars {
        if name == SERVER_NAME {
            out.server_name = Some(value.clone());
            continue;
        }
        let inert = match name.as_str() {
            "NGINX_HTTPS_ENABLED" => !https,
            "NGINX_ENABLE_CERTBOT_CHALLENGE" => !certbot,
            n if HTTPS_ONLY.contains(&n) => !https,
            n if CERTBOT_ONLY.contains(&n) => {
                !certbot || read.contains("NGINX_ENABLE_CERTBOT_CHALLENGE")
            }
            _ => false,
        };
        if !inert && !read.contains(name) {
            out.unimplemented.push(name.clone());
        }
    }
    out.unimplemented.sort();
    out
}

/// [`report`] on the process environment.
pub fn report_process_env(read: &BTreeSet<String>) -> EnvReport {
    report(
        read,
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn read(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const STOCK: [(&str, &str); 14] = [
        ("NGINX_SERVER_NAME", "_"),
        ("NGINX_HTTPS_ENABLED", "false"),
        ("NGINX_PORT", "80"),
        ("NGINX_SSL_PORT", "443"),
        ("NGINX_SSL_CERT_FILENAME", "dify.crt"),
        ("NGINX_SSL_CERT_KEY_FILENAME", "dify.key"),
        ("NGINX_SSL_PROTOCOLS", "TLSv1.2 TLSv1.3"),
        ("NGINX_WORKER_PROCESSES", "auto"),
        ("NGINX_CLIENT_MAX_BODY_SIZE", "100M"),
        ("NGINX_KEEPALIVE_TIMEOUT", "65"),
        ("NGINX_ENABLE_CERTBOT_CHALLENGE", "false"),
        ("CERTBOT_EMAIL", "your_email@example.com"),
        ("CERTBOT_DOMAIN", "your_domain.com"),
        ("NGINX_SOCKET_IO_UPSTREAM", "api_websocket:5001"),
    ];

    const READ: [&str; 5] = [
        "NGINX_PORT",
        "NGINX_WORKER_PROCESSES",
        "NGINX_CLIENT_MAX_BODY_SIZE",
        "NGINX_KEEPALIVE_TIMEOUT",
        "NGINX_SOCKET_IO_UPSTREAM",
    ];

    #[test]
    fn the_stock_env_with_https_off_has_nothing_to_warn_about() {
        let r = report(&read(&READ), vars(&STOCK));
        assert_eq!(r.unimplemented, Vec::<String>::new());
        assert_eq!(r.warning(), None);
        assert_eq!(r.server_name.as_deref(), Some("_"));
    }

    #[test]
    fn https_and_the_certbot_challenge_turned_on_are_named_with_their_settings() {
        let mut env = vars(&STOCK);
        for (k, v) in &mut env {
            if k == "NGINX_HTTPS_ENABLED" || k == "NGINX_ENABLE_CERTBOT_CHALLENGE" {
                *v = "true".into();
            }
        }
        let r = report(&read(&READ), env);
        assert_eq!(
            r.unimplemented,
            [
                "CERTBOT_DOMAIN",
                "CERTBOT_EMAIL",
                "NGINX_ENABLE_CERTBOT_CHALLENGE",
                "NGINX_HTTPS_ENABLED",
                "NGINX_SSL_CERT_FILENAME",
                "NGINX_SSL_CERT_KEY_FILENAME",
                "NGINX_SSL_PORT",
                "NGINX_SSL_PROTOCOLS",
            ]
        );
        let line = r.warning().unwrap();
        assert!(
            line.contains("NGINX_HTTPS_ENABLED, NGINX_SSL_CERT_FILENAME"),
            "{line}"
        );
    }

    #[test]
    fn with_https_and_the_challenge_read_only_unknown_names_are_left() {
        let mut env = vars(&STOCK);
        for (k, v) in &mut env {
            if k == "NGINX_HTTPS_ENABLED" || k == "NGINX_ENABLE_CERTBOT_CHALLENGE" {
                *v = "true".into();
            }
        }
        env.push(("NGINX_X_UNKNOWN".into(), "1".into()));
        let mut read = read(&READ);
        read.extend(
            HTTPS_ONLY
                .iter()
                .chain(&["NGINX_HTTPS_ENABLED", "NGINX_ENABLE_CERTBOT_CHALLENGE"])
                .map(|s| s.to_string()),
        );
        assert_eq!(report(&read, env).unimplemented, ["NGINX_X_UNKNOWN"]);
    }

    #[test]
    fn unknown_and_unread_variables_are_named_and_empty_ones_are_not() {
        let env = vars(&[
            ("NGINX_PROXY_BUFFERING", "off"),
            ("NGINX_PORT", "80"),
            ("NGINX_WEB_BASE_PATH", ""),
            ("DIFY_API_UPSTREAM", "api:5001"),
        ]);
        // A -c file that does not name NGINX_PORT does not listen on it either.
        let r = report(&read(&[]), env);
        assert_eq!(r.unimplemented, ["NGINX_PORT", "NGINX_PROXY_BUFFERING"]);
    }
}

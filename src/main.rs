use clap::Parser;
use dify_gateway::cli::Cli;
use dify_gateway::config::{Config, ConfigSource};
use dify_gateway::dify::version::Compat;
use dify_gateway::ops::{logging, server};
use dify_gateway::sso::{builtin_minter, idp_check, used_states};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SIGHUP means reload here; until the reload task listens for it, ignore it rather than die.
    // SAFETY: setting a signal disposition at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    logging::init(cli.log_format, std::env::var("RUST_LOG").ok().as_deref());
    // One TLS provider for the whole process (Pingora's listeners and the SSO client).
    let _ = rustls::crypto::ring::default_provider().install_default();

    // An absolute path, so a reload still finds the file after `-d` moved the working directory.
    let source = cli.config.clone().map_or(ConfigSource::Embedded, |p| {
        ConfigSource::File(std::fs::canonicalize(&p).unwrap_or(p))
    });
    let config = match Config::load(&source) {
        Ok(config) => config,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "dify-gateway: configuration {source} has {} error(s)",
                errors.len()
            );
            return ExitCode::from(1);
        }
    };
    let dify_env = dify_gateway::config::nginx_env::report_process_env(&config.env_read);
    if cli.test {
        if let Some(line) = dify_env.warning() {
            eprintln!("dify-gateway: warning: {line}");
        }
        return check_only(&config, &source, cli.offline);
    }
    // Which Dify is behind: asked before the minter's check, which compares the schema with it.
    // A Dify that does not answer yet is no reason not to start.
    dify_gateway::dify::version::detect_at_start(&config);
    // sso.minter: builtin: Dify's tables, the workspace and Redis are checked before serving.
    match builtin_minter::preflight_blocking(config.sso.as_ref(), &config.dify) {
        Ok(Some(summary)) => log::info!("sso.minter builtin: {summary}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("{}", preflight_failed(&e));
            return ExitCode::from(1);
        }
    }
    if let Err(e) = used_states::preflight_blocking(config.sso.as_ref(), &config.dify) {
        eprintln!("{}", store_failed(&e));
        return ExitCode::from(1);
    }
    log::info!("starting with {source}: {}", config.summary());
    if let Some(line) = dify_env.warning() {
        log::warn!("{line}");
    }
    if let Some(line) = dify_env.server_name_note() {
        log::info!("{line}");
    }
    match server::build(&cli, config, source) {
        Ok(server) => {
            server.run(pingora::server::RunArgs::default());
            dify_gateway::ops::drain::remove_pid_file();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dify-gateway: {e}");
            ExitCode::from(1)
        }
    }
}

/// What `-t` says about the Dify behind the gateway; asks it unless `offline` (start-up does not
/// fail on the answer, so neither does `-t`).
fn dify_version_summary(config: &Config, offline: bool) -> String {
    let compat = Compat::from_config(&config.dify);
    if !compat.auto() {
        return compat.describe();
    }
    if offline {
        return format!(
            "skipped (--offline): asking Dify for its version (dify.version: auto); {}",
            compat.describe()
        );
    }
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the check: {e}"))
        .and_then(|rt| rt.block_on(dify_gateway::dify::version::detect(config)));
    match asked {
        Ok(_) => compat.describe(),
        Err(e) => format!(
            "could not tell which Dify version is behind the gateway ({e}); {}",
            compat.describe()
        ),
    }
}

fn store_failed(e: &str) -> String {
    format!("dify-gateway: sso.store: redis cannot keep used sign-in states: {e}")
}

fn idp_failed(e: &str) -> String {
    format!("dify-gateway: sso.oidc: the sign-in server cannot be used: {e}")
}

fn preflight_failed(e: &str) -> String {
    format!("dify-gateway: sso.minter: builtin cannot work: {e}")
}

/// `-t`: what start-up checks, then exit. The same failure gives the same message as at start-up,
/// so a `-t` that says ok means the start will not fail on the configuration or on Dify's servers
/// as they are now.
fn check_only(config: &Config, source: &ConfigSource, offline: bool) -> ExitCode {
    // What start-up builds before serving: the SSO flow (its keys, the minter) and the TLS files.
    if let Err(e) = dify_gateway::state::Snapshot::build(config.clone(), 0) {
        eprintln!("dify-gateway: {e}");
        return ExitCode::from(1);
    }
    if let Some(tls) = &config.server.tls
        && let Err(e) = server::check_tls_files(&tls.cert, &tls.key)
    {
        eprintln!("dify-gateway: server.tls: cannot load the certificate or key: {e}");
        return ExitCode::from(1);
    }
    let summary = config.summary();
    let dify = dify_version_summary(config, offline);
    let uses_builtin = builtin_minter::in_use(config.sso.as_ref()).is_some();
    let redis_store = config
        .sso
        .as_ref()
        .is_some_and(|s| s.is_enabled() && s.store_in_redis(&config.dify));
    let oidc = idp_check::oidc_in_use(config.sso.as_ref());
    let checked = if offline {
        let mut skipped = Vec::new();
        if uses_builtin {
            skipped.push(
                "connecting to Dify's PostgreSQL (dify.database_url) and Redis (dify.redis_url), \
                 Dify's schema and the workspace (sso.minter: builtin)"
                    .to_string(),
            );
        } else if redis_store {
            skipped.push("connecting to Dify's Redis (dify.redis_url) for sso.store".to_string());
        }
        if let Some(sso) = oidc {
            skipped.push(format!(
                "fetching the OpenID provider's discovery and JWKS ({})",
                dify_gateway::sso::providers::http::loggable_text(&sso.oidc.issuer)
            ));
        }
        if !skipped.is_empty() {
            format!("; skipped (--offline): {}", skipped.join("; "))
        } else if Compat::from_config(&config.dify).auto() {
            String::new()
        } else {
            "; --offline: nothing to skip, this configuration connects to no other server at start-up"
                .to_string()
        }
    } else {
        match builtin_minter::preflight_blocking(config.sso.as_ref(), &config.dify) {
            Ok(Some(checked)) => format!("; sso.minter builtin: {checked}"),
            Ok(None) => String::new(),
            Err(e) => {
                eprintln!("{}", preflight_failed(&e));
                return ExitCode::from(1);
            }
        }
    };
    let checked = if offline {
        checked
    } else {
        match used_states::preflight_blocking(config.sso.as_ref(), &config.dify) {
            Ok(Some(ok)) => format!("{checked}; sso.store: {ok}"),
            Ok(None) => checked,
            Err(e) => {
                eprintln!("{}", store_failed(&e));
                return ExitCode::from(1);
            }
        }
    };
    let checked = match oidc {
        Some(sso) if !offline => match idp_check::check_blocking(sso) {
            Ok(ok) => format!("{checked}; sso.oidc: {ok}"),
            Err(e) => {
                eprintln!("{}", idp_failed(&e));
                return ExitCode::from(1);
            }
        },
        _ => checked,
    };
    println!("dify-gateway: configuration {source} is ok: {summary}{checked}; {dify}");
    ExitCode::SUCCESS
}

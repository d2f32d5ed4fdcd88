use clap::Parser;
use dify_gateway::cli::Cli;
use dify_gateway::config::{Config, ConfigSource};
use dify_gateway::ops::{logging, server};
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
        println!(
            "dify-gateway: configuration {source} is ok: {}",
            config.summary()
        );
        return ExitCode::SUCCESS;
    }
    // sso.minter: builtin: Dify's tables, the workspace and Redis are checked before serving.
    match dify_gateway::sso::builtin_minter::preflight_blocking(config.sso.as_ref(), &config.dify) {
        Ok(Some(summary)) => log::info!("sso.minter builtin: {summary}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("dify-gateway: sso.minter: builtin cannot work: {e}");
            return ExitCode::from(1);
        }
    }
    log::info!("starting with {source}: {}", config.summary());
    if let Some(line) = dify_env.warning() {
        log::warn!("{line}");
    }
    if let Some(line) = dify_env.server_name_note() {
        log::info!("{line}");
    }
    match server::build(&cli, config, source) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("dify-gateway: {e}");
            ExitCode::from(1)
        }
    }
}

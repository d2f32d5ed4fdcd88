//! The command line. Names are fixed: operators and outside tests rely on them, as on nginx's.

use crate::ops::logging::LogFormat;
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "dify-gateway",
    version,
    about = "A Pingora gateway in place of Dify's nginx, with single sign-on for Dify's console.",
    long_about = "Routes like Dify's stock nginx and adds SSO to Dify's console.\n\n\
                  With no -c, runs on the embedded default configuration (Dify's stock routing, \
                  configured from NGINX_PORT, DIFY_API_UPSTREAM, DIFY_WEB_UPSTREAM, \
                  DIFY_PLUGIN_DAEMON_UPSTREAM, DIFY_WEBSOCKET_UPSTREAM, ...; see the README)."
)]
pub struct Cli {
    /// YAML configuration file (the embedded default when absent).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration and exit: 0 with a summary, 1 with every error found. Runs every
    /// check start-up runs, including, for sso.minter: builtin, connecting to Dify's PostgreSQL and
    /// Redis and checking Dify's schema.
    #[arg(short = 't', long = "test")]
    pub test: bool,

    /// With -t: skip the checks that connect to other servers (Dify's PostgreSQL and Redis for
    /// sso.minter: builtin); the summary names what was skipped.
    #[arg(long, requires = "test")]
    pub offline: bool,

    /// Run in the background (Pingora's daemon mode).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    /// Take the listening sockets over from a running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,

    /// Process log format; levels come from RUST_LOG.
    #[arg(long, value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

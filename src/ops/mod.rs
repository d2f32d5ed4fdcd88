//! Running the gateway: the Pingora server and its services, logs, the admin endpoints.

pub mod access_log;
pub mod admin;
pub mod drain;
pub mod idp_watch;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod scim;
pub mod server;
pub mod tls;
pub mod upstream_health;
pub mod version_watch;

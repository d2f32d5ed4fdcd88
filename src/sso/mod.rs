//! Single sign-on: the flow that takes over `/signin`, the SSO callback and logout (issue 3).
//!
//! [`SsoFlow`] is the entry point the proxy calls; [`protocol::SignInProtocol`] is the seam for
//! each sign-in protocol (one file each in `providers/`); the rest are the browser-facing
//! mechanisms every protocol shares.

pub mod allow;
mod app_access;
pub mod apps;
mod browser_cookies;
pub mod builtin_minter;
mod callback;
pub mod config;
mod config_protocols;
mod enforce;
pub mod failure;
mod flow;
pub mod idp_check;
pub mod minter;
mod origins;
mod pages;
pub mod protocol;
pub mod providers;
mod request;
pub mod return_target;
pub mod revocations;
pub mod session;
mod signer;
pub mod used_states;

pub use crate::secret::{Secret, mask};
pub use app_access::{AppCheck, AppForward, PassportCall};
/// The request-cookie readers, public for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub use browser_cookies::{flow_cookies, read as read_cookie};
pub use config::{ExchangeConfig, Protocol, SsoConfig};
pub use failure::SsoFailure;
pub use flow::SsoFlow;
pub use request::{BodyError, BufferedBody, RequestBody, SsoRequest, SsoResponse};

/// Module tests and their doubles (a mock IdP, a mock exchange, a scripted browser).
#[cfg(test)]
mod tests;

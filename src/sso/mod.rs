//! Single sign-on: the flow that takes over `/signin`, the SSO callback and logout (issue 3).
//!
//! [`SsoFlow`] is the entry point the proxy calls; [`protocol::SignInProtocol`] is the seam for
//! each sign-in protocol (one file each in `providers/`); the rest are the browser-facing
//! mechanisms every protocol shares.

mod browser_cookies;
mod callback;
pub mod config;
mod enforce;
pub mod failure;
mod flow;
mod pages;
pub mod protocol;
pub mod providers;
mod request;
pub mod return_target;
mod signer;

pub use crate::secret::{Secret, mask};
pub use config::{ExchangeConfig, Protocol, SsoConfig};
pub use failure::SsoFailure;
pub use flow::SsoFlow;
pub use request::{BodyError, BufferedBody, RequestBody, SsoRequest, SsoResponse};

#[cfg(test)]
mod config_tests;
#[cfg(test)]
mod flow_failure_tests;
#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod mock_exchange;
#[cfg(test)]
mod test_browser;

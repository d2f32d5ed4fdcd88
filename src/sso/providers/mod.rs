//! One file per sign-in protocol; [`build`] picks the configured one.

pub mod token_exchange;

use super::config::{Protocol, SsoConfig};
use super::protocol::SignInProtocol;

pub fn build(sso: &SsoConfig) -> Result<Box<dyn SignInProtocol>, String> {
    match sso.protocol {
        Protocol::TokenExchange => Ok(Box::new(token_exchange::TokenExchange::new(sso)?)),
    }
}

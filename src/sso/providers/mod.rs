//! One file per sign-in protocol; [`build`] picks the configured one.

pub mod cas;
pub mod http;
pub mod jose;
pub mod oauth2;
pub mod oidc;
pub mod token_exchange;

use super::config::{Protocol, SsoConfig};
use super::protocol::SignInProtocol;

pub fn build(sso: &SsoConfig) -> Result<Box<dyn SignInProtocol>, String> {
    match sso.protocol {
        Protocol::TokenExchange => Ok(Box::new(token_exchange::TokenExchange::new(sso)?)),
        Protocol::Oidc => Ok(Box::new(oidc::Oidc::new(sso)?)),
        Protocol::Cas => Ok(Box::new(cas::Cas::new(sso)?)),
        Protocol::Oauth2 => Ok(Box::new(oauth2::OAuth2::new(sso)?)),
    }
}

//! dify-gateway: a Pingora proxy in place of Dify's nginx, with single sign-on for Dify's console.
//!
//! A request's path through the code:
//! [`config`] (what to do) -> [`proxy`] (the Pingora hooks) -> [`routing`] (which upstream) or
//! [`sso`] (sign-in, callback, logout) -> [`dify`] (deliver a session the way Dify expects) ->
//! [`pages`] (error answers) ; [`ops`] runs the server, logs and the admin endpoints.

pub mod cli;
pub mod config;
pub mod dify;
pub mod ops;
pub mod pages;
pub mod proxy;
pub mod routing;
pub mod secret;
pub mod sso;
pub mod state;

//! The SSO flow's module tests, and the doubles they run against: a mock identity provider, a
//! mock token exchange and a scripted browser. Kept apart from the product files; the flow's
//! end-to-end tests through the binary are in the crate's `tests/`.

mod apps_tests;
mod browser_cookies_tests;
mod cas_oauth2_tests;
mod config_tests;
mod flow_failure_tests;
mod flow_tests;
mod mock_exchange;
mod mock_idp;
mod oidc_tests;
mod prop_tests;
mod test_browser;
mod test_keys;

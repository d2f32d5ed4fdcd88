//! Why a sign-in failed, in words for the user, with the HTTP status issue 3 item 5 assigns.
//! A failure is always answered with a page, never with a redirect back into the flow.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsoFailure {
    #[error("The sign-in server sent no sign-in token.")]
    MissingToken,
    #[error("The sign-in request was too large.")]
    BodyTooLarge,
    #[error("The sign-in request could not be read: {0}")]
    BadCallback(String),
    #[error("The account service could not be reached.")]
    ExchangeUnreachable,
    #[error("The account service did not answer in time.")]
    ExchangeTimeout,
    #[error(
        "The account service refused the sign-in (status {0}): the sign-in token may have expired or been used already."
    )]
    ExchangeRefused(u16),
    #[error("The account service answered with an error: {0}")]
    ExchangeFailed(String),
    #[error(
        "Sign-in was attempted too many times in a short while, so it was stopped to avoid an endless loop. Wait a minute, then try again."
    )]
    RedirectLoop,
    #[error("This sign-in method is not available: {0}")]
    NotAvailable(String),
    #[error(
        "This sign-in could not be matched to one started in this browser: it expired, was used already, or was started elsewhere."
    )]
    BadState,
    #[error(
        "This sign-in did not come from the company's sign-in page through a sign-in started in this browser, so it was refused. Start again with the sign-in link."
    )]
    UntrustedCallback,
    /// The shared store of used sign-in states (`sso.store: redis`) could not be asked.
    #[error(
        "The sign-in could not be checked right now ({0}). Nothing was changed; try again in a moment."
    )]
    StoreUnavailable(String),
    #[error("The sign-in server refused the sign-in: {0}")]
    ProviderRefused(String),
    #[error("The sign-in server could not be reached.")]
    ProviderUnreachable,
    #[error("The sign-in server answered with an error: {0}")]
    ProviderFailed(String),
    #[error("The sign-in server's proof of identity was not valid: {0}")]
    InvalidIdentity(String),
    #[error("Your account is not allowed to use this application: {0}")]
    NotAllowed(String),
    /// `sso.minter: builtin`: Dify's database or Redis could not be used; nothing was changed.
    #[error(
        "Dify's account store is not available right now ({0}). Nothing was changed; try again in a moment."
    )]
    DifyUnavailable(String),
}

impl SsoFailure {
    pub fn status(&self) -> u16 {
        match self {
            SsoFailure::MissingToken | SsoFailure::BadCallback(_) => 400,
            SsoFailure::BodyTooLarge => 413,
            SsoFailure::ExchangeUnreachable | SsoFailure::ExchangeFailed(_) => 502,
            SsoFailure::ExchangeTimeout => 504,
            SsoFailure::ExchangeRefused(_) => 401,
            SsoFailure::RedirectLoop => 429,
            SsoFailure::NotAvailable(_) => 501,
            SsoFailure::BadState | SsoFailure::UntrustedCallback => 400,
            SsoFailure::StoreUnavailable(_) => 503,
            SsoFailure::ProviderRefused(_) | SsoFailure::InvalidIdentity(_) => 401,
            SsoFailure::ProviderUnreachable | SsoFailure::ProviderFailed(_) => 502,
            SsoFailure::NotAllowed(_) => 403,
            SsoFailure::DifyUnavailable(_) => 503,
        }
    }

    /// A stable machine-readable code for the JSON answer and the logs.
    pub fn code(&self) -> &'static str {
        match self {
            SsoFailure::MissingToken => "sso_missing_token",
            SsoFailure::BodyTooLarge => "sso_body_too_large",
            SsoFailure::BadCallback(_) => "sso_bad_callback",
            SsoFailure::ExchangeUnreachable => "sso_exchange_unreachable",
            SsoFailure::ExchangeTimeout => "sso_exchange_timeout",
            SsoFailure::ExchangeRefused(_) => "sso_token_refused",
            SsoFailure::ExchangeFailed(_) => "sso_exchange_failed",
            SsoFailure::RedirectLoop => "sso_redirect_loop",
            SsoFailure::NotAvailable(_) => "sso_not_available",
            SsoFailure::BadState => "sso_bad_state",
            SsoFailure::UntrustedCallback => "sso_untrusted_callback",
            SsoFailure::StoreUnavailable(_) => "sso_store_unavailable",
            SsoFailure::ProviderRefused(_) => "sso_provider_refused",
            SsoFailure::ProviderUnreachable => "sso_provider_unreachable",
            SsoFailure::ProviderFailed(_) => "sso_provider_failed",
            SsoFailure::InvalidIdentity(_) => "sso_invalid_identity",
            SsoFailure::NotAllowed(_) => "sso_not_allowed",
            SsoFailure::DifyUnavailable(_) => "sso_dify_unavailable",
        }
    }
}

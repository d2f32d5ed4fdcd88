//! `sso.minter: builtin`: the gateway turns an authorized identity into a Dify session itself, as a
//! management service would (reference §5): the account and its workspace join in Dify's
//! PostgreSQL ([`crate::dify::store`]), the refresh token in Dify's Redis
//! ([`crate::dify::refresh_tokens`]), the access token signed with `dify.secret_key`. The CSRF
//! token and the cookies are the flow's usual handover.

use super::config::SsoConfig;
use super::failure::SsoFailure;
use super::minter::{MintContext, Minter};
use super::protocol::Identity;
use crate::dify::provisioning::Provisioning;
use crate::dify::refresh_tokens::RefreshTokens;
use crate::dify::store::{DifyStore, SignInRequest, StoreError};
use crate::dify::tokens::{mint_access_token_as, new_refresh_token};
use crate::dify::version::Compat;
use crate::dify::{DifyConfig, DifySession};
use std::time::{Duration, Instant};

/// The most database connections one gateway process opens.
const POOL_SIZE: usize = 16;
/// A sign-in that takes longer than this is abandoned (and rolled back).
const MINT_TIMEOUT: Duration = Duration::from_secs(15);

pub struct BuiltinMinter {
    store: DifyStore,
    refresh: RefreshTokens,
    provisioning: Provisioning,
    secret: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
    /// The `iss` follows the Dify version, which may be detected after this was built.
    compat: Compat,
}

impl BuiltinMinter {
    /// Connects nothing yet: the pools open on first use.
    pub fn new(sso: &SsoConfig, dify: &DifyConfig) -> Result<BuiltinMinter, String> {
        let secret = dify
            .secret_key()
            .ok_or("sso.minter: builtin needs dify.secret_key")?
            .to_string();
        Ok(BuiltinMinter {
            store: DifyStore::new(dify.database_url.expose(), POOL_SIZE)
                .map_err(|e| format!("dify.database_url: {e}"))?,
            refresh: RefreshTokens::new(
                crate::dify::redis_conn::dify_client(dify)?,
                key_prefix(dify),
            ),
            provisioning: sso.provisioning.resolve(dify.dataset_operator_enabled())?,
            secret,
            access_ttl: Duration::from_secs(dify.access_token_expire_minutes.saturating_mul(60)),
            refresh_ttl: refresh_ttl(dify),
            compat: Compat::from_config(dify),
        })
    }
}

/// What [`DifyConfig::redis_key`] puts before every key.
fn key_prefix(dify: &DifyConfig) -> &str {
    dify.redis_key_prefix.as_deref().unwrap_or("")
}

/// Dify's `REFRESH_TOKEN_EXPIRY`: `timedelta(days=REFRESH_TOKEN_EXPIRE_DAYS)`.
fn refresh_ttl(dify: &DifyConfig) -> Duration {
    Duration::from_secs(dify.refresh_token_expire_days.saturating_mul(86_400))
}

/// The new account's name: the identity's, else the email's local part (Dify requires one).
fn account_name<'a>(identity: &'a Identity, email: &'a str) -> &'a str {
    identity
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| email.split('@').next().unwrap_or(email))
}

#[async_trait::async_trait]
impl Minter for BuiltinMinter {
    async fn mint(
        &self,
        identity: &Identity,
        ctx: &MintContext<'_>,
    ) -> Result<DifySession, SsoFailure> {
        let started = Instant::now();
        // `sso.allow` already parsed and lower-cased it; lower-case again for any other caller.
        let email = identity
            .email
            .as_deref()
            .map(str::to_lowercase)
            .ok_or_else(|| {
                SsoFailure::NotAllowed("the sign-in server did not share an email address".into())
            })?;
        let request = SignInRequest {
            email: &email,
            name: account_name(identity, &email),
            subject: &identity.subject,
            groups: &identity.groups,
            client_ip: ctx.client_ip.map(|ip| ip.to_string()),
        };
        let refresh_token = new_refresh_token();
        let ttl = self.refresh_ttl;
        let store_refresh = |signed: crate::dify::store::SignedIn| {
            let token = refresh_token.clone();
            async move {
                self.refresh
                    .store(&token, &signed.account_id.to_string(), ttl)
                    .await
            }
        };
        let outcome = tokio::time::timeout(
            MINT_TIMEOUT,
            self.store
                .sign_in(&self.provisioning, &request, store_refresh),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Database(format!(
                "no answer within {}s",
                MINT_TIMEOUT.as_secs()
            )))
        });
        crate::ops::metrics::METRICS
            .sso_exchange_duration
            .observe(started.elapsed().as_secs_f64());
        let (signed, ()) = match outcome {
            Ok(done) => done,
            Err(StoreError::Refused(why)) => {
                log::warn!(trace_id = ctx.trace_id, email = email.as_str(); "builtin minter: sign-in refused: {why}");
                return Err(SsoFailure::NotAllowed(why));
            }
            Err(StoreError::Database(e)) => {
                log::error!(trace_id = ctx.trace_id; "builtin minter: Dify's database failed, nothing written: {e}");
                return Err(SsoFailure::DifyUnavailable(
                    "its database could not be used".into(),
                ));
            }
            Err(StoreError::Before(e)) => {
                log::error!(trace_id = ctx.trace_id; "builtin minter: Dify's Redis failed, nothing written: {e}");
                return Err(SsoFailure::DifyUnavailable(
                    "its Redis could not be used".into(),
                ));
            }
        };
        let account_id = signed.account_id.to_string();
        log::info!(trace_id = ctx.trace_id, protocol = ctx.protocol, user_id = account_id.as_str(),
            created = signed.created, joined = signed.joined, elapsed_ms = started.elapsed().as_millis() as u64;
            "builtin minter: Dify session minted");
        Ok(DifySession {
            access_token: mint_access_token_as(
                &self.secret,
                &account_id,
                self.access_ttl,
                self.compat.edition(),
            ),
            refresh_token,
            // The handover mints it (same key, access token lifetime), as for every minter.
            csrf_token: None,
            owner: Default::default(),
        })
    }
}

/// The startup check of `sso.minter: builtin`: Dify's tables and columns, the workspace, Redis.
/// Returns a one-line summary, or the precise problem.
pub async fn preflight(sso: &SsoConfig, dify: &DifyConfig) -> Result<String, String> {
    let prov = sso.provisioning.resolve(dify.dataset_operator_enabled())?;
    let schema = crate::dify::store::check_database(dify.database_url.expose(), &prov).await?;
    let workspace = &schema.workspace;
    let redis = RefreshTokens::new(
        crate::dify::redis_conn::dify_client(dify)?,
        key_prefix(dify),
    );
    tokio::time::timeout(Duration::from_secs(10), redis.ping())
        .await
        .map_err(|_| "dify.redis_url: Redis did not answer within 10s".to_string())?
        .map_err(|e| format!("dify.redis_url: {e}"))?;
    let mut summary = format!(
        "Dify's database has the tables sso.minter: builtin needs, {workspace} exists, Redis answers"
    );
    if schema.normalized_email {
        summary.push_str(", accounts.normalized_email is filled (Dify 1.17 schema)");
    }
    // The schema the Dify version implies, against the one the database has.
    if let (Some(v), _) = Compat::from_config(dify).version()
        && v.has_normalized_email() != schema.normalized_email
    {
        let warning = if schema.normalized_email {
            format!(
                "Dify {v} predates accounts.normalized_email, yet the database has it; it is filled anyway"
            )
        } else {
            format!(
                "Dify {v} keeps accounts.normalized_email, but this database lacks it: have Dify's migrations run (flask upgrade-db)?"
            )
        };
        log::warn!("sso.minter builtin: {warning}");
        summary.push_str(&format!("; note: {warning}"));
    }
    Ok(summary)
}

/// The `sso` section when it signs in with the builtin minter.
pub fn in_use(sso: Option<&SsoConfig>) -> Option<&SsoConfig> {
    sso.filter(|s| {
        s.is_enabled()
            && s.minter == super::config::MinterKind::Builtin
            && s.protocol != super::Protocol::TokenExchange
    })
}

/// Runs [`preflight`] when the configuration uses the builtin minter, on a small runtime of its
/// own (before Pingora starts its threads). Ok(None) when there is nothing to check.
pub fn preflight_blocking(
    sso: Option<&SsoConfig>,
    dify: &DifyConfig,
) -> Result<Option<String>, String> {
    let Some(sso) = in_use(sso) else {
        return Ok(None);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the startup check: {e}"))?;
    rt.block_on(preflight(sso, dify)).map(Some)
}

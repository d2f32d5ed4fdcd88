//! Dify's PostgreSQL, as the builtin minter uses it (reference §5, checked against Dify's
//! `api/models/account.py`): find or create the account, link it, join it to the workspace and
//! record the login, all in one transaction.
//!
//! Tables and columns used (types as Dify's models declare them; ids are `uuid`, timestamps
//! `timestamp without time zone` holding UTC, as Dify's `naive_utc_now()` writes them):
//! - `accounts`: id, name, email, interface_language, interface_theme, timezone, status,
//!   initialized_at, last_login_at, last_login_ip, last_active_at, created_at, updated_at
//! - `tenants`: id, name, status (`normal` or `archive`)
//! - `tenant_account_joins`: id, tenant_id, account_id, role, current, created_at, updated_at
//! - `account_integrates`: id, account_id, provider (varchar(16)), open_id, encrypted_token
//!   (NOT NULL; Dify's own OAuth login writes ""), created_at, updated_at
//!
//! - `accounts.normalized_email` (Dify 1.17 and later, nullable, indexed, not unique), only when
//!   the table has it: filled on every account the minter creates (and on an existing one that
//!   lacks it), and matched when looking a person up ([`normalize_email`]). Whether the column
//!   exists is looked up once and again whenever the detected Dify version changes.
//!
//! Dify's schema has no unique constraint on `accounts.email`, so concurrent first sign-ins of
//! one user are serialized with a transaction-scoped advisory lock on the lower-cased email (the
//! normalized one where the column exists, so `Jane.Doe+x@gmail.com` and `janedoe@gmail.com` wait
//! for each other), and on the provider's subject when linking; then find-or-create runs under it.

use super::pg_tls::{Check, TlsSettings};
use super::provisioning::{Provisioning, RoleSync};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// Advisory lock namespaces (first key of `pg_advisory_xact_lock(int, int)`): "DGEM" and "DGSU".
const LOCK_EMAIL: i32 = 0x4447_454d;
const LOCK_SUBJECT: i32 = 0x4447_5355;

/// Naive UTC "now", as Dify writes its timestamps.
pub(super) const NOW: &str = "(now() AT TIME ZONE 'UTC')";

/// Columns the builtin minter reads or writes, with the type Dify's models give them.
pub const REQUIRED_COLUMNS: &[(&str, &[(&str, &str)])] = &[
    (
        "accounts",
        &[
            ("id", "uuid"),
            ("name", "character varying"),
            ("email", "character varying"),
            ("interface_language", "character varying"),
            ("interface_theme", "character varying"),
            ("timezone", "character varying"),
            ("status", "character varying"),
            ("initialized_at", "timestamp without time zone"),
            ("last_login_at", "timestamp without time zone"),
            ("last_login_ip", "character varying"),
            ("last_active_at", "timestamp without time zone"),
            ("created_at", "timestamp without time zone"),
            ("updated_at", "timestamp without time zone"),
        ],
    ),
    (
        "tenants",
        &[
            ("id", "uuid"),
            ("name", "character varying"),
            ("status", "character varying"),
        ],
    ),
    (
        "tenant_account_joins",
        &[
            ("id", "uuid"),
            ("tenant_id", "uuid"),
            ("account_id", "uuid"),
            ("role", "character varying"),
            ("current", "boolean"),
            ("created_at", "timestamp without time zone"),
            ("updated_at", "timestamp without time zone"),
        ],
    ),
    (
        "account_integrates",
        &[
            ("id", "uuid"),
            ("account_id", "uuid"),
            ("provider", "character varying"),
            ("open_id", "character varying"),
            ("encrypted_token", "character varying"),
            ("created_at", "timestamp without time zone"),
            ("updated_at", "timestamp without time zone"),
        ],
    ),
];

/// Dify's `accounts.normalized_email` (Dify 1.17; langgenius/dify pull request 41249, "normalize
/// Gmail registration emails", which adds the column with "Gmail dot, `+alias`, and
/// `googlemail.com` normalization"; Dify's own sign-up refuses an account whose normalized email
/// is taken, while login keeps matching on `email`). The rule: the address lower-cased and
/// trimmed; for `gmail.com` and `googlemail.com` the local part loses everything from the first
/// `+` and every dot, and the domain becomes `gmail.com`. Every other address is only
/// lower-cased. The domain is what follows the last `@`.
/// (The stored copies of Dify's source that could be searched predate 1.17; the rule is the
/// pull request's description together with reference §9, which agree.)
pub fn normalize_email(email: &str) -> String {
    let lower = email.trim().to_lowercase();
    match lower.rsplit_once('@') {
        Some((local, "gmail.com" | "googlemail.com")) => {
            let local = local.split('+').next().unwrap_or_default().replace('.', "");
            format!("{local}@gmail.com")
        }
        _ => lower,
    }
}

/// Who is signing in, as the store needs it.
#[derive(Debug, Clone)]
pub struct SignInRequest<'a> {
    /// Lower-cased.
    pub email: &'a str,
    /// The new account's name (at most 255 characters are kept).
    pub name: &'a str,
    /// The identity's stable id at its issuer (`account_integrates.open_id`).
    pub subject: &'a str,
    pub groups: &'a [String],
    /// The client address as the gateway saw it (`accounts.last_login_ip`).
    pub client_ip: Option<String>,
}

/// What the transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    pub account_id: Uuid,
    pub created: bool,
    /// A workspace join was added (new account, or one whose join was missing).
    pub joined: bool,
    /// `role_sync: on_sign_in` changed the join's role: (old, new).
    pub role_change: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The account may not sign in (banned, closed, unknown without `create_accounts`).
    #[error("{0}")]
    Refused(String),
    /// The database could not be used; nothing was written.
    #[error("Dify's database: {0}")]
    Database(String),
    /// The step run before commit failed (e.g. Redis); nothing was written.
    #[error("{0}")]
    Before(String),
}

/// The first account (id, status, email) a look-up query returns.
async fn find_account(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<(Uuid, String, String)>, StoreError> {
    let q = tx.prepare_cached(sql).await.map_err(db_err)?;
    let row = tx.query_opt(&q, params).await.map_err(db_err)?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Whether `accounts.normalized_email` exists, in the schemas the connection sees.
const HAS_NORMALIZED_EMAIL: &str = "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
     WHERE table_schema = ANY (current_schemas(false)) AND table_name = 'accounts' AND column_name = 'normalized_email')";

/// [`DifyStore`]'s memory of the schema: 0 unknown, else `epoch << 2 | 1` (without the column) or
/// `epoch << 2 | 2` (with it), `epoch` being the detected Dify version it was seen under.
const SCHEMA_WITHOUT: u64 = 1;
const SCHEMA_WITH: u64 = 2;

pub(super) fn db_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Database(describe_pg(&e))
}

pub(super) fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    let detail = match &e {
        deadpool_postgres::PoolError::Backend(pg) => describe_pg(pg),
        other => other.to_string(),
    };
    StoreError::Database(format!("no connection ({detail})"))
}

/// A pool of connections to Dify's database.
pub struct DifyStore {
    pub(super) pool: Pool,
    schema: AtomicU64,
}

/// `dify.database_url` ready to connect: tokio-postgres's settings and the TLS connector that
/// gives its `sslmode` libpq's meaning ([`super::pg_tls`]).
#[derive(Clone)]
pub struct Database {
    pub config: tokio_postgres::Config,
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
    pub settings: TlsSettings,
}

impl Database {
    /// A connection failure, with what the `sslmode` in force checks when the certificate was the
    /// reason.
    pub fn explain(&self, e: &tokio_postgres::Error) -> String {
        let text = describe_pg(e);
        if !text.contains("invalid peer certificate") {
            return text;
        }
        let what = match self.settings.check() {
            Check::Full => {
                "checks the server's certificate chain against sslrootcert (the public web roots without one) and its host name"
            }
            Check::Chain => {
                "checks the server's certificate chain against sslrootcert (the public web roots without one)"
            }
            Check::None => "checks no certificate",
        };
        format!(
            "{text}; sslmode={} {what} (see docs/builtin-minter.md)",
            self.settings.mode.name()
        )
    }
}

/// Parses `dify.database_url` (a `postgresql://` URL or `key=value` pairs) and reads its
/// `sslrootcert`.
pub fn parse_url(url: &str) -> Result<Database, String> {
    let (rest, settings) = super::pg_tls::split_tls(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
        format!("expected a PostgreSQL URL such as postgresql://user:password@db:5432/dify ({e})")
    })?;
    config.ssl_mode(settings.postgres_mode());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name("dify-gateway");
    }
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(settings.client_config()?);
    Ok(Database {
        config,
        tls,
        settings,
    })
}

impl DifyStore {
    /// Builds the pool; connects on first use (safe outside a runtime).
    pub fn new(url: &str, max_connections: usize) -> Result<DifyStore, String> {
        let db = parse_url(url)?;
        let manager = Manager::from_config(
            db.config,
            db.tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Some(Duration::from_secs(5));
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| format!("dify.database_url: {e}"))?;
        Ok(DifyStore {
            pool,
            schema: AtomicU64::new(0),
        })
    }

    /// Finds or creates the account, links and joins it and records the login; runs `before_commit`
    /// (storing the refresh token) last and commits only when it succeeded. Any failure leaves the
    /// database as it was.
    pub async fn sign_in<T, F, Fut>(
        &self,
        prov: &Provisioning,
        req: &SignInRequest<'_>,
        before_commit: F,
    ) -> Result<(SignedIn, T), StoreError>
    where
        F: FnOnce(SignedIn) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let result = self.sign_in_once(prov, req, before_commit).await;
        if matches!(result, Err(StoreError::Database(_))) {
            // The schema may have changed under us (Dify migrated): look again next time.
            self.schema.store(0, Ordering::Release);
        }
        result
    }

    /// Whether Dify's `accounts` has `normalized_email`, remembered until the detected Dify
    /// version changes (a Dify upgrade runs its migrations) or a statement fails.
    async fn has_normalized_email(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<bool, StoreError> {
        let epoch = super::version::DETECTED.epoch();
        let known = self.schema.load(Ordering::Acquire);
        if known != 0 && known >> 2 == epoch {
            return Ok(known & 3 == SCHEMA_WITH);
        }
        let q = tx
            .prepare_cached(HAS_NORMALIZED_EMAIL)
            .await
            .map_err(db_err)?;
        let has: bool = tx.query_one(&q, &[]).await.map_err(db_err)?.get(0);
        let state = if has { SCHEMA_WITH } else { SCHEMA_WITHOUT };
        self.schema.store((epoch << 2) | state, Ordering::Release);
        Ok(has)
    }

    async fn sign_in_once<T, F, Fut>(
        &self,
        prov: &Provisioning,
        req: &SignInRequest<'_>,
        before_commit: F,
    ) -> Result<(SignedIn, T), StoreError>
    where
        F: FnOnce(SignedIn) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(db_err)?;
        // Dify 1.17's column, when this Dify has it; `None` leaves every statement as before.
        let normalized = self
            .has_normalized_email(&tx)
            .await?
            .then(|| normalize_email(req.email));
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1::int4, hashtext($2::text))")
            .await
            .map_err(db_err)?;
        tx.execute(
            &lock,
            &[&LOCK_EMAIL, &normalized.as_deref().unwrap_or(req.email)],
        )
        .await
        .map_err(db_err)?;
        let link = prov
            .integrate_provider
            .as_deref()
            .map(|p| (p, format!("{p}\n{}", req.subject)));
        if let Some((_, key)) = &link {
            tx.execute(&lock, &[&LOCK_SUBJECT, key])
                .await
                .map_err(db_err)?;
        }

        // Like Dify's own OAuth login: the provider's link first, then the email (exact, then
        // case-insensitive for addresses stored with capitals), then, where Dify keeps one, the
        // normalized email: the person Dify knows as Jane.Doe+x@gmail.com is not created again as
        // janedoe@gmail.com (Dify 1.17 would refuse to create that second account itself).
        let mut found: Option<(Uuid, String, String)> = None;
        if let Some((provider, _)) = &link {
            found = find_account(
                &tx,
                "SELECT a.id, a.status, a.email FROM account_integrates i JOIN accounts a ON a.id = i.account_id \
                 WHERE i.provider = $1 AND i.open_id = $2 LIMIT 1",
                &[provider, &req.subject],
            )
            .await?;
        }
        for by_email in [
            "SELECT id, status, email FROM accounts WHERE email = $1 ORDER BY created_at LIMIT 1",
            "SELECT id, status, email FROM accounts WHERE lower(email) = $1 ORDER BY created_at LIMIT 1",
        ] {
            if found.is_none() {
                found = find_account(&tx, by_email, &[&req.email]).await?;
            }
        }
        if let Some(n) = &normalized
            && found.is_none()
        {
            found = find_account(
                &tx,
                "SELECT id, status, email FROM accounts WHERE normalized_email = $1 ORDER BY created_at LIMIT 1",
                &[n],
            )
            .await?;
        }

        let ip = req.client_ip.as_deref();
        let (account_id, created) = match found {
            Some((id, status, email)) => {
                match status.as_str() {
                    "banned" => {
                        return Err(StoreError::Refused(
                            "this Dify account is banned; ask a Dify administrator".into(),
                        ));
                    }
                    "closed" => {
                        return Err(StoreError::Refused(
                            "this Dify account is closed; ask a Dify administrator".into(),
                        ));
                    }
                    _ => {}
                }
                // Dify's login activates a pending (invited) account; so does a sign-in here.
                let q = tx
                    .prepare_cached(&format!(
                        "UPDATE accounts SET last_login_at = {NOW}, last_login_ip = coalesce($2, last_login_ip), \
                         last_active_at = {NOW}, updated_at = {NOW}, \
                         status = CASE WHEN status IN ('pending', 'uninitialized') THEN 'active' ELSE status END, \
                         initialized_at = coalesce(initialized_at, {NOW}) WHERE id = $1"
                    ))
                    .await
                    .map_err(db_err)?;
                tx.execute(&q, &[&id, &ip]).await.map_err(db_err)?;
                if normalized.is_some() {
                    // An account made before Dify 1.17 (or by an older gateway) without the column
                    // filled is invisible to Dify's own collision check: fill it from its email.
                    let q = tx
                        .prepare_cached(
                            "UPDATE accounts SET normalized_email = $2 WHERE id = $1 AND normalized_email IS NULL",
                        )
                        .await
                        .map_err(db_err)?;
                    tx.execute(&q, &[&id, &normalize_email(&email)])
                        .await
                        .map_err(db_err)?;
                }
                (id, false)
            }
            None if !prov.create_accounts => {
                return Err(StoreError::Refused(format!(
                    "there is no Dify account for {} and sso.provisioning.create_accounts is off; ask a Dify administrator to invite you",
                    req.email
                )));
            }
            None => {
                let id = Uuid::new_v4();
                let name: String = req.name.chars().take(255).collect();
                let q = tx
                    .prepare_cached(&format!(
                        "INSERT INTO accounts (id, name, email, interface_language, interface_theme, timezone, status, \
                         initialized_at, last_login_at, last_login_ip, last_active_at, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, 'light', $5, 'active', {NOW}, {NOW}, $6, {NOW}, {NOW}, {NOW})"
                    ))
                    .await
                    .map_err(db_err)?;
                tx.execute(
                    &q,
                    &[
                        &id,
                        &name,
                        &req.email,
                        &prov.interface_language,
                        &prov.timezone,
                        &ip,
                    ],
                )
                .await
                .map_err(db_err)?;
                if let Some(n) = &normalized {
                    let q = tx
                        .prepare_cached("UPDATE accounts SET normalized_email = $2 WHERE id = $1")
                        .await
                        .map_err(db_err)?;
                    tx.execute(&q, &[&id, n]).await.map_err(db_err)?;
                }
                (id, true)
            }
        };

        if let Some((provider, _)) = &link {
            // Dify's link_account_integrate: one link per (account, provider), updated in place.
            let q = tx
                .prepare_cached(&format!(
                    "UPDATE account_integrates SET open_id = $3, updated_at = {NOW} \
                     WHERE account_id = $1 AND provider = $2"
                ))
                .await
                .map_err(db_err)?;
            let updated = tx
                .execute(&q, &[&account_id, provider, &req.subject])
                .await
                .map_err(db_err)?;
            if updated == 0 {
                let q = tx
                    .prepare_cached(&format!(
                        "INSERT INTO account_integrates (id, account_id, provider, open_id, encrypted_token, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, '', {NOW}, {NOW})"
                    ))
                    .await
                    .map_err(db_err)?;
                tx.execute(&q, &[&Uuid::new_v4(), &account_id, provider, &req.subject])
                    .await
                    .map_err(db_err)?;
            }
        }

        let q = tx
            .prepare_cached(
                "SELECT id, role FROM tenant_account_joins WHERE tenant_id = $1 AND account_id = $2",
            )
            .await
            .map_err(db_err)?;
        let join: Option<(Uuid, String)> = tx
            .query_opt(&q, &[&prov.workspace_id, &account_id])
            .await
            .map_err(db_err)?
            .map(|r| (r.get(0), r.get(1)));
        let role_change = match &join {
            Some((join_id, current)) if prov.role_sync == RoleSync::OnSignIn => {
                sync_role(&tx, prov, *join_id, account_id, current, req.groups).await?
            }
            _ => None,
        };
        let q = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM tenant_account_joins WHERE account_id = $1 AND current)",
            )
            .await
            .map_err(db_err)?;
        let has_current: bool = tx
            .query_one(&q, &[&account_id])
            .await
            .map_err(db_err)?
            .get(0);
        let joined = join.is_none();
        match join {
            None => {
                let q = tx
                    .prepare_cached("SELECT status FROM tenants WHERE id = $1")
                    .await
                    .map_err(db_err)?;
                if tx
                    .query_opt(&q, &[&prov.workspace_id])
                    .await
                    .map_err(db_err)?
                    .is_none()
                {
                    return Err(StoreError::Database(format!(
                        "the workspace sso.provisioning.workspace_id {} does not exist in tenants",
                        prov.workspace_id
                    )));
                }
                let role = prov.role_for(req.groups);
                let q = tx
                    .prepare_cached(&format!(
                        "INSERT INTO tenant_account_joins (id, tenant_id, account_id, role, current, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, {NOW}, {NOW})"
                    ))
                    .await
                    .map_err(db_err)?;
                tx.execute(
                    &q,
                    &[
                        &Uuid::new_v4(),
                        &prov.workspace_id,
                        &account_id,
                        &role.as_str(),
                        &!has_current,
                    ],
                )
                .await
                .map_err(db_err)?;
            }
            Some((join_id, _)) if !has_current => {
                let q = tx
                    .prepare_cached(&format!(
                        "UPDATE tenant_account_joins SET current = true, updated_at = {NOW} WHERE id = $1"
                    ))
                    .await
                    .map_err(db_err)?;
                tx.execute(&q, &[&join_id]).await.map_err(db_err)?;
            }
            Some(_) => {}
        }

        let signed_in = SignedIn {
            account_id,
            created,
            joined,
            role_change,
        };
        let extra = before_commit(signed_in.clone())
            .await
            .map_err(StoreError::Before)?;
        tx.commit().await.map_err(db_err)?;
        Ok((signed_in, extra))
    }
}

/// What the start-up check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaReport {
    /// `workspace "<name>"`.
    pub workspace: String,
    /// Dify 1.17's `accounts.normalized_email` is there (and will be filled).
    pub normalized_email: bool,
}

/// Startup check: the tables and columns exist with Dify's types, and the workspace exists.
/// Opens its own connection (not the pool), so it can run in a throwaway runtime.
pub async fn check_database(url: &str, prov: &Provisioning) -> Result<SchemaReport, String> {
    let db = parse_url(url).map_err(|e| format!("dify.database_url: {e}"))?;
    let (client, connection) = db.config.connect(db.tls.clone()).await.map_err(|e| {
        format!(
            "dify.database_url: cannot connect to Dify's database ({})",
            db.explain(&e)
        )
    })?;
    let driver = tokio::spawn(connection);
    let result = async {
        let rows = client
            .query(
                "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = ANY (current_schemas(false)) AND table_name = ANY ($1)",
                &[&REQUIRED_COLUMNS.iter().map(|(t, _)| *t).collect::<Vec<_>>()],
            )
            .await
            .map_err(|e| format!("dify.database_url: cannot read Dify's schema ({})", describe_pg(&e)))?;
        let have: Vec<(String, String, String)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let normalized_email = match have
            .iter()
            .find(|(t, c, _)| t == "accounts" && c == "normalized_email")
        {
            None => false,
            Some((_, _, ty)) if ty == "character varying" => true,
            Some((_, _, ty)) => {
                return Err(format!(
                    "Dify's column accounts.normalized_email is {ty}, expected character varying (Dify 1.17): \
                     this Dify version's schema is not supported by sso.minter: builtin"
                ));
            }
        };
        for (table, columns) in REQUIRED_COLUMNS {
            if *table == "account_integrates" && prov.integrate_provider.is_none() {
                continue;
            }
            if !have.iter().any(|(t, _, _)| t == table) {
                return Err(format!(
                    "Dify's database has no table {table}: is dify.database_url Dify's database (DB_DATABASE, usually `dify`), \
                     and has Dify run its migrations? sso.minter: builtin supports Dify 1.x schemas"
                ));
            }
            for (column, ty) in *columns {
                match have.iter().find(|(t, c, _)| t == table && c == column) {
                    None => {
                        return Err(format!(
                            "Dify's database lacks column {table}.{column} ({ty}): this Dify version's schema is not supported by sso.minter: builtin \
                             (supported: Dify 1.x)"
                        ));
                    }
                    Some((_, _, actual)) if actual != ty => {
                        return Err(format!(
                            "Dify's column {table}.{column} is {actual}, expected {ty}: this Dify version's schema is not supported by sso.minter: builtin"
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        let row = client
            .query_opt(
                "SELECT name::text, status::text FROM tenants WHERE id = $1",
                &[&prov.workspace_id],
            )
            .await
            .map_err(|e| format!("dify.database_url: cannot read tenants ({})", describe_pg(&e)))?;
        match row {
            None => Err(format!(
                "sso.provisioning.workspace_id: there is no workspace {} in Dify's tenants table \
                 (find the id with: SELECT id, name FROM tenants;)",
                prov.workspace_id
            )),
            Some(r) if r.get::<_, String>(1) != "normal" => Err(format!(
                "sso.provisioning.workspace_id: the workspace {} ({:?}) has status {:?}, expected normal",
                prov.workspace_id,
                r.get::<_, String>(0),
                r.get::<_, String>(1)
            )),
            Some(r) => Ok(SchemaReport {
                workspace: format!("workspace {:?}", r.get::<_, String>(0)),
                normalized_email,
            }),
        }
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

/// A PostgreSQL error with its server message when there is one.
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

/// `role_sync: on_sign_in`: the join's role made what `role_map` says now. The workspace owner is
/// never touched (Dify allows one, and only the owner hands it over), and the last admin is not
/// demoted: a workspace without an admin could only be repaired by its owner. Returns
/// `(old, new)` when the role changed.
async fn sync_role(
    tx: &deadpool_postgres::Transaction<'_>,
    prov: &Provisioning,
    join_id: Uuid,
    account_id: Uuid,
    current: &str,
    groups: &[String],
) -> Result<Option<(String, String)>, StoreError> {
    let wanted = prov.role_for(groups).as_str();
    if current == wanted || current == "owner" {
        return Ok(None);
    }
    if current == "admin" {
        // Locks the workspace's admin joins, so two demotions at once cannot both see another admin.
        let q = tx
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM tenant_account_joins \
                 WHERE tenant_id = $1 AND role = 'admin' AND account_id <> $2 FOR UPDATE) AS admins",
            )
            .await
            .map_err(db_err)?;
        let others: i64 = tx
            .query_one(&q, &[&prov.workspace_id, &account_id])
            .await
            .map_err(db_err)?
            .get(0);
        if others == 0 {
            log::warn!(account_id = account_id.to_string().as_str(), role = current, wanted = wanted;
                "role sync: not demoting the workspace's last admin");
            return Ok(None);
        }
    }
    let q = tx
        .prepare_cached(&format!(
            "UPDATE tenant_account_joins SET role = $2, updated_at = {NOW} WHERE id = $1"
        ))
        .await
        .map_err(db_err)?;
    tx.execute(&q, &[&join_id, &wanted]).await.map_err(db_err)?;
    log::info!(account_id = account_id.to_string().as_str(), old_role = current, new_role = wanted;
        "role sync: role changed to follow the directory");
    Ok(Some((current.to_string(), wanted.to_string())))
}

#[cfg(test)]
mod tests {
    use super::normalize_email;

    #[test]
    fn normalized_email_follows_dify() {
        for (email, normalized) in [
            ("Jane.Doe+x@gmail.com", "janedoe@gmail.com"),
            ("janedoe@gmail.com", "janedoe@gmail.com"),
            ("j.a.n.e.doe@GoogleMail.com", "janedoe@gmail.com"),
            ("jane+a+b@gmail.com", "jane@gmail.com"),
            ("+x@gmail.com", "@gmail.com"),
            (" Jane.Doe+x@Example.COM ", "jane.doe+x@example.com"),
            ("jane.doe@gmail.com.evil", "jane.doe@gmail.com.evil"),
            ("jane.doe@mail.gmail.com", "jane.doe@mail.gmail.com"),
            ("not-an-email", "not-an-email"),
            ("\"a@b\"@gmail.com", "\"a@b\"@gmail.com"),
        ] {
            assert_eq!(normalize_email(email), normalized, "{email}");
        }
    }
}

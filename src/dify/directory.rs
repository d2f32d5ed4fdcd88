//! Dify's accounts as a directory sees them (SCIM): the members of the gateway's workspace, found
//! by id or email, deactivated (`status = banned`, which Dify refuses when it loads an account)
//! and reactivated. Accounts are never created or deleted here.

use super::store::{DifyStore, NOW, StoreError, db_err, pool_err};
use uuid::Uuid;

/// One account, as SCIM shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    /// Not banned or closed.
    pub active: bool,
}

const MEMBER: &str = "SELECT a.id, a.email, a.name, a.status FROM accounts a \
     JOIN tenant_account_joins j ON j.account_id = a.id AND j.tenant_id = $1";

fn member(row: &tokio_postgres::Row) -> Member {
    let status: String = row.get(3);
    Member {
        id: row.get(0),
        email: row.get(1),
        name: row.get(2),
        active: status != "banned" && status != "closed",
    }
}

impl DifyStore {
    /// Members of `workspace`, optionally only the one with this email (case-insensitive), in
    /// creation order: (the page from `start` (0-based), the total).
    pub async fn members(
        &self,
        workspace: Uuid,
        email: Option<&str>,
        start: i64,
        count: i64,
    ) -> Result<(Vec<Member>, i64), StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let email = email.map(str::to_lowercase);
        let filter = "WHERE ($2::text IS NULL OR lower(a.email) = $2)";
        let total: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM ({MEMBER} {filter}) AS m"),
                &[&workspace, &email],
            )
            .await
            .map_err(db_err)?
            .get(0);
        let rows = client
            .query(
                &format!("{MEMBER} {filter} ORDER BY a.created_at, a.id OFFSET $3 LIMIT $4"),
                &[&workspace, &email, &start, &count],
            )
            .await
            .map_err(db_err)?;
        Ok((rows.iter().map(member).collect(), total))
    }

    pub async fn member(&self, workspace: Uuid, id: Uuid) -> Result<Option<Member>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_opt(&format!("{MEMBER} WHERE a.id = $2"), &[&workspace, &id])
            .await
            .map_err(db_err)?;
        Ok(row.as_ref().map(member))
    }

    /// Deactivates (`banned`) or reactivates (`active`) a member; a closed account stays closed.
    pub async fn set_active(&self, id: Uuid, active: bool) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let (to, from) = if active {
            ("active", "banned")
        } else {
            ("banned", "closed")
        };
        let guard = if active {
            "status = $3"
        } else {
            "status <> $3"
        };
        let sql = format!(
            "UPDATE accounts SET status = $1, updated_at = {NOW} WHERE id = $2 AND {guard}"
        );
        client
            .execute(&sql, &[&to, &id, &from])
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

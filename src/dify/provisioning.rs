//! `sso.provisioning`: how the builtin minter (`sso.minter: builtin`) creates and joins Dify accounts
//! (reference §5). Only used with the builtin minter.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A workspace role the gateway may give. Dify's `owner` is never one of them: a workspace has
/// exactly one owner, created by Dify itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    DatasetOperator,
    Normal,
    Editor,
    Admin,
}

impl Role {
    /// The value of `tenant_account_joins.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::DatasetOperator => "dataset_operator",
            Role::Normal => "normal",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "normal" => Ok(Role::Normal),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            "dataset_operator" => Ok(Role::DatasetOperator),
            "owner" => Err("owner is never given by the gateway (a Dify workspace has one owner, created by Dify); expected normal, editor, admin or dataset_operator".into()),
            other => Err(format!(
                "expected normal, editor, admin or dataset_operator, got {other:?}"
            )),
        }
    }
}

/// Dify's `account_integrates.provider` is `varchar(16)`.
pub const MAX_PROVIDER_LEN: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningConfig {
    /// Create a Dify account for an identity whose email Dify does not know.
    pub create_accounts: bool,
    /// The workspace (`tenants.id`) every signed-in account is joined to.
    pub workspace_id: String,
    /// Role of a new join when no `role_map` group matches.
    pub default_role: String,
    /// Identity group -> role of a new join; the highest matching role wins.
    pub role_map: BTreeMap<String, String>,
    /// New accounts' `interface_language` and `timezone`.
    pub interface_language: String,
    pub timezone: String,
    /// When set, `account_integrates` links the account to the identity (`provider` = this,
    /// `open_id` = the identity's subject), and the link is looked up before the email.
    pub integrate_provider: String,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        ProvisioningConfig {
            create_accounts: true,
            workspace_id: String::new(),
            default_role: "normal".into(),
            role_map: BTreeMap::new(),
            interface_language: "en-US".into(),
            timezone: "UTC".into(),
            integrate_provider: String::new(),
        }
    }
}

/// [`ProvisioningConfig`] checked and ready to use.
#[derive(Debug, Clone)]
pub struct Provisioning {
    pub create_accounts: bool,
    pub workspace_id: uuid::Uuid,
    pub default_role: Role,
    pub role_map: BTreeMap<String, Role>,
    pub interface_language: String,
    pub timezone: String,
    pub integrate_provider: Option<String>,
}

impl Provisioning {
    /// The role of a new join for an identity in `groups`.
    pub fn role_for(&self, groups: &[String]) -> Role {
        groups
            .iter()
            .filter_map(|g| self.role_map.get(g))
            .copied()
            .max()
            .unwrap_or(self.default_role)
    }
}

impl ProvisioningConfig {
    /// Every problem, as (field, message).
    pub fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if self.workspace_id.trim().is_empty() {
            bad(
                "sso.provisioning.workspace_id",
                "expected the id of an existing Dify workspace (tenants.id, a UUID) that signed-in users join".into(),
            );
        } else if uuid::Uuid::parse_str(self.workspace_id.trim()).is_err() {
            bad(
                "sso.provisioning.workspace_id",
                format!("expected a UUID (tenants.id), got {:?}", self.workspace_id),
            );
        }
        if let Err(e) = Role::parse(&self.default_role) {
            bad("sso.provisioning.default_role", e);
        }
        for (group, role) in &self.role_map {
            if let Err(e) = Role::parse(role) {
                bad(&format!("sso.provisioning.role_map.{group}"), e);
            }
        }
        for (field, value, example) in [
            (
                "sso.provisioning.interface_language",
                &self.interface_language,
                "en-US",
            ),
            ("sso.provisioning.timezone", &self.timezone, "UTC"),
        ] {
            if value.trim().is_empty() || value.len() > 255 {
                bad(
                    field,
                    format!("expected a value such as {example} (at most 255 characters)"),
                );
            }
        }
        let p = &self.integrate_provider;
        if p.len() > MAX_PROVIDER_LEN || p.chars().any(|c| c.is_control()) {
            bad(
                "sso.provisioning.integrate_provider",
                format!(
                    "expected empty or a name of at most {MAX_PROVIDER_LEN} characters (Dify's account_integrates.provider is varchar(16)), got {p:?}"
                ),
            );
        }
    }

    /// The checked form; call after [`ProvisioningConfig::validate`] found nothing.
    pub fn resolve(&self) -> Result<Provisioning, String> {
        let mut problems = Vec::new();
        self.validate(&mut |f: &str, m: String| problems.push(format!("{f}: {m}")));
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Provisioning {
            create_accounts: self.create_accounts,
            workspace_id: uuid::Uuid::parse_str(self.workspace_id.trim()).expect("validated"),
            default_role: Role::parse(&self.default_role).expect("validated"),
            role_map: self
                .role_map
                .iter()
                .map(|(g, r)| (g.clone(), Role::parse(r).expect("validated")))
                .collect(),
            interface_language: self.interface_language.clone(),
            timezone: self.timezone.clone(),
            integrate_provider: (!self.integrate_provider.is_empty())
                .then(|| self.integrate_provider.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(c: &ProvisioningConfig) -> Vec<String> {
        let mut v = Vec::new();
        c.validate(&mut |f: &str, m: String| v.push(format!("{f}: {m}")));
        v
    }

    #[test]
    fn owner_is_never_accepted_and_roles_are_named() {
        let mut c = ProvisioningConfig {
            workspace_id: "6f1c0d2a-0000-4000-8000-000000000001".into(),
            ..Default::default()
        };
        assert!(problems(&c).is_empty());
        c.default_role = "owner".into();
        c.role_map.insert("admins".into(), "root".into());
        c.integrate_provider = "a-provider-name-too-long".into();
        let p = problems(&c).join("\n");
        assert!(
            p.contains("sso.provisioning.default_role: owner is never given"),
            "{p}"
        );
        assert!(
            p.contains("sso.provisioning.role_map.admins: expected normal"),
            "{p}"
        );
        assert!(p.contains("sso.provisioning.integrate_provider"), "{p}");
        assert!(c.resolve().is_err());
    }

    #[test]
    fn workspace_must_be_a_uuid() {
        let c = ProvisioningConfig::default();
        assert!(problems(&c)[0].starts_with("sso.provisioning.workspace_id: expected the id"));
        let c = ProvisioningConfig {
            workspace_id: "main".into(),
            ..Default::default()
        };
        assert!(problems(&c)[0].contains("expected a UUID"));
    }

    #[test]
    fn highest_mapped_role_wins_else_default() {
        let c = ProvisioningConfig {
            workspace_id: "6f1c0d2a-0000-4000-8000-000000000001".into(),
            role_map: [
                ("dev", "editor"),
                ("ops", "admin"),
                ("data", "dataset_operator"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
            ..Default::default()
        };
        let p = c.resolve().unwrap();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(p.role_for(&g(&[])), Role::Normal);
        assert_eq!(p.role_for(&g(&["dev", "ops"])), Role::Admin);
        assert_eq!(p.role_for(&g(&["dev", "x"])), Role::Editor);
        assert_eq!(p.role_for(&g(&["data"])), Role::DatasetOperator);
    }
}

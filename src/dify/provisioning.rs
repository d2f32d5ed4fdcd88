//! `sso.provisioning`: how the builtin minter (`sso.minter: builtin`) creates and joins Dify accounts
//! (reference §5). Only used with the builtin minter.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A workspace role the gateway may give: Dify's `TenantAccountRole` (api/models/account.py) less
/// `owner`, which Dify's own invitation refuses too (`is_non_owner_role`): a workspace has exactly
/// one owner, created by Dify itself, and handed on only by Dify's ownership transfer.
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

    /// `dataset_operator_enabled`: Dify's `DATASET_OPERATOR_ENABLED`, without which Dify's own
    /// invitation and role change refuse that role.
    pub fn parse(text: &str, dataset_operator_enabled: bool) -> Result<Role, String> {
        let expected = if dataset_operator_enabled {
            "normal, editor, admin or dataset_operator"
        } else {
            "normal, editor or admin"
        };
        match text {
            "normal" => Ok(Role::Normal),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            "dataset_operator" if dataset_operator_enabled => Ok(Role::DatasetOperator),
            "dataset_operator" => Err("dataset_operator is given only when Dify runs with DATASET_OPERATOR_ENABLED=true (Dify's own invitation refuses it otherwise); set dify.dataset_operator_enabled: true if it does".into()),
            "owner" => Err(format!("owner is never given by the gateway (a Dify workspace has one owner, created by Dify); expected {expected}")),
            other => Err(format!("expected {expected}, got {other:?}")),
        }
    }
}

/// The interface languages Dify accepts: `languages` in Dify's api/constants/languages.py (the keys
/// of `language_timezone_mapping`); any other value makes Dify's front end and mails fail for the
/// user.
pub const DIFY_LANGUAGES: &[&str] = &[
    "en-US", "zh-Hans", "zh-Hant", "pt-BR", "es-ES", "fr-FR", "de-DE", "ja-JP", "ko-KR", "ru-RU",
    "it-IT", "uk-UA", "vi-VN", "ro-RO", "pl-PL", "hi-IN", "tr-TR", "fa-IR", "sl-SI", "th-TH",
    "id-ID",
];

/// A time zone name Dify can use: Dify looks `accounts.timezone` up with pytz, which knows the
/// IANA database's names (links such as `US/Eastern` and `UTC` included) and answers any other
/// with `UnknownTimeZoneError`, an HTTP 500 on Dify's statistics pages.
fn check_timezone(name: &str) -> Result<(), String> {
    if name.parse::<chrono_tz::Tz>().is_ok() {
        return Ok(());
    }
    let hint = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(name))
        .map(|tz| format!(" (did you mean {}?)", tz.name()))
        .unwrap_or_default();
    Err(format!(
        "expected an IANA time zone name such as UTC, Europe/Berlin or Asia/Shanghai, got {name:?}{hint}"
    ))
}

fn check_language(lang: &str) -> Result<(), String> {
    if DIFY_LANGUAGES.contains(&lang) {
        return Ok(());
    }
    let hint = DIFY_LANGUAGES
        .iter()
        .find(|l| l.eq_ignore_ascii_case(lang) || l.replace('-', "_").eq_ignore_ascii_case(lang))
        .map(|l| format!(" (did you mean {l}?)"))
        .unwrap_or_default();
    Err(format!(
        "expected one of Dify's interface languages ({}), got {lang:?}{hint}",
        DIFY_LANGUAGES.join(", ")
    ))
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
    /// When `role_map` applies: at the first sign-in only, or at every sign-in.
    pub role_sync: RoleSync,
}

/// `sso.provisioning.role_sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleSync {
    /// The role is set when the account joins the workspace; Dify's admins own it afterwards.
    #[default]
    FirstSignIn,
    /// Every sign-in re-applies `role_map` (promotion and demotion): the directory owns roles.
    OnSignIn,
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
            role_sync: RoleSync::default(),
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
    pub role_sync: RoleSync,
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
    /// Every problem, as (field, message). `dataset_operator_enabled`: Dify's
    /// `DATASET_OPERATOR_ENABLED` (`dify.dataset_operator_enabled`).
    pub fn validate(&self, dataset_operator_enabled: bool, bad: &mut impl FnMut(&str, String)) {
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
        if let Err(e) = Role::parse(&self.default_role, dataset_operator_enabled) {
            bad("sso.provisioning.default_role", e);
        }
        for (group, role) in &self.role_map {
            if let Err(e) = Role::parse(role, dataset_operator_enabled) {
                bad(&format!("sso.provisioning.role_map.{group}"), e);
            }
        }
        if let Err(e) = check_language(&self.interface_language) {
            bad("sso.provisioning.interface_language", e);
        }
        if let Err(e) = check_timezone(&self.timezone) {
            bad("sso.provisioning.timezone", e);
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
    pub fn resolve(&self, dataset_operator_enabled: bool) -> Result<Provisioning, String> {
        let mut problems = Vec::new();
        self.validate(dataset_operator_enabled, &mut |f: &str, m: String| {
            problems.push(format!("{f}: {m}"))
        });
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Provisioning {
            create_accounts: self.create_accounts,
            workspace_id: uuid::Uuid::parse_str(self.workspace_id.trim()).expect("validated"),
            default_role: Role::parse(&self.default_role, dataset_operator_enabled)
                .expect("validated"),
            role_map: self
                .role_map
                .iter()
                .map(|(g, r)| {
                    (
                        g.clone(),
                        Role::parse(r, dataset_operator_enabled).expect("validated"),
                    )
                })
                .collect(),
            interface_language: self.interface_language.clone(),
            timezone: self.timezone.clone(),
            role_sync: self.role_sync,
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
        c.validate(false, &mut |f: &str, m: String| v.push(format!("{f}: {m}")));
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
        assert!(c.resolve(true).is_err());
    }

    #[test]
    fn timezone_and_language_are_ones_dify_knows() {
        let ok = |tz: &str, lang: &str| {
            let c = ProvisioningConfig {
                workspace_id: "6f1c0d2a-0000-4000-8000-000000000001".into(),
                timezone: tz.into(),
                interface_language: lang.into(),
                ..Default::default()
            };
            problems(&c)
        };
        for tz in [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Asia/Shanghai",
            "US/Eastern",
            "Etc/GMT+5",
        ] {
            assert!(ok(tz, "en-US").is_empty(), "{tz}");
        }
        for lang in DIFY_LANGUAGES {
            assert!(ok("UTC", lang).is_empty(), "{lang}");
        }
        let p = ok("Mars/Olympus_Mons", "en-US").join("\n");
        assert!(
            p.starts_with("sso.provisioning.timezone: expected an IANA time zone name"),
            "{p}"
        );
        assert!(p.contains("\"Mars/Olympus_Mons\""), "{p}");
        assert!(ok("europe/berlin", "en-US")[0].contains("did you mean Europe/Berlin?"));
        let p = ok("UTC", "en").join("\n");
        assert!(
            p.starts_with(
                "sso.provisioning.interface_language: expected one of Dify's interface languages"
            ),
            "{p}"
        );
        assert!(ok("UTC", "de_de")[0].contains("did you mean de-DE?"));
        assert!(!ok("", "").is_empty());
    }

    #[test]
    fn dataset_operator_only_where_dify_allows_it() {
        let c = ProvisioningConfig {
            workspace_id: "6f1c0d2a-0000-4000-8000-000000000001".into(),
            default_role: "dataset_operator".into(),
            role_map: [("data".to_string(), "dataset_operator".to_string())].into(),
            ..Default::default()
        };
        let p = problems(&c);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("sso.provisioning.default_role: dataset_operator is given only when Dify runs with DATASET_OPERATOR_ENABLED=true"), "{p:?}");
        assert!(
            p[1].starts_with("sso.provisioning.role_map.data: dataset_operator"),
            "{p:?}"
        );
        assert!(c.resolve(false).is_err());
        assert_eq!(c.resolve(true).unwrap().default_role, Role::DatasetOperator);
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
        let p = c.resolve(true).unwrap();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(p.role_for(&g(&[])), Role::Normal);
        assert_eq!(p.role_for(&g(&["dev", "ops"])), Role::Admin);
        assert_eq!(p.role_for(&g(&["dev", "x"])), Role::Editor);
        assert_eq!(p.role_for(&g(&["data"])), Role::DatasetOperator);
    }
}

//! Deprovisioning over SCIM 2.0 (RFC 7643/7644), the subset a directory's provisioning (Entra ID,
//! Okta) needs to end someone's access: `/scim/v2/Users` listed and filtered by `userName`, one
//! user read, `PATCH` (or `PUT`) `active`, `DELETE`, and `/ServiceProviderConfig`, `/Schemas`,
//! `/ResourceTypes`. Served on the admin listener, behind its own bearer token
//! (`sso.scim.token`). Users are the members of the builtin minter's workspace; `userName` is the
//! email. Deactivating bans the Dify account (Dify refuses a banned account when it loads one),
//! deletes its Dify refresh token and ends its gateway sessions; the next sign-in is refused.
//! Reactivating lifts the ban. Users are not created or deleted through SCIM (`POST` is refused
//! with 501, `DELETE` deactivates): accounts come from sign-in.

use crate::dify::directory::Member;
use crate::dify::refresh_tokens::RefreshTokens;
use crate::dify::store::DifyStore;
use crate::secret::Secret;
use crate::sso::revocations::Revocations;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const PREFIX: &str = "/scim/v2";
/// Largest request body read (a PATCH is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// `sso.scim`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScimConfig {
    /// The bearer token the directory sends; empty turns SCIM off.
    pub token: Secret,
}

pub struct Scim {
    token: String,
    store: DifyStore,
    refresh: RefreshTokens,
    workspace: Uuid,
    revocations: Arc<Revocations>,
}

/// One SCIM answer: status and JSON body.
pub struct ScimAnswer {
    pub status: u16,
    pub body: Value,
}

fn answer(status: u16, body: Value) -> ScimAnswer {
    ScimAnswer { status, body }
}

fn error(status: u16, scim_type: Option<&str>, detail: &str) -> ScimAnswer {
    let mut body = json!({"schemas": [ERROR], "status": status.to_string(), "detail": detail});
    if let Some(t) = scim_type {
        body["scimType"] = t.into();
    }
    answer(status, body)
}

fn user(m: &Member) -> Value {
    json!({
        "schemas": [USER_SCHEMA],
        "id": m.id.to_string(),
        "userName": m.email,
        "displayName": m.name,
        "name": {"formatted": m.name},
        "emails": [{"value": m.email, "primary": true}],
        "active": m.active,
        "meta": {"resourceType": "User", "location": format!("{PREFIX}/Users/{}", m.id)},
    })
}

/// `userName eq "value"` (attribute and operator case-insensitive, as RFC 7644 §3.4.2.2 says).
fn user_name_filter(filter: &str) -> Option<String> {
    let mut parts = filter.trim().splitn(3, ' ');
    let (attr, op, value) = (parts.next()?, parts.next()?, parts.next()?.trim());
    if !attr.eq_ignore_ascii_case("userName") || !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    serde_json::from_str::<String>(value).ok()
}

/// `active` from a PATCH body: `{"op": "replace", "path": "active", "value": false}` or
/// `{"op": "replace", "value": {"active": false}}`; Entra ID sends the value as the string
/// `"False"`.
fn patched_active(body: &Value) -> Result<Option<bool>, String> {
    let ops = body
        .get("Operations")
        .and_then(Value::as_array)
        .ok_or("a PATCH needs Operations")?;
    let as_bool = |v: &Value| match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    };
    let mut active = None;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        if !kind.eq_ignore_ascii_case("replace") && !kind.eq_ignore_ascii_case("add") {
            continue;
        }
        let path = op.get("path").and_then(Value::as_str);
        let value = op.get("value").unwrap_or(&Value::Null);
        let found = match path {
            Some(p) if p.eq_ignore_ascii_case("active") => {
                Some(as_bool(value).ok_or("active must be true or false")?)
            }
            Some(_) => None,
            None => value
                .get("active")
                .map(|v| as_bool(v).ok_or("active must be true or false"))
                .transpose()?,
        };
        if found.is_some() {
            active = found;
        }
    }
    Ok(active)
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Scim {
    pub fn new(
        token: &str,
        store: DifyStore,
        refresh: RefreshTokens,
        workspace: Uuid,
        revocations: Arc<Revocations>,
    ) -> Scim {
        Scim {
            token: token.to_string(),
            store,
            refresh,
            workspace,
            revocations,
        }
    }

    /// Whether `Authorization` carries the SCIM token (compared in constant time).
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = authorization.and_then(|v| {
            v.split_once(' ')
                .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
        }) else {
            return false;
        };
        token.as_bytes().ct_eq(self.token.as_bytes()).into()
    }

    /// Answers one SCIM request (already authorized); `path` starts with [`PREFIX`].
    pub async fn handle(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        trace_id: &str,
    ) -> ScimAnswer {
        let rest = path
            .strip_prefix(PREFIX)
            .unwrap_or("")
            .trim_end_matches('/');
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return error(400, Some("invalidSyntax"), "the body is not JSON"),
            }
        };
        let result = match (method, rest) {
            ("GET", "/ServiceProviderConfig") => Ok(service_provider_config()),
            ("GET", "/Schemas") => Ok(schemas()),
            ("GET", "/ResourceTypes") => Ok(resource_types()),
            ("GET", "/Users") => self.list(query).await,
            ("POST", "/Users") => Ok(error(
                501,
                None,
                "users are not created through SCIM: a Dify account is made at its first sign-in",
            )),
            (_, r) if r.starts_with("/Users/") => {
                let Ok(id) = Uuid::parse_str(&r["/Users/".len()..]) else {
                    return error(404, None, "no such user");
                };
                self.one(method, id, &body, trace_id).await
            }
            _ => Ok(error(404, None, "not a SCIM endpoint of this server")),
        };
        result.unwrap_or_else(|e| {
            log::warn!(trace_id = trace_id; "SCIM request failed: {e}");
            error(
                503,
                None,
                "Dify's database or Redis cannot be reached; try again",
            )
        })
    }

    async fn list(&self, query: Option<&str>) -> Result<ScimAnswer, String> {
        let email = match query_param(query, "filter") {
            Some(f) => match user_name_filter(&f) {
                Some(e) => Some(e),
                None => {
                    return Ok(error(
                        400,
                        Some("invalidFilter"),
                        "only `userName eq \"...\"` is supported",
                    ));
                }
            },
            None => None,
        };
        let start = query_param(query, "startIndex")
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(1)
            .max(1);
        let count = query_param(query, "count")
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(100)
            .clamp(0, 1000);
        let (members, total) = self
            .store
            .members(self.workspace, email.as_deref(), start - 1, count)
            .await
            .map_err(|e| e.to_string())?;
        let resources: Vec<Value> = members.iter().map(user).collect();
        Ok(answer(
            200,
            json!({"schemas": [LIST], "totalResults": total, "startIndex": start,
                   "itemsPerPage": resources.len(), "Resources": resources}),
        ))
    }

    async fn one(
        &self,
        method: &str,
        id: Uuid,
        body: &Value,
        trace_id: &str,
    ) -> Result<ScimAnswer, String> {
        let Some(member) = self
            .store
            .member(self.workspace, id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(error(404, None, "no such user in this workspace"));
        };
        let wanted = match method {
            "GET" => None,
            "DELETE" => Some(false),
            "PATCH" => match patched_active(body) {
                Ok(a) => a,
                Err(e) => return Ok(error(400, Some("invalidValue"), &e)),
            },
            // A full replacement: only `active` is ours to follow.
            "PUT" => body.get("active").and_then(Value::as_bool),
            _ => return Ok(error(405, None, "method not allowed")),
        };
        if let Some(active) = wanted {
            self.set_active(&member, active, trace_id).await?;
        }
        if method == "DELETE" {
            return Ok(answer(204, Value::Null));
        }
        let member = self
            .store
            .member(self.workspace, id)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(member);
        Ok(answer(200, user(&member)))
    }

    async fn set_active(
        &self,
        member: &Member,
        active: bool,
        trace_id: &str,
    ) -> Result<(), String> {
        self.store
            .set_active(member.id, active)
            .await
            .map_err(|e| e.to_string())?;
        let id = member.id.to_string();
        self.revocations
            .set_deactivated(&member.email, !active)
            .await?;
        if active {
            log::info!(trace_id = trace_id, account_id = id.as_str(), email = member.email.as_str();
                "SCIM: account reactivated");
            return Ok(());
        }
        let had_session = self.refresh.revoke(&id).await?;
        self.revocations.revoke(&member.email).await?;
        log::info!(trace_id = trace_id, account_id = id.as_str(), email = member.email.as_str(), refresh_token_deleted = had_session;
            "SCIM: account deactivated: banned in Dify, its refresh token deleted, its gateway sessions ended");
        Ok(())
    }
}

fn service_provider_config() -> ScimAnswer {
    answer(
        200,
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": 1000},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": false},
            "authenticationSchemes": [{"type": "oauthbearertoken", "name": "Bearer token",
                "description": "The token of sso.scim.token", "primary": true}],
            "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{PREFIX}/ServiceProviderConfig")},
        }),
    )
}

fn schemas() -> ScimAnswer {
    let attr = |name: &str, kind: &str, mutability: &str| {
        json!({"name": name, "type": kind, "multiValued": false, "required": name == "userName",
               "mutability": mutability, "returned": "default", "uniqueness": if name == "userName" {"server"} else {"none"}})
    };
    let user_schema = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA, "name": "User", "description": "A Dify account in the workspace",
        "attributes": [attr("userName", "string", "readOnly"), attr("displayName", "string", "readOnly"),
                       attr("active", "boolean", "readWrite")],
        "meta": {"resourceType": "Schema", "location": format!("{PREFIX}/Schemas/{USER_SCHEMA}")},
    });
    answer(
        200,
        json!({"schemas": [LIST], "totalResults": 1, "startIndex": 1, "itemsPerPage": 1, "Resources": [user_schema]}),
    )
}

fn resource_types() -> ScimAnswer {
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User", "name": "User", "endpoint": "/Users", "schema": USER_SCHEMA,
        "meta": {"resourceType": "ResourceType", "location": format!("{PREFIX}/ResourceTypes/User")},
    });
    answer(
        200,
        json!({"schemas": [LIST], "totalResults": 1, "startIndex": 1, "itemsPerPage": 1, "Resources": [user]}),
    )
}

//! Deprovisioning through SCIM 2.0 on the admin listener, through the binary, against real
//! PostgreSQL and Redis: a client that speaks SCIM the way Entra ID's provisioning does (filter
//! `userName eq "..."`, `PATCH` with `Operations` whose `active` value is the string `"False"`)
//! deactivates someone who signed in through CAS with the builtin minter: their Dify account is
//! banned, their refresh token is gone, their gateway session for published apps ends, and their
//! next sign-in is refused; reactivating lets them back in.

mod support;

use serde_json::{Value, json};
use support::browser_sim::Browser;
use support::cas_mock::{CasMock, CasUser};
use support::dify_mock::{DifyMock, DifySettings};
use support::dify_services::{Services, WORKSPACE, services};
use support::{Gateway, yq};
use uuid::Uuid;

const KEY: &str = "sk-scim-test-dify-secret-key-0123456789";
const SCIM_TOKEN: &str = "scim-bearer-token-0123456789abcdefghijkl";

macro_rules! need_services {
    () => {
        match services().await {
            Some(s) => s,
            None => return,
        }
    };
}

fn yaml(cas: &CasMock, svc: &Services, db_url: &str) -> String {
    format!(
        "sso:\n  protocol: cas\n  state_secret: {}\n  cas:\n    server: {}\n  minter: builtin\n  provisioning:\n    workspace_id: {}\n  \
         scim:\n    token: {}\n  apps:\n    default: signed_in\n\
         dify:\n  secret_key: {}\n  database_url: {}\n  redis_url: {}\n",
        yq("state-secret-0123456789abcdef-scim"),
        yq(&cas.base()),
        yq(WORKSPACE),
        yq(SCIM_TOKEN),
        yq(KEY),
        yq(db_url),
        yq(&svc.redis_url),
    )
}

/// Entra ID's provisioning, as far as deprovisioning goes.
struct Directory {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Directory {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r
                .header("Content-Type", "application/scim+json")
                .body(b.to_string());
        }
        let resp = r.send().await.expect("SCIM call");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn find(&self, user_name: &str) -> Value {
        let filter: String =
            url::form_urlencoded::byte_serialize(format!("userName eq \"{user_name}\"").as_bytes())
                .collect();
        let (status, list) = self
            .call("GET", &format!("/scim/v2/Users?filter={filter}"), None)
            .await;
        assert_eq!(status, 200, "{list}");
        list
    }

    async fn set_active(&self, id: &str, active: bool) -> (u16, Value) {
        let value = if active { "True" } else { "False" };
        self.call(
            "PATCH",
            &format!("/scim/v2/Users/{id}"),
            Some(
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Replace", "path": "active", "value": value}]}),
            ),
        )
        .await
    }
}

/// One CAS sign-in to `/chat/<code>`; the status of the callback.
async fn sign_in(gw: &Gateway, b: &mut Browser) -> u16 {
    let first = b.get(&gw.url("/chat/EngFlow000000004")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    let at_cas = b.hop(&first).await;
    b.hop(&at_cas).await.status
}

#[tokio::test]
async fn an_entra_style_directory_deactivates_and_reactivates_someone() {
    let svc = need_services!();
    let db = svc.fresh_db().await;
    let cas = CasMock::start().await;
    let dify = DifyMock::start(DifySettings::new(KEY)).await;
    let gw = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .upstream("web", &[dify.addr()])
        .extra_yaml(&yaml(&cas, &svc, &db.url))
        .start()
        .await;
    // A fresh person each run: a deactivation stays in the shared Redis, as it must in production.
    let login = format!("lee-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let email = format!("{login}@example.com");
    cas.sign_in_as(CasUser::new(
        &login,
        &email.to_uppercase(),
        "Lee Example",
        &[],
    ));
    // A console sign-in makes the account and its refresh token.
    let mut console = Browser::new();
    let first = console.get(&gw.url("/signin?redirect_url=/apps")).await;
    let at_cas = console.hop(&first).await;
    assert_eq!(console.hop(&at_cas).await.status, 303);
    let mut app = Browser::new();
    assert_eq!(sign_in(&gw, &mut app).await, 303);
    let landing = app.get(&gw.url("/chat/EngFlow000000004")).await;
    assert_eq!(landing.status, 200, "{}", landing.body);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = Directory {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        base: format!("http://{}", gw.admin),
        token: SCIM_TOKEN.into(),
    };
    // Without the token, nothing.
    let stranger = Directory {
        token: "wrong".into(),
        ..Directory {
            http: dir.http.clone(),
            base: dir.base.clone(),
            token: String::new(),
        }
    };
    assert_eq!(stranger.call("GET", "/scim/v2/Users", None).await.0, 401);
    let (status, config) = dir
        .call("GET", "/scim/v2/ServiceProviderConfig", None)
        .await;
    assert_eq!((status, &config["patch"]["supported"]), (200, &json!(true)));
    assert_eq!(dir.call("GET", "/scim/v2/Schemas", None).await.0, 200);

    let list = dir.find(&email.to_uppercase()).await;
    assert_eq!(list["totalResults"], 1, "{list}");
    let user = &list["Resources"][0];
    assert_eq!(
        (user["userName"].as_str(), user["active"].as_bool()),
        (Some(email.as_str()), Some(true))
    );
    let id = user["id"].as_str().unwrap().to_string();
    assert_eq!(dir.find("nobody@example.com").await["totalResults"], 0);
    let account: Uuid = id.parse().unwrap();
    let refresh_key = format!("account_refresh_token:{account}");
    let mut redis = svc.redis().await;
    let token: Option<String> = redis::cmd("GET")
        .arg(&refresh_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let token = token.expect("the console sign-in stored a refresh token");

    // Deactivate, as Entra ID does.
    let (status, after) = dir.set_active(&id, false).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["active"], false);
    let st: String = db
        .client
        .query_one("SELECT status FROM accounts WHERE id = $1", &[&account])
        .await
        .unwrap()
        .get(0);
    assert_eq!(st, "banned", "Dify refuses a banned account");
    for key in [refresh_key.clone(), format!("refresh_token:{token}")] {
        let left: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(
            left, None,
            "{key} is gone: Dify's refresh refuses the session"
        );
    }
    // The gateway session for published apps is over at once, and signing in again is refused.
    let next = app.get(&gw.url("/chat/EngFlow000000004")).await;
    assert_eq!(next.status, 302, "{}", next.body);
    let mut again = Browser::new();
    let refused = sign_in(&gw, &mut again).await;
    assert_eq!(refused, 403, "a deactivated person cannot sign in");

    // Reactivate.
    let (status, after) = dir.set_active(&id, true).await;
    assert_eq!((status, &after["active"]), (200, &json!(true)));
    let mut back = Browser::new();
    assert_eq!(sign_in(&gw, &mut back).await, 303);
    // DELETE deactivates (accounts are never deleted through SCIM); POST is refused.
    let (status, _) = dir
        .call("DELETE", &format!("/scim/v2/Users/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(dir.find(&email).await["Resources"][0]["active"], false);
    let (status, err) = dir
        .call(
            "POST",
            "/scim/v2/Users",
            Some(json!({"userName": "new@example.com"})),
        )
        .await;
    assert_eq!(status, 501, "{err}");
    let (status, _) = dir
        .call("GET", &format!("/scim/v2/Users/{}", Uuid::new_v4()), None)
        .await;
    assert_eq!(status, 404);
    let (status, err) = dir
        .call("GET", "/scim/v2/Users?filter=emails%20co%20%22x%22", None)
        .await;
    assert_eq!(
        (status, err["scimType"].as_str()),
        (400, Some("invalidFilter"))
    );
    // The token never reaches a log line.
    assert!(!gw.stderr().contains(SCIM_TOKEN));
}

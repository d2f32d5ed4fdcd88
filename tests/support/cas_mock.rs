//! A mock Apereo CAS 3.0 server that signs in whoever the test says: `GET <base>/login?service=S`
//! answers 302 to `S&ticket=ST-..` at once (no login page), and `GET <base>/p3/serviceValidate`
//! redeems the ticket once, for the same service, with `mail`, `displayName` and `memberOf`
//! attributes. The base URL is `http://127.0.0.1:<port>/cas`.

#![allow(dead_code)]

use super::mock_http::{MockRequest, MockResponse, MockServer, html_escape};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct CasUser {
    pub login: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl CasUser {
    pub fn new(login: &str, email: &str, name: &str, groups: &[&str]) -> CasUser {
        CasUser {
            login: login.into(),
            email: email.into(),
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

#[derive(Default)]
struct Shared {
    next: Mutex<Option<CasUser>>,
    /// ticket -> (service, user)
    tickets: Mutex<HashMap<String, (String, CasUser)>>,
}

pub struct CasMock {
    pub server: MockServer,
    shared: Arc<Shared>,
}

impl CasMock {
    pub async fn start() -> CasMock {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let server = MockServer::start("127.0.0.1:0", move |r| {
            let s = s.clone();
            async move { handle(&s, r) }
        })
        .await
        .expect("bind the mock CAS");
        CasMock { server, shared }
    }

    /// `sso.cas.server`.
    pub fn base(&self) -> String {
        self.server.url("/cas")
    }

    /// The user the next `/login` signs in.
    pub fn sign_in_as(&self, user: CasUser) {
        *self.shared.next.lock().unwrap() = Some(user);
    }
}

fn handle(s: &Shared, r: MockRequest) -> MockResponse {
    match r.path.as_str() {
        "/cas/login" => {
            let Some(service) = r.query_param("service") else {
                return MockResponse::text(400, "no service");
            };
            let Some(user) = s.next.lock().unwrap().clone() else {
                return MockResponse::text(403, "no user to sign in");
            };
            let ticket = format!("ST-{}", uuid::Uuid::new_v4().simple());
            s.tickets
                .lock()
                .unwrap()
                .insert(ticket.clone(), (service.clone(), user));
            let sep = if service.contains('?') { '&' } else { '?' };
            MockResponse::new(302, "text/plain", "")
                .header("location", &format!("{service}{sep}ticket={ticket}"))
        }
        "/cas/p3/serviceValidate" => {
            let ticket = r.query_param("ticket").unwrap_or_default();
            let service = r.query_param("service").unwrap_or_default();
            let found = s.tickets.lock().unwrap().remove(&ticket);
            let body = match found {
                Some((svc, u)) if svc == service => {
                    let groups: String = u
                        .groups
                        .iter()
                        .map(|g| format!("<cas:memberOf>{}</cas:memberOf>", html_escape(g)))
                        .collect();
                    format!(
                        "<cas:serviceResponse xmlns:cas=\"http://www.yale.edu/tp/cas\"><cas:authenticationSuccess>\
                         <cas:user>{}</cas:user><cas:attributes><cas:mail>{}</cas:mail>\
                         <cas:displayName>{}</cas:displayName>{groups}</cas:attributes>\
                         </cas:authenticationSuccess></cas:serviceResponse>",
                        html_escape(&u.login),
                        html_escape(&u.email),
                        html_escape(&u.name)
                    )
                }
                _ => "<cas:serviceResponse xmlns:cas=\"http://www.yale.edu/tp/cas\">\
                      <cas:authenticationFailure code=\"INVALID_TICKET\">unknown ticket</cas:authenticationFailure>\
                      </cas:serviceResponse>"
                    .to_string(),
            };
            MockResponse::new(200, "application/xml", body)
        }
        _ => MockResponse::text(404, "not found"),
    }
}

//! Apereo CAS 3.0 (`sso.protocol: cas`): `/signin` -> `<server>/login?service=<callback>?state=..`;
//! the callback's ticket is validated with `<server>/p3/serviceValidate` (same service string,
//! compared exactly by the CAS server), the XML answer read with quick-xml, attributes mapped to
//! the identity. The per-flow `state` rides in the service URL, so the flow checks it (and its
//! single use) before any ticket is sent for validation; CAS itself makes tickets single use.

use super::http;
use crate::dify::redirect::{append_query, encode_component};
use crate::sso::config::{CasConfig, SsoConfig};
use crate::sso::failure::SsoFailure;
use crate::sso::protocol::{CallbackInput, Identity, LoginStart, SignInOutcome, SignInProtocol};
use quick_xml::Reader;
use quick_xml::events::Event;

pub struct Cas {
    cfg: CasConfig,
    http: reqwest::Client,
}

/// What the CAS server answered.
#[derive(Debug, PartialEq, Eq)]
pub enum CasAnswer {
    Success {
        user: String,
        attributes: Vec<(String, String)>,
    },
    Failure {
        code: String,
        message: String,
    },
}

/// Reads a CAS 3.0 `serviceResponse` (namespace prefixes ignored, entities resolved).
pub fn parse_answer(xml: &str) -> Result<CasAnswer, String> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut user = None;
    let mut attributes = Vec::new();
    let mut failure: Option<(String, String)> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_string();
                if name == "authenticationFailure" {
                    let code = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == "code")
                        .and_then(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .ok()
                                .map(|v| v.into_owned())
                        })
                        .unwrap_or_default();
                    failure = Some((code, String::new()));
                }
                stack.push(name);
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::CData(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c,
                    None => match r.xml10_content().as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(format!("unknown entity &{other};")),
                    },
                };
                text.push(c);
            }
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                let parent = stack.last().map(String::as_str);
                let value = text.trim().to_string();
                match (parent, name.as_str()) {
                    (Some("authenticationSuccess"), "user") => user = Some(value),
                    (Some("attributes"), _) => attributes.push((name, value)),
                    (_, "authenticationFailure") => {
                        if let Some(f) = failure.as_mut() {
                            f.1 = value;
                        }
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some((code, message)) = failure {
        return Ok(CasAnswer::Failure { code, message });
    }
    match user.filter(|u| !u.is_empty()) {
        Some(user) => Ok(CasAnswer::Success { user, attributes }),
        None => Err("neither authenticationSuccess with a user nor authenticationFailure".into()),
    }
}

impl Cas {
    pub fn new(sso: &SsoConfig) -> Result<Cas, String> {
        Ok(Cas {
            http: http::client(sso.cas.timeout)?,
            cfg: sso.cas.clone(),
        })
    }

    fn server(&self) -> &str {
        self.cfg.server.trim_end_matches('/')
    }

    /// The service URL of one flow: the callback with the flow's state.
    fn service(callback_url: &str, state: &str) -> String {
        format!("{callback_url}?state={}", encode_component(state))
    }
}

#[async_trait::async_trait]
impl SignInProtocol for Cas {
    fn name(&self) -> &'static str {
        "cas"
    }

    fn redirect_flow(&self) -> bool {
        true
    }

    async fn login_redirect(&self, start: &LoginStart<'_>) -> Result<String, SsoFailure> {
        Ok(append_query(
            &format!("{}/login", self.server()),
            &[("service", &Self::service(start.callback_url, start.state))],
        ))
    }

    async fn finish(&self, cb: &CallbackInput<'_>) -> Result<SignInOutcome, SsoFailure> {
        let flow = cb.flow.ok_or(SsoFailure::BadState)?;
        let ticket = cb
            .param("ticket")
            .filter(|t| !t.is_empty())
            .ok_or(SsoFailure::MissingToken)?;
        let service = Self::service(cb.callback_url, &flow.state);
        let url = append_query(
            &format!("{}/p3/serviceValidate", self.server()),
            &[("service", &service), ("ticket", ticket)],
        );
        let (status, body) =
            http::send(self.http.get(url), "CAS ticket validation", cb.trace_id).await?;
        if status != 200 {
            return Err(SsoFailure::ProviderFailed(format!(
                "its ticket validation answered with status {status}"
            )));
        }
        let answer = parse_answer(&String::from_utf8_lossy(&body)).map_err(|e| {
            SsoFailure::ProviderFailed(format!(
                "its ticket validation answer is not CAS XML ({})",
                http::short(&e)
            ))
        })?;
        let (user, attributes) = match answer {
            CasAnswer::Success { user, attributes } => (user, attributes),
            CasAnswer::Failure { code, message } => {
                log::warn!(trace_id = cb.trace_id, code = code.as_str(); "CAS refused the ticket");
                return Err(SsoFailure::ProviderRefused(format!(
                    "{} {}",
                    http::short(&code),
                    http::short(&message)
                )));
            }
        };
        let names = &self.cfg.attributes;
        let first = |n: &str| {
            attributes
                .iter()
                .find(|(k, v)| k == n && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        Ok(SignInOutcome::Identity(Identity {
            issuer: self.server().to_string(),
            subject: user,
            email: first(&names.email),
            email_verified: self.cfg.email_verified,
            name: first(&names.name),
            groups: attributes
                .iter()
                .filter(|(k, _)| *k == names.groups)
                .map(|(_, v)| v.clone())
                .collect(),
            id_token_hint: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_success_failure_and_garbage() {
        let ok = r#"<?xml version="1.0"?>
<cas:serviceResponse xmlns:cas="http://www.yale.edu/tp/cas">
  <cas:authenticationSuccess>
    <cas:user>ann&amp;co</cas:user>
    <cas:attributes>
      <cas:mail>Ann@Example.com</cas:mail>
      <cas:memberOf>a</cas:memberOf><cas:memberOf><![CDATA[b<c]]></cas:memberOf>
    </cas:attributes>
  </cas:authenticationSuccess>
</cas:serviceResponse>"#;
        assert_eq!(
            parse_answer(ok).unwrap(),
            CasAnswer::Success {
                user: "ann&co".into(),
                attributes: vec![
                    ("mail".into(), "Ann@Example.com".into()),
                    ("memberOf".into(), "a".into()),
                    ("memberOf".into(), "b<c".into()),
                ]
            }
        );
        let bad = r#"<cas:serviceResponse xmlns:cas="http://www.yale.edu/tp/cas"><cas:authenticationFailure code="INVALID_TICKET">Ticket ST-1 not recognized</cas:authenticationFailure></cas:serviceResponse>"#;
        assert_eq!(
            parse_answer(bad).unwrap(),
            CasAnswer::Failure {
                code: "INVALID_TICKET".into(),
                message: "Ticket ST-1 not recognized".into()
            }
        );
        assert!(parse_answer("<html>hello</html>").is_err());
        assert!(parse_answer("<a><b></a>").is_err());
        // A user outside authenticationSuccess does not count.
        assert!(parse_answer("<serviceResponse><user>x</user></serviceResponse>").is_err());
    }
}

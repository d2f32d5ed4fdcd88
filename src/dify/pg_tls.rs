//! `sslmode` and `sslrootcert` of `dify.database_url`, with libpq's meaning (PostgreSQL's
//! "SSL Support" chapter), because Dify connects through libpq and an operator copies its settings:
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (the default) | when the server offers it | no |
//! | `require` | always | no; but with `sslrootcert` given, as `verify-ca` |
//! | `verify-ca` | always | chain against `sslrootcert` (the webpki roots without one) |
//! | `verify-full` | always | chain and host name |
//!
//! tokio-postgres knows only disable/prefer/require and no `sslrootcert`, so both are taken out of
//! the URL here (URL and `key=value` forms) and turned into tokio-postgres's mode plus a rustls
//! configuration with the matching certificate check. The unchecked modes still verify the
//! handshake's signatures with the certificate's key: the connection is encrypted to whoever holds
//! that key, as with libpq, and a server that sent a certificate it has no key for is refused.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other:?} is not one of libpq's: disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// What the certificate check is, once `sslmode` and `sslrootcert` are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Encrypted, any certificate (whose key signed the handshake).
    None,
    /// The chain up to a trusted root, not the name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// The TLS side of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file; `system` (as libpq >= 16 spells it) or absent: the webpki roots.
    pub root_cert: Option<String>,
}

impl TlsSettings {
    /// libpq: `require` with a root certificate given verifies the chain, as `verify-ca`.
    pub fn check(&self) -> Check {
        match self.mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => Check::None,
            SslMode::Require if self.root_cert.is_some() => Check::Chain,
            SslMode::Require => Check::None,
            SslMode::VerifyCa => Check::Chain,
            SslMode::VerifyFull => Check::Full,
        }
    }

    /// tokio-postgres's mode: whether TLS is tried, and whether it is required.
    pub fn postgres_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self.mode {
            SslMode::Disable => Pg::Disable,
            SslMode::Allow | SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }

    /// The rustls client configuration for this mode; reads `sslrootcert`.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed ({e})"))?;
        let config = match self.check() {
            Check::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(WithoutName {
                    roots: None,
                    algorithms: provider.signature_verification_algorithms,
                })),
            Check::Chain => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(WithoutName {
                    roots: Some(Arc::new(self.roots()?)),
                    algorithms: provider.signature_verification_algorithms,
                })),
            Check::Full => builder.with_root_certificates(self.roots()?),
        };
        Ok(config.with_no_client_auth())
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let path = match self.root_cert.as_deref() {
            None | Some("system") => {
                return Ok(RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                });
            }
            Some(p) => p,
        };
        use rustls::pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("sslrootcert {path:?} cannot be read ({e})"))?;
        for cert in certs {
            let cert = cert
                .map_err(|e| format!("sslrootcert {path:?} is not a PEM certificate file ({e})"))?;
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert {path:?} holds an unusable certificate ({e})"))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "sslrootcert {path:?} holds no certificate (expected PEM, -----BEGIN CERTIFICATE-----)"
            ));
        }
        Ok(roots)
    }
}

/// Splits `sslmode` and `sslrootcert` off a connection string (a `postgres[ql]://` URL or libpq's
/// `key=value` pairs); returns the rest, for tokio-postgres, and the TLS settings.
pub fn split_tls(conninfo: &str) -> Result<(String, TlsSettings), String> {
    let trimmed = conninfo.trim_start();
    let (rest, pairs) =
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            split_url(conninfo)?
        } else {
            split_key_values(conninfo)?
        };
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => mode = SslMode::parse(&value)?,
            _ => root_cert = Some(value).filter(|v| !v.is_empty()),
        }
    }
    Ok((rest, TlsSettings { mode, root_cert }))
}

const TAKEN: [&str; 2] = ["sslmode", "sslrootcert"];

/// URL form: the query's `sslmode`/`sslrootcert` (percent-decoded) out, the other pairs kept as
/// written.
fn split_url(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if TAKEN.contains(&key.as_str()) {
            taken.push((key, decode(v)?));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, taken))
}

fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "the URL's query is not UTF-8 once percent-decoded".to_string())
}

/// libpq's `key = value` form: values may be single-quoted, `\` escapes the next character.
fn split_key_values(text: &str) -> Result<(String, Vec<(String, String)>), String> {
    let bytes = text.as_bytes();
    let mut rest = String::new();
    let mut taken = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[start..i];
        i = skip_ws(i);
        if i >= bytes.len() || bytes[i] != b'=' {
            // Not a pair: left for tokio-postgres, which names the problem.
            return Ok((text.to_string(), Vec::new()));
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => {
                        return Err("a quoted value in dify.database_url has no closing '".into());
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
        }
        if TAKEN.contains(&key) {
            let value = String::from_utf8(value)
                .map_err(|_| format!("{key} in dify.database_url is not UTF-8"))?;
            taken.push((key.to_string(), value));
        } else {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&text[start..i]);
        }
    }
    Ok((rest, taken))
}

/// The modes that do not compare the server's name. `roots` None (`allow`, `prefer`, `require`
/// without a root): any certificate. Some (`verify-ca`, and `require` with a root): the chain must
/// lead to one of them. Either way the handshake must be signed with the certificate's key.
#[derive(Debug)]
struct WithoutName {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for WithoutName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> (String, SslMode, Option<String>) {
        let (rest, t) = split_tls(s).unwrap();
        (rest, t.mode, t.root_cert)
    }

    #[test]
    fn url_form_takes_out_only_the_tls_keys() {
        assert_eq!(
            split("postgresql://u:p@db:5432/dify"),
            (
                "postgresql://u:p@db:5432/dify".into(),
                SslMode::Prefer,
                None
            )
        );
        assert_eq!(
            split(
                "postgres://u@db/dify?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem&application_name=a"
            ),
            (
                "postgres://u@db/dify?connect_timeout=3&application_name=a".into(),
                SslMode::VerifyFull,
                Some("/etc/ca x.pem".into())
            )
        );
        assert_eq!(
            split("postgresql://db/dify?sslmode=allow").0,
            "postgresql://db/dify"
        );
    }

    #[test]
    fn key_value_form_with_quotes_and_escapes() {
        assert_eq!(
            split("host=db  user=u sslmode = require sslrootcert='/etc/my ca\\'s.pem' dbname=dify"),
            (
                "host=db user=u dbname=dify".into(),
                SslMode::Require,
                Some("/etc/my ca's.pem".into())
            )
        );
        assert_eq!(split("host=db").1, SslMode::Prefer);
    }

    #[test]
    fn unknown_mode_is_named_with_libpq_s_list() {
        let e = split_tls("postgresql://db/x?sslmode=verify").unwrap_err();
        assert!(e.contains("\"verify\"") && e.contains("verify-full"), "{e}");
    }

    #[test]
    fn require_with_a_root_checks_the_chain_as_libpq_does() {
        let t = |mode, root: Option<&str>| TlsSettings {
            mode,
            root_cert: root.map(str::to_string),
        };
        assert_eq!(t(SslMode::Prefer, None).check(), Check::None);
        assert_eq!(t(SslMode::Prefer, Some("/ca")).check(), Check::None);
        assert_eq!(t(SslMode::Require, None).check(), Check::None);
        assert_eq!(t(SslMode::Require, Some("/ca")).check(), Check::Chain);
        assert_eq!(t(SslMode::VerifyCa, None).check(), Check::Chain);
        assert_eq!(t(SslMode::VerifyFull, None).check(), Check::Full);
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let t = TlsSettings {
            mode: SslMode::VerifyCa,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let e = t.client_config().unwrap_err();
        assert!(
            e.contains("sslrootcert \"/nonexistent/ca.pem\" cannot be read"),
            "{e}"
        );
    }
}

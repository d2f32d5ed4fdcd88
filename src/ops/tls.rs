//! The TLS listener's certificate and protocol versions, behind Pingora's rustls listener.
//!
//! Pingora 0.9's `TlsSettings` loads the files once (and panics on a bad one) and always builds
//! its rustls `ServerConfig` with TLS 1.2 and 1.3; what it does take is a certificate resolver.
//! So the gateway loads the files itself (a bad file is an error naming the path, before any
//! listener starts), keeps the certificate in an [`ArcSwap`] that a reload replaces (a renewed
//! certificate serves the next handshake, no restart), and enforces a TLS-1.3-only setting in the
//! resolver, which runs during the handshake.

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// The versions `server.tls.protocols` allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Protocols {
    pub tls12: bool,
}

impl Protocols {
    /// `TLSv1.2` and `TLSv1.3`, or `TLSv1.3` alone. Older versions are not in rustls; TLS 1.2
    /// alone cannot be had, because Pingora 0.9 always offers TLS 1.3 and a resolver cannot
    /// make a client that speaks 1.3 fall back: an error, not a listener that quietly differs.
    pub fn parse(list: &[String]) -> Result<Protocols, String> {
        let (mut tls12, mut tls13) = (false, false);
        for p in list {
            match p.as_str() {
                "TLSv1.2" => tls12 = true,
                "TLSv1.3" => tls13 = true,
                other => {
                    return Err(format!(
                        "expected TLSv1.2 and/or TLSv1.3, got {other:?} (older versions are not supported)"
                    ));
                }
            }
        }
        match (tls12, tls13) {
            (_, true) => Ok(Protocols { tls12 }),
            (true, false) => Err(
                "TLSv1.2 without TLSv1.3 is not supported: the listener always offers TLS 1.3 \
                 (Pingora 0.9); use \"TLSv1.2 TLSv1.3\""
                    .into(),
            ),
            (false, false) => Err("expected TLSv1.2 and/or TLSv1.3".into()),
        }
    }
}

/// The certificate served now, and the versions allowed.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    protocols: Protocols,
}

impl CertStore {
    pub fn load(cert: &str, key: &str, protocols: Protocols) -> Result<CertStore, String> {
        Ok(CertStore {
            current: ArcSwap::from_pointee(load_certified_key(cert, key)?),
            protocols,
        })
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub fn reload(&self, cert: &str, key: &str) -> Result<(), String> {
        let fresh = load_certified_key(cert, key)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls has chosen the version by now but does not say which; a client with no TLS 1.3
        // cipher suite (0x13xx) cannot be speaking 1.3, and no certificate fails its handshake.
        if !self.protocols.tls12
            && !hello
                .cipher_suites()
                .iter()
                .any(|s| u16::from(*s) & 0xff00 == 0x1300)
        {
            log::debug!("TLS handshake refused: the client offers no TLS 1.3 cipher suite");
            return None;
        }
        Some(self.current.load_full())
    }
}

/// The chain and key from PEM files, checked to belong together. Errors name the file and never
/// show its contents.
pub fn load_certified_key(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate {cert:?}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {cert:?}"));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the private key {key:?}: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private, &provider)
        .map_err(|e| format!("the key {key:?} does not fit the certificate {cert:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn protocols_as_nginx_writes_them() {
        let both = Protocols::parse(&list(&["TLSv1.2", "TLSv1.3"])).unwrap();
        assert!(both.tls12);
        assert!(!Protocols::parse(&list(&["TLSv1.3"])).unwrap().tls12);
        assert!(Protocols::parse(&list(&["TLSv1.2"])).is_err());
        assert!(Protocols::parse(&list(&["TLSv1.1", "TLSv1.2", "TLSv1.3"])).is_err());
        assert!(Protocols::parse(&[]).is_err());
    }

    #[test]
    fn missing_files_are_named() {
        let e = load_certified_key("/nonexistent/dify.crt", "/nonexistent/dify.key").unwrap_err();
        assert!(e.contains("/nonexistent/dify.crt"), "{e}");
    }
}

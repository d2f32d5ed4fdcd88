//! The TLS listener (`server.tls`): HTTP/1.1 over TLS 1.2 and 1.3 through the gateway's own
//! keep-alive loop (`proxy/connection.rs`), with `X-Forwarded-Proto: https` for Dify.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

/// A self-signed certificate for `localhost`, written as PEM files into the gateway's directory.
struct TestCert {
    cert_pem: String,
    cert_path: String,
    key_path: String,
}

fn test_cert(builder: &GatewayBuilder) -> TestCert {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert_path = builder.temp_path("cert.pem");
    let key_path = builder.temp_path("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    TestCert {
        cert_pem,
        cert_path: cert_path.display().to_string(),
        key_path: key_path.display().to_string(),
    }
}

fn connector(cert_pem: &str, version: &'static rustls::SupportedProtocolVersion) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(certificate_der(cert_pem)).unwrap();
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// The one certificate in a PEM text, as DER.
fn certificate_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// The gateway with a TLS listener on a certificate of its own, once that listener accepts.
async fn start_with_tls(builder: GatewayBuilder) -> (Gateway, SocketAddr, TestCert) {
    let tls_addr = free_addr();
    let cert = test_cert(&builder);
    let gw = builder
        .server(
            "tls",
            &format!(
                "{{ listen: {}, cert: {}, key: {} }}",
                yq(&tls_addr.to_string()),
                yq(&cert.cert_path),
                yq(&cert.key_path)
            ),
        )
        .start()
        .await;
    tls_port_ready(tls_addr).await;
    (gw, tls_addr, cert)
}

async fn tls_port_ready(addr: SocketAddr) {
    let up = poll_until(WAIT, || async { TcpStream::connect(addr).await.ok() }).await;
    assert!(up.is_some(), "the TLS listener did not come up");
}

#[tokio::test]
async fn tls_1_2_and_1_3_keep_a_connection_alive_and_tell_dify_https() {
    let api = MockUpstream::echo("api").await;
    let (gw, tls_addr, cert) =
        start_with_tls(Gateway::builder().upstream("api", &[api.addr])).await;
    for (name, version) in [
        ("1.2", &rustls::version::TLS12),
        ("1.3", &rustls::version::TLS13),
    ] {
        let tcp = TcpStream::connect(tls_addr).await.unwrap();
        let server = ServerName::try_from("localhost").unwrap();
        let mut tls = connector(&cert.cert_pem, version)
            .connect(server, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS {name} handshake: {e}"));
        // Two requests on one connection, with a pause between them: the second is served by
        // the connection loop after an idle wait, over the same TLS session.
        for (i, pause) in [0u64, 300].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let req = format!("GET /v1/tls/{name}/{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            tls.write_all(req.as_bytes()).await.unwrap();
            let (status, _) = read_response(&mut tls, &mut Vec::new()).await;
            assert!(
                status.starts_with("HTTP/1.1 200"),
                "TLS {name} #{i}: {status}"
            );
        }
    }
    let seen = api.received();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for r in &seen {
        assert_eq!(r.header("x-forwarded-proto"), Some("https"), "{}", r.uri);
    }
    drop(gw);
}

/// A client that fails its TLS handshake is the client's problem: Pingora logs it at ERROR, the
/// gateway at INFO, so an alert on ERROR is not paged for every scanner.
#[tokio::test]
async fn a_failed_client_handshake_is_not_an_error_in_the_log() {
    let (gw, tls_addr, _cert) = start_with_tls(Gateway::builder()).await;
    let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let logged = poll_until(WAIT, || async {
        gw.log_lines().into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Downstream handshake error"))
        })
    })
    .await;
    let line = logged.unwrap_or_else(|| panic!("no handshake line:\n{}", gw.stderr()));
    assert_eq!(line["level"], "INFO", "{line}");
    let errors: Vec<_> = gw
        .log_lines()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

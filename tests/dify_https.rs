//! Dify's HTTPS settings on the embedded default (no `-c`): `NGINX_HTTPS_ENABLED=true` opens
//! `NGINX_SSL_PORT` beside the plain port, with the certificate chosen as Dify's nginx entrypoint
//! chooses it (certbot's directory for `CERTBOT_DOMAIN` when both files are there, else
//! `/etc/ssl`; both roots moved into the test's directory with `DIFY_GATEWAY_LETSENCRYPT_DIR`
//! and `DIFY_GATEWAY_SSL_DIR`), `NGINX_SSL_PROTOCOLS` honoured, and a renewed certificate served
//! after SIGHUP.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

/// A fresh self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn new_cert() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn write_cert(dir: &Path, cert: &(String, String)) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("dify.crt"), &cert.0).unwrap();
    std::fs::write(dir.join("dify.key"), &cert.1).unwrap();
}

/// A client trusting only `cert_pem`, speaking only `versions`.
fn connector(
    cert_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS12, &rustls::version::TLS13];

/// `GET /apps` over TLS; the status line, or why there is none (the handshake's error, or the
/// connection closed without an answer).
async fn get_tls(
    addr: SocketAddr,
    cert_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector(cert_pem, versions)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /apps HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await;
    read.map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    match answer.lines().next() {
        Some(status) if !status.is_empty() => Ok(status.to_string()),
        _ => Err("closed without an answer".into()),
    }
}

async fn get_plain(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /apps HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut s, &mut Vec::new()).await.0
}

struct Https {
    builder: GatewayBuilder,
    tls_addr: SocketAddr,
    letsencrypt: std::path::PathBuf,
    ssl: std::path::PathBuf,
}

/// An embedded-default gateway with Dify's HTTPS variables, web going to `web`, the two
/// certificate roots in the test's directory (the files are for the test to write).
fn https(web: SocketAddr, extra: &[(&str, &str)]) -> Https {
    let tls_addr = free_addr();
    let mut builder = Gateway::builder()
        .embedded_default()
        .upstream("web", &[web]);
    let letsencrypt = builder.temp_path("letsencrypt-live");
    let ssl = builder.temp_path("ssl");
    std::fs::create_dir_all(&letsencrypt).unwrap();
    std::fs::create_dir_all(&ssl).unwrap();
    for (k, v) in [
        ("NGINX_HTTPS_ENABLED", "true"),
        ("NGINX_SSL_PORT", &tls_addr.port().to_string()),
        ("NGINX_SSL_CERT_FILENAME", "dify.crt"),
        ("NGINX_SSL_CERT_KEY_FILENAME", "dify.key"),
        ("CERTBOT_DOMAIN", "dify.example"),
        ("DIFY_GATEWAY_LETSENCRYPT_DIR", path_str(&letsencrypt)),
        ("DIFY_GATEWAY_SSL_DIR", path_str(&ssl)),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        builder = builder.env(k, v);
    }
    Https {
        builder,
        tls_addr,
        letsencrypt,
        ssl,
    }
}

async fn tls_ready(addr: SocketAddr) {
    let up = poll_until(WAIT, || async { TcpStream::connect(addr).await.ok() }).await;
    assert!(up.is_some(), "the TLS listener did not come up");
}

#[tokio::test]
async fn both_ports_answer_with_the_certificate_from_etc_ssl() {
    let web = MockUpstream::echo("web").await;
    let h = https(web.addr, &[]);
    let cert = new_cert();
    write_cert(&h.ssl, &cert);
    // Only the certificate in certbot's directory: not both files, so /etc/ssl is used.
    let le = h.letsencrypt.join("dify.example");
    std::fs::create_dir_all(&le).unwrap();
    std::fs::write(le.join("dify.crt"), new_cert().0).unwrap();
    let gw = h.builder.start().await;
    tls_ready(h.tls_addr).await;
    let status = get_tls(h.tls_addr, &cert.0, BOTH).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let status = get_plain(gw.listen).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    for r in web.received() {
        assert_eq!(r.uri, "/apps");
    }
    assert!(
        !gw.stderr().contains("NGINX_SSL_PORT"),
        "the HTTPS variables are implemented, not warned: {}",
        gw.stderr()
    );
}

#[tokio::test]
async fn certbots_directory_wins_when_both_files_are_there() {
    let web = MockUpstream::echo("web").await;
    let h = https(web.addr, &[]);
    let (ssl_cert, le_cert) = (new_cert(), new_cert());
    write_cert(&h.ssl, &ssl_cert);
    write_cert(&h.letsencrypt.join("dify.example"), &le_cert);
    let _gw = h.builder.start().await;
    tls_ready(h.tls_addr).await;
    let status = get_tls(h.tls_addr, &le_cert.0, BOTH).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let e = get_tls(h.tls_addr, &ssl_cert.0, BOTH).await.unwrap_err();
    assert!(e.contains("certificate"), "{e}");
}

/// Without `CERTBOT_DOMAIN`, certbot's directory is not looked at (the files at its top are not
/// a domain's), as in Dify's entrypoint.
#[tokio::test]
async fn without_a_domain_certbots_directory_is_skipped() {
    let web = MockUpstream::echo("web").await;
    let h = https(web.addr, &[("CERTBOT_DOMAIN", "")]);
    let (ssl_cert, stray) = (new_cert(), new_cert());
    write_cert(&h.ssl, &ssl_cert);
    write_cert(&h.letsencrypt, &stray);
    let _gw = h.builder.start().await;
    tls_ready(h.tls_addr).await;
    let status = get_tls(h.tls_addr, &ssl_cert.0, BOTH).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

#[tokio::test]
async fn tls_1_3_alone_refuses_a_tls_1_2_client() {
    let web = MockUpstream::echo("web").await;
    let h = https(web.addr, &[("NGINX_SSL_PROTOCOLS", "TLSv1.3")]);
    let cert = new_cert();
    write_cert(&h.ssl, &cert);
    let _gw = h.builder.start().await;
    tls_ready(h.tls_addr).await;
    let status = get_tls(h.tls_addr, &cert.0, &[&rustls::version::TLS13])
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        get_tls(h.tls_addr, &cert.0, &[&rustls::version::TLS12])
            .await
            .is_err(),
        "a TLS 1.2 client was served with NGINX_SSL_PROTOCOLS=TLSv1.3"
    );
    // Both is the default, and a TLS 1.2 client is served then: tests/tls.rs.
}

#[tokio::test]
async fn tls_1_2_alone_is_refused_at_start_up() {
    let web = MockUpstream::echo("web").await;
    let h = https(web.addr, &[("NGINX_SSL_PROTOCOLS", "TLSv1.2")]);
    write_cert(&h.ssl, &new_cert());
    let mut gw = h.builder.launch();
    let status = gw.wait_exit(WAIT).await.expect("the gateway kept running");
    assert!(!status.success());
    assert!(
        gw.stderr().contains("server.tls.protocols"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn a_missing_certificate_stops_the_start_naming_the_path() {
    let web = MockUpstream::echo("web").await;
    let h = https(web.addr, &[]);
    let expected = h.ssl.join("dify.crt");
    let mut gw = h.builder.launch();
    let status = gw.wait_exit(WAIT).await.expect("the gateway kept running");
    assert!(!status.success());
    assert!(gw.stderr().contains(path_str(&expected)), "{}", gw.stderr());
}

/// Certbot's first certificate appears beside the one in `/etc/ssl`: the directory chosen at
/// start is not watched for it, a SIGHUP (a reload) chooses again, as a restart of Dify's nginx
/// would. After it, a change in `/etc/ssl` no longer matters.
#[tokio::test]
async fn certbots_first_certificate_is_served_after_sighup() {
    let web = MockUpstream::echo("web").await;
    let h = https(web.addr, &[]);
    let (old, renewed) = (new_cert(), new_cert());
    write_cert(&h.ssl, &old);
    let gw = h.builder.start().await;
    tls_ready(h.tls_addr).await;
    assert!(get_tls(h.tls_addr, &old.0, BOTH).await.is_ok());
    write_cert(&h.letsencrypt.join("dify.example"), &renewed);
    assert!(
        get_tls(h.tls_addr, &old.0, BOTH).await.is_ok(),
        "changed before the SIGHUP"
    );
    gw.signal(libc::SIGHUP);
    let served = poll_until(WAIT, || async {
        get_tls(h.tls_addr, &renewed.0, BOTH).await.ok()
    })
    .await;
    assert!(
        served.is_some_and(|s| s.starts_with("HTTP/1.1 200")),
        "the renewed certificate was not served: {}",
        gw.stderr()
    );
    // The watch moved with the choice: a renewal in certbot's directory is picked up with no
    // signal.
    let again = new_cert();
    write_cert(&h.letsencrypt.join("dify.example"), &again);
    let served = poll_until(WAIT, || async {
        get_tls(h.tls_addr, &again.0, BOTH).await.ok()
    })
    .await;
    assert!(served.is_some(), "{}", gw.stderr());
    assert!(
        !gw.stderr().contains("PRIVATE KEY"),
        "key material in the log"
    );
}

/// `NGINX_ENABLE_CERTBOT_CHALLENGE=true`: certbot's token file from the webroot
/// (`DIFY_GATEWAY_CERTBOT_WEBROOT` in the test's directory), as `text/plain`; nothing else of the
/// webroot, and nothing of the prefix goes to Dify's web.
#[tokio::test]
async fn the_certbot_challenge_is_served_from_the_webroot() {
    let web = MockUpstream::echo("web").await;
    let builder = Gateway::builder()
        .embedded_default()
        .upstream("web", &[web.addr]);
    let webroot = builder.temp_path("www");
    let challenges = webroot.join(".well-known/acme-challenge");
    std::fs::create_dir_all(challenges.join("adir")).unwrap();
    let token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
    std::fs::write(challenges.join(token), format!("{token}.thumbprint")).unwrap();
    std::fs::write(webroot.join("secret"), "not for the web").unwrap();
    std::os::unix::fs::symlink(webroot.join("secret"), challenges.join("link")).unwrap();
    let gw = builder
        .env("NGINX_ENABLE_CERTBOT_CHALLENGE", "true")
        .env("DIFY_GATEWAY_CERTBOT_WEBROOT", path_str(&webroot))
        .start()
        .await;
    let path = format!("/.well-known/acme-challenge/{token}");
    let r = Req::get(&path).send(gw.listen).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.body, format!("{token}.thumbprint").as_bytes());
    // Percent-encoded and dotted spellings are normalised first, then served or refused alike.
    let r = Req::get(&format!(
        "/.well-known/./acme-challenge/%{:x}{}",
        b'L',
        &token[1..]
    ))
    .send(gw.listen)
    .await;
    assert_eq!(r.status, 200);
    for missing in [
        "/.well-known/acme-challenge/nosuchtoken",
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge/adir",
        "/.well-known/acme-challenge/adir/",
        "/.well-known/acme-challenge/link",
    ] {
        let r = Req::get(missing).send(gw.listen).await;
        assert_eq!(r.status, 404, "{missing}: {:?}", r.body);
    }
    // Climbing out normalises to a path outside the prefix (as in nginx): Dify's web's, not a
    // file of the webroot.
    for out in [
        "/.well-known/acme-challenge/%2e%2e/%2e%2e/secret",
        "/.well-known/acme-challenge/..%2fsecret",
    ] {
        let r = Req::get(out).send(gw.listen).await;
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains("not for the web"), "{out}: {body}");
        assert!(body.contains("\"upstream\":\"web\""), "{out}: {body}");
    }
    // HEAD: the head alone (read to the close, so a body sent by mistake would show).
    let mut conn = TcpStream::connect(gw.listen).await.unwrap();
    let req = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut head))
        .await
        .expect("the HEAD answer and the close in time")
        .unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/plain\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "a body after the head: {head}");
    let post = raw_http(
        gw.listen,
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(post.status, 405);
    // The rest of /.well-known/ is still Dify's web's.
    let r = Req::get("/.well-known/security.txt").send(gw.listen).await;
    assert_eq!(r.status, 200);
    let seen: Vec<String> = web.received().iter().map(|r| r.uri.clone()).collect();
    assert!(
        seen.iter()
            .all(|u| u.contains("%2") || u == "/.well-known/security.txt"),
        "a challenge went to Dify's web: {seen:?}"
    );
}

#[tokio::test]
async fn without_the_certbot_switch_the_prefix_goes_to_dify_web() {
    let web = MockUpstream::echo("web").await;
    let gw = Gateway::builder()
        .embedded_default()
        .upstream("web", &[web.addr])
        .start()
        .await;
    let r = Req::get("/.well-known/acme-challenge/tok")
        .send(gw.listen)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(web.received().len(), 1);
}

/// Certbot renews by swapping the symlinks in `live/<domain>/`: served without a SIGHUP.
#[tokio::test]
async fn a_renewed_certbot_certificate_is_served_without_a_signal() {
    let web = MockUpstream::echo("web").await;
    let h = https(web.addr, &[]);
    let (old, renewed) = (new_cert(), new_cert());
    let live = h.letsencrypt.join("dify.example");
    let archive = h.letsencrypt.join("archive");
    write_cert(&archive.join("1"), &old);
    write_cert(&archive.join("2"), &renewed);
    std::fs::create_dir_all(&live).unwrap();
    let link = |n: &str| {
        for file in ["dify.crt", "dify.key"] {
            let tmp = live.join(format!("{file}.new"));
            std::os::unix::fs::symlink(archive.join(n).join(file), &tmp).unwrap();
            std::fs::rename(&tmp, live.join(file)).unwrap();
        }
    };
    link("1");
    let gw = h.builder.start().await;
    tls_ready(h.tls_addr).await;
    assert!(get_tls(h.tls_addr, &old.0, BOTH).await.is_ok());
    link("2");
    let served = poll_until(WAIT, || async {
        get_tls(h.tls_addr, &renewed.0, BOTH).await.ok()
    })
    .await;
    assert!(
        served.is_some_and(|s| s.starts_with("HTTP/1.1 200")),
        "the renewed certificate was not served: {}",
        gw.stderr()
    );
}

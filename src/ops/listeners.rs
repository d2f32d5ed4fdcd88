//! The listening sockets, checked before anything reports healthy.
//!
//! Pingora binds a service's listeners inside that service's task and, when it cannot, panics in
//! that task alone: the process stays up, the admin port answers `/healthz`, and nothing serves
//! the public port. So every address is bound once here, before the server starts (a failure is
//! a non-zero exit naming the address and the OS error); a panic of Pingora's listener setup
//! still ends the process; and `/readyz` says ready only once every listener accepts.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;

static ACCEPTING: AtomicBool = AtomicBool::new(false);

/// Whether every public listener has accepted a connection.
pub fn all_accepting() -> bool {
    ACCEPTING.load(Ordering::Relaxed)
}

/// Binds (and releases) each of `addrs`, `(config key, address)`; the first that cannot be bound
/// is the error. With the same `SO_REUSEADDR` as Pingora, so a port in `TIME_WAIT` is no failure.
pub fn check_bindable<'a>(
    addrs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    for (key, addr) in addrs {
        let resolved = addr
            .to_socket_addrs()
            .map_err(|e| format!("{key}: cannot resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{key}: {addr} resolves to no address"))?;
        if let Err(e) = std::net::TcpListener::bind(resolved) {
            return Err(format!(
                "{key}: cannot listen on {addr}: {e}{}",
                hint(&e, resolved.port())
            ));
        }
    }
    Ok(())
}

/// What to do about the two failures an operator meets.
fn hint(e: &std::io::Error, port: u16) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied if port < 1024 => {
            let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok());
            let start = start.map_or(String::new(), |s| format!(" (here: {s})"));
            format!(
                " (ports below net.ipv4.ip_unprivileged_port_start{start} need root or \
                 CAP_NET_BIND_SERVICE; Docker lowers it to 0 in a container, Podman does not: \
                 listen on a port from 1024 up, e.g. NGINX_PORT=8080, and publish it as 80, or \
                 set the sysctl)"
            )
        }
        ErrorKind::AddrInUse => " (another process listens there)".to_string(),
        _ => String::new(),
    }
}

/// Ends the process when Pingora's listener setup panics (it cannot bind after all, or the
/// address was taken between [`check_bindable`] and the server's start).
pub fn exit_on_listener_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("Failed to build listeners") {
            eprintln!("dify-gateway: cannot listen: {message}");
            std::process::exit(1);
        }
        default(info);
    }));
}

/// Connects to each public listener until all accept, then marks them so for `/readyz`.
pub struct ListenerProbe {
    pub addrs: Vec<String>,
}

#[async_trait]
impl BackgroundService for ListenerProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let targets: Vec<SocketAddr> = self
            .addrs
            .iter()
            .filter_map(|a| a.to_socket_addrs().ok()?.next())
            .map(reachable)
            .collect();
        let probe = async {
            for target in targets {
                let mut wait = Duration::from_millis(5);
                // The connection is closed at once: the plain listener sees a client that left
                // before a request, which it does not log.
                let connect =
                    || tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target));
                while !matches!(connect().await, Ok(Ok(_))) {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
            }
        };
        tokio::select! {
            _ = probe => {
                ACCEPTING.store(true, Ordering::Relaxed);
                log::info!("every listener accepts connections");
            }
            _ = shutdown.changed() => {}
        }
    }
}

/// A wildcard address is reached on loopback.
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => {}
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_names_the_key_the_address_and_the_os_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = check_bindable([("server.listen[0]", addr.as_str())]).unwrap_err();
        assert!(
            err.starts_with(&format!("server.listen[0]: cannot listen on {addr}: ")),
            "{err}"
        );
        assert!(err.contains("in use"), "{err}");
    }

    #[test]
    fn a_privileged_port_says_what_to_do() {
        let e = std::io::Error::from(ErrorKind::PermissionDenied);
        let h = hint(&e, 80);
        assert!(
            h.contains("ip_unprivileged_port_start") && h.contains("Podman"),
            "{h}"
        );
        assert_eq!(hint(&e, 8080), "");
    }

    #[test]
    fn free_ports_pass() {
        assert_eq!(
            check_bindable([("server.listen[0]", "127.0.0.1:0")]),
            Ok(())
        );
    }
}

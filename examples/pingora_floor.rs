//! The floor under the gateway's per-request cost: the smallest Pingora reverse proxy (one
//! upstream, no routing, no logging, no headers added), built from the same Pingora version.
//! `bench/run` measures it beside the gateway and nginx so the report can say how much of the
//! gateway's cost is Pingora's own and how much is ours.
//!
//! `cargo run --release --example pingora_floor -- LISTEN UPSTREAM THREADS`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

struct Floor {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, threads] = args.as_slice() else {
        eprintln!("usage: pingora_floor LISTEN UPSTREAM THREADS");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: threads.parse().expect("THREADS is a number"),
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let floor = Floor {
        upstream: upstream.parse().expect("UPSTREAM is host:port"),
    };
    let mut proxy = http_proxy_service(&server.configuration, floor);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}

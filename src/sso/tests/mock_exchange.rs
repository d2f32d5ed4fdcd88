//! Test doubles: an in-process management service on 127.0.0.1 and a log capture, for the flow
//! tests. The listener is bound before `start` returns, so it is ready without waiting.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
pub enum Reply {
    /// Status, content type and body.
    Answer(u16, &'static str, String),
    /// Waits this long before answering 200 (for timeouts).
    Slow(Duration),
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::Answer(status, "application/json", body.to_string())
    }
}

pub struct MockExchange {
    pub url: String,
    /// Request heads received, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockExchange {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockExchange {
    pub async fn start(reply: Reply) -> MockExchange {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_in_task = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let reply = reply.clone();
                let seen = seen_in_task.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let (status, ctype, body) = match reply {
                        Reply::Answer(s, c, b) => (s, c, b),
                        Reply::Slow(d) => {
                            tokio::time::sleep(d).await;
                            (200, "application/json", "{}".to_string())
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        MockExchange {
            url: format!("http://{addr}/get_dify_token"),
            seen,
            task,
        }
    }

    /// The decoded query parameters of the `n`th exchange request.
    pub fn params(&self, n: usize) -> Vec<(String, String)> {
        let head = self.seen.lock().unwrap()[n].clone();
        let target = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let query = target
            .split_once('?')
            .map(|(_, q)| q.to_string())
            .unwrap_or_default();
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    pub fn head(&self, n: usize) -> String {
        self.seen.lock().unwrap()[n].clone()
    }
}

/// A URL on 127.0.0.1 where nothing listens.
pub async fn unreachable_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/get_dify_token")
}

/// Everything logged by any test, message and key-values, to check that no secret gets there.
pub fn captured_logs() -> String {
    CAPTURE
        .get()
        .map(|c| c.lines.lock().unwrap().join("\n"))
        .unwrap_or_default()
}

static CAPTURE: OnceLock<Capture> = OnceLock::new();

struct Capture {
    lines: Mutex<Vec<String>>,
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        struct Kv<'a>(&'a mut String);
        impl<'kvs> log::kv::VisitSource<'kvs> for Kv<'_> {
            fn visit_pair(
                &mut self,
                k: log::kv::Key<'kvs>,
                v: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push_str(&format!(" {k}={v}"));
                Ok(())
            }
        }
        let mut line = format!("{} {}", record.level(), record.args());
        let _ = record.key_values().visit(&mut Kv(&mut line));
        self.lines.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

pub fn capture_logs() {
    let capture = CAPTURE.get_or_init(|| Capture {
        lines: Mutex::new(Vec::new()),
    });
    if log::set_logger(capture).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

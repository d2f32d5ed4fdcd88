//! The process over its life: reload under load, a refused reload, graceful binary upgrade under
//! load, draining on SIGTERM with a stream open, and the metrics that describe all of it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// A bounded load from the test itself: `workers` keep-alive clients sending `GET path` until
/// stopped (or `limit` passes), counting answers that are not 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Instant::now();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, errors, url) = (
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    errors.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        let answer = match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                r.bytes().await.map(|_| ()).map_err(|e| format!("{e:?}"))
                            }
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        match answer {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                errors.lock().unwrap().push(e);
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            tasks,
        }
    }

    /// Stops the load; (answered, failed, first errors).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let errors = self
            .errors
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .cloned()
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Which mock answered `GET /probe` right now.
async fn probe_answer(gw: &Gateway) -> String {
    Req::get("/probe").send(gw.listen).await.echo().upstream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_nothing_and_apply_within_a_second() {
    let a = MockUpstream::echo("a").await;
    let b = MockUpstream::echo("b").await;
    let builder = Gateway::builder()
        .upstream("a", &[a.addr])
        .upstream("b", &[b.addr])
        .route("/probe", "a");
    let to_a = builder.to_yaml();
    let to_b = to_a.replace("upstream: \"a\"", "upstream: \"b\"");
    assert_ne!(to_a, to_b);
    let gw = builder.start().await;
    assert_eq!(probe_answer(&gw).await, "a");

    let load = Load::start(gw.url("/probe"), 4, Duration::from_secs(60));
    for i in 0..20 {
        let (yaml, want) = if i % 2 == 0 {
            (&to_b, "b")
        } else {
            (&to_a, "a")
        };
        std::fs::write(&gw.config_path, yaml).unwrap();
        gw.signal(libc::SIGHUP);
        let switched = poll_until(Duration::from_secs(1), || async {
            (probe_answer(&gw).await == want).then_some(())
        })
        .await;
        assert!(
            switched.is_some(),
            "reload {i}: /probe did not move to {want} within 1 s"
        );
    }
    let (ok, failed, errors) = load.finish().await;
    eprintln!("20 reloads under load: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0, "requests failed during reloads: {errors:?}");
    assert!(
        ok >= 1000,
        "the load was too light to mean anything: {ok} requests"
    );
    assert_eq!(
        gw.metric(
            "dify_gateway_config_reloads_total",
            &[("result", "success")]
        )
        .await,
        20.0
    );
    assert_eq!(gw.metric("dify_gateway_config_generation", &[]).await, 21.0);
}

#[tokio::test]
async fn an_invalid_config_on_sighup_changes_nothing() {
    let a = MockUpstream::echo("a").await;
    let gw = Gateway::builder()
        .upstream("a", &[a.addr])
        .route("/probe", "a")
        .start()
        .await;
    std::fs::write(
        &gw.config_path,
        "server:\n  threads: 1\nroutes:\n  - { prefix: /probe, upstream: nope }\n",
    )
    .unwrap();
    gw.signal(libc::SIGHUP);
    let refused = poll_until(WAIT, || async {
        let n = gw
            .metric("dify_gateway_config_reloads_total", &[("result", "error")])
            .await;
        (n == 1.0).then_some(())
    })
    .await;
    assert!(refused.is_some(), "the refused reload was not counted");
    assert_eq!(
        probe_answer(&gw).await,
        "a",
        "the old configuration must keep serving"
    );
    let logged = gw.log_lines().into_iter().any(|l| {
        l["level"] == "ERROR"
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains(":4: routes[0].upstream: unknown upstream"))
    });
    assert!(
        logged,
        "the error must be logged with line and field:\n{}",
        gw.stderr()
    );
    assert_eq!(gw.metric("dify_gateway_config_generation", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_under_load_refuses_nothing() {
    let a = MockUpstream::echo("a").await;
    let builder = Gateway::builder()
        .upstream("a", &[a.addr])
        .route("/probe", "a");
    let sock = builder.temp_path("upgrade.sock");
    let mut old = builder
        .server("upgrade_sock", &yq(&sock.display().to_string()))
        .server("grace_period", "1s")
        .server("graceful_shutdown_timeout", "2s")
        .start()
        .await;
    let load = Load::start(old.url("/probe"), 4, Duration::from_secs(60));

    // The new binary waits on the upgrade socket for the listeners of the old one.
    let new_log = tempfile::NamedTempFile::new().unwrap();
    let mut new = std::process::Command::new(BIN)
        .arg("-u")
        .arg("-c")
        .arg(&old.config_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(new_log.reopen().unwrap())
        .spawn()
        .unwrap();
    let _kill_new = KillOnDrop(new.id() as i32);
    let waiting = poll_until(WAIT, || async { sock.exists().then_some(()) }).await;
    assert!(
        waiting.is_some(),
        "the new process never opened the upgrade socket"
    );

    old.signal(libc::SIGQUIT);
    let exited = old.wait_exit(Duration::from_secs(20)).await;
    assert!(
        exited.is_some(),
        "the old process did not exit after handing over:\n{}",
        old.stderr()
    );
    // The listeners are the new process's now; keep the load on it a little longer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, errors) = load.finish().await;
    assert!(new.try_wait().unwrap().is_none(), "the new process died");
    let new_stderr = std::fs::read_to_string(new_log.path()).unwrap();
    eprintln!("graceful upgrade under load: {ok} requests answered, {failed} failed");
    assert_eq!(
        failed, 0,
        "requests failed during the upgrade: {errors:?}\nnew process:\n{new_stderr}"
    );
    assert!(
        ok >= 500,
        "the load was too light to mean anything: {ok} requests"
    );
    assert_eq!(
        probe_answer(&old).await,
        "a",
        "the new process serves on the same address"
    );
}

#[tokio::test]
async fn sigterm_keeps_an_open_stream_flowing_then_exits_in_time() {
    let sse = MockUpstream::sse("web", 100, Duration::from_millis(100)).await;
    let mut gw = Gateway::builder()
        .upstream("web", &[sse.addr])
        .server("grace_period", "2s")
        .server("graceful_shutdown_timeout", "2s")
        .start()
        .await;
    let mut stream = client().get(gw.url("/stream")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(WAIT, stream.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_some_and(|c| String::from_utf8_lossy(&c).contains("event 0")));

    gw.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let mut after = 0;
    while let Ok(Ok(Some(chunk))) =
        tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await
    {
        after += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    assert!(
        after >= 10,
        "only {after} events after SIGTERM: the stream must flow during the grace period"
    );
    let exited = gw.wait_exit(Duration::from_secs(8)).await;
    assert!(exited.is_some(), "still running 8 s after SIGTERM");
    assert!(
        signalled.elapsed() < Duration::from_secs(2 + 2 + 2),
        "exit took {:?}, more than grace_period + graceful_shutdown_timeout",
        signalled.elapsed()
    );
}

/// grace_period for the early-exit tests: long, so that waiting it out cannot pass for leaving early.
const LONG_GRACE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn sigterm_on_an_idle_gateway_exits_at_once_not_after_the_grace_period() {
    let a = MockUpstream::echo("a").await;
    let mut gw = Gateway::builder()
        .upstream("a", &[a.addr])
        .route("/probe", "a")
        .server("grace_period", "20s")
        .server("graceful_shutdown_timeout", "5s")
        .start()
        .await;
    // A kept-alive connection from an earlier request is idle, not in flight.
    let c = client();
    assert_eq!(c.get(gw.url("/probe")).send().await.unwrap().status(), 200);

    gw.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let exited = gw.wait_exit(LONG_GRACE).await;
    let took = signalled.elapsed();
    assert!(
        exited.is_some_and(|s| s.success()),
        "no clean exit within grace_period: {exited:?}\n{}",
        gw.stderr()
    );
    assert!(
        took < LONG_GRACE / 10,
        "an idle gateway took {took:?} to exit after SIGTERM (grace_period 20 s)"
    );
}

#[tokio::test]
async fn sigterm_with_a_request_in_flight_finishes_it_then_exits() {
    let delay = Duration::from_millis(1500);
    let slow = MockUpstream::slow("slow", delay).await;
    let mut gw = Gateway::builder()
        .upstream("slow", &[slow.addr])
        .route("/slow", "slow")
        .server("grace_period", "20s")
        .server("graceful_shutdown_timeout", "5s")
        .start()
        .await;
    let url = gw.url("/slow/answer");
    let request = tokio::spawn(async move {
        let resp = client().get(url).send().await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    });
    let arrived = poll_until(WAIT, || async {
        (!slow.received_under("/slow/answer").is_empty()).then_some(())
    })
    .await;
    assert!(arrived.is_some(), "the request never reached the upstream");

    gw.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let (status, body) = request
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/slow/answer"), "{body}");
    let exited = gw.wait_exit(LONG_GRACE).await;
    let took = signalled.elapsed();
    assert!(
        exited.is_some_and(|s| s.success()),
        "no clean exit: {exited:?}\n{}",
        gw.stderr()
    );
    assert!(
        took < delay + LONG_GRACE / 10,
        "exit took {took:?} after SIGTERM: it should follow the last answer, not the grace period"
    );
}

/// Whether process `pid` is gone (or a zombie nobody reaped: a daemon's parent has exited).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[tokio::test]
async fn a_daemon_removes_its_pid_file_when_it_exits() {
    let a = MockUpstream::echo("a").await;
    let builder = Gateway::builder();
    let pid_file = builder.temp_path("gateway.pid");
    let config_path = builder.temp_path("daemon.yaml");
    // Kept to the end: it owns the temporary directory.
    let builder = builder
        .upstream("a", &[a.addr])
        .route("/probe", "a")
        .server("grace_period", "20s")
        .server("pid_file", &yq(&pid_file.display().to_string()));
    let admin = builder.admin;
    std::fs::write(&config_path, builder.to_yaml()).unwrap();
    let status = std::process::Command::new(BIN)
        .arg("-d")
        .arg("-c")
        .arg(&config_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the daemon's parent failed: {status}");
    let pid = poll_until(WAIT, || async {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    })
    .await
    .expect("the daemon wrote no pid file");
    let _kill = KillOnDrop(pid);
    let ready = poll_until(WAIT, || async {
        let r = client()
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the daemon never became ready");

    // SAFETY: kill(2) on the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let gone = poll_until(LONG_GRACE, || async { process_gone(pid).then_some(()) }).await;
    assert!(gone.is_some(), "the daemon did not exit after SIGTERM");
    let removed = poll_until(WAIT, || async { (!pid_file.exists()).then_some(()) }).await;
    assert!(removed.is_some(), "{} is left behind", pid_file.display());
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let a = MockUpstream::echo("a").await;
    let gw = Gateway::builder()
        .upstream("a", &[a.addr])
        .route("/probe", "a")
        .start()
        .await;
    let labels = [
        ("route", "/probe"),
        ("upstream", "a"),
        ("status_class", "2xx"),
    ];
    let before = gw.metric("dify_gateway_requests_total", &labels).await;
    for _ in 0..5 {
        probe_answer(&gw).await;
    }
    let moved = poll_until(WAIT, || async {
        let now = gw.metric("dify_gateway_requests_total", &labels).await;
        (now == before + 5.0).then_some(())
    })
    .await;
    assert!(moved.is_some(), "requests_total did not count 5 requests");
    let histogram = gw.metrics_text().await;
    assert!(histogram.contains("dify_gateway_request_duration_seconds_bucket{route=\"/probe\""));
    assert!(histogram.contains("dify_gateway_upstream_duration_seconds_count{upstream=\"a\"}"));
    assert!(histogram.contains("dify_gateway_config_info{hash=\""));
    // A client connection is counted from accept to close.
    let open = || async { gw.metric("dify_gateway_open_connections", &[]).await };
    let before = open().await;
    let conn = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    let counted = poll_until(WAIT, || async {
        (open().await == before + 1.0).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "open_connections did not count a new connection"
    );
    drop(conn);
    let released = poll_until(WAIT, || async { (open().await == before).then_some(()) }).await;
    assert!(
        released.is_some(),
        "open_connections did not drop when the client closed"
    );
}

/// A reqwest client (the process needs its TLS provider chosen first, even for plain http).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child we started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[tokio::test]
async fn watch_config_reloads_when_the_file_changes() {
    let a = MockUpstream::echo("a").await;
    let b = MockUpstream::echo("b").await;
    let builder = Gateway::builder()
        .upstream("a", &[a.addr])
        .upstream("b", &[b.addr])
        .route("/probe", "a")
        .server("watch_config", "true");
    let to_b = builder
        .to_yaml()
        .replace("upstream: \"a\"", "upstream: \"b\"");
    let gw = builder.start().await;
    assert_eq!(probe_answer(&gw).await, "a");
    // As a ConfigMap update does: write a new file beside it, then rename it into place.
    let next = gw.config_path.with_extension("next");
    std::fs::write(&next, to_b).unwrap();
    std::fs::rename(&next, &gw.config_path).unwrap();
    let switched = poll_until(WAIT, || async {
        (probe_answer(&gw).await == "b").then_some(())
    })
    .await;
    assert!(
        switched.is_some(),
        "the file change was not picked up:\n{}",
        gw.stderr()
    );
}

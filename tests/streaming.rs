//! Streaming: Server-Sent Events event by event, websocket frames both ways, chunked uploads.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// A chat answer streamed as one event every 200 ms reaches the client event by event: the first
/// event is read long before the stream ends.
#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    const EVENTS: usize = 5;
    let sse = MockUpstream::sse("api", EVENTS, Duration::from_millis(200)).await;
    let gw = Gateway::builder().all_upstreams(sse.addr).start().await;

    let started = Instant::now();
    let req = hyper::Request::post("/v1/chat-messages")
        .header("host", gw.listen.to_string())
        .header("accept", "text/event-stream")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(
            br#"{"query":"hi","response_mode":"streaming"}"#,
        )))
        .unwrap();
    let resp = send(gw.listen, req).await;
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    assert!(resp.headers().contains_key("x-request-id"));

    let mut body = resp.into_body();
    let mut text = String::new();
    let mut arrivals = Vec::new(); // (event index, time since the request was sent)
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame");
            if let Some(data) = frame.data_ref() {
                text.push_str(std::str::from_utf8(data).unwrap());
                while arrivals.len() < text.matches("\n\n").count() {
                    arrivals.push(started.elapsed());
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .expect("stream did not end");
    let ended = started.elapsed();

    let expected: String = (0..EVENTS)
        .map(|i| format!("id: {i}\ndata: event {i}\n\n"))
        .collect();
    assert_eq!(text, expected, "events must arrive intact and in order");
    let first = arrivals[0];
    assert!(
        first + Duration::from_millis(400) <= ended,
        "first event read at {first:?} but the stream ended at {ended:?}: events are buffered (arrivals {arrivals:?})"
    );
    let last = arrivals[EVENTS - 1];
    assert!(
        last - first >= Duration::from_millis(400),
        "events sent 200 ms apart arrived within {:?} of each other: buffered (arrivals {arrivals:?})",
        last - first
    );
}

/// Websocket frames go both ways through `/socket.io/`, with the handshake passed to the upstream.
#[tokio::test]
async fn websocket_echo_through_socket_io() {
    let ws_up = WsUpstream::start().await;
    let other = MockUpstream::echo("other").await;
    let gw = Gateway::builder()
        .all_upstreams(other.addr)
        .upstream("websocket", &[ws_up.addr])
        .start()
        .await;

    let stream = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gw.listen);
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("websocket handshake timed out")
        .expect("websocket handshake through the gateway");
    assert_eq!(resp.status().as_u16(), 101);

    // Server to client first, then both ways.
    assert_eq!(next_data(&mut ws).await, Message::text("welcome"));
    for i in 0..3 {
        let text = format!("42[\"message\",{{\"n\":{i}}}]");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(text));
    }
    let blob: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    let got = next_data(&mut ws).await;
    assert_eq!(
        got.into_data().as_ref(),
        blob.as_slice(),
        "a 70 kB binary frame must come back intact"
    );
    ws.close(None).await.ok();

    let hs = ws_up.handshakes();
    assert_eq!(hs.len(), 1, "one websocket handshake upstream: {hs:?}");
    assert_eq!(hs[0].uri, "/socket.io/?EIO=4&transport=websocket");
    let h = |k: &str| {
        hs[0]
            .headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    assert_eq!(h("upgrade").as_deref(), Some("websocket"));
    assert!(h("connection").is_some_and(|c| c.contains("upgrade")));
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
}

/// A 10 MiB upload sent chunked (no Content-Length) streams to the upstream intact.
#[tokio::test]
async fn chunked_upload_reaches_upstream_intact() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 160; // 10 MiB
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder().all_upstreams(api.addr).start().await;

    let chunk_bytes = |i: usize| -> Bytes {
        Bytes::from(
            (0..CHUNK)
                .map(|j| ((i * 31 + j * 7) % 256) as u8)
                .collect::<Vec<_>>(),
        )
    };
    let mut all = Vec::with_capacity(CHUNK * CHUNKS);
    for i in 0..CHUNKS {
        all.extend_from_slice(&chunk_bytes(i));
    }
    let stream = futures_util::stream::iter(
        (0..CHUNKS).map(move |i| Ok::<_, Infallible>(Frame::data(chunk_bytes(i)))),
    );
    let req = hyper::Request::post("/console/api/files/upload?source=datasets")
        .header("host", gw.listen.to_string())
        .header("content-type", "application/octet-stream")
        .body(StreamBody::new(stream))
        .unwrap();
    let resp = send(gw.listen, req).await;
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let echo: Received = serde_json::from_slice(&body).expect("echo answer");
    assert_eq!(echo.upstream, "api");
    assert_eq!(echo.uri, "/console/api/files/upload?source=datasets");
    assert_eq!(echo.body_len, (CHUNK * CHUNKS) as u64, "upload length");
    assert_eq!(echo.body_sha256, sha256_hex(&all), "upload content");
}

/// The next text or binary message (pings and pongs skipped), bounded by [`WAIT`].
async fn next_data<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no websocket message in time")
            .expect("websocket closed")
            .expect("websocket error");
        if msg.is_text() || msg.is_binary() {
            return msg;
        }
    }
}

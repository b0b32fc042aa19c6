//! Every connection has a deadline for its next step, and the listener has a connection cap:
//! raw TLS clients on a real socket play the slow, silent and half-finished peers.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Harness, Options, WAIT};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const HANDSHAKE: Duration = Duration::from_millis(400);
const FIRST_REQUEST: Duration = Duration::from_millis(400);
const IDLE: Duration = Duration::from_millis(1500);
const BODY: Duration = Duration::from_millis(400);
/// Slack for scheduling on a loaded CI machine; deadlines are checked against it from above.
const SLACK: Duration = Duration::from_millis(1500);

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn harness(max_connections: usize) -> Harness {
    Harness::with(Options {
        config: Box::new(move |c| {
            c.server.tls_handshake_timeout_ms = HANDSHAKE.as_millis() as u64;
            c.server.header_read_timeout_ms = FIRST_REQUEST.as_millis() as u64;
            c.server.idle_timeout_ms = IDLE.as_millis() as u64;
            c.server.body_read_timeout_ms = BODY.as_millis() as u64;
            c.server.max_connections = max_connections;
        }),
        ..Options::default()
    })
    .await
}

/// A TLS connection to the proxy offering `alpn`; the handshake's own result.
async fn try_connect(h: &Harness, alpn: &[u8]) -> std::io::Result<TlsStream<TcpStream>> {
    let mut tls = ccgate::tls::client_config(Some(&h.dir.join("ca.pem"))).unwrap();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(h.running().proxy_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, TlsConnector::from(Arc::new(tls)).connect(name, tcp)).await.expect("handshake timed out")
}

async fn connect(h: &Harness, alpn: &[u8]) -> TlsStream<TcpStream> {
    try_connect(h, alpn).await.expect("handshake failed")
}

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(s: &mut TlsStream<TcpStream>) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("the connection stayed open") {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

async fn assert_closed_within(s: &mut TlsStream<TcpStream>, since: Instant, deadline: Duration) -> Vec<u8> {
    let sent = until_closed(s).await;
    let took = since.elapsed();
    assert!(took >= deadline.mul_f32(0.9), "closed too early: {took:?} < {deadline:?}");
    assert!(took <= deadline + SLACK, "closed too late: {took:?} for a deadline of {deadline:?}");
    sent
}

#[tokio::test]
async fn a_connection_that_never_starts_its_tls_handshake_is_closed_at_the_handshake_deadline() {
    let h = harness(64).await;
    let mut tcp = TcpStream::connect(h.running().proxy_addr).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await.expect("the connection stayed open").unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    let took = t.elapsed();
    assert!(took >= HANDSHAKE.mul_f32(0.9) && took <= HANDSHAKE + SLACK, "{took:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_tls_connection_that_sends_nothing_is_closed_at_the_first_request_deadline() {
    let h = harness(64).await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut s = connect(&h, alpn).await;
        assert_closed_within(&mut s, Instant::now(), FIRST_REQUEST).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn a_partial_http2_preface_then_silence_is_closed() {
    let h = harness(64).await;
    let mut s = connect(&h, b"h2").await;
    let t = Instant::now();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert_closed_within(&mut s, t, FIRST_REQUEST).await;
    h.stop().await;
}

#[tokio::test]
async fn http2_headers_without_end_headers_are_closed() {
    let h = harness(64).await;
    let mut s = connect(&h, b"h2").await;
    let t = Instant::now();
    s.write_all(H2_PREFACE).await.unwrap();
    // HEADERS on stream 1, END_STREAM but not END_HEADERS, one HPACK byte (:method GET):
    // the server waits for a CONTINUATION that never comes.
    s.write_all(b"\x00\x00\x01\x01\x01\x00\x00\x00\x01\x82").await.unwrap();
    assert_closed_within(&mut s, t, FIRST_REQUEST).await;
    h.stop().await;
}

#[tokio::test]
async fn a_trickling_body_gets_408_at_the_body_deadline() {
    let h = harness(64).await;
    let mut s = connect(&h, b"http/1.1").await;
    let head = format!(
        "POST /v1/conference HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        h.token("153")
    );
    let t = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("no answer").unwrap();
    let took = t.elapsed();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("urn:ccgate:problem:request-timeout"), "{answer}");
    assert!(took >= BODY.mul_f32(0.9) && took <= BODY + SLACK, "{took:?}");
    assert_eq!(h.sim.total(), 0, "nothing reached the gateway");
    h.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_at_the_idle_deadline() {
    let h = harness(64).await;
    // HTTP/1.1: one request, then nothing. Waiting for the next head is reading a head, so
    // hyper's head deadline applies (it is the shorter one).
    let mut s = connect(&h, b"http/1.1").await;
    s.write_all(b"GET /v1/session HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let t = Instant::now();
    let sent = assert_closed_within(&mut s, t, FIRST_REQUEST).await;
    assert!(String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 401"), "the request was served");

    // HTTP/2: one complete request (GET /v1/session), then nothing but the server's frames.
    let mut s = connect(&h, b"h2").await;
    let mut hpack = vec![0x82, 0x87, 0x44, 11];
    hpack.extend_from_slice(b"/v1/session");
    hpack.extend_from_slice(&[0x41, 9]);
    hpack.extend_from_slice(b"localhost");
    let mut frame = vec![0, 0, hpack.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&hpack);
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(&frame).await.unwrap();
    let t = Instant::now();
    // Closed by the idle deadline, not the first-request one: the request counted.
    assert_closed_within(&mut s, t, IDLE).await;
    assert!(h
        .metrics()
        .await
        .contains(r#"ccgate_requests_total{gateway="",method="getSession",outcome="unauthenticated"} 2"#));
    h.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_closed_and_served_again_once_slots_free() {
    let h = harness(3).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(&h, b"http/1.1").await);
    }
    let t = Instant::now();
    // The fourth is closed at once: its handshake fails or it reads end-of-stream.
    if let Ok(mut s) = try_connect(&h, b"http/1.1").await {
        until_closed(&mut s).await;
    }
    assert!(t.elapsed() < FIRST_REQUEST, "closed at once, not at a deadline");
    let m = h.metrics().await;
    assert!(m.contains("ccgate_connections_refused_total 1"), "{m}");
    assert!(m.contains("ccgate_connections 3"), "{m}");
    // The idle ones reach their deadline; then a real client is served.
    for s in &mut idle {
        until_closed(s).await;
    }
    let r = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    h.stop().await;
}

//! Every connection has a deadline for its next step, and the listener has a connection cap:
//! raw TLS clients on a real socket play the slow, silent and half-finished peers.

use crate::common;

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

/// One HTTP/1.1 request on `s` (`Connection: close` unless `keep`); the status, and what else
/// the head said.
async fn request(s: &mut TlsStream<TcpStream>, path: &str, token: &str, keep: bool) -> String {
    let close = if keep { "" } else { "connection: close\r\n" };
    let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n{close}\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return format!("not sent: {e}");
    }
    read_head(s).await
}

/// Reads until the end of a response head; the head.
async fn read_head(s: &mut TlsStream<TcpStream>) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("no answer") {
            Ok(1) => head.push(buf[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Issue 37: at the cap the listener closes the oldest connection that has sent nothing, then
/// the one idle longest, never one with a request in flight; with every connection busy a
/// newcomer is closed at once.
#[tokio::test]
async fn at_the_cap_silent_then_idle_connections_make_room_and_busy_ones_never_do() {
    let h = harness(4).await;
    let token = h.token("153");
    // The harness's pooled connection: one request, then idle.
    assert_eq!(h.call(Method::POST, "/v1/session", Some("153"), "").await.status, StatusCode::CREATED);
    // An event stream: a request in flight for as long as it is open.
    let mut stream = connect(&h, b"http/1.1").await;
    assert!(request(&mut stream, "/v1/events", &token, true).await.starts_with("HTTP/1.1 200"));
    let silent = [connect(&h, b"http/1.1").await, connect(&h, b"http/1.1").await];

    // Two newcomers: each pushes out the oldest silent one, and is served.
    let mut newcomers = Vec::new();
    for mut old in silent {
        let mut newcomer = connect(&h, b"http/1.1").await;
        let t = Instant::now();
        until_closed(&mut old).await;
        assert!(t.elapsed() < FIRST_REQUEST, "shed at once, not at its deadline");
        assert!(request(&mut newcomer, "/v1/session", &token, true).await.starts_with("HTTP/1.1 200"));
        newcomers.push(newcomer);
    }
    // No silent one left: the longest idle (the pooled one) goes; the stream stays.
    let mut third = connect(&h, b"http/1.1").await;
    assert!(request(&mut third, "/v1/session", &token, true).await.starts_with("HTTP/1.1 200"));
    let m = h.metrics().await;
    assert!(m.lines().any(|l| l == "ccgate_connections_shed_total 3"), "{m}");
    assert!(m.lines().any(|l| l == "ccgate_connections_refused_total 0"), "{m}");

    // Every slot busy (the admin client reads /metrics on its own listener): three more
    // streams fill the cap with the first; a fifth connection is closed at once.
    drop(third);
    let mut streams = Vec::new();
    while streams.len() < 3 {
        let mut s = connect(&h, b"http/1.1").await;
        if request(&mut s, "/v1/events", &token, true).await.starts_with("HTTP/1.1 200") {
            streams.push(s);
        }
    }
    let t = Instant::now();
    if let Ok(mut s) = try_connect(&h, b"http/1.1").await {
        until_closed(&mut s).await;
    }
    assert!(t.elapsed() < FIRST_REQUEST, "closed at once, not at a deadline");
    let m = h.metrics().await;
    assert!(m.lines().any(|l| l == "ccgate_connections_refused_total 1"), "{m}");
    let mut buf = [0u8; 64];
    let open = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
    assert!(open.is_err() || open.is_ok_and(|r| r.is_ok_and(|n| n > 0)), "the first stream is still open");
    h.stop().await;
}

/// An HTTP/2 client that asks for `/v1/session` without a token and announces a window of 0:
/// the answer's head arrives, its body can never be sent.
async fn zero_window_h2(h: &Harness) -> TlsStream<TcpStream> {
    let mut s = connect(h, b"h2").await;
    let mut out = Vec::from(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]);
    // SETTINGS: INITIAL_WINDOW_SIZE = 0.
    out.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x4, 0, 0, 0, 0]);
    // HEADERS, stream 1, END_STREAM | END_HEADERS: GET https localhost /v1/session (HPACK).
    let mut block = vec![0x82, 0x87, 0x44, 11];
    block.extend_from_slice(b"/v1/session");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    out.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    // SETTINGS ACK for the server's.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]);
    s.write_all(&out).await.unwrap();
    // The answer's HEADERS (a 401) arrive; its DATA cannot.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(2).any(|w| w == [0x1, 0x4]) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("no answer").unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

/// Issue 37 review: HTTP/2 clients that never open their window hold finished answers, not
/// requests in flight: at the cap they go first, and the client that authenticated keeps its
/// connection.
#[tokio::test]
async fn zero_window_http2_clients_do_not_hold_the_listener() {
    let h = harness(4).await;
    let token = h.token("153");
    assert_eq!(h.call(Method::POST, "/v1/session", Some("153"), "").await.status, StatusCode::CREATED);
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(zero_window_h2(&h).await);
    }
    let mut served = Vec::new();
    for mut holder in holders {
        let t = Instant::now();
        let mut newcomer = connect(&h, b"http/1.1").await;
        assert!(request(&mut newcomer, "/v1/session", &token, true).await.starts_with("HTTP/1.1 200"));
        until_closed(&mut holder).await;
        assert!(t.elapsed() < IDLE, "shed for the newcomer, not closed at the idle deadline");
        served.push(newcomer);
    }
    // The harness's authenticated connection was never the one closed.
    assert_eq!(h.call(Method::GET, "/v1/session", Some("153"), "").await.status, StatusCode::OK);
    let m = h.metrics().await;
    assert!(m.lines().any(|l| l == "ccgate_connections_shed_total 3"), "{m}");
    h.stop().await;
}

/// Issue 37 review: connections kept alive after a refused request go before a client that
/// has connected and not yet sent its request.
#[tokio::test]
async fn refused_idle_connections_go_before_a_client_about_to_ask() {
    let h = harness(3).await;
    let token = h.token("153");
    assert_eq!(h.call(Method::POST, "/v1/session", Some("153"), "").await.status, StatusCode::CREATED);
    let mut refused = connect(&h, b"http/1.1").await;
    assert!(request(&mut refused, "/v1/session", "not-a-token", true).await.starts_with("HTTP/1.1 401"));
    let mut user = connect(&h, b"http/1.1").await;
    let mut newcomer = connect(&h, b"http/1.1").await;
    until_closed(&mut refused).await;
    assert!(request(&mut user, "/v1/session", &token, true).await.starts_with("HTTP/1.1 200"));
    assert!(request(&mut newcomer, "/v1/session", &token, true).await.starts_with("HTTP/1.1 200"));
    h.stop().await;
}

/// A flood of `sockets` reconnecting as soon as ccgate closes them, each sending `first` (if
/// any) and then nothing, from `source` (a loopback address) if given; it holds the cap before
/// this returns. Then `tries` requests, each on a new TLS connection: how many were served,
/// and what the first failures read.
async fn served_during_a_flood(
    h: &Harness,
    sockets: usize,
    source: Option<&str>,
    first: &'static [u8],
    tries: usize,
) -> (usize, Vec<String>) {
    let token = h.token("153");
    assert_eq!(h.call(Method::POST, "/v1/session", Some("153"), "").await.status, StatusCode::CREATED);
    let addr = h.running().proxy_addr;
    let source: Option<std::net::SocketAddr> = source.map(|ip| format!("{ip}:0").parse().unwrap());
    let stop = Arc::new(tokio::sync::Notify::new());
    let attackers: Vec<_> = (0..sockets)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    if let Some(source) = source {
                        socket.bind(source).unwrap();
                    }
                    let Ok(mut s) = socket.connect(addr).await else { continue };
                    let _ = s.write_all(first).await;
                    let mut buf = [0u8; 16];
                    tokio::select! {
                        _ = s.read(&mut buf) => {}
                        _ = stop.notified() => return,
                    }
                }
            })
        })
        .collect();
    common::eventually("the flood fills the listener", || async {
        let m = h.metrics().await;
        m.lines().any(|l| l.starts_with("ccgate_connections_shed_total ") && !l.ends_with(" 0"))
    })
    .await;
    let (mut served, mut failed) = (0, Vec::new());
    for _ in 0..tries {
        let Ok(mut s) = try_connect(h, b"http/1.1").await else { continue };
        let head = request(&mut s, "/v1/session", &token, false).await;
        if head.starts_with("HTTP/1.1 200") {
            served += 1;
        } else if failed.len() < 3 {
            failed.push(head);
        }
    }
    stop.notify_waiters();
    for a in attackers {
        a.abort();
    }
    (served, failed)
}

/// Issue 37: sockets that connect and say nothing, reopened as soon as they are closed, more of
/// them than the cap, as fast as they can; meanwhile a client makes requests, each on a new
/// TLS connection. At least 99 % are served (the measurement at 512 connections against the
/// release build is in bench/RESULTS.md).
#[tokio::test]
async fn an_idle_socket_flood_does_not_keep_clients_out() {
    const CAP: usize = 32;
    let h = harness(CAP).await;
    let tries = 200;
    let (served, failed) = served_during_a_flood(&h, CAP + CAP / 2, None, b"", tries).await;
    assert!(served * 100 >= tries * 99, "{served} of {tries} served: {failed:?}");
    h.stop().await;
}

/// Issue 37 review: sockets that send one byte rank with clients in their handshake; from an
/// address of their own, at several times the cap, they push out each other, not a client
/// from another address.
#[tokio::test]
async fn a_one_byte_flood_from_one_address_pushes_out_its_own_sockets() {
    const CAP: usize = 32;
    let h = harness(CAP).await;
    let tries = 100;
    let (served, failed) = served_during_a_flood(&h, CAP * 2, Some("127.0.0.2"), &[0x16], tries).await;
    let m = h.metrics().await;
    let shed: Vec<&str> = m.lines().filter(|l| l.starts_with("ccgate_connections_")).collect();
    assert!(served * 100 >= tries * 99, "{served} of {tries} served: {shed:?} {failed:?}");
    h.stop().await;
}

/// Issue 37: an HTTP/1 head larger than 32 KiB gets 431, however slowly it comes; HTTP/2's
/// SETTINGS announce the stream cap, the header-list limit and the 64 KiB stream window.
#[tokio::test]
async fn heads_and_http2_streams_are_bounded() {
    let h = harness(64).await;
    let mut s = connect(&h, b"http/1.1").await;
    s.write_all(b"GET /v1/session HTTP/1.1\r\nhost: localhost\r\n").await.unwrap();
    let filler = format!("x-filler: {}\r\n", "a".repeat(1000));
    let mut answered = String::new();
    for _ in 0..40 {
        if s.write_all(filler.as_bytes()).await.is_err() {
            break;
        }
    }
    answered.push_str(&String::from_utf8_lossy(&until_closed(&mut s).await));
    assert!(answered.starts_with("HTTP/1.1 431"), "{answered:?}");

    // A head just under the limit is a request like any other.
    let mut s = connect(&h, b"http/1.1").await;
    let token = h.token("153");
    let big = format!("x-filler: {}\r\n", "a".repeat(16 * 1024));
    let req = format!("GET /v1/session HTTP/1.1\r\nhost: localhost\r\n{big}authorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 409"), "no session yet: the request was read");

    let mut s = connect(&h, b"h2").await;
    s.write_all(H2_PREFACE).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(head[3], 0x4, "the server's first frame is SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tokio::time::timeout(WAIT, s.read_exact(&mut payload)).await.unwrap().unwrap();
    let settings: std::collections::HashMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
        .collect();
    assert_eq!(settings.get(&0x3), Some(&128), "MAX_CONCURRENT_STREAMS: {settings:?}");
    assert_eq!(settings.get(&0x4), Some(&65_535), "INITIAL_WINDOW_SIZE: {settings:?}");
    assert_eq!(settings.get(&0x6), Some(&32_768), "MAX_HEADER_LIST_SIZE: {settings:?}");
    h.stop().await;
}

/// Issue 37: file descriptors are a budget. Under an open-file limit of 256 (soft and hard),
/// with room in the configuration for 10,000 agents, ccgate says at start how many the limit
/// leaves room for, signs in that many, refuses the next ones with 503 `file-limit` instead of
/// failing their pollers, and its admin listener keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_file_limit_sign_ins_are_refused_and_the_admin_listener_answers() {
    let agents: Vec<String> = (1000..1100).map(|n| n.to_string()).collect();
    let mut sim = common::test_sim_config();
    sim.agents.extend(agents.iter().map(|a| (a.clone(), "fd-test-pw".to_string())));
    let h = Harness::with(Options { sim, ..Options::default() }).await;
    let creds = h.dir.join("many.toml");
    let text: String =
        agents.iter().map(|a| format!("[agents.\"{a}\"]\npassword = \"fd-test-pw\"\nphonenum = \"1{a}\"\n")).collect();
    std::fs::write(&creds, text).unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut config = h.config.clone();
    config.credentials.file = Some(creds);
    config.server.max_connections = 16;
    config.gateway.pool_max_idle_per_host = 8;
    config.sessions.signin_concurrency = 4;
    // 256 less app connections and their requests (32), admin (64), sign-ins (4) and the
    // rest (64): room for 92 agents.
    let p = common::process::Process::start_wrapped(&config, &h.dir, &["prlimit", "--nofile=256:256", "--"], &[]);
    let said = p.all_logs();
    assert!(said.contains("the open-file limit (256) cannot hold") && said.contains("past 92 agents"), "{said}");

    let mut statuses = std::collections::BTreeMap::new();
    for a in &agents {
        let r = h.call_at(&p.base, Method::POST, "/v1/session", Some(&h.token(a)), "").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(common::problem(&r)["type"], "urn:ccgate:problem:file-limit", "{}", r.text);
        }
        *statuses.entry(r.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(201, 92), (503, 8)].into_iter().collect(), "{statuses:?}");
    // Every admitted agent is polled: the simulator sees 92 signed in, and nothing failed.
    assert_eq!(agents.iter().filter(|a| h.sim.is_signed_in(a)).count(), 92);
    let r = h.send(Method::GET, &format!("{}/metrics", p.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("process_max_fds 256"), "{}", r.text);
    assert!(r.text.lines().any(|l| l == r#"ccgate_signins_total{gateway="default",result="file_limit"} 8"#));
    assert_eq!(h.send(Method::GET, &format!("{}/healthz", p.admin), &[], "").await.status, StatusCode::OK);
    let logs = p.all_logs();
    for bad in ["Too many open files", "accept failed", "event poll failed"] {
        assert!(!logs.contains(bad), "{bad}: {logs}");
    }
    h.stop().await;
}

//! A gateway that answers event polls with hostile bytes (issue 23, point 2): an unasked
//! second answer behind a real one, a body in 1-byte chunks padded with 1,000-byte chunk
//! extensions, a flood of interim `100 Continue` answers, and a new cookie flood on every
//! answer. ccgate's peak memory stays within a few MB of where it started, the session stays
//! usable, and nothing the gateway did not answer to is adopted.
//!
//! Alone in its test binary: the peak RSS it checks is the whole process's.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ccgate::devkeys::dev_pki;
use common::{eventually, Harness, Options};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Polls answered with each hostile kind, in this order, before the gateway turns normal.
const UNASKED: usize = 1;
const CHUNK_FLOOD: usize = 2;
const INTERIM_FLOOD: usize = 3;
const COOKIE_FLOODS: std::ops::RangeInclusive<usize> = 4..=13;
/// New cookies per cookie-flood answer (the issue's measurement: 60 per poll).
const COOKIES_PER_ANSWER: usize = 60;
/// What a flood writes at most before giving up on ccgate closing the connection.
const FLOOD_LIMIT: usize = 1 << 30;

const OK_BODY: &str = r#"{"message":"","retcode":"0"}"#;

#[derive(Default)]
struct Seen {
    polls: AtomicUsize,
    /// A request arrived on the connection that carried the unasked answer.
    reused_after_unasked: AtomicBool,
    /// (Guid, Cookie header) of every request other than polls.
    calls: Mutex<Vec<(String, String)>>,
    /// Guids presented on polls.
    poll_guids: Mutex<Vec<String>>,
}

fn answer(extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Writes `unit` over and over until ccgate closes the connection (or the limit).
async fn flood<S: AsyncWriteExt + Unpin>(s: &mut S, head: &[u8], unit: &[u8]) {
    if s.write_all(head).await.is_err() {
        return;
    }
    let batch: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * (64 * 1024 / unit.len()).max(1)).collect();
    let mut sent = 0;
    while sent < FLOOD_LIMIT {
        if s.write_all(&batch).await.is_err() || s.flush().await.is_err() {
            return;
        }
        sent += batch.len();
    }
}

async fn serve(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, seen: Arc<Seen>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let (tls, seen) = (tls.clone(), seen.clone());
        tokio::spawn(async move {
            let Ok(mut s) = tls.accept(tcp).await else { return };
            let mut unasked_sent = false;
            let mut buf = Vec::new();
            loop {
                // One request: its head, then its body by Content-Length.
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                if unasked_sent {
                    seen.reused_after_unasked.store(true, Ordering::SeqCst);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)))
                        .map(|(_, v)| v.trim().to_owned())
                        .unwrap_or_default()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                while buf.len() < head_end + length {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..head_end + length);
                let line = head.lines().next().unwrap_or_default().to_owned();
                let reply = if line.starts_with("PUT ")
                    && line.contains("/onlineagent/")
                    && !line.contains("forcelogin")
                {
                    answer("Set-GUID: JSESSIONID=good-1.AgentGateway0\r\n", OK_BODY)
                } else if line.starts_with("GET ") && line.contains("/agentevent/") {
                    let n = seen.polls.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.poll_guids.lock().unwrap().push(header("guid"));
                    match n {
                        UNASKED => {
                            // A real answer that fills the poller's first read (2 KiB) exactly,
                            // and one nobody asked for, carrying a Guid, right behind it in the
                            // same TLS record: rustls holds it decrypted when the first is read.
                            let mut pad: usize = 0;
                            let first = loop {
                                let body = format!(r#"{{"message":"{}","retcode":"0"}}"#, " ".repeat(pad));
                                let a = answer("", &body);
                                if a.len() == 2048 {
                                    break a;
                                }
                                pad = (pad + 2048).saturating_sub(a.len());
                            };
                            assert_eq!(first.len(), 2048);
                            let evil = answer("Set-GUID: JSESSIONID=evil-2.AgentGateway0\r\n", OK_BODY);
                            if s.write_all(format!("{first}{evil}").as_bytes()).await.is_err() {
                                return;
                            }
                            let _ = s.flush().await;
                            unasked_sent = true;
                            continue;
                        }
                        CHUNK_FLOOD => {
                            let unit = format!("1;pad={}\r\nx\r\n", "p".repeat(1000));
                            flood(&mut s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", unit.as_bytes())
                                .await;
                            return;
                        }
                        INTERIM_FLOOD => {
                            flood(&mut s, b"", b"HTTP/1.1 100 Continue\r\n\r\n").await;
                            return;
                        }
                        n if COOKIE_FLOODS.contains(&n) => {
                            let cookies: String = (0..COOKIES_PER_ANSWER)
                                .map(|i| format!("Set-Cookie: flood{n}x{i}={}; Path=/\r\n", "v".repeat(40)))
                                .collect();
                            answer(&cookies, OK_BODY)
                        }
                        _ => {
                            // An ordinary long poll with nothing to report.
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            answer("", OK_BODY)
                        }
                    }
                } else {
                    seen.calls.lock().unwrap().push((header("guid"), header("cookie")));
                    answer("", OK_BODY)
                };
                if s.write_all(reply.as_bytes()).await.is_err() || s.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_poll_answers_are_bounded_and_the_session_survives_them() {
    let dir = std::env::temp_dir().join(format!("ccgate-hostile-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = dev_pki(&["localhost", "127.0.0.1"]).unwrap();
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let tls = tokio_rustls::TlsAcceptor::from(ccgate::tls::server_config_from_files(&cert, &key).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let seen = Arc::new(Seen::default());
    tokio::spawn(serve(listener, tls, seen.clone()));

    let ca_for_proxy = ca.clone();
    let h = Harness::with(Options {
        gateway_url: Some(url),
        config: Box::new(move |c| c.gateway.ca_file = Some(ca_for_proxy)),
        ..Options::default()
    })
    .await;
    let before = peak_rss_kib();
    h.sign_in("153").await;
    eventually("every hostile answer was sent and the gateway turned normal", || async {
        seen.polls.load(Ordering::SeqCst) > *COOKIE_FLOODS.end() + 2
    })
    .await;
    let grown_mib = (peak_rss_kib().saturating_sub(before)) as f64 / 1024.0;
    eprintln!("peak RSS grew {grown_mib:.1} MiB through the hostile answers");
    assert!(grown_mib < 8.0, "peak RSS grew {grown_mib:.1} MiB (a GiB before the bounds)");

    // The unasked answer was not read as the next poll's: no reuse, its Guid never adopted.
    assert!(!seen.reused_after_unasked.load(Ordering::SeqCst), "the connection with unasked bytes was reused");
    assert!(seen.poll_guids.lock().unwrap().iter().all(|g| g == "good-1.AgentGateway0"));

    // The session is usable: a call reaches the gateway with the right Guid and a bounded jar.
    let r = h.call(Method::POST, "/agentgateway/resource/onlineagent/153/handshake", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (guid, cookie) = seen.calls.lock().unwrap().last().cloned().unwrap();
    assert_eq!(guid, "good-1.AgentGateway0");
    let jar: Vec<&str> = cookie.split("; ").filter(|c| !c.is_empty()).collect();
    assert!(
        !jar.is_empty() && jar.len() <= 16 && cookie.len() <= 4096 + 2 * 16,
        "{} cookies, {} bytes",
        jar.len(),
        cookie.len()
    );
    assert_eq!(h.call(Method::GET, "/v1/session", Some("153"), "").await.status, StatusCode::OK);

    let m = h.metrics().await;
    let value = |name: &str| {
        m.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    let dropped = value("ccgate_input_discarded_total{what=\"gateway_cookie\"}");
    assert!(dropped >= (COOKIES_PER_ANSWER * COOKIE_FLOODS.count() - 16) as f64, "cookies dropped: {dropped}\n{m}");
    let malformed =
        value("ccgate_upstream_errors_total{gateway=\"default\",kind=\"malformed\",method=\"getAgentEvent\"}")
            + value("ccgate_upstream_errors_total{gateway=\"default\",method=\"getAgentEvent\",kind=\"malformed\"}");
    assert!(malformed >= 2.0, "the two floods were refused as malformed answers\n{m}");
    h.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

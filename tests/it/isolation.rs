//! One party's fault stays its own (issue 23): another client's bad tokens, values planted in
//! Redis, a Redis that hangs or goes away, sockets piled on the admin listener and oversized
//! bodies each stay the problem of whoever caused them. Real sockets, real TLS, a real
//! redis-server where the point is about Redis.

use crate::common;

use std::time::Duration;

use ccgate::config::{Secret, StoreBackend};
use ccgate::gateway::GatewayMethod;
use common::redis::RedisServer;
use common::{eventually, problem, test_sim_config, Harness, Options, AUDIENCE, ISSUER};
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn metric(h: &Harness, name: &str) -> f64 {
    let m = h.metrics().await;
    m.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

async fn on_redis(redis: &RedisServer, more: impl FnOnce(&mut ccgate::config::Config) + Send + 'static) -> Harness {
    let url = redis.url();
    let mut sim = test_sim_config();
    sim.event_wait_ms = 300;
    Harness::with(Options {
        sim,
        config: Box::new(move |c| {
            c.store.backend = StoreBackend::Redis;
            c.store.url = Some(Secret::new(url));
            c.store.lease_ttl_ms = 900;
            more(c);
        }),
        ..Options::default()
    })
    .await
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// A token whose signature is well-formed but belongs to another token.
fn forged(h: &Harness, agent: &str) -> String {
    let t = h.token(agent);
    let other = h.token("999");
    format!("{}.{}", t.rsplit_once('.').unwrap().0, other.rsplit_once('.').unwrap().1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_bad_tokens_never_refuse_another_clients_valid_token() {
    let h = Harness::start().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let stale =
        h.es.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "agent_id": "153", "iat": now - 7200, "exp": now - 3600}))
            .unwrap();
    // One client, on the same loopback address as every other: forged tokens on both faces
    // and a stale token looped, far past the old per-address budget of 20.
    for i in 0..40 {
        let r = h.call_with_token(Method::GET, "/v1/session", Some(&forged(&h, &format!("{}", 300 + i))), "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        let r = h
            .call_with_token(
                Method::POST,
                "/agentgateway/resource/onlineagent/153/handshake",
                Some(&forged(&h, "153")),
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        let r = h.call_with_token(Method::GET, "/v1/session", Some(&stale), "").await;
        assert_eq!(problem(&r)["reason"], "expired", "{}", r.text);
    }
    // Every other client's token ccgate has never seen is verified and served, on both faces.
    for agent in ["153", "154", "155"] {
        let r = h.call(Method::POST, "/v1/session", Some(agent), "").await;
        assert_eq!(r.status, StatusCode::CREATED, "{agent}: {}", r.text);
    }
    let r = h.call(Method::POST, "/agentgateway/resource/onlineagent/153/handshake", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(metric(&h, "ccgate_auth_throttled_total").await, 0.0);
    assert!(metric(&h, "ccgate_auth_refusals_remembered_total").await >= 39.0, "the stale token cost a hash");
    h.stop().await;
}

/// Issue 37: a refused token is remembered whatever its length up to the longest ccgate
/// accepts (8 KiB): a 6 KB forged token sent again costs a hash, not a signature check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_forged_token_is_checked_once_then_refused_from_memory() {
    let h = Harness::start().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "agent_id": "153", "exp": now + 600, "pad": "p".repeat(4400)});
    let long = h.es.sign(&claims).unwrap();
    let other = h.token("999");
    let forged = format!("{}.{}", long.rsplit_once('.').unwrap().0, other.rsplit_once('.').unwrap().1);
    assert!((6_000..8_192).contains(&forged.len()), "{}", forged.len());
    for _ in 0..10 {
        let r = h.call_with_token(Method::GET, "/v1/session", Some(&forged), "").await;
        assert_eq!(problem(&r)["reason"], "bad_signature", "{}", r.text);
    }
    assert_eq!(metric(&h, "ccgate_auth_refusals_remembered_total").await, 9.0, "checked once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_planted_in_redis_are_validated_never_polled_nor_written_into_a_request() {
    let redis = RedisServer::start().await;
    let h = on_redis(&redis, |_| {}).await;
    h.sign_in("153").await;
    let mut r = redis_conn(&redis).await;
    // An agent id that would smuggle a second request into the poller's request line, and a
    // record whose Guid carries a header break, both waiting for a replica to take them over.
    let evil = "154/forcelogout HTTP/1.1\r\nGuid: x\r\n\r\nDELETE /agentgateway/resource/onlineagent/154";
    let _: () = redis::cmd("ZADD").arg("ccgate:agents").arg(0).arg(evil).query_async(&mut r).await.unwrap();
    // Under it, a copy of 153's live record (its Guid is one the gateway accepts).
    let live: Vec<(String, Vec<u8>)> =
        redis::cmd("HGETALL").arg("ccgate:{a:153}:session").query_async(&mut r).await.unwrap();
    assert!(!live.is_empty());
    let _: () =
        redis::cmd("HSET").arg(format!("ccgate:{{a:{evil}}}:session")).arg(&live).query_async(&mut r).await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg("ccgate:{a:155}:session")
        .arg(&[
            ("sid", "0123456789abcdef0123456789abcdef"),
            ("guid", "g.AgentGateway0\r\nX-Evil: 1"),
            ("cookies", "[]"),
            ("conf", "\"None\""),
            ("state", "active"),
            ("epoch", "1"),
            ("confv", "1"),
            ("resumable", "1"),
            ("answer", "{}"),
        ])
        .query_async(&mut r)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD").arg("ccgate:agents").arg(0).arg("155").query_async(&mut r).await.unwrap();
    eventually("both planted entries were read and refused", || async {
        metric(&h, "ccgate_input_discarded_total{what=\"store_agent_id\"}").await >= 1.0
            && metric(&h, "ccgate_input_discarded_total{what=\"store_record\"}").await >= 1.0
    })
    .await;
    let score: Option<f64> = redis::cmd("ZSCORE").arg("ccgate:agents").arg(evil).query_async(&mut r).await.unwrap();
    assert_eq!(score, None, "the bad index entry was removed");
    assert_eq!(h.sim.count(GatewayMethod::ForceLogout), 0, "nothing reached the gateway");
    assert_eq!(h.running().sessions.current("155").map(|s| s.agent_id.clone()), None, "155 is not polled here");
    assert_eq!(metric(&h, "ccgate_leases{gateway=\"default\"}").await, 1.0, "only 153");
    // The planted record is not served either.
    let r155 = h.call(Method::GET, "/v1/session", Some("155"), "").await;
    assert_ne!(r155.status, StatusCode::OK, "{}", r155.text);
    assert_eq!(h.call(Method::GET, "/v1/session", Some("153"), "").await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_respect_max_agents() {
    let redis = RedisServer::start().await;
    let mut h = on_redis(&redis, |_| {}).await;
    // Only the two replicas below: the harness's own would take agents over too.
    if let Some(p) = h.proxy.take() {
        p.stop().await;
    }
    let full = common::process::Process::start(&h.config, &h.dir);
    for agent in ["153", "154"] {
        let r = h.call_at(&full.base, Method::POST, "/v1/session", Some(&h.token(agent)), "").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let r = redis_conn(&redis).await;
    let holder = |mut r: redis::aio::MultiplexedConnection, agent: &'static str| async move {
        let v: Option<String> =
            redis::cmd("GET").arg(format!("ccgate:{{a:{agent}}}:lease")).query_async(&mut r).await.unwrap();
        v.and_then(|v| v.split_once(' ').map(|(r, _)| r.to_owned()))
    };
    let dead = holder(r.clone(), "153").await.expect("the full replica holds 153");
    // A replica with room for one agent, when the owner of both dies.
    let (small, _) = h.replica(|c| c.sessions.max_agents = 1).await;
    full.signal("-KILL");
    let line = |text: &str, name: &str| text.lines().any(|l| l == name);
    eventually("the small replica took one agent over", || async {
        line(&small.metrics.render(), "ccgate_lease_takeovers_total 1")
    })
    .await;
    // Two more maintenance rounds (each refreshes the held agent's index entry), and still one.
    let newest = || {
        let mut r = r.clone();
        async move {
            let scores: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg("ccgate:agents")
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut r)
                .await
                .unwrap();
            scores.iter().map(|(_, s)| *s).fold(0.0, f64::max)
        }
    };
    let after_takeover = newest().await;
    eventually("two more rounds", || async { newest().await > after_takeover + 600.0 }).await;
    let text = small.metrics.render();
    assert!(
        line(&text, "ccgate_lease_takeovers_total 1") && line(&text, "ccgate_leases{gateway=\"default\"} 1"),
        "{text}"
    );
    // Leases do not expire: the other still names the dead replica, for one with room to take.
    let mut taken = 0;
    for a in ["153", "154"] {
        if holder(r.clone(), a).await.is_some_and(|h| h != dead) {
            taken += 1;
        }
    }
    assert_eq!(taken, 1, "one agent polled, the other left for a replica with room");
    small.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_while_redis_hangs_are_bounded_and_flushed_in_order() {
    let redis = RedisServer::start().await;
    let h = on_redis(&redis, |c| {
        c.sessions.event_buffer = 4;
        c.store.command_timeout_ms = 100;
    })
    .await;
    h.sign_in("153").await;
    redis.pause();
    for n in 0..12 {
        h.sim.push_event("153", "AgentState_Ready", json!({"n": n}));
    }
    eventually("the oldest queued events were dropped and counted", || async {
        metric(&h, "ccgate_input_discarded_total{what=\"pending_event\"}").await >= 8.0
    })
    .await;
    // The replica still serves the agent it holds, and stays in its Service.
    let ready = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
    assert_eq!((ready.status, ready.json()["store"].clone()), (StatusCode::OK, json!("down")), "{}", ready.text);
    assert_eq!(h.call(Method::GET, "/v1/session", Some("153"), "").await.status, StatusCode::OK);
    redis.resume();
    let r = redis_conn(&redis).await;
    let ns = || {
        let mut r = r.clone();
        async move {
            let raw: Vec<(String, Vec<(String, String)>)> =
                redis::cmd("XRANGE").arg("ccgate:{a:153}:events").arg("-").arg("+").query_async(&mut r).await.unwrap();
            raw.iter()
                .filter_map(|(_, fields)| fields.iter().find(|(k, _)| k == "d").map(|(_, d)| d.clone()))
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                .filter_map(|v| v["content"]["n"].as_i64().or(v["n"].as_i64()))
                .collect::<Vec<_>>()
        }
    };
    eventually("the queued events reached Redis", || async { ns().await.len() >= 4 }).await;
    assert_eq!(ns().await, vec![8, 9, 10, 11], "the newest four, once each, in order");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_replicas_ready_unless_configured_otherwise() {
    let mut redis = RedisServer::start().await;
    let h = on_redis(&redis, |_| {}).await;
    let (strict, _) = h.replica(|c| c.admin.ready_requires_store = true).await;
    let strict_admin = format!("http://127.0.0.1:{}", strict.admin_addr.port());
    h.sign_in("153").await;
    redis.stop();
    eventually("both replicas see the store down", || async {
        let a = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
        let b = h.send(Method::GET, &format!("{strict_admin}/readyz"), &[], "").await;
        a.json()["store"] == "down" && b.json()["store"] == "down"
    })
    .await;
    let a = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "by default a Redis outage keeps the replica ready: {}", a.text);
    assert_eq!(a.json()["store_required"], false);
    let b = h.send(Method::GET, &format!("{strict_admin}/readyz"), &[], "").await;
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE, "{}", b.text);
    assert_eq!(metric(&h, "ccgate_store_up").await, 0.0);
    strict.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_idle_and_trickling_sockets_fill_the_admin_listener() {
    let h = Harness::start().await;
    let addr = h.running().admin_addr;
    let mut held = Vec::new();
    for i in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 4 == 0 {
            // A slow client: half a request line, never finished.
            let _ = s.write_all(b"GET /liv").await;
        }
        held.push(s);
    }
    for path in ["/livez", "/readyz", "/livez", "/metrics"] {
        let r =
            tokio::time::timeout(Duration::from_secs(1), h.send(Method::GET, &format!("{}{path}", h.admin), &[], ""))
                .await
                .unwrap_or_else(|_| panic!("{path} did not answer within a second"));
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }
    drop(held);
    h.stop().await;
}

/// A 2 MiB body, over the default 64 KiB limit.
const BIG: usize = 2 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_is_answered_over_h2_and_to_an_http1_client_that_sends_it_all_first() {
    let h = Harness::start().await;
    // HTTP/2 (the harness client negotiates h2): the 413 arrives, not a stream error.
    let body = "x".repeat(BIG);
    let r = h.call(Method::POST, "/v1/conference", Some("153"), &body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    // And to curl, which reported "Stream error in the HTTP/2 framing layer" when the stream
    // was reset under its upload.
    let file = h.dir.join("big.json");
    std::fs::write(&file, &body).unwrap();
    let out = tokio::process::Command::new(common::tools::require("curl"))
        .args(["--http2", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--cacert"])
        .arg(h.dir.join("ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {}", h.token("153")), "-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}/v1/conference", h.base))
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {said} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(said, "413 2", "{}", String::from_utf8_lossy(&out.stderr));

    // HTTP/1.1, a client that writes the whole body before it reads (as Python's http.client).
    let tls = ccgate::tls::client_config(Some(&h.dir.join("ca.pem"))).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    for declared in [true, false] {
        let tcp = tokio::net::TcpStream::connect(h.running().proxy_addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut s = connector.connect(name, tcp).await.unwrap();
        let framing =
            if declared { format!("Content-Length: {BIG}\r\n") } else { "Transfer-Encoding: chunked\r\n".to_owned() };
        let head = format!(
            "POST /v1/conference HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\n{framing}\r\n",
            h.token("153")
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let payload = if declared {
            body.clone().into_bytes()
        } else {
            let mut c = format!("{BIG:x}\r\n").into_bytes();
            c.extend_from_slice(body.as_bytes());
            c.extend_from_slice(b"\r\n0\r\n\r\n");
            c
        };
        s.write_all(&payload).await.expect("ccgate read the whole body rather than reset the connection");
        s.flush().await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n =
            tokio::time::timeout(common::WAIT, s.read(&mut answer)).await.unwrap().expect("the answer, not a reset");
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "declared length {declared}: {text}");
    }
    h.stop().await;
}

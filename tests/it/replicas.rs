//! Replicas sharing agents through a real `redis-server` (issue 11): each test starts Redis on
//! a free port, the simulator, and several ccgate replicas in this process (or as separate
//! processes where a replica must be killed or paused), all on real sockets with real TLS.
//! What needs no process (leases, takeover, fencing, compare-and-set, event ids across
//! replicas, idle time, hand-over) is tested in process under a paused clock
//! (`src/session/replication_tests.rs`), and the store itself by `tests/it/store_contract.rs`;
//! here remain one end-to-end pass, the limit's accuracy, and what takes processes: kill -9,
//! SIGSTOP, Redis restarted or started late, the demo.

use crate::common;

use std::time::{Duration, Instant};

use ccgate::config::{LimitConfig, Scope, Secret, StoreBackend};
use ccgate::gateway::GatewayMethod;
use common::process::Process;
use common::redis::RedisServer;
use common::{eventually, problem, test_sim_config, Harness, Options, Reply, WAIT};
use http::{Method, StatusCode};
use serde_json::json;

/// Lease lifetime in these tests: the maintenance round runs every third of it.
const LEASE_TTL_MS: u64 = 900;
/// The simulator's long-poll wait: one poll interval.
const POLL_WAIT_MS: u64 = 1_000;

async fn cluster(redis: &RedisServer) -> Harness {
    cluster_with(redis, |_| {}).await
}

async fn cluster_with(redis: &RedisServer, more: impl FnOnce(&mut ccgate::config::Config) + Send + 'static) -> Harness {
    cluster_at(redis.url(), more).await
}

async fn cluster_at(url: String, more: impl FnOnce(&mut ccgate::config::Config) + Send + 'static) -> Harness {
    let mut sim = test_sim_config();
    sim.event_wait_ms = POLL_WAIT_MS;
    // Dynamic Guids that rotate at about every poll and outlive rotation only briefly: a
    // replica forwarding with a stale Guid is refused.
    sim.guid_interval_ms = 300;
    sim.guid_overlap_ms = 400;
    Harness::with(Options {
        sim,
        config: Box::new(move |c| {
            c.store.backend = StoreBackend::Redis;
            c.store.url = Some(Secret::new(url));
            c.store.lease_ttl_ms = LEASE_TTL_MS;
            more(c);
        }),
        ..Options::default()
    })
    .await
}

/// Waits for `check` to hold, looking again every 20 ms, at most `WAIT`: for state another
/// replica changes in the background, with no signal this test can await.
fn ok(r: &Reply) {
    assert!(r.status.is_success(), "{} {}", r.status, r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_any_agent_through_rotation_and_sign_out_ends_it_everywhere() {
    let redis = RedisServer::start().await;
    let h = cluster(&redis).await;
    let (b, b_url) = h.replica(|_| {}).await;
    let (c, c_url) = h.replica(|_| {}).await;
    let token = h.token("153");

    // Signed in and chair through A.
    let conf_id = h.chair("153").await;
    // B sees the session and the chair: the stop goes to the gateway, which accepts it.
    let r = h.call_at(&b_url, Method::POST, "/v1/conference/announcement/stop", Some(&token), "{}").await;
    ok(&r);
    let r = h.call_at(&c_url, Method::GET, "/v1/session", Some(&token), "").await;
    ok(&r);
    assert_eq!(r.json()["conference"]["confId"], conf_id, "{}", r.text);
    assert_eq!(h.sim.count(GatewayMethod::Login), 1, "one sign-in at the gateway");
    // The agents view on any replica shows the agent, and who polls it: A.
    let view = |admin: std::net::SocketAddr| {
        let h = &h;
        async move { h.send(Method::GET, &format!("http://{admin}/agents/153"), &[], "").await.json() }
    };
    let on_a = view(h.running().admin_addr).await;
    assert_eq!((on_a["polled_here"].as_bool(), on_a["chairperson"].as_bool()), (Some(true), Some(true)), "{on_a}");
    for admin in [b.admin_addr, c.admin_addr] {
        let there = view(admin).await;
        assert_eq!(there["polled_here"], false, "{there}");
        assert_eq!(there["polled_by"], on_a["polled_by"], "the same replica polls: {there}");
    }

    // The Guid rotates (dynamic mode) and the sign-in Guid expires; every replica keeps
    // forwarding with a current one.
    let rotations = h.sim.rotations();
    eventually("two Guid rotations", || async { h.sim.rotations() >= rotations + 2 }).await;
    for url in [&h.base, &b_url, &c_url] {
        let r = h.call_at(url, Method::POST, "/v1/conference/announcement/stop", Some(&token), "{}").await;
        ok(&r);
    }

    // Signed out through C: A and B answer "no session" at once.
    let r = h.call_at(&c_url, Method::DELETE, "/v1/session", Some(&token), "").await;
    ok(&r);
    assert!(!h.sim.is_signed_in("153"));
    for url in [&h.base, &b_url] {
        let r = h.call_at(url, Method::POST, "/v1/conference/announcement/stop", Some(&token), "{}").await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert_eq!(problem(&r)["type"].as_str().map(|t| t.ends_with("no-session")), Some(true), "{}", r.text);
    }
    b.stop().await;
    c.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_across_three_replicas_within_two_percent() {
    let redis = RedisServer::start().await;
    let (rate, burst) = (10.0, 5);
    let h = cluster_with(&redis, move |c| {
        c.rate_limits.limit =
            vec![LimitConfig { method: "getSession".into(), scope: Scope::Agent, rate, burst, shadow: false }];
    })
    .await;
    let (b, b_url) = h.replica(|_| {}).await;
    let (c, c_url) = h.replica(|_| {}).await;
    h.sign_in("153").await;
    let token = h.token("153");
    let urls = [h.base.clone(), b_url.clone(), c_url.clone()];
    // Three clients, one per replica, each well above the limit (~30/s each).
    let started = Instant::now();
    let run_for = Duration::from_secs(30);
    let mut clients = Vec::new();
    for url in urls {
        let (client, auth) = (h.client.clone(), format!("Bearer {token}"));
        clients.push(tokio::spawn(async move {
            let (mut allowed, mut refused) = (0u64, 0u64);
            while started.elapsed() < run_for {
                let req = http::Request::builder()
                    .uri(format!("{url}/v1/session"))
                    .header("authorization", &auth)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let status = client.request(req).await.expect("request failed").status();
                match status {
                    StatusCode::OK => allowed += 1,
                    StatusCode::TOO_MANY_REQUESTS => refused += 1,
                    other => panic!("unexpected {other}"),
                }
                tokio::time::sleep(Duration::from_millis(33)).await;
            }
            (allowed, refused)
        }));
    }
    let (mut allowed, mut refused) = (0, 0);
    for c in clients {
        let (a, r) = c.await.unwrap();
        allowed += a;
        refused += r;
    }
    let t = started.elapsed().as_secs_f64();
    let expected = rate * t + f64::from(burst);
    let error = (allowed as f64 - expected) / expected;
    eprintln!(
        "limit accuracy: allowed {allowed}, refused {refused}, expected {expected:.1} over {t:.1} s: {:+.2}%",
        error * 100.0
    );
    assert!(refused > allowed, "the clients did push above the limit");
    assert!(error.abs() <= 0.02, "allowed {allowed}, expected {expected:.1} ({:+.2}%)", error * 100.0);
    b.stop().await;
    c.stop().await;
    h.stop().await;
}

async fn metric(h: &Harness, admin: &str, name: &str) -> f64 {
    let r = h.send(Method::GET, &format!("{admin}/metrics"), &[], "").await;
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Pushes `n` events at the gateway and reads them on `sse`: each once, in order, and the
/// sentinel after them proves none came twice. Events the test did not push (the gateway's own
/// answer to an earlier operation, e.g. `AgentConf_StopVoice`, which a poller that backed off
/// with jitter may deliver late) are passed over; every tagged one counts.
async fn each_event_once(h: &Harness, sse: &mut common::Sse, agent: &str, tag: &str, n: usize) {
    for i in 0..n {
        h.sim.push_event(agent, "AgentState_Ready", json!({"tag": tag, "n": i}));
    }
    h.sim.push_event(agent, "AgentState_Ready", json!({"tag": tag, "sentinel": true}));
    let mut next_tagged = async || loop {
        let data = sse.next_event().await.data.unwrap();
        if data.contains("\"tag\"") {
            return data;
        }
    };
    for i in 0..n {
        let data = next_tagged().await;
        assert!(data.contains(&format!("\"n\":{i}")) && data.contains(tag), "event {i} of {tag}: {data}");
    }
    let data = next_tagged().await;
    assert!(data.contains("sentinel") && data.contains(tag), "no duplicate before the sentinel: {data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_is_killed_another_replica_polls_within_two_poll_intervals() {
    let redis = RedisServer::start().await;
    let h = cluster(&redis).await;
    let p = Process::start(&h.config, &h.dir);
    let token = h.token("153");
    let r = h.call_at(&p.base, Method::POST, "/v1/session", Some(&token), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        metric(&h, &p.admin, "ccgate_leases{gateway=\"default\"}").await,
        1.0,
        "the replica that signed in polls"
    );
    assert_eq!(metric(&h, &h.admin, "ccgate_leases{gateway=\"default\"}").await, 0.0);
    let mut on_a = h.events_at(&h.base, "153", None).await;
    each_event_once(&h, &mut on_a, "153", "before", 2).await;

    p.signal("-KILL");
    let killed = Instant::now();
    eventually("A takes over", || async { metric(&h, &h.admin, "ccgate_lease_takeovers_total").await == 1.0 }).await;
    let takeover = killed.elapsed();
    eprintln!("takeover after kill -9: {} ms", takeover.as_millis());
    assert!(takeover < Duration::from_millis(2 * POLL_WAIT_MS), "took {takeover:?}");
    each_event_once(&h, &mut on_a, "153", "after", 5).await;
    assert_eq!(h.sim.count(GatewayMethod::Login) + h.sim.count(GatewayMethod::ForceLogin), 1, "no new sign-in");
    let r = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    ok(&r);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_replaced_and_stands_down_when_it_wakes() {
    let redis = RedisServer::start().await;
    let h = cluster(&redis).await;
    let p = Process::start(&h.config, &h.dir);
    let token = h.token("154");
    let r = h.call_at(&p.base, Method::POST, "/v1/session", Some(&token), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mut on_a = h.events_at(&h.base, "154", None).await;

    p.signal("-STOP");
    let paused = Instant::now();
    eventually("A takes over", || async { metric(&h, &h.admin, "ccgate_lease_takeovers_total").await == 1.0 }).await;
    let takeover = paused.elapsed();
    eprintln!("takeover after SIGSTOP: {} ms", takeover.as_millis());
    assert!(takeover < Duration::from_millis(2 * POLL_WAIT_MS), "took {takeover:?}");
    // The paused replica's last poll was out when it stopped; let the gateway answer it
    // (A's polls meanwhile show time has passed) so no event goes to a frozen socket.
    let polls = h.sim.count(GatewayMethod::GetAgentEvent);
    eventually("A polls twice", || async { h.sim.count(GatewayMethod::GetAgentEvent) >= polls + 2 }).await;
    each_event_once(&h, &mut on_a, "154", "paused", 3).await;

    p.signal("-CONT");
    eventually("the woken replica stands down", || async {
        metric(&h, &p.admin, "ccgate_lease_losses_total").await == 1.0
            && metric(&h, &p.admin, "ccgate_leases{gateway=\"default\"}").await == 0.0
    })
    .await;
    each_event_once(&h, &mut on_a, "154", "woken", 3).await;
    // Both replicas still serve the agent, with the session A polls.
    for url in [&h.base, &p.base] {
        let r = h.call_at(url, Method::GET, "/v1/session", Some(&token), "").await;
        ok(&r);
    }
    assert_eq!(metric(&h, &h.admin, "ccgate_leases{gateway=\"default\"}").await, 1.0);
    assert_eq!(h.sim.count(GatewayMethod::Login) + h.sim.count(GatewayMethod::ForceLogin), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_then_back_empty_loses_nothing() {
    let mut redis = RedisServer::start().await;
    let h = cluster_with(&redis, |c| {
        c.rate_limits.limit = vec![LimitConfig {
            method: "getSession".into(),
            scope: Scope::Agent,
            rate: 100.0,
            burst: 100,
            shadow: false,
        }];
    })
    .await;
    let (b, b_url) = h.replica(|_| {}).await;
    let token = h.token("153");
    let conf_id = h.chair("153").await; // A signs in and polls.
    ok(&h.call_at(&b_url, Method::GET, "/v1/session", Some(&token), "").await); // B has a copy.
    let mut on_a = h.events_at(&h.base, "153", None).await;

    redis.stop();
    eventually("/readyz says the store is down, and stays ready (it serves from its copies)", || async {
        let r = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
        r.status == StatusCode::OK && r.json()["store"] == "down"
    })
    .await;
    assert_eq!(metric(&h, &h.admin, "ccgate_store_up").await, 0.0);
    // Agents a replica holds are served from its copy; limits fall back to local ones.
    let r = h.call_at(&b_url, Method::POST, "/v1/conference/announcement/stop", Some(&token), "{}").await;
    ok(&r);
    ok(&h.call_at(&b_url, Method::GET, "/v1/session", Some(&token), "").await);
    // A new sign-in needs the store.
    let r = h.call(Method::POST, "/v1/session", Some("154"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(problem(&r)["type"].as_str().unwrap().ends_with("store-unavailable"), "{}", r.text);
    // The owner keeps polling: an event during the outage reaches A's apps.
    h.sim.push_event("153", "AgentState_Ready", json!({"during": "outage"}));
    // (after whatever the stop above made the gateway send)
    let during = loop {
        let f = on_a.next_event().await;
        if f.data.as_deref().is_some_and(|d| d.contains("outage")) {
            break f;
        }
    };

    // Redis comes back empty: the owner puts the session (and the event) back.
    redis.restart();
    eventually("/readyz says the store is up again", || async {
        let r = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
        r.status == StatusCode::OK && r.json()["store"] == "up"
    })
    .await;
    let (c, c_url) = h.replica(|_| {}).await;
    eventually("a new replica finds the restored session", || async {
        let r = h.call_at(&c_url, Method::GET, "/v1/session", Some(&token), "").await;
        r.status == StatusCode::OK && r.json()["confId"] == conf_id && r.json()["chairperson"] == true
    })
    .await;
    let mut on_c = h.events_at(&c_url, "153", Some(0)).await;
    let replayed = loop {
        let f = on_c.next_event().await;
        if f.data.as_deref().is_some_and(|d| d.contains("outage")) {
            break f;
        }
    };
    assert_eq!(replayed.id, during.id, "the outage's event kept its id");
    each_event_once(&h, &mut on_c, "153", "after", 2).await;
    assert_eq!(h.sim.count(GatewayMethod::Login), 1, "nobody signed in again");
    b.stop().await;
    c.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_three_replicas_on_redis_serves_one_agent_from_each() {
    use tokio::io::AsyncBufReadExt;
    let redis = RedisServer::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["demo", "--json", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--replicas", "3", "--redis", &redis.url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line()).await.expect("demo printed nothing").unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).expect("first line is JSON");
    let proxies: Vec<String> =
        v["proxy_urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    assert_eq!(proxies.len(), 3, "{v}");
    assert_eq!(v["admin_urls"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["proxy_url"], proxies[0].as_str());
    let ca = std::path::PathBuf::from(v["ca_file"].as_str().unwrap());
    let tls = ccgate::tls::client_config(Some(&ca)).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let auth = format!("Bearer {}", v["token"].as_str().unwrap());
    // Sign in on the first, conference on the second, stop on the third.
    let steps = [
        (&proxies[0], Method::POST, "/v1/session", "", StatusCode::CREATED),
        (&proxies[1], Method::POST, "/v1/conference", r#"{"memberNum":3}"#, StatusCode::CREATED),
        (&proxies[2], Method::POST, "/v1/conference/announcement/stop", "", StatusCode::OK),
    ];
    for (base, m, path, body, want) in steps {
        let req = http::Request::builder()
            .method(m)
            .uri(format!("{base}{path}"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), want, "{base}{path}");
    }
    let pid = child.id().unwrap().to_string();
    assert!(common::tools::command("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("demo did not exit").unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn demo_replicas_without_redis_is_refused_with_the_fix() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--replicas", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redis"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_redis_is_unready_and_serves_once_redis_is_up() {
    let port = common::closed_port().await;
    // Unready while Redis is away only when asked to be (admin.ready_requires_store).
    let h = cluster_at(format!("redis://127.0.0.1:{port}/0"), |c| c.admin.ready_requires_store = true).await;
    let readyz = || async { h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await };
    eventually("/readyz says the store is down", || async {
        let r = readyz().await;
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.json()["store"] == "down"
    })
    .await;
    let r = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let _redis = RedisServer::start_on(port);
    eventually("/readyz turns ready", || async { readyz().await.status == StatusCode::OK }).await;
    h.sign_in("153").await;
    h.stop().await;
}

/// Issue 40: "polled by" resolves to a host. Each replica says who it is (`/readyz`, the
/// metric) and registers that in Redis; replica B's view of an agent replica A polls names
/// A's host and admin listener, in JSON and on B's status page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_view_names_the_polling_replicas_host_and_admin_address() {
    let redis = RedisServer::start().await;
    let h = cluster(&redis).await;
    let (b, _) = h.replica(|_| {}).await;
    let readyz = |admin: std::net::SocketAddr| {
        let h = &h;
        async move { h.send(Method::GET, &format!("http://{admin}/readyz"), &[], "").await.json() }
    };
    let a = readyz(h.running().admin_addr).await["replica"].clone();
    let b_is = readyz(b.admin_addr).await["replica"].clone();
    assert_eq!(a["admin"], h.running().admin_addr.to_string(), "{a}");
    assert_eq!(b_is["admin"], b.admin_addr.to_string(), "{b_is}");
    assert!(a["host"].as_str().is_some_and(|h| !h.is_empty()) && a["id"] != b_is["id"], "{a} {b_is}");
    let (id, host, admin) = (a["id"].as_str().unwrap(), a["host"].as_str().unwrap(), a["admin"].as_str().unwrap());
    let info: Vec<String> =
        h.metrics().await.lines().filter(|l| l.starts_with("ccgate_replica_info{")).map(str::to_owned).collect();
    assert_eq!(info, [format!(r#"ccgate_replica_info{{admin="{admin}",host="{host}",replica="{id}"}} 1"#)]);

    h.sign_in("153").await; // A signs in, and polls.
    let on_b = || async { h.send(Method::GET, &format!("http://{}/agents/153", b.admin_addr), &[], "").await.json() };
    // A registers with its heartbeat (a third of a lease): wait for it, not for a timer.
    common::eventually("B's view names A's host and admin address", || async {
        let v = on_b().await;
        v["polled_by"] == id && v["polled_by_host"] == host && v["polled_by_admin"] == admin
    })
    .await;
    assert_eq!(on_b().await["polled_here"], false);
    let on_a = h.send(Method::GET, &format!("{}/agents/153", h.admin), &[], "").await.json();
    assert_eq!((&on_a["polled_by_host"], &on_a["polled_by_admin"]), (&a["host"], &a["admin"]), "{on_a}");
    let page = h.send(Method::GET, &format!("http://{}/", b.admin_addr), &[], "").await.text;
    let row = page.lines().find(|l| l.contains(r#"data-agent="153""#)).expect("153 on B's page");
    assert!(row.contains(&format!("<td>{host} ({admin})</td>")), "polled by: {row}");
    b.stop().await;
    h.stop().await;
}

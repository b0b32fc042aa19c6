//! A Redis outage longer than the gateway's Guid overlap (issue 28): three replicas on one
//! redis-server in front of the simulator rotating Guids every 400 ms with a 1.2 s overlap
//! (the real gateway: 60 s and 120 s; only the time scale differs). While Redis is away the
//! lease owner keeps taking new Guids it cannot share, so the other replicas' Guids expire at
//! the gateway. Only the owner, which knows the newest Guid, may conclude that the session
//! ended: the others answer a retryable 503 and keep their copies, and once Redis is back
//! every copy follows the record again within a round. No new sign-in, no
//! `ccgate.session_ended` on any stream, and the events polled meanwhile reach every stream.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccgate::config::{Secret, StoreBackend};
use ccgate::gateway::GatewayMethod;
use common::process::Process;
use common::redis::RedisServer;
use common::{eventually, problem, test_sim_config, Harness, Options, SseFrame};
use http::{Method, StatusCode};
use serde_json::json;

const GUID_INTERVAL_MS: u64 = 400;
const GUID_OVERLAP_MS: u64 = 1_200;
const LEASE_TTL_MS: u64 = 900;
const STOP: &str = "/v1/conference/announcement/stop";

async fn cluster(redis: &RedisServer) -> Harness {
    let url = redis.url();
    let mut sim = test_sim_config();
    sim.event_wait_ms = 500;
    sim.guid_interval_ms = GUID_INTERVAL_MS;
    sim.guid_overlap_ms = GUID_OVERLAP_MS;
    Harness::with(Options {
        sim,
        config: Box::new(move |c| {
            c.store.backend = StoreBackend::Redis;
            c.store.url = Some(Secret::new(url));
            c.store.lease_ttl_ms = LEASE_TTL_MS;
            // Calls during the outage answer quickly.
            c.store.command_timeout_ms = 200;
            // The test calls stop often; no limit is under test.
            c.rate_limits.limit = Vec::new();
        }),
        ..Options::default()
    })
    .await
}

/// Every frame of a replica's event stream, read in the background.
fn watch(mut sse: common::Sse) -> Arc<Mutex<Vec<SseFrame>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some(f) = sse.try_next(Duration::from_secs(60)).await {
            log.lock().unwrap().push(f);
        }
    });
    seen
}

fn ended(frames: &Arc<Mutex<Vec<SseFrame>>>) -> bool {
    frames.lock().unwrap().iter().any(|f| f.event.as_deref() == Some("ccgate.session_ended"))
}

fn tagged(frames: &Arc<Mutex<Vec<SseFrame>>>, tag: &str) -> usize {
    frames.lock().unwrap().iter().filter(|f| f.data.as_deref().is_some_and(|d| d.contains(tag))).count()
}

enum Ending {
    /// Redis is thawed with its data.
    Resume,
    /// Redis is killed while frozen and restarted empty.
    RestartEmpty,
}

async fn outage_past_the_guid_overlap(ending: Ending) {
    let mut redis = RedisServer::start().await;
    let h = cluster(&redis).await;
    let (b, b_url) = h.replica(|_| {}).await;
    let (c, c_url) = h.replica(|_| {}).await;
    let token = h.token("153");
    h.chair("153").await; // A signs in and polls: the owner.
    let urls = [h.base.clone(), b_url.clone(), c_url.clone()];
    for url in &urls {
        let r = h.call_at(url, Method::POST, STOP, Some(&token), "{}").await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text);
    }
    let mut streams = Vec::new();
    for url in &urls {
        streams.push(watch(h.events_at(url, "153", None).await));
    }
    let signins = h.sim.count(GatewayMethod::Login) + h.sim.count(GatewayMethod::ForceLogin);

    redis.pause();
    // The owner keeps polling and takes new Guids; the others' expire at the gateway.
    let rotations = h.sim.rotations();
    let past_overlap = GUID_OVERLAP_MS / GUID_INTERVAL_MS + 2;
    eventually("Guids rotated past the overlap", || async { h.sim.rotations() >= rotations + past_overlap }).await;
    h.sim.push_event("153", "AgentState_Ready", json!({"tag": "during-outage"}));
    // A call on each other replica: its Guid is refused, and it cannot tell whether the
    // session ended. A retryable 503, nothing ended.
    for url in [&b_url, &c_url] {
        let r = h.call_at(url, Method::POST, STOP, Some(&token), "{}").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{url}: {}", r.text);
        assert!(problem(&r)["type"].as_str().unwrap().ends_with("store-unavailable"), "{}", r.text);
        assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        let r = h.call_at(url, Method::GET, "/v1/session", Some(&token), "").await;
        assert_eq!(r.status, StatusCode::OK, "the copy stays: {}", r.text);
    }
    // The owner serves the agent all along.
    let r = h.call(Method::POST, STOP, Some("153"), "{}").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    match ending {
        Ending::Resume => redis.resume(),
        Ending::RestartEmpty => redis.restart(),
    }
    // Within a round every replica serves the agent again, and its stops reach the gateway.
    let back = std::time::Instant::now();
    // As `eventually`, keeping what each replica last answered for the failure message.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let mut answers = Vec::new();
        for url in &urls {
            let r = h.call_at(url, Method::POST, STOP, Some(&token), "{}").await;
            answers.push((url.clone(), r.status, r.text));
        }
        if answers.iter().all(|(_, status, _)| *status == StatusCode::OK) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: every replica serves the agent again: {answers:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eprintln!("every replica served the agent {} ms after Redis came back", back.elapsed().as_millis());
    let stops = h.sim.count(GatewayMethod::StopVoiceToConf);
    for url in &urls {
        let r = h.call_at(url, Method::POST, STOP, Some(&token), "{}").await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text);
    }
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), stops + 3, "each stop reached the gateway");
    assert_eq!(h.sim.count(GatewayMethod::Login) + h.sim.count(GatewayMethod::ForceLogin), signins, "no new sign-in");
    // The event the owner polled during the outage reaches every replica's stream, once.
    eventually("the outage's event reached every stream", || async {
        streams.iter().all(|s| tagged(s, "during-outage") >= 1)
    })
    .await;
    for (i, s) in streams.iter().enumerate() {
        assert_eq!(tagged(s, "during-outage"), 1, "replica {i}: once");
        assert!(!ended(s), "replica {i}: no session_ended for a session the gateway honours");
    }
    b.stop().await;
    c.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_past_the_guid_overlap_then_restarted_empty_ends_no_agent() {
    outage_past_the_guid_overlap(Ending::RestartEmpty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_past_the_guid_overlap_then_resumed_ends_no_agent() {
    outage_past_the_guid_overlap(Ending::Resume).await;
}

/// The owner is killed while Redis is away: the newest Guid dies with it, so the session is
/// over for ccgate (only a new sign-in can bring the agent back). What must hold: no replica
/// concludes it from its own stale Guid while it cannot read the record, and once the record
/// is readable again the replica that then polls the agent concludes it once, for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_during_the_outage_takes_the_newest_guid_with_it_and_one_replica_says_so() {
    let redis = RedisServer::start().await;
    let h = cluster(&redis).await;
    let owner = Process::start(&h.config, &h.dir);
    let token = h.token("153");
    let r = h.call_at(&owner.base, Method::POST, "/v1/session", Some(&token), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK, "a copy here: {}", r.text);
    let on_a = watch(h.events("153", None).await);

    redis.pause();
    let rotations = h.sim.rotations();
    let past_overlap = GUID_OVERLAP_MS / GUID_INTERVAL_MS + 2;
    eventually("Guids rotated past the overlap", || async { h.sim.rotations() >= rotations + past_overlap }).await;
    owner.signal("-KILL");
    let r = h.call(Method::POST, "/agentgateway/resource/onlineagent/153/handshake", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "unconfirmed, not ended: {}", r.text);
    assert!(!ended(&on_a), "nothing concluded while the record cannot be read");

    redis.resume();
    // This replica takes the lease over, polls with the record's Guid, and is refused: it is
    // the owner now, so it concludes, and says so on the stream once.
    eventually("the new owner concluded the session ended", || async { ended(&on_a) }).await;
    let r = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(problem(&r)["type"].as_str().unwrap().ends_with("session-lost"), "{}", r.text);
    let count = on_a.lock().unwrap().iter().filter(|f| f.event.as_deref() == Some("ccgate.session_ended")).count();
    assert_eq!(count, 1);
    h.stop().await;
}

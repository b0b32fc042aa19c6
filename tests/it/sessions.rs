//! Sessions against the gateway's real behaviour: single-flight sign-in, lost sessions (and
//! resume), idle sign-out under tokio's paused clock, events over SSE, every conference
//! transition, and graceful shutdown. The simulator's counters prove what reached it.

use crate::common;

use std::time::Duration;

use ccgate::gateway::GatewayMethod;
use ccgate::labels::LossReason;
use ccgate::session::{ConfState, Ended};
use ccgate::sim::Faults;
use common::{problem, test_sim_config, Harness, Options, WAIT};
use http::{Method, StatusCode};
use serde_json::json;

const STOP: &str = "/v1/conference/announcement/stop";

async fn concurrent_sign_ins(h: &Harness, agent: &str, n: usize) -> Vec<common::Reply> {
    let tasks: Vec<_> = (0..n).map(|_| h.spawn_call(Method::POST, "/v1/session", agent)).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_sign_ins_make_exactly_one_at_the_gateway() {
    let mut sim = test_sim_config();
    // The gateway takes a while to answer, so the hundred requests overlap the one sign-in.
    sim.faults = Faults { latency_ms: 1_500, methods: vec!["login".into()], ..Faults::default() };
    sim.agents.insert("155".into(), "not-what-ccgate-has".into());
    let h = Harness::with(Options { sim, ..Options::default() }).await;

    let ok = concurrent_sign_ins(&h, "153", 100).await;
    assert_eq!(h.sim.count(GatewayMethod::Login), 1, "exactly one sign-in reached the gateway");
    assert_eq!(ok.iter().filter(|r| r.status == StatusCode::CREATED).count(), 1, "one caller created it");
    assert!(ok.iter().all(|r| r.status == StatusCode::CREATED || r.status == StatusCode::OK));

    // A failure is shared too: one attempt, every caller gets its answer.
    let failed = concurrent_sign_ins(&h, "155", 100).await;
    assert_eq!(h.sim.count(GatewayMethod::Login), 2, "one more sign-in for agent 155");
    for r in &failed {
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
        assert_eq!(problem(r)["retcode"], "100-004");
    }
    h.stop().await;
}

#[tokio::test]
async fn takeover_by_another_client_ends_the_session_and_says_sign_in_again() {
    let h = Harness::start().await;
    h.chair("153").await;
    let session = h.running().sessions.active("153").unwrap();
    let old_guid = h.sim.current_guid("153").unwrap();
    // Another client takes the agent over with forcelogin.
    let r = h
        .send(
            Method::PUT,
            &format!("{}/agentgateway/resource/onlineagent/153/forcelogin", h.sim_url()),
            &[("content-type", "application/json")],
            &format!(r#"{{"password":"{}","phonenum":"1"}}"#, common::PASSWORD),
        )
        .await;
    assert_eq!(r.json()["retcode"], "0");
    let why = tokio::time::timeout(WAIT, session.wait_ended()).await.unwrap();
    assert_eq!(why, Ended::Lost(LossReason::ShutdownEvent));

    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(problem(&r)["detail"].as_str().unwrap().contains("sign in again"));
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 0, "nothing sent with the dead session");
    let received = h.sim.received();
    let takeover = received.iter().position(|x| x.method == "forceLogin").unwrap();
    let after: Vec<_> = received[takeover..].iter().filter(|x| x.guid.as_deref() == Some(old_guid.as_str())).collect();
    assert!(
        after.len() <= 1 && after.iter().all(|x| x.method == "getAgentEvent"),
        "after the takeover the old Guid was used by at most the one poll that learned of it: {after:?}"
    );
    let m = h.metrics().await;
    assert!(m.contains(r#"ccgate_session_losses_total{gateway="default",reason="shutdown_event"} 1"#), "{m}");
    h.stop().await;
}

#[tokio::test]
async fn every_session_gone_retcode_marks_the_session_lost() {
    for code in ["100-006", "000-003", "105-005", "105-006", "105-007"] {
        let h = Harness::start().await;
        h.chair("153").await;
        h.sim.set_faults(Faults {
            retcode: Some(code.into()),
            methods: vec!["stopVoiceToConf".into()],
            ..Faults::default()
        });
        let r = h.call(Method::POST, STOP, Some("153"), "").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{code}: {}", r.text);
        assert_eq!(problem(&r)["type"], "urn:ccgate:problem:session-lost", "{code}");
        // It stays lost (503) until the app signs in again; nothing is retried.
        let r = h.call(Method::POST, STOP, Some("153"), "").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{code}: still lost: {}", r.text);
        assert!(h.metrics().await.contains(r#"ccgate_sessions{gateway="default",state="lost"} 1"#), "{code}");
        assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 1, "{code}: never retried");
        assert_eq!(h.sim.count(GatewayMethod::Login), 1, "{code}: no automatic sign-in without resume");
        h.stop().await;
    }
}

#[tokio::test]
async fn resume_signs_in_again_once_and_retries_once_with_the_new_guid() {
    let h = Harness::with(Options { config: Box::new(|c| c.sessions.resume = true), ..Options::default() }).await;
    h.sign_in("153").await;
    let old = h.sim.current_guid("153").unwrap();
    h.sim.kick("153");
    let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":2}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["chairperson"], true);
    assert_eq!(h.sim.count(GatewayMethod::Login), 2, "signed in again once");
    let confs: Vec<_> = h.sim.received().into_iter().filter(|x| x.method == "requestAgentConf").collect();
    assert!(confs.len() <= 2, "retried at most once: {confs:?}");
    let new = h.sim.current_guid("153").unwrap();
    assert_eq!(confs.last().unwrap().guid.as_deref(), Some(new.as_str()), "the retry used the new Guid");
    assert_ne!(old, new);
    // If the gateway keeps refusing, the app gets 503 after one resume, not a loop.
    h.sim.kick("153");
    h.sim.set_faults(Faults {
        retcode: Some("100-006".into()),
        methods: vec!["requestAgentConf".into()],
        ..Faults::default()
    });
    let (logins, confs) = (h.sim.count(GatewayMethod::Login), h.sim.count(GatewayMethod::RequestAgentConf));
    let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":2}"#).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(h.sim.count(GatewayMethod::Login), logins + 1, "one resume");
    // Either the request met the dead Guid and was retried once after the resume, or the
    // poller noticed the loss first and the resume came before the only attempt.
    let attempts = h.sim.count(GatewayMethod::RequestAgentConf) - confs;
    assert!((1..=2).contains(&attempts), "at most one try and one retry, got {attempts}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_agent_is_signed_out_after_the_idle_time() {
    let h = Harness::start().await; // idle_timeout_ms: default 120 s
    h.sign_in("153").await;
    let session = h.running().sessions.active("153").unwrap();
    tokio::time::sleep(Duration::from_secs(90)).await; // paused clock: virtual time
    assert_eq!(h.call(Method::GET, "/v1/session", Some("153"), "").await.status, StatusCode::OK, "activity");
    tokio::time::sleep(Duration::from_secs(100)).await; // 190 s since sign-in, 100 s since activity
    assert!(session.ended().is_none(), "activity restarted the idle clock");
    assert!(h.sim.is_signed_in("153"), "the poller kept the gateway session alive past MAXTIME");
    let why = tokio::time::timeout(Duration::from_secs(60), session.wait_ended()).await.expect("idle sign-out");
    assert_eq!(why, Ended::SignedOut);
    assert_eq!(h.sim.count(GatewayMethod::Logout), 1);
    assert!(!h.sim.is_signed_in("153"));
    assert!(h.metrics().await.contains("ccgate_idle_signouts_total 1"));
    let r = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    h.stop().await;
}

#[tokio::test]
async fn events_stream_to_several_subscribers_and_resume_by_last_event_id() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    let mut a = h.events("153", None).await;
    let mut b = h.events("153", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.next().await.comment.as_deref(), Some("ccgate event stream"));
    assert_eq!(b.next().await.comment.as_deref(), Some("ccgate event stream"));
    h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":2}"#).await;
    for s in [&mut a, &mut b] {
        let join = s.next_event().await;
        assert_eq!(join.event.as_deref(), Some("AgentConf_SelfJoinResult"));
        let ok = s.next_event().await;
        assert_eq!(ok.event.as_deref(), Some("AgentConf_RequestSuccess"));
        assert!(ok.id > join.id);
        let data: serde_json::Value = serde_json::from_str(ok.data.as_deref().unwrap()).unwrap();
        assert!(data["content"]["confId"].is_u64(), "{data}");
    }
    // Reconnect after the first event: the second comes again.
    let first_id = {
        let batch = h.running().sessions.active("153").unwrap().events.since(0);
        batch.events[0].id
    };
    let mut c = h.events("153", Some(first_id)).await;
    assert_eq!(c.next_event().await.event.as_deref(), Some("AgentConf_RequestSuccess"));
    // Something that is not an event id is refused, not read as "from now".
    let auth = format!("Bearer {}", h.token("153"));
    for bad in ["abc", "-1", "12345678901234567890"] {
        let headers = [("authorization", auth.as_str()), ("last-event-id", bad)];
        let r = h.send(Method::GET, &format!("{}/v1/events", h.base), &headers, "").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        assert!(problem(&r)["detail"].as_str().unwrap_or_default().contains("Last-Event-ID"), "{}", r.text);
    }
    h.stop().await;
}

/// Issue 37: an agent's event streams are capped (`sessions.max_streams_per_agent`); the newest
/// past it is refused with 429 `too-many-streams`, another agent is unaffected, and a closed
/// stream gives its place back.
#[tokio::test]
async fn event_streams_per_agent_are_capped_and_a_closed_one_frees_its_place() {
    let h = Harness::with(Options { config: Box::new(|c| c.sessions.max_streams_per_agent = 3), ..Options::default() })
        .await;
    h.sign_in("153").await;
    h.sign_in("154").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let s = h.events("153", None).await;
        assert_eq!(s.status, StatusCode::OK);
        open.push(s);
    }
    let r = h.call(Method::GET, "/v1/events", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(problem(&r)["type"], "urn:ccgate:problem:too-many-streams");
    assert_eq!(h.events("154", None).await.status, StatusCode::OK, "another agent has places of its own");
    let m = h.metrics().await;
    assert!(m.contains(r#"ccgate_requests_total{gateway="default",method="events",outcome="rate_limited"} 1"#), "{m}");
    drop(open.pop());
    common::eventually("the closed stream's place is free", || async {
        let s = h.events("153", None).await;
        s.status == StatusCode::OK
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_full_buffer_drops_the_oldest_counts_it_and_tells_the_reader() {
    let h = Harness::with(Options { config: Box::new(|c| c.sessions.event_buffer = 3), ..Options::default() }).await;
    h.sign_in("153").await;
    let session = h.running().sessions.active("153").unwrap();
    let start = session.events.latest();
    for i in 0..6 {
        h.sim.push_event("153", "AgentState_Test", json!({"n": i}));
    }
    let mut latest = session.events.subscribe();
    tokio::time::timeout(WAIT, latest.wait_for(|id| *id >= start + 6)).await.unwrap().unwrap();
    let mut s = h.events("153", Some(start)).await;
    s.next().await; // greeting
    assert_eq!(s.next().await.comment.as_deref(), Some("missed events: the buffer was full"));
    let ns: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let f = s.next_event().await;
            let d: serde_json::Value = serde_json::from_str(f.data.as_deref().unwrap()).unwrap();
            v.push(d["content"]["n"].as_i64().unwrap());
        }
        v
    };
    assert_eq!(ns, vec![3, 4, 5], "the newest three survive");
    assert!(h.metrics().await.contains("ccgate_events_dropped_total 3"));
    h.stop().await;
}

#[tokio::test]
async fn a_failed_sign_out_keeps_the_session_so_the_app_can_retry() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    h.sim.set_faults(Faults { http_status: Some(500), methods: vec!["logout".into()], ..Faults::default() });
    let r = h.call(Method::DELETE, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert!(h.sim.is_signed_in("153"), "the gateway was not told");
    let r = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK, "still signed in through ccgate: {}", r.text);
    h.sim.set_faults(Faults::default());
    assert_eq!(h.call(Method::DELETE, "/v1/session", Some("153"), "").await.status, StatusCode::NO_CONTENT);
    assert!(!h.sim.is_signed_in("153"));
    assert!(h.metrics().await.contains(r#"ccgate_signout_failures_total{trigger="app"} 1"#));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_open_event_stream_keeps_the_agent_signed_in() {
    let h = Harness::start().await; // idle_timeout_ms: default 120 s
    h.sign_in("153").await;
    let session = h.running().sessions.active("153").unwrap();
    let mut s = h.events("153", None).await;
    s.next().await; // greeting
    for _ in 0..20 {
        // 300 s of nothing but keep-alives: the app is listening, so it is not idle.
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(s.next().await.comment.as_deref(), Some("keep-alive"));
    }
    assert!(session.ended().is_none(), "signed out while its app was listening");
    assert_eq!(h.sim.count(GatewayMethod::Logout), 0);
    drop(s);
    // The app went away: the idle clock runs from its last sign of life.
    let why = tokio::time::timeout(Duration::from_secs(180), session.wait_ended()).await.expect("idle sign-out");
    assert_eq!(why, Ended::SignedOut);
    assert_eq!(h.sim.count(GatewayMethod::Logout), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_event_stream_gets_a_keep_alive_every_15_seconds_and_ends_with_the_session() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    let mut s = h.events("153", None).await;
    s.next().await; // greeting
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(s.next().await.comment.as_deref(), Some("keep-alive"));
    h.sim.kick("153");
    let end = s.next_event().await;
    assert_eq!(end.event.as_deref(), Some("ccgate.session_ended"));
    assert_eq!(end.data.as_deref(), Some(r#"{"reason":"guid_refused"}"#));
    h.stop().await;
}

#[tokio::test]
async fn conference_state_follows_every_documented_transition() {
    let h = Harness::start().await;
    let chair = |v: &serde_json::Value| v["chairperson"].clone();
    let view = async |agent: &str| h.call(Method::GET, "/v1/session", Some(agent), "").await.json();

    // RequestSuccess: chair.
    let conf = h.chair("153").await;
    assert_eq!(chair(&view("153").await), true);
    // PresidentChanged to 154, ParticipantChanged (changeType 2) to 153.
    h.sign_in("154").await;
    assert_eq!(h.sim.transfer_chair("153", "154"), "0");
    h.wait_conf("154", |s| *s == ConfState::Chair { conf_id: conf }).await;
    h.wait_conf("153", |s| *s == ConfState::Participant { conf_id: conf }).await;
    assert_eq!(chair(&view("153").await), false);
    assert_eq!(view("153").await["confId"], conf);
    // Leave (participant): SelfLeaveResult, no conference.
    assert_eq!(h.sim.leave_conference("153"), "0");
    h.wait_conf("153", |s| *s == ConfState::None).await;
    // Release by the chair ends it for everyone.
    assert_eq!(h.sim.release_conference("154"), "0");
    h.wait_conf("154", |s| *s == ConfState::None).await;
    assert!(view("154").await["confId"].is_null());
    let r = h.call(Method::POST, STOP, Some("154"), "").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "no conference after release");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_refuses_then_signs_everyone_out() {
    let h = Harness::with(Options {
        config: Box::new(|c| {
            c.server.drain_delay_ms = 1_500;
            c.server.shutdown_grace_ms = 10_000;
        }),
        ..Options::default()
    })
    .await;
    h.sign_in("153").await;
    h.sign_in("154").await;
    let readiness = h.running().readiness.clone();
    let admin = h.admin.clone();
    let base = h.base.clone();
    let mut h = h;
    let running = h.proxy.take().unwrap();
    let stopping = tokio::spawn(running.stop());
    tokio::time::timeout(WAIT, readiness.wait_shutting_down()).await.unwrap();
    let r = h.send(Method::GET, &format!("{admin}/readyz"), &[], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "not ready at once");
    let r = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK, "still serving during the drain delay");
    tokio::time::timeout(WAIT, stopping).await.expect("stopped within the grace period").unwrap();
    assert_eq!(h.sim.count(GatewayMethod::Logout), 2, "both agents signed out");
    assert!(!h.sim.is_signed_in("153") && !h.sim.is_signed_in("154"));
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "no longer accepting");
    h.stop().await;
}

#[tokio::test]
async fn past_max_agents_a_new_agent_gets_a_clear_503() {
    let h = Harness::with(Options { config: Box::new(|c| c.sessions.max_agents = 1), ..Options::default() }).await;
    h.sign_in("153").await;
    let r = h.call(Method::POST, "/v1/session", Some("154"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(common::problem(&r)["type"], "urn:ccgate:problem:too-many-agents", "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(h.sim.count(GatewayMethod::Login), 1, "the gateway was not asked");
    let m = h.metrics().await;
    assert!(m.contains(r#"ccgate_signins_total{gateway="default",result="at_capacity"} 1"#), "{m}");
    assert!(m.contains(r#"ccgate_requests_total{gateway="default",method="login",outcome="overloaded"} 1"#), "{m}");
    assert!(m.contains("ccgate_signin_wait_seconds_count 1"), "{m}");
    // The agent already signed in is not a new one.
    assert_eq!(h.call(Method::GET, "/v1/session", Some("153"), "").await.status, StatusCode::OK);
    h.stop().await;
}

/// The poller reads its own connection (not through hyper): a gateway that sends its answers
/// chunked and closes the connection after each, as a streaming servlet container behind a
/// draining load balancer does, is polled as well as one that does neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_read_chunked_answers_and_redial_after_a_close() {
    let mut sim = test_sim_config();
    sim.event_wait_ms = 50;
    sim.faults = Faults { chunked: true, close: true, methods: vec!["getAgentEvent".into()], ..Faults::default() };
    let h =
        Harness::with(Options { sim, config: Box::new(|c| c.sessions.poll_pause_ms = 10), ..Options::default() }).await;
    let polls = || h.sim.count(GatewayMethod::GetAgentEvent);
    h.sign_in("153").await;
    let open = h.sim.open_connections();
    // The conference is set up when its RequestSuccess event arrives, in a chunked answer.
    let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":3}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["chairperson"], true, "{}", r.text);
    let before = polls();
    common::eventually("ten more polls", || async { polls() >= before + 10 }).await;
    // The poller's connection closes and is re-dialed after every poll, so either count may
    // catch it between the two (one fewer, or the old not yet seen closed: one more); ten
    // connections kept would be ten more.
    assert!(h.sim.open_connections() <= open + 1, "each closed connection was let go, not kept");
    let metrics = h.metrics().await;
    let failed =
        |l: &&str| l.starts_with("ccgate_upstream_errors_total{") && l.contains("getAgentEvent") && !l.ends_with(" 0");
    assert!(!metrics.lines().any(|l| failed(&l)), "no poll failed:\n{metrics}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_poller_holds_one_connection_of_its_own_and_dials_again_when_it_breaks() {
    let mut sim = test_sim_config();
    sim.event_wait_ms = 50;
    let h = Harness::with(Options {
        sim,
        config: Box::new(|c| {
            c.sessions.poll_pause_ms = 10;
            c.sessions.poll_backoff_ms = 10;
        }),
        ..Options::default()
    })
    .await;
    let polls = || h.sim.count(GatewayMethod::GetAgentEvent);
    h.sign_in("153").await;
    let first = polls();
    common::eventually("a few polls", || async { polls() >= first + 3 }).await;
    // The sign-in's pooled connection and the poller's own.
    let open = h.sim.open_connections();
    let before = polls();
    common::eventually("twenty more polls", || async { polls() >= before + 20 }).await;
    assert_eq!(h.sim.open_connections(), open, "twenty polls reused one connection; none was opened or leaked");

    // The gateway breaks every poll's connection: each failure closes it and the next dials
    // again, so the count does not grow.
    h.sim.set_faults(Faults { reset: true, methods: vec!["getAgentEvent".into()], ..Faults::default() });
    let broken = polls();
    common::eventually("polls while the gateway resets them", || async { polls() >= broken + 3 }).await;
    h.sim.set_faults(Faults::default());
    let healed = polls();
    common::eventually("polls after the gateway heals", || async { polls() >= healed + 5 }).await;
    assert!(h.running().sessions.active("153").is_ok(), "a broken connection is not a lost session");
    assert!(h.sim.open_connections() <= open, "broken connections were closed, not kept");
    let metrics = h.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with("ccgate_upstream_errors_total{") && l.contains("getAgentEvent")),
        "the broken polls were counted"
    );

    // Signing out ends the poller, and its connection with it.
    assert_eq!(h.call(Method::DELETE, "/v1/session", Some("153"), "").await.status, StatusCode::NO_CONTENT);
    common::eventually("the poller's connection closed", || async { h.sim.open_connections() < open }).await;
    h.stop().await;
}

//! The REST API end to end: sign in, conference, stopVoiceToConf, and the chairperson policy,
//! with the simulator's counters proving what reached the gateway.

use crate::common;

use ccgate::config::UnknownChair;
use ccgate::gateway::GatewayMethod;
use ccgate::session::ConfState;
use ccgate::sim::{AuthMode, Faults, SimConfig};
use common::{problem, test_sim_config, Harness, Options};
use http::{Method, StatusCode};

const STOP: &str = "/v1/conference/announcement/stop";

#[tokio::test]
async fn happy_path_stop_reaches_gateway_once_with_current_guid() {
    let h = Harness::start().await;
    let conf_id = h.chair("153").await;
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), serde_json::json!({"stopped": true}));

    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 1);
    let current = h.sim.current_guid("153").expect("signed in at the gateway");
    let stops: Vec<_> = h.sim.received().into_iter().filter(|x| x.method == "stopVoiceToConf").collect();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].agent, "153");
    assert_eq!(stops[0].guid.as_deref(), Some(current.as_str()), "stop must carry the session's current Guid");
    assert!(current.contains(".AgentGateway"), "node suffix kept: {current}");

    let s = h.call(Method::GET, "/v1/session", Some("153"), "").await.json();
    assert_eq!(s["chairperson"], true);
    assert_eq!(s["confId"].as_u64(), Some(conf_id));
    assert!(!s.to_string().contains(&current), "the Guid never reaches the app");
    h.stop().await;
}

#[tokio::test]
async fn sign_in_is_idempotent_and_sign_out_ends_the_gateway_session() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    let again = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert_eq!(again.status, StatusCode::OK, "second sign-in returns the existing session");
    assert_eq!(h.sim.count(GatewayMethod::Login), 1);
    let out = h.call(Method::DELETE, "/v1/session", Some("153"), "").await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    assert!(!h.sim.is_signed_in("153"));
    assert_eq!(h.sim.count(GatewayMethod::Logout), 1);
    let gone = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    assert_eq!(gone.status, StatusCode::CONFLICT);
    assert_eq!(problem(&gone)["type"], "urn:ccgate:problem:no-session");
    h.stop().await;
}

#[tokio::test]
async fn not_chairperson_is_refused_locally_and_never_reaches_gateway() {
    let h = Harness::start().await;
    h.chair("153").await;
    h.sign_in("154").await;
    // The chair passes to 154 at the gateway; both pollers pick up the events.
    assert_eq!(h.sim.transfer_chair("153", "154"), "0");
    h.wait_conf("153", |s| matches!(s, ConfState::Participant { .. })).await;
    h.wait_conf("154", |s| matches!(s, ConfState::Chair { .. })).await;

    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let p = problem(&r);
    assert_eq!(p["retcode"], "101-002");
    assert_eq!(p["type"], "urn:ccgate:problem:not-chairperson");
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 0, "refused locally");

    let ok = h.call(Method::POST, STOP, Some("154"), "").await;
    assert_eq!(ok.status, StatusCode::OK, "the new chair may: {}", ok.text);
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 1);
    h.stop().await;
}

#[tokio::test]
async fn no_conference_is_refused_locally_with_101_001() {
    let h = Harness::start().await;
    h.sign_in("154").await;
    let r = h.call(Method::POST, STOP, Some("154"), "").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(problem(&r)["retcode"], "101-001");
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 0);
    h.stop().await;
}

#[tokio::test]
async fn no_session_is_409_and_nothing_is_sent() {
    let h = Harness::start().await;
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(problem(&r)["type"], "urn:ccgate:problem:no-session");
    assert_eq!(h.sim.total(), 0);
    h.stop().await;
}

#[tokio::test]
async fn unknown_chair_state_is_forwarded_by_default_and_the_gateway_judges() {
    let h = Harness::start().await;
    h.chair("153").await;
    h.sign_in("154").await;
    assert_eq!(h.sim.transfer_chair("153", "154"), "0");
    h.wait_conf("153", |s| matches!(s, ConfState::Participant { .. })).await;
    // ccgate loses track (as after a takeover): the gateway must decide.
    h.running().sessions.active("153").unwrap().update_conf(|_| ConfState::Unknown).await;
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let p = problem(&r);
    assert_eq!(p["retcode"], "101-002");
    assert!(p["detail"].as_str().unwrap().contains("gateway"), "{p}");
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 1, "forwarded");
    h.stop().await;
}

#[tokio::test]
async fn unknown_chair_state_with_deny_policy_is_refused_locally() {
    let h = Harness::with(Options {
        config: Box::new(|c| c.policy.on_unknown_chair = UnknownChair::Deny),
        ..Options::default()
    })
    .await;
    h.chair("153").await;
    h.running().sessions.active("153").unwrap().update_conf(|_| ConfState::Unknown).await;
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(problem(&r)["retcode"], "101-002");
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 0);
    h.stop().await;
}

#[tokio::test]
async fn gateway_error_reason_is_carried_to_the_app() {
    let h = Harness::start().await;
    h.chair("153").await;
    h.sim.set_faults(Faults { error_reason: Some(22), methods: vec!["stopVoiceToConf".into()], ..Faults::default() });
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    let p = problem(&r);
    assert_eq!(p["retcode"], "100-007");
    assert_eq!(p["errorReason"], 22);
    assert!(p["detail"].as_str().unwrap().contains("Unknown ERROR._22"), "{p}");
    h.stop().await;
}

/// An app's own mistake is not a gateway failure: a second conference while in one is the
/// gateway's `101-003`, answered 409 `conflict` with the retcode, and counted `rejected`
/// (outside the error-ratio alert), not `gateway_error`.
#[tokio::test]
async fn a_conflict_with_the_agents_state_is_409_rejected_not_a_gateway_error() {
    let h = Harness::start().await;
    h.chair("153").await;
    let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":3}"#).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let p = problem(&r);
    assert_eq!(p["type"], "urn:ccgate:problem:conflict");
    assert_eq!(p["retcode"], "101-003");
    let m = h.metrics().await;
    assert!(
        m.contains(r#"ccgate_requests_total{gateway="default",method="requestAgentConf",outcome="rejected"} 1"#),
        "{m}"
    );
    assert!(!m.contains(r#"method="requestAgentConf",outcome="gateway_error"} 1"#), "{m}");
    h.stop().await;
}

#[tokio::test]
async fn agent_signed_in_elsewhere_gets_409_and_force_takes_over() {
    let h = Harness::start().await;
    // A desktop client signs agent 153 in directly at the gateway.
    let login = h
        .send(
            Method::PUT,
            &format!("{}/agentgateway/resource/onlineagent/153", h.sim_url()),
            &[("content-type", "application/json; charset=UTF-8")],
            &format!(r#"{{"password":"{}","phonenum":"1"}}"#, common::PASSWORD),
        )
        .await;
    assert_eq!(login.json()["retcode"], "0");
    let elsewhere_guid = h.sim.current_guid("153").unwrap();

    let r = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let p = problem(&r);
    assert_eq!(p["retcode"], "100-002");
    assert!(p["detail"].as_str().unwrap().contains("force"), "{p}");

    let r = h.call(Method::POST, "/v1/session", Some("153"), r#"{"force": true}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let v = r.json();
    assert!(v["chairperson"].is_null(), "after a takeover ccgate does not know the chair state: {v}");
    assert_eq!(h.sim.count(GatewayMethod::ForceLogin), 1);
    assert_ne!(h.sim.current_guid("153").unwrap(), elsewhere_guid, "the takeover got a new Guid");
    h.stop().await;
}

#[tokio::test]
async fn guid_rotation_during_a_stream_of_requests_causes_no_failure() {
    let sim = SimConfig {
        auth_mode: AuthMode::Dynamic,
        guid_interval_ms: 20,
        // Old Guids die quickly: a proxy that did not follow rotations would fail here.
        guid_overlap_ms: 500,
        event_wait_ms: 10,
        ..test_sim_config()
    };
    // This test is about rotation: lift the default stopVoiceToConf limits out of the way.
    let h =
        Harness::with(Options { sim, config: Box::new(|c| c.rate_limits.limit.clear()), ..Options::default() }).await;
    h.chair("153").await;
    let start_rotations = h.sim.rotations();
    let mut sent = 0;
    // Keep going until the gateway has rotated the Guid several times under us.
    while h.sim.rotations() < start_rotations + 5 {
        // Four at a time, so requests are in flight while the poller swaps the Guid.
        let batch: Vec<_> = (0..4).map(|_| h.spawn_call(Method::POST, STOP, "153")).collect();
        for t in batch {
            let r = t.await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "request {sent} failed across a rotation: {}", r.text);
            sent += 1;
        }
        assert!(sent < 20_000, "the simulator never rotated the Guid");
    }
    let guids: std::collections::HashSet<_> =
        h.sim.received().into_iter().filter(|x| x.method == "stopVoiceToConf").filter_map(|x| x.guid).collect();
    assert!(guids.len() >= 2, "requests followed the rotation ({} distinct Guids over {sent} requests)", guids.len());
    let m = h.metrics().await;
    assert!(!m.contains("ccgate_guid_rotations_total 0"), "rotations counted");
    h.stop().await;
}

#[tokio::test]
async fn session_lost_at_the_gateway_is_a_503_that_says_sign_in_again() {
    let h = Harness::start().await;
    h.chair("153").await;
    h.sim.kick("153");
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let p = problem(&r);
    assert_eq!(p["type"], "urn:ccgate:problem:session-lost");
    assert!(p["detail"].as_str().unwrap().contains("sign in again"));
    // After the loss is reported, a fresh sign-in works.
    h.sign_in("153").await;
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_gateway() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    let before = h.sim.count(GatewayMethod::RequestAgentConf);
    for body in
        ["", "[]", "{", r#"{"memberNum":0}"#, r#"{"memberNum":121}"#, r#"{"memberNum":"3"}"#, r#"{"memberNum":2.5}"#]
    {
        let r = h.call(Method::POST, "/v1/conference", Some("153"), body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body:?}: {}", r.text);
        problem(&r);
    }
    let big = format!(r#"{{"memberNum":3,"pad":"{}"}}"#, "x".repeat(70 * 1024));
    let r = h.call(Method::POST, "/v1/conference", Some("153"), &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    problem(&r);
    assert_eq!(h.sim.count(GatewayMethod::RequestAgentConf), before);

    let r = h.call(Method::GET, "/v1/nope", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    problem(&r);
    let r = h.call(Method::GET, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers.get("allow").unwrap(), "POST");
    // The sign-in body is validated before the session store is consulted; it is an object
    // (serde alone would read `[null, null]` as the fields in order).
    let r = h.call(Method::POST, "/v1/session", Some("153"), "[null, null]").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = h.call(Method::POST, "/v1/session", Some("153"), r#"{"status": 9}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = h.call(Method::POST, "/v1/session", Some("153"), r#"{"unknown": 1}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conference_not_confirmed_in_time_is_202_pending_with_retry_after() {
    // No wait at all for the gateway's confirming event: the answer is always "pending".
    let h =
        Harness::with(Options { config: Box::new(|c| c.sessions.conference_wait_ms = 0), ..Options::default() }).await;
    h.sign_in("153").await;
    // The gateway's events arrive half a second late, so the confirmation cannot beat the
    // answer (with no delay the poller may take it in before the wait is even checked).
    h.sim.set_faults(Faults { latency_ms: 500, methods: vec!["getAgentEvent".into()], ..Faults::default() });
    // The latency applies to polls that arrive from now on: wait for one.
    let polls = h.sim.count(GatewayMethod::GetAgentEvent);
    common::eventually("a poll under the latency", || async { h.sim.count(GatewayMethod::GetAgentEvent) > polls })
        .await;
    let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":3}"#).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert_eq!(r.json()["pending"], true);
    // The event comes in behind the answer; looking again after Retry-After finds the chair.
    h.wait_conf("153", |c| matches!(c, ConfState::Chair { .. })).await;
    assert_eq!(h.call(Method::GET, "/v1/session", Some("153"), "").await.json()["chairperson"], true);
    h.stop().await;
}

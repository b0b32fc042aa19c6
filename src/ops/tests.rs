//! The operations core in process, against the scripted gateway (no sockets, no TLS), under
//! tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::config::{LimitConfig, RateLimitsConfig, Scope};
use crate::gateway::Envelope;
use crate::metrics::Metrics;
use crate::session::testing::{event, store, FakeGateway};

const AGENT: &str = "153";
const STOP: MethodLabel = MethodLabel::Gateway(GatewayMethod::StopVoiceToConf);

fn who() -> Principal {
    Principal::agent(AGENT)
}

fn settings(resume: bool) -> CoreSettings {
    CoreSettings {
        on_unknown_chair: UnknownChair::Forward,
        resume,
        conference_wait: Duration::from_secs(5),
        event_wait: Duration::from_secs(10),
    }
}

fn core_with(gw: &Arc<FakeGateway>, settings: CoreSettings, limits: Vec<LimitConfig>) -> Core {
    let sessions = store(gw, |_| {});
    let cfg = RateLimitsConfig { limit: limits, ..RateLimitsConfig::default() };
    Core::new(Gateways::one(sessions), Arc::new(Limits::new(&cfg, &[], Metrics::default()).unwrap()), settings)
}

fn new_core(gw: &Arc<FakeGateway>, resume: bool) -> Core {
    core_with(gw, settings(resume), Vec::new())
}

async fn sign_in(core: &Core) -> Arc<Session> {
    let op = Operation::SignIn { opts: SignInOptions::default(), refuse_if_signed_in: false };
    match core.run(&who(), MethodLabel::Gateway(GatewayMethod::Login), op).await.result {
        Ok(Done::SignedIn { session, .. }) => core.sessions().active(&session.agent_id).unwrap(),
        other => panic!("sign-in: {other:?}"),
    }
}

fn stop() -> Operation {
    Operation::Call { method: GatewayMethod::StopVoiceToConf, body: None }
}

#[tokio::test(start_paused = true)]
async fn the_chair_check_decides_per_conference_state_before_any_gateway_call() {
    let cases = [
        (ConfState::Chair { conf_id: 7 }, UnknownChair::Forward, true),
        (ConfState::Unknown, UnknownChair::Forward, true),
        (ConfState::Unknown, UnknownChair::Deny, false),
        (ConfState::Participant { conf_id: 7 }, UnknownChair::Forward, false),
        (ConfState::None, UnknownChair::Forward, false),
        (ConfState::Requested, UnknownChair::Forward, false),
        (ConfState::RequestFailed { cause: None }, UnknownChair::Forward, false),
    ];
    for (state, on_unknown, forwarded) in cases {
        let gw = FakeGateway::new();
        let core = core_with(&gw, CoreSettings { on_unknown_chair: on_unknown, ..settings(false) }, Vec::new());
        sign_in(&core).await.update_conf(|_| state).await;
        let result = core.run(&who(), STOP, stop()).await.result;
        assert_eq!(gw.count(GatewayMethod::StopVoiceToConf), usize::from(forwarded), "{state:?} {on_unknown:?}");
        match (state, result) {
            (_, Ok(Done::Replied { .. })) if forwarded => {}
            (ConfState::Participant { .. } | ConfState::Unknown, Err(Failure::NotChairperson(None))) => {}
            (_, Err(Failure::NoConference(None))) if !forwarded => {}
            (state, other) => panic!("{state:?}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_gateway_chair_refusal_is_the_same_kind_with_the_gateways_words() {
    let gw = FakeGateway::new();
    let core = new_core(&gw, false);
    sign_in(&core).await.update_conf(|_| ConfState::Chair { conf_id: 7 }).await;
    gw.script(
        GatewayMethod::StopVoiceToConf,
        Ok(Envelope::error("101-002", "not chair", Some(json!({"errorReason": 3})))),
    );
    match core.run(&who(), STOP, stop()).await.result {
        Err(Failure::NotChairperson(Some(r))) => assert_eq!((r.retcode.as_str(), r.error_reason), ("101-002", Some(3))),
        other => panic!("{other:?}"),
    }
}

/// A method any signed-in agent may call: a resumed session starts with no conference, so a
/// chair-only call would be refused locally after the resume.
fn handshake() -> Operation {
    Operation::Call { method: GatewayMethod::HandShake, body: None }
}
const HANDSHAKE: MethodLabel = MethodLabel::Gateway(GatewayMethod::HandShake);

#[tokio::test(start_paused = true)]
async fn resume_signs_in_once_and_retries_once_with_the_new_guid() {
    let gw = FakeGateway::new();
    let core = new_core(&gw, true);
    sign_in(&core).await;
    gw.refuse(GatewayMethod::HandShake, "100-006");
    let result = core.run(&who(), HANDSHAKE, handshake()).await.result;
    assert!(matches!(result, Ok(Done::Replied { .. })), "{result:?}");
    assert_eq!(gw.count(GatewayMethod::Login), 2, "one resume");
    let guids = gw.guids(GatewayMethod::HandShake);
    assert_eq!(guids.len(), 2);
    assert_ne!(guids[0], guids[1], "the refused Guid is not presented again");
}

#[tokio::test(start_paused = true)]
async fn resume_gives_up_after_one_attempt() {
    let gw = FakeGateway::new();
    let core = new_core(&gw, true);
    sign_in(&core).await;
    gw.refuse(GatewayMethod::HandShake, "100-006");
    gw.refuse(GatewayMethod::HandShake, "100-006");
    let result = core.run(&who(), HANDSHAKE, handshake()).await.result;
    assert!(matches!(result, Err(Failure::SessionLost(Some(_)))), "{result:?}");
    assert_eq!(gw.count(GatewayMethod::Login), 2);
    assert_eq!(gw.count(GatewayMethod::HandShake), 2, "no loop");
}

#[tokio::test(start_paused = true)]
async fn resume_also_replaces_a_session_found_lost_before_the_call() {
    let gw = FakeGateway::new();
    let core = new_core(&gw, true);
    let first = sign_in(&core).await;
    gw.push_event(event(AGENT, "AgentOther_ShutdownService", json!({"loginTime": 1})));
    first.wait_ended().await;
    let result = core.run(&who(), HANDSHAKE, handshake()).await.result;
    assert!(matches!(result, Ok(Done::Replied { .. })), "{result:?}");
    assert_eq!(gw.count(GatewayMethod::Login), 2);
    assert_eq!(gw.count(GatewayMethod::HandShake), 1);
}

#[tokio::test(start_paused = true)]
async fn without_resume_or_with_a_clients_own_password_a_lost_session_stays_lost() {
    let gw = FakeGateway::new();
    let core = new_core(&gw, false);
    sign_in(&core).await.update_conf(|_| ConfState::Unknown).await;
    gw.refuse(GatewayMethod::StopVoiceToConf, "100-006");
    assert!(matches!(core.run(&who(), STOP, stop()).await.result, Err(Failure::SessionLost(Some(_)))));
    assert!(matches!(core.run(&who(), STOP, stop()).await.result, Err(Failure::SessionLost(None))));
    assert_eq!(gw.count(GatewayMethod::Login), 1);

    // Resume on, but the session was signed in with the password the client sent.
    let gw = FakeGateway::new();
    let core = new_core(&gw, true);
    let opts =
        SignInOptions { body: Some(Bytes::from_static(br#"{"password":"p","phonenum":"1"}"#)), ..Default::default() };
    let op = Operation::SignIn { opts, refuse_if_signed_in: true };
    assert!(core.run(&who(), MethodLabel::Gateway(GatewayMethod::Login), op).await.result.is_ok());
    core.sessions().active(AGENT).unwrap().update_conf(|_| ConfState::Unknown).await;
    gw.refuse(GatewayMethod::StopVoiceToConf, "100-006");
    assert!(matches!(core.run(&who(), STOP, stop()).await.result, Err(Failure::SessionLost(Some(_)))));
    assert_eq!(gw.count(GatewayMethod::Login), 1, "ccgate keeps no client password to sign in again with");
}

#[tokio::test(start_paused = true)]
async fn a_second_plain_sign_in_on_the_passthrough_face_is_refused_like_the_gateway_would() {
    let gw = FakeGateway::new();
    let core = new_core(&gw, false);
    sign_in(&core).await;
    let op = Operation::SignIn { opts: SignInOptions::default(), refuse_if_signed_in: true };
    let result = core.run(&who(), MethodLabel::Gateway(GatewayMethod::Login), op).await.result;
    assert!(matches!(result, Err(Failure::AlreadySignedIn(None))), "{result:?}");
    assert_eq!(gw.count(GatewayMethod::Login), 1);
}

#[tokio::test(start_paused = true)]
async fn creating_a_conference_waits_for_the_verdict_and_rolls_back_on_refusal() {
    let gw = FakeGateway::new();
    gw.then_events(
        GatewayMethod::RequestAgentConf,
        vec![
            event(AGENT, "AgentConf_SelfJoinResult", json!({"confId": 9})),
            event(AGENT, "AgentConf_RequestSuccess", json!({"confId": 9})),
        ],
    );
    let core = new_core(&gw, false);
    let session = sign_in(&core).await;
    let body = Bytes::from_static(br#"{"memberNum":3}"#);
    let label = MethodLabel::Gateway(GatewayMethod::RequestAgentConf);
    let result = core.run(&who(), label, Operation::CreateConference { body: body.clone() }).await.result;
    assert!(matches!(result, Ok(Done::Conference(ConfState::Chair { conf_id: 9 }))), "{result:?}");

    // A refused request leaves the state where it was.
    session.update_conf(|_| ConfState::None).await;
    gw.refuse(GatewayMethod::RequestAgentConf, "101-003");
    let result = core.run(&who(), label, Operation::CreateConference { body }).await.result;
    assert!(matches!(result, Err(Failure::Conflict(_))), "{result:?}");
    assert_eq!(session.conf(), ConfState::None);
}

#[tokio::test(start_paused = true)]
async fn a_limit_refuses_before_the_gateway_is_called() {
    let gw = FakeGateway::new();
    let limit =
        LimitConfig { method: "stopVoiceToConf".into(), scope: Scope::Agent, rate: 1.0, burst: 1, shadow: false };
    let core = core_with(&gw, settings(false), vec![limit]);
    sign_in(&core).await.update_conf(|_| ConfState::Chair { conf_id: 7 }).await;
    let first = core.run(&who(), STOP, stop()).await;
    assert!(first.result.is_ok());
    assert_eq!(first.limit.map(|l| l.remaining), Some(0));
    let second = core.run(&who(), STOP, stop()).await;
    assert!(matches!(second.result, Err(Failure::RateLimited(_))), "{:?}", second.result);
    assert_eq!(gw.count(GatewayMethod::StopVoiceToConf), 1);
}

/// Issue 37 review: with the buckets in a shared store, a chairperson over its own limit is
/// refused by its own bucket without spending the global one that other customers share.
#[tokio::test(start_paused = true)]
async fn over_its_own_limit_a_chair_spends_no_shared_bucket_in_the_shared_store() {
    use crate::shared::memory::MemoryHub;
    let gw = FakeGateway::new();
    let limit =
        |scope, burst| LimitConfig { method: "stopVoiceToConf".into(), scope, rate: 0.01, burst, shadow: false };
    let cfg = RateLimitsConfig {
        limit: vec![limit(Scope::Agent, 2), limit(Scope::Global, 5)],
        ..RateLimitsConfig::default()
    };
    let hub = MemoryHub::new(Duration::from_secs(3), crate::shared::TOMBSTONE);
    let limits =
        Limits::new(&cfg, &[], Metrics::default()).unwrap().shared(hub.join(), crate::config::LimitsFallback::Closed);
    let core = Core::new(Gateways::one(store(&gw, |_| {})), Arc::new(limits), settings(false));
    sign_in(&core).await.update_conf(|_| ConfState::Chair { conf_id: 7 }).await;
    for _ in 0..20 {
        core.run(&who(), STOP, stop()).await;
    }
    assert_eq!(gw.count(GatewayMethod::StopVoiceToConf), 2, "the agent's burst");
    // Another agent's stops: the global bucket still holds 3 of its 5.
    let other = Principal::agent("154");
    let limits = core.limits.load_full();
    for n in 0..3 {
        assert!(limits.check(STOP, Tier::Shared, &other).await.is_ok(), "global token {n}");
    }
    assert!(limits.check(STOP, Tier::Shared, &other).await.is_err(), "and no more");
}

#[tokio::test(start_paused = true)]
async fn the_event_queue_hands_out_each_event_once_and_waits_like_the_gateway() {
    let gw = FakeGateway::new();
    let core = new_core(&gw, false);
    let session = sign_in(&core).await;
    let label = MethodLabel::Gateway(GatewayMethod::GetAgentEvent);
    gw.push_event(event(AGENT, "AgentState_Ready", json!(null)));
    let mut changes = session.events.subscribe();
    changes.wait_for(|id| *id > 0).await.unwrap();
    match core.run(&who(), label, Operation::NextEvent).await.result {
        Ok(Done::Event(Some(e))) => assert_eq!(&*e.kind, "AgentState_Ready"),
        other => panic!("{other:?}"),
    }
    let started = tokio::time::Instant::now();
    assert!(matches!(core.run(&who(), label, Operation::NextEvent).await.result, Ok(Done::Event(None))));
    assert_eq!(started.elapsed(), Duration::from_secs(10), "an empty answer after the gateway's wait");
}

#[tokio::test(start_paused = true)]
async fn operations_without_a_session_say_so() {
    let gw = FakeGateway::new();
    let core = new_core(&gw, true);
    for op in [stop(), Operation::GetSession, Operation::NextEvent, Operation::Subscribe] {
        let result = core.run(&who(), STOP, op).await.result;
        assert!(matches!(result, Err(Failure::NoSession)), "{result:?}");
    }
    assert!(gw.seen().is_empty());
}

/// The audit trail of a chair-only call records the verdict that counted and whether the call
/// was sent: a check passed at admission but a shared limit refusing after it leaves the call
/// unsent (its audit line says `refused`, for the limit), never `allowed`.
#[tokio::test(start_paused = true)]
async fn the_audit_trail_says_sent_only_for_calls_that_reached_the_gateway() {
    use crate::labels::ChairVerdict;
    let gw = FakeGateway::new();
    let global =
        LimitConfig { method: "stopVoiceToConf".into(), scope: Scope::Global, rate: 0.01, burst: 1, shadow: false };
    let core = core_with(&gw, settings(false), vec![global]);
    // Unknown state with `forward`: the slow path, so the check runs before the shared limit.
    let s = sign_in(&core).await;
    s.update_conf(|_| ConfState::Unknown).await;
    async fn run(core: &Core) -> (Answer, Arc<audit::Trail>) {
        let trail = Arc::new(audit::Trail::default());
        (trail.follow(core.run(&who(), STOP, stop())).await, trail)
    }
    let (first, trail) = run(&core).await;
    assert!(first.result.is_ok(), "{:?}", first.result);
    assert_eq!(trail.check().map(|c| c.verdict), Some(ChairVerdict::UnknownForwarded));
    assert!(trail.forwarded());
    let (second, trail) = run(&core).await;
    assert!(matches!(second.result, Err(Failure::RateLimited(_))), "{:?}", second.result);
    assert_eq!(trail.check().map(|c| c.verdict), Some(ChairVerdict::UnknownForwarded), "checked, then limited");
    assert!(!trail.forwarded(), "not sent");
    // A participant: refused by the check, with its conference.
    s.update_conf(|_| ConfState::Participant { conf_id: 7 }).await;
    let (third, trail) = run(&core).await;
    assert!(matches!(third.result, Err(Failure::NotChairperson(_))), "{:?}", third.result);
    assert_eq!(trail.check(), Some(audit::ChairCheck { conference: Some(7), verdict: ChairVerdict::NotChairperson }));
    assert!(!trail.forwarded());
    assert_eq!(gw.count(GatewayMethod::StopVoiceToConf), 1);
}

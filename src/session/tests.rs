//! The session layer in process, against the scripted gateway, under tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::testing::{event, store, FakeGateway};
use super::*;
use crate::gateway::Envelope;

const AGENT: &str = "153";

#[tokio::test(start_paused = true)]
async fn concurrent_first_sign_ins_share_one_gateway_sign_in() {
    let gw = FakeGateway::new();
    gw.set_latency(Duration::from_millis(1500));
    let sessions = store(&gw, |_| {});
    let calls = (0..50).map(|_| {
        let sessions = sessions.clone();
        tokio::spawn(async move { sessions.sign_in(AGENT, SignInOptions::default()).await })
    });
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap().unwrap());
    }
    assert_eq!(gw.count(GatewayMethod::Login), 1, "one sign-in reached the gateway");
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1, "one caller created it");
    assert!(results.iter().all(|(s, _)| Arc::ptr_eq(s, &results[0].0)), "everyone got the same session");
}

#[tokio::test(start_paused = true)]
async fn a_failed_sign_in_is_shared_too_and_not_retried() {
    let gw = FakeGateway::new();
    gw.set_latency(Duration::from_millis(500));
    gw.refuse(GatewayMethod::Login, "100-004");
    let sessions = store(&gw, |_| {});
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.sign_in(AGENT, SignInOptions::default()).await })
        })
        .collect();
    for c in calls {
        let err = c.await.unwrap().unwrap_err();
        assert!(matches!(&err, SessionError::Refused(r) if r.retcode == "100-004"), "{err:?}");
    }
    assert_eq!(gw.count(GatewayMethod::Login), 1);
    assert!(matches!(sessions.active(AGENT), Err(SessionError::NoSession)));
}

#[tokio::test(start_paused = true)]
async fn already_signed_in_and_no_credentials_are_their_own_errors() {
    let gw = FakeGateway::new();
    gw.refuse(GatewayMethod::Login, "100-002");
    let sessions = store(&gw, |_| {});
    let e = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap_err();
    assert!(matches!(e, SessionError::AlreadySignedIn(Some(_))), "{e:?}");
    let e = sessions.sign_in("999", SignInOptions::default()).await.unwrap_err();
    assert!(matches!(e, SessionError::NoCredentials), "{e:?}");
    assert_eq!(gw.count(GatewayMethod::Login), 1, "no credentials: no gateway call");
}

#[tokio::test(start_paused = true)]
async fn every_session_gone_retcode_marks_the_session_lost() {
    for code in ["100-006", "000-003", "105-005", "105-006", "105-007"] {
        let gw = FakeGateway::new();
        let sessions = store(&gw, |_| {});
        let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
        gw.refuse(GatewayMethod::StopVoiceToConf, code);
        let reply = s.call(GatewayMethod::StopVoiceToConf, None).await.unwrap();
        assert_eq!(reply.envelope.retcode, code, "the answer is returned for relaying");
        assert!(s.is_lost(), "{code}");
        assert!(matches!(sessions.active(AGENT), Err(SessionError::Lost)), "{code}");
    }
    // Any other refusal leaves the session alone.
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    gw.refuse(GatewayMethod::StopVoiceToConf, "100-007");
    s.call(GatewayMethod::StopVoiceToConf, None).await.unwrap();
    assert!(!s.is_lost());
}

#[tokio::test(start_paused = true)]
async fn shutdown_event_from_the_poll_ends_the_session() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    gw.push_event(event(AGENT, "AgentOther_ShutdownService", json!({"loginTime": 1})));
    assert_eq!(s.wait_ended().await, Ended::Lost(crate::metrics::LossReason::ShutdownEvent));
    assert!(matches!(sessions.active(AGENT), Err(SessionError::Lost)));
}

#[tokio::test(start_paused = true)]
async fn the_session_presents_the_newest_guid_and_cookie() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    s.call(GatewayMethod::StopVoiceToConf, None).await.unwrap();
    // A rotation on any answer, then updateGuid's Guid from the body.
    let mut rotated = GatewayReply::from_envelope(Envelope::ok("", json!({})));
    rotated.set_guid = Some("rotated.AgentGateway1".into());
    s.take_credentials(rotated.set_guid.as_deref(), &rotated.cookies);
    s.call(GatewayMethod::StopVoiceToConf, None).await.unwrap();
    gw.script(GatewayMethod::UpdateGuid, Ok(Envelope::ok("success", json!({"guid": "fromBody.AgentGateway1"}))));
    s.call(GatewayMethod::UpdateGuid, None).await.unwrap();
    s.call(GatewayMethod::StopVoiceToConf, None).await.unwrap();
    let guids: Vec<_> = gw.guids(GatewayMethod::StopVoiceToConf).into_iter().flatten().collect();
    assert_eq!(guids, ["guid-1.AgentGateway0", "rotated.AgentGateway1", "fromBody.AgentGateway1"]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_agent_is_signed_out_and_activity_postpones_it() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |c| c.idle_timeout_ms = 120_000);
    let started = tokio::time::Instant::now();
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    s.touch();
    tokio::time::sleep_until(started + Duration::from_secs(90)).await;
    s.touch();
    tokio::time::sleep_until(started + Duration::from_secs(200)).await;
    assert!(sessions.active(AGENT).is_ok(), "activity at 90 s keeps it past 120 s");
    assert_eq!(gw.count(GatewayMethod::Logout), 0);
    assert_eq!(s.wait_ended().await, Ended::SignedOut);
    let ended_after = started.elapsed();
    assert!(ended_after >= Duration::from_secs(210), "not before 90 + 120 s: {ended_after:?}");
    assert_eq!(gw.count(GatewayMethod::Logout), 1);
    assert!(matches!(sessions.active(AGENT), Err(SessionError::NoSession)));
    assert!(gw.count(GatewayMethod::GetAgentEvent) >= 20, "polled all along (the gateway's heartbeat)");
}

#[tokio::test(start_paused = true)]
async fn sign_out_counts_not_signed_in_as_done_and_ends_the_session() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    gw.refuse(GatewayMethod::Logout, "100-006");
    sessions.sign_out(AGENT, GatewayMethod::Logout).await.unwrap();
    assert_eq!(s.ended(), Some(Ended::SignedOut), "not counted as lost");
    assert!(matches!(sessions.sign_out(AGENT, GatewayMethod::Logout).await, Err(SessionError::NoSession)));
}

#[tokio::test(start_paused = true)]
async fn a_failed_sign_out_keeps_the_session_and_its_poller_and_can_be_retried() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    gw.script(GatewayMethod::Logout, Err(UpstreamError::BadStatus(http::StatusCode::BAD_GATEWAY)));
    let e = sessions.sign_out(AGENT, GatewayMethod::Logout).await.unwrap_err();
    assert!(matches!(e, SessionError::Upstream(_)), "{e:?}");
    assert!(Arc::ptr_eq(&sessions.active(AGENT).unwrap(), &s), "the session stays");
    let polls = gw.count(GatewayMethod::GetAgentEvent);
    tokio::time::sleep(super::testing::POLL_WAIT * 2).await;
    assert!(gw.count(GatewayMethod::GetAgentEvent) > polls, "still polled (the gateway's heartbeat)");
    sessions.sign_out(AGENT, GatewayMethod::Logout).await.unwrap();
    assert_eq!(s.ended(), Some(Ended::SignedOut));
    assert_eq!(gw.count(GatewayMethod::Logout), 2);
}

#[tokio::test(start_paused = true)]
async fn an_idle_sign_out_retries_until_the_gateway_is_told() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |c| c.idle_timeout_ms = 120_000);
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    for _ in 0..3 {
        gw.script(GatewayMethod::Logout, Err(UpstreamError::Timeout));
    }
    assert_eq!(s.wait_ended().await, Ended::SignedOut);
    assert_eq!(gw.count(GatewayMethod::Logout), 4, "three failures, then told");
    assert!(matches!(sessions.active(AGENT), Err(SessionError::NoSession)));
}

#[tokio::test(start_paused = true)]
async fn an_app_that_comes_back_stops_a_retrying_idle_sign_out() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |c| {
        c.idle_timeout_ms = 120_000;
        c.poll_backoff_ms = 5_000;
    });
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    gw.script(GatewayMethod::Logout, Err(UpstreamError::Timeout));
    tokio::time::sleep(Duration::from_secs(121)).await;
    assert_eq!(gw.count(GatewayMethod::Logout), 1, "tried once, failed, waiting to retry");
    s.touch();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(s.ended().is_none(), "the app is back");
    assert_eq!(gw.count(GatewayMethod::Logout), 1, "no retry after the app came back");
    // And the idle clock starts over from the new activity.
    assert_eq!(s.wait_ended().await, Ended::SignedOut);
    assert_eq!(gw.count(GatewayMethod::Logout), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_retries_sign_outs_until_its_deadline() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    gw.script(GatewayMethod::Logout, Err(UpstreamError::Unavailable("down".into())));
    sessions.shutdown(tokio::time::Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(s.ended(), Some(Ended::SignedOut));
    assert_eq!(gw.count(GatewayMethod::Logout), 2);

    // A gateway that stays down: attempts stop at the deadline.
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    for _ in 0..100 {
        gw.script(GatewayMethod::Logout, Err(UpstreamError::Unavailable("down".into())));
    }
    let started = tokio::time::Instant::now();
    sessions.shutdown(started + Duration::from_secs(5)).await;
    assert!(started.elapsed() <= Duration::from_secs(5));
    assert!(s.ended().is_none());
    assert!(gw.count(GatewayMethod::Logout) >= 3, "retried with back-off");
}

#[tokio::test(start_paused = true)]
async fn a_sign_in_whose_answer_was_lost_is_taken_over_not_left_as_a_ghost() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    // The gateway signed the agent in, but the answer never came back.
    gw.script(GatewayMethod::Login, Err(UpstreamError::Timeout));
    assert!(sessions.sign_in(AGENT, SignInOptions::default()).await.is_err());
    // The next plain sign-in meets that ghost session.
    gw.refuse(GatewayMethod::Login, "100-002");
    let (s, created) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    assert!(created);
    assert_eq!(gw.count(GatewayMethod::ForceLogin), 1, "taken over");
    assert_eq!(s.conf(), ConfState::Unknown);

    // A connection that was never made sent nothing: a later 100-002 is someone else's.
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    gw.script(GatewayMethod::Login, Err(UpstreamError::Unavailable("refused".into())));
    assert!(sessions.sign_in(AGENT, SignInOptions::default()).await.is_err());
    gw.refuse(GatewayMethod::Login, "100-002");
    let e = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap_err();
    assert!(matches!(e, SessionError::AlreadySignedIn(_)), "{e:?}");
    assert_eq!(gw.count(GatewayMethod::ForceLogin), 0);
}

/// Every type here that holds a Guid, a cookie or a password prints it masked.
#[tokio::test(start_paused = true)]
async fn debug_output_never_shows_a_guid_cookie_or_password() {
    let gw = FakeGateway::new();
    let sessions = store(&gw, |_| {});
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    let session = format!("{s:?}");
    assert!(!session.contains("guid-1") && !session.contains("lb=node0"), "{session}");

    let opts = SignInOptions { body: Some(Bytes::from_static(br#"{"password":"hunter2"}"#)), ..Default::default() };
    assert!(!format!("{opts:?}").contains("hunter2"));

    let mut reply = GatewayReply::from_envelope(Envelope::ok("", json!({})));
    reply.set_guid = Some("secret-guid.AgentGateway0".into());
    reply.cookies = vec!["huaweielbsession=secret-cookie".into()];
    let shown = format!("{reply:?}");
    assert!(!shown.contains("secret-guid") && !shown.contains("secret-cookie"), "{shown}");

    let creds = super::testing::credentials();
    assert!(!format!("{creds:?}").contains("\"pw\""));
}

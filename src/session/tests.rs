//! The session layer in process, against the scripted gateway, under tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::testing::{event, store, FakeGateway};
use super::*;
use crate::gateway::{Envelope, GatewayMethod, GatewayReply, UpstreamError};
use crate::labels::LossReason;

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
    assert_eq!(s.wait_ended().await, Ended::Lost(LossReason::ShutdownEvent));
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
    // On time too, though most polls are not raced against the idle deadline (only the ones
    // it can fall inside): not a poll's wait (10 s) late.
    assert!(ended_after < Duration::from_secs(211), "at 90 + 120 s, not a poll later: {ended_after:?}");
    assert_eq!(gw.count(GatewayMethod::Logout), 1);
    assert!(matches!(sessions.active(AGENT), Err(SessionError::NoSession)));
    assert!(gw.count(GatewayMethod::GetAgentEvent) >= 20, "polled all along (the gateway's heartbeat)");
}

#[tokio::test(start_paused = true)]
async fn an_open_event_stream_keeps_its_agent_whatever_the_idle_timeout_and_idle_counts_from_its_close() {
    let gw = FakeGateway::new();
    // Shorter than the stream's 15 s keep-alive, and than a poll's wait.
    let sessions = store(&gw, |c| c.idle_timeout_ms = 2_000);
    let (s, _) = sessions.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    let listening = s.listening(1).expect("the first stream");
    assert!(s.listening(1).is_none(), "past the cap the newest is refused");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(sessions.active(AGENT).is_ok(), "an app that listens keeps its agent");
    assert_eq!(gw.count(GatewayMethod::Logout), 0);
    let closed = tokio::time::Instant::now();
    drop(listening);
    tokio::time::sleep(Duration::from_millis(1_900)).await;
    assert!(sessions.active(AGENT).is_ok(), "the idle time counts from the close");
    assert_eq!(s.wait_ended().await, Ended::SignedOut);
    let after = closed.elapsed();
    assert!(after >= Duration::from_secs(2), "not before idle_timeout_ms after the close: {after:?}");
    assert_eq!(gw.count(GatewayMethod::Logout), 1);
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

/// A store for agents 1000.. with `n` credentials and no idle sign-out.
fn many(gw: &Arc<FakeGateway>, n: usize, tune: impl FnOnce(&mut crate::config::SessionsConfig)) -> Arc<SessionStore> {
    let mut cfg = crate::config::SessionsConfig { idle_timeout_ms: 0, ..Default::default() };
    tune(&mut cfg);
    SessionStore::new(
        Default::default(),
        gw.clone(),
        super::testing::many_credentials(n),
        cfg,
        crate::metrics::Metrics::default(),
        None,
        Default::default(),
    )
}

#[tokio::test(start_paused = true)]
async fn after_an_outage_a_thousand_pollers_come_back_spread_out() {
    let gw = FakeGateway::new();
    let sessions = many(&gw, 1000, |_| {});
    for a in 1000..2000 {
        sessions.sign_in(&a.to_string(), SignInOptions::default()).await.unwrap();
    }
    gw.set_down(true);
    // Long enough for every poller to fail several times and reach the back-off ceiling.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let up = tokio::time::Instant::now();
    gw.set_down(false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Each agent's first poll after the gateway came back.
    let mut first = std::collections::HashMap::new();
    for s in gw.seen() {
        if s.method == GatewayMethod::GetAgentEvent && s.at >= up {
            first.entry(s.agent).or_insert(s.at);
        }
    }
    assert_eq!(first.len(), 1000, "every agent polls again");
    let mut per_window = std::collections::HashMap::<u128, usize>::new();
    for at in first.values() {
        *per_window.entry((*at - up).as_millis() / 100).or_default() += 1;
    }
    let busiest = per_window.values().max().copied().unwrap_or(0);
    let last = first.values().max().map(|t| *t - up).unwrap_or_default();
    eprintln!("after the outage: busiest 100 ms had {busiest} first polls; the last agent was back after {last:?}");
    // 200 re-polls a second at most: 20 in a 100 ms window (one more at a window's edge).
    assert!(busiest <= 21, "{busiest} agents polled again within the same 100 ms");
    assert!(last <= Duration::from_secs(16), "all back within the jitter ceiling and the pacing: {last:?}");
}

#[tokio::test(start_paused = true)]
async fn a_sign_in_storm_is_paced_and_queued_and_capacity_is_a_bound() {
    let gw = FakeGateway::new();
    gw.set_latency(Duration::from_millis(100));
    let sessions = many(&gw, 40, |c| {
        c.signin_concurrency = 4;
        c.signin_queue = 10;
        c.max_agents = 30;
    });
    let start = tokio::time::Instant::now();
    let storm: Vec<_> = (1000..1020)
        .map(|a| {
            let s = sessions.clone();
            tokio::spawn(async move { s.sign_in(&a.to_string(), SignInOptions::default()).await.map(|_| ()) })
        })
        .collect();
    let mut ok = 0;
    let mut busy = 0;
    for t in storm {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(SessionError::SignInQueueFull) => busy += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, busy), (14, 6), "4 at once, 10 queued, the rest refused at once");
    assert!(start.elapsed() >= Duration::from_millis(400), "14 sign-ins, 4 at a time, 100 ms each");
    // Capacity: 30 agents at most.
    for a in 1014..1030 {
        sessions.sign_in(&a.to_string(), SignInOptions::default()).await.unwrap();
    }
    let e = sessions.sign_in("1030", SignInOptions::default()).await.unwrap_err();
    assert!(matches!(e, SessionError::AtCapacity), "{e:?}");
    assert_eq!(gw.count(GatewayMethod::Login), 30, "no gateway call past the capacity");
    // A signed-in agent signing in again is not a new agent.
    sessions.sign_in("1000", SignInOptions { force: true, ..Default::default() }).await.unwrap();
    sessions.sign_out("1001", GatewayMethod::Logout).await.unwrap();
    sessions.sign_in("1030", SignInOptions::default()).await.unwrap();
}

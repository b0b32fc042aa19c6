//! The pass-through face: an existing CC-Gateway client, with a JWT instead of a Guid.

use crate::common;

use ccgate::gateway::GatewayMethod;
use ccgate::session::ConfState;
use ccgate::sim::Faults;
use common::{Harness, Options, Reply, PASSWORD};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const BASE: &str = "/agentgateway/resource";

fn opts() -> Options {
    // Integrators poll agentevent; keep the empty-poll wait short in tests.
    Options { config: Box::new(|c| c.sessions.face_event_wait_ms = 200), ..Options::default() }
}

impl Harness {
    async fn gw(&self, method: Method, path: &str, agent: &str, body: &str, extra: &[(&str, &str)]) -> Reply {
        let auth = format!("Bearer {}", self.token(agent));
        let mut headers: Vec<(&str, &str)> =
            vec![("content-type", "application/json; charset=UTF-8"), ("authorization", &auth)];
        headers.extend_from_slice(extra);
        self.send(method, &format!("{}{BASE}/{path}", self.base), &headers, body).await
    }
}

/// No Guid, `Set-GUID` or `Set-Cookie` may ever reach the client.
fn assert_clean(h: &Harness, r: &Reply) {
    assert!(r.headers.get("set-guid").is_none(), "Set-GUID leaked");
    assert!(r.headers.get("set-cookie").is_none(), "Set-Cookie leaked");
    for x in h.sim.received() {
        if let Some(g) = x.guid {
            assert!(!r.text.contains(&g), "a Guid leaked into a body: {}", r.text);
        }
        if let Some(c) = x.cookie {
            assert!(!r.text.contains(&c), "a cookie leaked into a body");
        }
    }
}

fn env(r: &Reply) -> Value {
    let v = r.json();
    assert!(v["retcode"].is_string(), "not an envelope: {v}");
    v
}

#[tokio::test]
async fn an_existing_client_flow_works_with_a_jwt_instead_of_a_guid() {
    let h = Harness::with(opts()).await;
    let mut transcript = String::new();
    let mut step = async |m: Method, path: String, body: &str| {
        let r = h.gw(m.clone(), &path, "153", body, &[]).await;
        assert_clean(&h, &r);
        transcript.push_str(&format!("{m} {BASE}/{path} {body}\n  -> {} {}\n", r.status.as_u16(), r.text));
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        env(&r)
    };
    let login = step(
        Method::PUT,
        "onlineagent/153".into(),
        &format!(r#"{{"password":"{PASSWORD}","phonenum":"88880153","status":4}}"#),
    )
    .await;
    assert_eq!(login["retcode"], "0");
    assert_eq!(login["result"]["workno"], "153");
    let empty = step(Method::GET, "agentevent/153".into(), "").await;
    assert!(empty["event"].is_null(), "no event yet: {empty}");
    let conf = step(Method::POST, "agentconf/153/requestagentconf".into(), r#"{"memberNum":3}"#).await;
    assert_eq!(conf["retcode"], "0");
    let e1 = step(Method::GET, "agentevent/153".into(), "").await;
    assert_eq!(e1["event"]["eventType"], "AgentConf_SelfJoinResult");
    let e2 = step(Method::GET, "agentevent/153".into(), "").await;
    assert_eq!(e2["event"]["eventType"], "AgentConf_RequestSuccess");
    let conf_id = e2["event"]["content"]["confId"].as_u64().unwrap();
    h.wait_conf("153", |s| *s == ConfState::Chair { conf_id }).await;
    let stop = step(Method::POST, "agentconf/153/stopvoicetoconf".into(), "").await;
    assert_eq!(stop, json!({"result": {}, "message": "success", "retcode": "0"}), "passed through unchanged");
    let e3 = step(Method::GET, "agentevent/153".into(), "").await;
    assert_eq!(e3["event"]["eventType"], "AgentConf_StopVoice");
    let out = step(Method::DELETE, "onlineagent/153/logout".into(), "").await;
    assert_eq!(out["retcode"], "0");
    println!("--- transcript ---\n{transcript}");
    assert!(!h.sim.is_signed_in("153"));
    assert!(h.sim.count(GatewayMethod::GetAgentEvent) > 0, "ccgate polled the gateway for the client");
    // The client's agentevent calls were answered from ccgate's buffer, never forwarded with
    // the client's identity: every poll the gateway saw carried the session's Guid.
    assert!(h.sim.received().iter().filter(|x| x.method == "getAgentEvent").all(|x| x.guid.is_some()));
    h.stop().await;
}

#[tokio::test]
async fn refused_paths_methods_and_agents_never_reach_the_gateway() {
    let h = Harness::with(opts()).await;
    h.chair("153").await;
    // Everything the gateway received except ccgate's own event polls.
    let sent = |h: &Harness| {
        GatewayMethod::ALL.iter().filter(|m| **m != GatewayMethod::GetAgentEvent).map(|m| h.sim.count(*m)).sum::<u64>()
            + h.sim.unknown_count()
    };
    let before = sent(&h);
    let cases: Vec<(Method, &str, &str, StatusCode, &str)> = vec![
        (Method::POST, "agentconf/153/nosuchmethod", "153", StatusCode::NOT_FOUND, "CCG-404"),
        (Method::GET, "agentconf/153/stopvoicetoconf", "153", StatusCode::METHOD_NOT_ALLOWED, "CCG-405"),
        (Method::POST, "agentconf/153%2Fstopvoicetoconf", "153", StatusCode::NOT_FOUND, "CCG-404"),
        (Method::POST, "agentconf/154/../153/stopvoicetoconf", "153", StatusCode::NOT_FOUND, "CCG-404"),
        (Method::POST, "agentconf//153/stopvoicetoconf", "153", StatusCode::NOT_FOUND, "CCG-404"),
        (Method::POST, "agentconf/153/./stopvoicetoconf", "153", StatusCode::NOT_FOUND, "CCG-404"),
        (Method::POST, "agentconf/153/stopvoicetoconf/", "153", StatusCode::NOT_FOUND, "CCG-404"),
        (Method::POST, "agentconf/154/stopvoicetoconf", "153", StatusCode::FORBIDDEN, "CCG-403"),
        (Method::POST, "agentconf/0153/stopvoicetoconf", "153", StatusCode::FORBIDDEN, "CCG-403"),
    ];
    for (m, path, agent, status, code) in cases {
        let r = h.gw(m, path, agent, "", &[]).await;
        assert_eq!(r.status, status, "{path}: {}", r.text);
        assert_eq!(env(&r)["retcode"], code, "{path}");
        assert_clean(&h, &r);
    }
    // No token: 401 in the envelope, with the standard challenge.
    let r = h.send(Method::POST, &format!("{}{BASE}/agentconf/153/stopvoicetoconf", h.base), &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(env(&r)["retcode"], "CCG-401");
    assert!(r.headers.get("www-authenticate").is_some());
    assert_eq!(sent(&h), before, "no refused request reached the gateway");
    // A query string neither changes the match nor reaches the gateway.
    let r = h.gw(Method::POST, "agentconf/153/stopvoicetoconf?agentid=154", "153", "", &[]).await;
    assert_eq!(env(&r)["retcode"], "0");
    assert_eq!(
        h.sim.received().iter().filter(|x| x.method == "stopVoiceToConf").map(|x| x.agent.as_str()).collect::<Vec<_>>(),
        vec!["153"]
    );
    h.stop().await;
}

#[tokio::test]
async fn client_credentials_headers_are_dropped_and_the_sessions_are_used() {
    let h = Harness::with(opts()).await;
    h.chair("153").await;
    let r = h
        .gw(
            Method::POST,
            "agentconf/153/stopvoicetoconf",
            "153",
            "",
            &[
                ("guid", "forged-guid.AgentGateway9"),
                ("cookie", "huaweielbsession=forged"),
                ("connection", "x-forged"),
                ("x-forged", "1"),
            ],
        )
        .await;
    assert_eq!(env(&r)["retcode"], "0", "{}", r.text);
    assert_clean(&h, &r);
    let stop = h.sim.received().into_iter().find(|x| x.method == "stopVoiceToConf").unwrap();
    assert_eq!(stop.guid, h.sim.current_guid("153"), "the session's Guid, not the client's");
    let cookie = stop.cookie.unwrap();
    assert!(cookie.starts_with("huaweielbsession=") && !cookie.contains("forged"), "{cookie}");
    h.stop().await;
}

#[tokio::test]
async fn no_guid_reaches_the_client_on_any_path_including_errors() {
    let h = Harness::with(opts()).await;
    let login = format!(r#"{{"password":"{PASSWORD}","phonenum":"1"}}"#);
    let r = h.gw(Method::PUT, "onlineagent/153", "153", &login, &[]).await;
    assert_clean(&h, &r);
    // updateGuid returns a Guid in its body at the gateway: ccgate keeps it and strips it.
    let r = h.gw(Method::PUT, "onlineagent/153/updateGuid", "153", "", &[]).await;
    assert_eq!(env(&r)["retcode"], "0");
    assert_eq!(env(&r)["result"], json!({}));
    assert_clean(&h, &r);
    assert!(h.sim.count(GatewayMethod::UpdateGuid) == 1);
    // The new Guid is in use.
    let r = h.gw(Method::POST, "agentconf/153/queryconfinfos", "153", r#"{"confIds":[]}"#, &[]).await;
    assert_eq!(env(&r)["retcode"], "0", "{}", r.text);
    assert_eq!(h.sim.received().last().unwrap().guid, h.sim.current_guid("153"));
    for f in [
        Faults { malformed: true, methods: vec!["queryConfInfos".into()], ..Faults::default() },
        Faults { http_status: Some(500), methods: vec!["queryConfInfos".into()], ..Faults::default() },
        Faults { retcode: Some("100-007".into()), methods: vec!["queryConfInfos".into()], ..Faults::default() },
    ] {
        h.sim.set_faults(f);
        let r = h.gw(Method::POST, "agentconf/153/queryconfinfos", "153", r#"{"confIds":[]}"#, &[]).await;
        assert_clean(&h, &r);
        env(&r);
    }
    h.sim.set_faults(Faults::default());
    let r = h.gw(Method::PUT, "onlineagent/153", "153", &login, &[]).await;
    assert_eq!(env(&r)["retcode"], "100-002", "already signed in through ccgate, as the gateway would say");
    assert_clean(&h, &r);
    h.stop().await;
}

#[tokio::test]
async fn local_chair_refusal_answers_exactly_like_the_gateway() {
    let h = Harness::with(opts()).await;
    h.chair("153").await;
    h.sign_in("154").await;
    // Through the pass-through face: 153 hands the chair to 154 (applyToShiftPresident).
    let r = h.gw(Method::POST, "agentconf/153/applytoshiftpresident", "153", r#"{"destAgentNo":154}"#, &[]).await;
    assert_eq!(env(&r)["retcode"], "0", "{}", r.text);
    h.wait_conf("153", |s| matches!(s, ConfState::Participant { .. })).await;
    h.wait_conf("154", |s| matches!(s, ConfState::Chair { .. })).await;
    let r = h.gw(Method::POST, "agentconf/153/stopvoicetoconf", "153", "", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "HTTP 200, as the gateway");
    assert_eq!(env(&r)["retcode"], "101-002");
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 0, "refused locally");
    // Leave, then release: the state follows successful calls through the pass-through face.
    let r = h.gw(Method::POST, "agentconf/153/requestleaveagentconf", "153", "", &[]).await;
    assert_eq!(env(&r)["retcode"], "0");
    assert_eq!(h.running().sessions.active("153").unwrap().conf(), ConfState::None);
    let r = h.gw(Method::POST, "agentconf/154/releaseagentconf", "154", "", &[]).await;
    assert_eq!(env(&r)["retcode"], "0");
    assert_eq!(h.running().sessions.active("154").unwrap().conf(), ConfState::None);
    let r = h.gw(Method::POST, "agentconf/154/stopvoicetoconf", "154", "", &[]).await;
    assert_eq!((r.status, env(&r)["retcode"].clone()), (StatusCode::OK, json!("101-001")));
    h.stop().await;
}

#[tokio::test]
async fn gateway_refusals_pass_through_and_limits_and_metrics_apply_per_method() {
    let h = Harness::with(opts()).await;
    h.chair("153").await;
    h.sim.set_faults(Faults { error_reason: Some(22), methods: vec!["stopVoiceToConf".into()], ..Faults::default() });
    let r = h.gw(Method::POST, "agentconf/153/stopvoicetoconf", "153", "", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"message": "Unknown ERROR._22", "retcode": "100-007", "result": {"errorReason": 22}}));
    h.sim.set_faults(Faults::default());
    for _ in 0..4 {
        assert_eq!(env(&h.gw(Method::POST, "agentconf/153/stopvoicetoconf", "153", "", &[]).await)["retcode"], "0");
    }
    let r = h.gw(Method::POST, "agentconf/153/stopvoicetoconf", "153", "", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "the default stopVoiceToConf limit applies here too");
    let v = env(&r);
    assert_eq!(v["retcode"], "CCG-429");
    assert_eq!(v["result"]["limit"], "stopVoiceToConf.agent");
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 5);
    let m = h.metrics().await;
    for line in [
        r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="gateway_error"} 1"#,
        r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="ok"} 4"#,
        r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="rate_limited"} 1"#,
        r#"ccgate_upstream_responses_total{gateway="default",method="stopVoiceToConf",retcode="100-007"} 1"#,
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
    h.stop().await;
}

#[tokio::test]
async fn push_mode_sign_in_is_refused_and_the_rest_api_shares_the_session() {
    let h = Harness::with(opts()).await;
    let r = h
        .gw(
            Method::PUT,
            "onlineagent/153",
            "153",
            &format!(r#"{{"password":"{PASSWORD}","phonenum":"1","callBackUri":"https://x","serviceToken":"t"}}"#),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(env(&r)["retcode"], "CCG-400");
    assert_eq!(h.sim.count(GatewayMethod::Login), 0);
    // One session per agent, whichever face signed it in.
    h.sign_in("153").await;
    let r = h.gw(Method::POST, "agentconf/153/requestagentconf", "153", r#"{"memberNum":2}"#, &[]).await;
    assert_eq!(env(&r)["retcode"], "0");
    h.wait_conf("153", |s| matches!(s, ConfState::Chair { .. })).await;
    let r = h.call(Method::POST, "/v1/conference/announcement/stop", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.sim.count(GatewayMethod::Login), 1);
    // Not signed in: ccgate's own code.
    let r = h.gw(Method::POST, "agentconf/154/stopvoicetoconf", "154", "", &[]).await;
    assert_eq!((r.status, env(&r)["retcode"].clone()), (StatusCode::CONFLICT, json!("CCG-409")));
    h.stop().await;
}

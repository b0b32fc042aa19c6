//! Logs: one access line per request with the documented fields, the request id returned to
//! the client, and no token, Guid, password or cookie anywhere, even with ccgate at TRACE and
//! every dependency at DEBUG, in the JSON format operators ship to log stores.
//!
//! Alone in its test binary: it captures the logs with a subscriber of its own, and tracing
//! caches, per call site and process-wide, whether anyone listens. In the shared binary
//! another test's first request could register the access line's call site, while this
//! subscriber was being installed, as heard by nobody, and the lines went missing.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use ccgate::gateway::GatewayMethod;
use ccgate::session::ConfState;
use ccgate::sim::Faults;
use common::{Harness, PASSWORD};
use http::{Method, StatusCode};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn a_full_flow_logs_every_request_and_no_secret() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter("debug,ccgate=trace")
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::start().await;
    let tokens: Vec<String> = vec![h.token("153"), h.token("154")];
    let stop = "/v1/conference/announcement/stop";
    let conf_id = h.chair("153").await;
    let r = h
        .send(
            Method::POST,
            &format!("{}{stop}", h.base),
            &[
                ("authorization", &format!("Bearer {}", tokens[0])),
                ("x-request-id", "trace-abc-123"),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("x-request-id").unwrap(), "trace-abc-123", "a sane client id is kept and returned");
    // A stop whose client goes away once the gateway has it still leaves its audit line,
    // written as the request is dropped: status 499, outcome `cancelled`.
    let sent = h.sim.count(GatewayMethod::StopVoiceToConf);
    h.sim.set_faults(Faults { latency_ms: 1_000, methods: vec!["stopVoiceToConf".into()], ..Faults::default() });
    let call = h.spawn_call(Method::POST, stop, "153");
    common::eventually("the stop reached the gateway", || async { h.sim.count(GatewayMethod::StopVoiceToConf) > sent })
        .await;
    call.abort();
    h.sim.set_faults(Faults::default());
    common::eventually("the cancelled stop's audit line", || {
        let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
        async move { logs.lines().any(|l| l.contains("ccgate::audit") && l.contains(r#""outcome":"cancelled""#)) }
    })
    .await;
    let r = h
        .send(
            Method::GET,
            &format!("{}/v1/session", h.base),
            &[("authorization", &format!("Bearer {}", tokens[0])), ("x-request-id", "bad id {with} spaces")],
            "",
        )
        .await;
    let generated = r.headers.get("x-request-id").unwrap().to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32, "an unusable client id is replaced: {generated}");
    h.sign_in("154").await;
    assert_eq!(h.sim.transfer_chair("153", "154"), "0");
    h.wait_conf("153", |s| matches!(s, ConfState::Participant { .. })).await;
    assert_eq!(h.call(Method::POST, stop, Some("153"), "").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        h.call_with_token(Method::POST, stop, Some(&format!("{}x", tokens[1])), "").await.status,
        StatusCode::UNAUTHORIZED
    );
    h.sim.kick("154");
    assert_eq!(h.call(Method::POST, stop, Some("154"), "").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.call(Method::DELETE, "/v1/session", Some("153"), "").await.status, StatusCode::NO_CONTENT);
    let received = h.sim.received();
    let secrets = {
        let mut s: Vec<String> = tokens.clone();
        s.push(PASSWORD.to_owned());
        for r in received.clone() {
            s.extend(r.guid);
            if let Some(c) = r.cookie {
                s.extend(c.split(';').filter_map(|p| p.split_once('=').map(|(_, v)| v.trim().to_owned())));
            }
        }
        // Token signatures on their own, too.
        s.extend(tokens.iter().map(|t| t.rsplit('.').next().unwrap().to_owned()));
        s.retain(|x| x.len() >= 8);
        s.sort();
        s.dedup();
        s
    };
    assert!(secrets.iter().any(|s| s.contains(".AgentGateway")), "Guids were collected");
    h.stop().await;
    drop(_guard);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.lines().count() > 20, "logs were captured:\n{logs}");
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "secret {}… found in the logs", &s[..6]);
    }
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ccgate::access")
        .collect();
    assert_eq!(access.len(), 9, "exactly one access line per request (9 made)");
    for line in &access {
        for field in [
            "request_id",
            "http_method",
            "method",
            "route",
            "agent",
            "client",
            "status",
            "outcome",
            "duration_ms",
            "upstream_ms",
        ] {
            assert!(!line[field].is_null(), "access line lacks {field}: {line}");
        }
        assert_eq!(line["client"], "127.0.0.1", "{line}");
    }
    // The refused token has a line of its own: why, whose issuer, from where; never the token.
    let refusals: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ccgate::auth")
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let r = &refusals[0];
    assert_eq!((r["reason"].as_str(), r["client"].as_str()), (Some("malformed"), Some("127.0.0.1")), "{r}");
    assert_eq!(r["issuer"], common::ISSUER, "{r}");
    let traced = access.iter().find(|l| l["request_id"] == "trace-abc-123").expect("client id in the log");
    assert_eq!(traced["method"], "stopVoiceToConf");
    assert_eq!(traced["route"], "/v1/conference/announcement/stop");
    assert_eq!(traced["outcome"], "ok");
    assert!(traced["upstream_ms"].as_f64().unwrap() > 0.0, "gateway time is attributed: {traced}");
    // The app's W3C trace: in the access line, and continued at the gateway with ccgate's
    // span as the parent; requests without one get a trace of their own.
    assert_eq!(traced["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let continued: Vec<String> = received
        .iter()
        .filter(|r| r.method == "stopVoiceToConf")
        .filter_map(|r| r.traceparent.clone())
        .filter(|t| t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"))
        .collect();
    assert_eq!(continued.len(), 1, "{continued:?}");
    assert!(continued[0].ends_with("-01") && !continued[0].contains("00f067aa0ba902b7"), "{continued:?}");
    let ids: std::collections::HashSet<&str> = access.iter().filter_map(|l| l["trace_id"].as_str()).collect();
    assert_eq!(ids.len(), access.len(), "one trace per request");
    assert!(ids.iter().all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())));
    assert!(
        received.iter().filter(|r| r.method == "getAgentEvent").all(|r| r.traceparent.is_none()),
        "the poller's calls belong to no request"
    );
    // Lines logged while serving a request carry its span.
    assert!(logs.lines().any(|l| l.contains("\"span\":{") && l.contains("4bf92f3577b34da6a3ce929d0e0e4736")));
    assert!(access.iter().any(|l| l["request_id"] == generated.as_str()));
    assert!(access.iter().any(|l| l["outcome"] == "not_chairperson" && l["status"] == 403));

    // The audit trail (README "Audit log"): one line per chair-only call that got past
    // authentication, allowed or refused, and one per change of chairperson.
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ccgate::audit")
        .collect();
    let checks: Vec<&serde_json::Value> = audit.iter().filter(|l| l["message"] == "chairperson check").collect();
    let fields = |l: &serde_json::Value| {
        ["agent", "subject", "tenant", "conference", "decision", "reason", "status", "outcome"]
            .map(|f| l[f].to_string().trim_matches('"').to_owned())
    };
    let conf = conf_id.to_string();
    assert_eq!(checks.len(), 4, "{checks:#?}");
    assert_eq!(fields(checks[0]), ["153", "agent-153", "-", &conf, "allowed", "chair", "200", "ok"]);
    // The cancelled one: sent, so allowed, and its line written all the same.
    assert_eq!(fields(checks[1]), ["153", "agent-153", "-", &conf, "allowed", "chair", "499", "cancelled"]);
    let checks = [checks[0], checks[2], checks[3]];
    assert_eq!(
        (checks[0]["request_id"].as_str(), checks[0]["gateway"].as_str()),
        (Some("trace-abc-123"), Some("default"))
    );
    assert_eq!(checks[0]["method"], "stopVoiceToConf");
    assert_eq!(
        fields(checks[1]),
        ["153", "agent-153", "-", &conf, "refused", "not_chairperson", "403", "not_chairperson"]
    );
    // 154's session ended at the gateway: refused before any chairperson check.
    assert_eq!(fields(checks[2])[..5], ["154", "agent-154", "-", "-", "refused"]);
    assert_eq!(checks[2]["reason"], checks[2]["outcome"], "{}", checks[2]);
    let changes: Vec<[String; 3]> = audit
        .iter()
        .filter(|l| l["message"] == "chairperson changed")
        .map(|l| ["agent", "change", "conference"].map(|f| l[f].as_str().unwrap_or_default().to_owned()))
        .collect();
    // Exactly one line per change (two agents' pollers: in either order).
    let mut changes = changes;
    changes.sort();
    // 154 was chair when the gateway ended its session: that ends its chair too.
    let want: Vec<[String; 3]> =
        [["153", "became_chair"], ["153", "no_longer_chair"], ["154", "became_chair"], ["154", "no_longer_chair"]]
            .map(|[a, c]| [a.to_owned(), c.to_owned(), conf.clone()])
            .to_vec();
    assert_eq!(changes, want);
    let ended = audit.iter().find(|l| l["agent"] == "154" && l["change"] == "no_longer_chair").unwrap();
    assert!(ended["state"].as_str().is_some_and(|s| s.starts_with("ended:lost:")), "{ended}");
}

//! The live `/metrics` output after a full flow: the documented series with bounded labels,
//! nothing secret, and `promtool check metrics` passes.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use ccgate::session::ConfState;
use common::{Harness, PASSWORD};
use http::{Method, StatusCode};

const STOP: &str = "/v1/conference/announcement/stop";

#[tokio::test]
async fn metrics_after_a_full_flow_pass_promtool_and_leak_nothing() {
    let h = Harness::start().await;
    h.chair("153").await;
    assert_eq!(h.call(Method::POST, STOP, Some("153"), "").await.status, StatusCode::OK);
    h.sign_in("154").await;
    assert_eq!(h.call(Method::POST, STOP, Some("154"), "").await.status, StatusCode::CONFLICT);
    assert_eq!(h.sim.transfer_chair("153", "154"), "0");
    h.wait_conf("153", |s| matches!(s, ConfState::Participant { .. })).await;
    assert_eq!(h.call(Method::POST, STOP, Some("153"), "").await.status, StatusCode::FORBIDDEN);
    assert_eq!(h.call(Method::POST, STOP, None, "").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.call(Method::GET, "/nope", None, "").await.status, StatusCode::NOT_FOUND);

    let text = h.metrics().await;
    for line in [
        r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="ok"} 1"#,
        r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="no_conference"} 1"#,
        r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="not_chairperson"} 1"#,
        r#"ccgate_requests_total{gateway="",method="stopVoiceToConf",outcome="unauthenticated"} 1"#,
        r#"ccgate_requests_total{gateway="",method="unmatched",outcome="not_found"} 1"#,
        r#"ccgate_requests_total{gateway="default",method="requestAgentConf",outcome="ok"} 1"#,
        r#"ccgate_upstream_responses_total{gateway="default",method="stopVoiceToConf",retcode="0"} 1"#,
        r#"ccgate_upstream_responses_total{gateway="default",method="login",retcode="0"} 2"#,
        r#"ccgate_auth_failures_total{reason="missing_token"} 1"#,
        r#"ccgate_signins_total{gateway="default",result="ok"} 2"#,
        r#"ccgate_sessions{gateway="default",state="active"} 2"#,
        r#"ccgate_request_duration_seconds_bucket{method="stopVoiceToConf",le="0.001"}"#,
        r#"ccgate_upstream_duration_seconds_count{gateway="default",method="stopVoiceToConf"} 1"#,
        "ccgate_guid_rotations_total 0",
        &format!(r#",version="{}"}} 1"#, env!("CARGO_PKG_VERSION")),
        "ccgate_build_info{commit=",
        // Known label sets start at 0; this flow lost no session and refused no token as expired.
        r#"ccgate_session_losses_total{gateway="default",reason="guid_refused"} 0"#,
        r#"ccgate_auth_failures_total{reason="expired"} 0"#,
        "ccgate_requests_in_flight 0",
        "process_resident_memory_bytes ",
        // The harness serves TLS with a throw-away certificate valid for days to come.
        "ccgate_tls_certificate_expiry_timestamp_seconds ",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    for agent in ["153", "154"] {
        let guid = h.sim.current_guid(agent).unwrap();
        assert!(!text.contains(&guid), "a Guid leaked into metrics");
        assert!(!text.contains(&format!("\"{agent}\"")), "an agent id is a label value");
    }
    assert!(!text.contains(PASSWORD));
    // Timestamps, not durations: the certificate expires after now.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let expiry: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ccgate_tls_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("the expiry sample");
    assert!(expiry > now, "{expiry} vs now {now}");

    let mut child = Command::new(common::tools::require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool did not start");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    h.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let h = Harness::start().await;
    for path in ["/livez", "/healthz"] {
        let r = h.send(Method::GET, &format!("{}{path}", h.admin), &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    // The gateway probe's first check runs at start; wait for its signal, not a timer.
    tokio::time::timeout(common::WAIT, h.running().readiness.wait_gateway_checked()).await.expect("never probed");
    assert!(h.running().readiness.is_ready());
    let r = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["gateway_reachable"], true);
    assert_eq!(r.json()["gateway"], "up");
    assert_eq!(r.json()["keys_loaded"], true);
    let r = h.send(Method::GET, &format!("{}/gatewayz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    h.stop().await;
}

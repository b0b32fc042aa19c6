//! The operator's view of the agents: `GET /agents` and `GET /agents/{id}` on the admin
//! listener, and `ccgate agents` printing them, against the simulator on real sockets.

mod common;

use common::Harness;
use http::{Method, StatusCode};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ccgate");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_at_a_glance_and_one_in_detail_without_a_secret() {
    let h = Harness::start().await;
    let conf_id = h.chair("153").await;
    h.sign_in("154").await;
    // A gateway refusal is the agent's last error.
    let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":3}"#).await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // Stops past the agent's limit (burst 5): the view says what the limit left, and that it
    // refused.
    let mut refused = false;
    for _ in 0..8 {
        refused |= h.call(Method::POST, "/v1/conference/announcement/stop", Some("153"), "").await.status
            == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(refused);
    let r = h.send(Method::GET, &format!("{}/agents", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let all = r.json();
    let agents = all["agents"].as_array().unwrap();
    assert_eq!(agents.iter().map(|a| a["agent"].as_str().unwrap()).collect::<Vec<_>>(), ["153", "154"]);
    let a = &agents[0];
    assert_eq!((a["gateway"].as_str(), a["state"].as_str()), (Some("default"), Some("active")), "{a}");
    assert_eq!(a["conference"], serde_json::json!({"state": "chair", "confId": conf_id}), "{a}");
    assert_eq!((a["chairperson"].as_bool(), a["polled_here"].as_bool()), (Some(true), Some(true)), "{a}");
    assert!(a["signed_in_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{a}");
    assert_eq!(a["last_error"]["what"], "101-003", "{a}");
    assert!(a["recent_events"].is_null(), "the list is a glance");
    assert_eq!((a["limit"]["refused"].as_bool(), a["limit"]["remaining"].as_u64()), (Some(true), Some(0)), "{a}");
    assert!(a["limit"]["limit"].as_str().is_some_and(|l| l.contains("stopVoiceToConf")), "{a}");

    let r = h.send(Method::GET, &format!("{}/agents/153", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let one: Value = r.json();
    let types: Vec<&str> =
        one["recent_events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"AgentConf_RequestSuccess"), "{types:?}");
    for secret in [h.sim.current_guid("153").unwrap(), common::PASSWORD.to_owned()] {
        assert!(!r.text.contains(&secret) && !all.to_string().contains(&secret), "a secret in the view");
    }
    assert_eq!(h.send(Method::GET, &format!("{}/agents/999", h.admin), &[], "").await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.send(Method::GET, &format!("{}/agents/15x", h.admin), &[], "").await.status, StatusCode::BAD_REQUEST);

    // The same, printed.
    let admin = h.admin.trim_start_matches("http://").to_owned();
    let out = tokio::process::Command::new(BIN).args(["agents", "--admin", &admin]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("AGENT") && lines[0].contains("CONFERENCE"), "{table}");
    assert!(lines[1].starts_with("153") && lines[1].contains(&format!("chair {conf_id}")), "{table}");
    assert!(lines[1].contains("here") && lines[1].contains("refused"), "{table}");
    let out = tokio::process::Command::new(BIN).args(["agents", "153", "--admin", &admin]).output().await.unwrap();
    let detail = String::from_utf8_lossy(&out.stdout);
    assert!(detail.contains("AgentConf_RequestSuccess") && detail.contains("chairperson  true"), "{detail}");
    h.stop().await;
}

//! The operator's view of the agents: `GET /agents` and `GET /agents/{id}` on the admin
//! listener, and `ccgate agents` printing them, against the simulator on real sockets.

use crate::common;

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

/// Issue 37: the operator's tools cannot be turned against the operator. A gateway's event
/// type with terminal escapes prints as text; the views and reload answer only their own
/// names and refuse a browser's cross-site POST, reload only a POST; `0153` names 153 on both
/// forms of the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_views_refuse_other_sites_and_print_no_terminal_escapes() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    let evil = "AgentOther_\u{1b}]0;pwned\u{7}\u{1b}[2J\u{202e}Tagged\nfake line";
    h.sim.push_event("153", evil, serde_json::json!({"n": 1}));
    common::eventually("the event is seen", || async {
        h.send(Method::GET, &format!("{}/agents/153", h.admin), &[], "").await.text.contains("pwned")
    })
    .await;
    let admin = h.admin.trim_start_matches("http://").to_owned();
    let out = tokio::process::Command::new(BIN).args(["agents", "153", "--admin", &admin]).output().await.unwrap();
    let detail = String::from_utf8_lossy(&out.stdout);
    assert!(detail.contains("AgentOther_?]0;pwned??[2J?Tagged?fake line"), "{detail:?}");
    assert!(!detail.contains('\u{1b}') && !detail.contains('\u{202e}') && !detail.contains("\nfake"), "{detail:?}");
    let out = tokio::process::Command::new(BIN).args(["agents", "--admin", &admin]).output().await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(!table.contains('\u{1b}') && table.lines().count() == 2, "{table:?}");

    // `0153` is 153, with or without the gateway's name.
    for path in ["/agents/0153", "/agents/default/0153"] {
        let r = h.send(Method::GET, &format!("{}{path}", h.admin), &[], "").await;
        assert_eq!((r.status, r.json()["agent"].as_str()), (StatusCode::OK, Some("153")), "{path}: {}", r.text);
    }

    // A page whose name was rebound to this listener reads nothing; probes answer any name.
    let rebound = [("host", "attacker.example:9464")];
    for path in ["/agents", "/agents/153", "/"] {
        let r = h.send(Method::GET, &format!("{}{path}", h.admin), &rebound, "").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text);
        assert!(!r.text.contains("153"), "{}", r.text);
    }
    for path in ["/metrics", "/readyz", "/livez"] {
        let r = h.send(Method::GET, &format!("{}{path}", h.admin), &rebound, "").await;
        assert_ne!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    let r = h.send(Method::GET, &format!("{}/agents", h.admin), &[("host", "localhost")], "").await;
    assert_eq!(r.status, StatusCode::OK);

    // Reload: only a POST, and not one a browser sent for another site.
    let reload = format!("{}/-/reload", h.admin);
    let r = h.send(Method::GET, &reload, &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);
    for headers in [
        vec![("origin", "https://attacker.example"), ("content-type", "text/plain")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "null")],
        // An address is an allowed Host, but another one than the request's is another site.
        vec![("origin", "http://203.0.113.9")],
    ] {
        let r = h.send(Method::POST, &reload, &headers, "x").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.text);
    }
    let reloads = || async {
        let m = h.metrics().await;
        let n: f64 = m
            .lines()
            .filter(|l| l.starts_with("ccgate_config_reloads_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        n
    };
    assert_eq!(reloads().await, 0.0, "no reload ran");
    let r = h.send(Method::POST, &reload, &[], "").await;
    assert_ne!(r.status, StatusCode::FORBIDDEN, "a tool's POST: {}", r.text);
    assert_eq!(reloads().await, 1.0, "a tool's POST reloads: {}", r.text);
    // The status page's own origin may.
    let r = h.send(Method::POST, &reload, &[("origin", &h.admin), ("sec-fetch-site", "same-origin")], "").await;
    assert_ne!(r.status, StatusCode::FORBIDDEN, "same origin: {}", r.text);
    assert_eq!(reloads().await, 2.0);
    h.stop().await;
}

//! The operator's view of the agents: `GET /agents` and `GET /agents/{id}` on the admin
//! listener, and `ccgate agents` printing them, against the simulator on real sockets.

use crate::common;

use common::Harness;
use http::{Method, StatusCode};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ccgate");

/// The proxy and the simulator, sharing agents through `redis` (more replicas: `h.replica`).
async fn on_redis(redis: &common::redis::RedisServer) -> Harness {
    let url = redis.url();
    Harness::with(common::Options {
        config: Box::new(move |c| {
            c.store.backend = ccgate::config::StoreBackend::Redis;
            c.store.url = Some(ccgate::config::Secret::new(url));
        }),
        ..common::Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_at_a_glance_and_one_in_detail_without_a_secret() {
    let h = Harness::start().await;
    let conf_id = h.chair("153").await;
    h.sign_in("154").await;
    // A gateway refusal is the agent's last error: which call, and the gateway's retcode.
    let r = h.call(Method::POST, "/v1/conference", Some("153"), r#"{"memberNum":3}"#).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let a = h.send(Method::GET, &format!("{}/agents/153", h.admin), &[], "").await.json();
    assert_eq!(
        (a["last_error"]["method"].as_str(), a["last_error"]["what"].as_str()),
        (Some("requestAgentConf"), Some("101-003")),
        "{a}"
    );

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
    // Since then, ccgate's own refusal of a stop (its limit) is the last error.
    assert_eq!(
        (a["last_error"]["method"].as_str(), a["last_error"]["what"].as_str()),
        (Some("stopVoiceToConf"), Some("rate_limited")),
        "{a}"
    );
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

/// Issue 40: an agent whose session ended stays visible with when and why, its last requests
/// and its last error; a sign-in that failed leaves an entry too. In process; with Redis, see
/// `with_redis_every_replica_shows_an_ending_and_says_when_its_view_is_partial`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_agent_keeps_its_history_and_a_failed_sign_in_leaves_one() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    // In no conference: refused here. The refusal is the last error, named by method and cause.
    let stop = h.call(Method::POST, "/v1/conference/announcement/stop", Some("153"), "").await;
    assert_eq!(stop.status, StatusCode::CONFLICT, "{}", stop.text);
    let stop_id = stop.headers["x-request-id"].to_str().unwrap().to_owned();
    let r = h.call(Method::DELETE, "/v1/session", Some("153"), "").await;
    assert!(r.status.is_success(), "{}", r.text);

    let r = h.send(Method::GET, &format!("{}/agents/153", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "a signed-out agent is still known: {}", r.text);
    let a = r.json();
    assert_eq!((a["state"].as_str(), a["reason"].as_str()), (Some("signed_out"), Some("app")), "{a}");
    assert!(a["ended_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{a}");
    assert_eq!(
        (a["last_error"]["method"].as_str(), a["last_error"]["what"].as_str()),
        (Some("stopVoiceToConf"), Some("no_conference")),
        "{a}"
    );
    let requests = a["recent_requests"].as_array().unwrap();
    let methods: Vec<&str> = requests.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["logout", "stopVoiceToConf", "login"], "newest first: {a}");
    assert_eq!(requests[1]["request_id"], stop_id.as_str(), "{a}");
    assert_eq!((requests[1]["status"].as_u64(), requests[1]["outcome"].as_str()), (Some(409), Some("no_conference")));
    assert_eq!(a["endings"][0]["state"], "signed_out", "{a}");
    // In the list too, with its state and why.
    let all = h.send(Method::GET, &format!("{}/agents", h.admin), &[], "").await.json();
    assert_eq!(all["partial"], false, "{all}");
    assert!(
        all["agents"].as_array().unwrap().iter().any(|a| a["agent"] == "153" && a["state"] == "signed_out"),
        "{all}"
    );

    // A sign-in that fails (no credentials for 160) leaves an entry with why.
    let r = h.call(Method::POST, "/v1/session", Some("160"), "").await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text);
    let f = h.send(Method::GET, &format!("{}/agents/160", h.admin), &[], "").await.json();
    assert_eq!((f["state"].as_str(), f["reason"].as_str()), (Some("signin_failed"), Some("no_credentials")), "{f}");
    assert_eq!(f["recent_requests"][0]["method"], "login", "the failed sign-in itself: {f}");
    assert_eq!(
        (f["last_error"]["method"].as_str(), f["last_error"]["what"].as_str()),
        (Some("login"), Some("no_credentials")),
        "{f}"
    );
    // An agent that never signed in nor tried is not known: a request makes no entry.
    let r = h.call(Method::GET, "/v1/session", Some("161"), "").await;
    assert!(r.status.is_client_error());
    assert_eq!(h.send(Method::GET, &format!("{}/agents/161", h.admin), &[], "").await.status, StatusCode::NOT_FOUND);

    // `ccgate agents` prints them.
    let admin = h.admin.trim_start_matches("http://").to_owned();
    let out = tokio::process::Command::new(BIN).args(["agents", "--admin", &admin]).output().await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("153") && l.contains("signed_out (app)")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("160") && l.contains("signin_failed (no_credentials)")), "{table}");
    let out = tokio::process::Command::new(BIN).args(["agents", "153", "--admin", &admin]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let detail = String::from_utf8_lossy(&out.stdout);
    assert!(detail.contains(&stop_id) && detail.contains("stopVoiceToConf no_conference"), "{detail}");
    assert!(detail.contains("recent requests (3") && detail.contains("signed_out (app)"), "{detail}");
    h.stop().await;
}

/// Issue 40, with Redis: the history is the cluster's. An agent signed out through one
/// replica, and a sign-in that failed on it, show on another replica that never held either;
/// with Redis away, the views say they are partial rather than silently shrinking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_every_replica_shows_an_ending_and_says_when_its_view_is_partial() {
    let mut redis = common::redis::RedisServer::start().await;
    let h = on_redis(&redis).await;
    let (b, b_url) = h.replica(|_| {}).await;
    let token = h.token("154");
    let r = h.call_at(&b_url, Method::POST, "/v1/session", Some(&token), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = h.call_at(&b_url, Method::DELETE, "/v1/session", Some(&token), "").await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = h.call_at(&b_url, Method::POST, "/v1/session", Some(&h.token("160")), "").await;
    assert!(r.status.is_client_error(), "{}", r.text);

    // Replica A never held 154 or saw 160: both show there, from the journal, once B's
    // writer has sent them (its own task: looked for until then).
    let on_a = |agent: &'static str| {
        let h = &h;
        async move { h.send(Method::GET, &format!("{}/agents/{agent}", h.admin), &[], "").await }
    };
    common::eventually("B's endings in A's view", || async {
        let (a, f) = (on_a("154").await, on_a("160").await);
        a.status == StatusCode::OK
            && a.json()["reason"] == "app"
            && f.status == StatusCode::OK
            && f.json()["state"] == "signin_failed"
    })
    .await;
    let a = on_a("154").await.json();
    assert_eq!(a["state"], "signed_out", "{a}");
    let b_name = a["endings"][0]["replica"].as_str().unwrap_or_default().to_owned();
    assert!(!b_name.is_empty(), "the ending names the replica that saw it: {a}");
    let list = h.send(Method::GET, &format!("{}/agents", h.admin), &[], "").await.json();
    assert_eq!(list["partial"], false, "{list}");

    // One record in Redis that fails validation (a newer ccgate's, a stray write) hides
    // that agent only: the view is whole, not partial.
    h.sign_in("153").await;
    let mut c = redis.conn().await;
    let _: () = redis::cmd("ZADD").arg("ccgate:agents").arg(0).arg("999").query_async(&mut c).await.unwrap();
    let _: () =
        redis::cmd("HSET").arg("ccgate:{a:999}:session").arg("state").arg("weird").query_async(&mut c).await.unwrap();
    let list = h.send(Method::GET, &format!("{}/agents", h.admin), &[], "").await.json();
    assert_eq!(list["partial"], false, "{list}");
    assert!(list["agents"].as_array().unwrap().iter().any(|a| a["agent"] == "153"), "{list}");

    // Redis away: A's views say they are its own only.
    redis.kill();
    let list = h.send(Method::GET, &format!("{}/agents", h.admin), &[], "").await.json();
    assert_eq!(list["partial"], true, "{list}");
    let r = on_a("154").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert!(r.text.contains("partial"), "{}", r.text);
    let page = h.send(Method::GET, &format!("{}/", h.admin), &[], "").await.text;
    assert!(page.contains(r#"id="agents-partial""#), "the page says so too");
    let admin = h.admin.trim_start_matches("http://").to_owned();
    let out = tokio::process::Command::new(BIN).args(["agents", "--admin", &admin]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("partial view"), "{}", String::from_utf8_lossy(&out.stdout));
    b.stop().await;
    h.stop().await;
}

/// Review of issue 40: one client's failed sign-ins in a loop (no credentials for 160, a
/// token its identity provider may mint for any work number) cost one entry, counted, and
/// never push another agent's ending out of the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_in_a_loop_keep_every_other_agents_history() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    let r = h.call(Method::DELETE, "/v1/session", Some("153"), "").await;
    assert!(r.status.is_success(), "{}", r.text);
    let token = h.token("160");
    for _ in 0..1001 {
        let r = h.call_with_token(Method::POST, "/v1/session", Some(&token), "").await;
        assert!(r.status.is_client_error(), "{} {}", r.status, r.text);
    }
    let a = h.send(Method::GET, &format!("{}/agents/153", h.admin), &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["reason"], "app");
    let f = h.send(Method::GET, &format!("{}/agents/160", h.admin), &[], "").await.json();
    assert_eq!((f["state"].as_str(), f["endings"].as_array().map(Vec::len)), (Some("signin_failed"), Some(1)), "{f}");
    assert_eq!(f["endings"][0]["attempts"], 1001, "{f}");
    h.stop().await;
}

/// Review of issue 40: a replica that held a copy of an agent which then ended showed it
/// `signed_out` while another replica had signed it in again (it adopts the new session
/// only when asked to serve it). The record decides for an ended copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_copy_does_not_hide_a_new_session_on_another_replica() {
    let redis = common::redis::RedisServer::start().await;
    let h = on_redis(&redis).await;
    let (b, b_url) = h.replica(|_| {}).await;
    let token = h.token("154");
    assert_eq!(h.call_at(&b_url, Method::POST, "/v1/session", Some(&token), "").await.status, StatusCode::CREATED);
    // A serves 154 once: it holds a copy now.
    assert!(h.call_at(&h.base, Method::GET, "/v1/session", Some(&token), "").await.status.is_success());
    assert!(h.call_at(&b_url, Method::DELETE, "/v1/session", Some(&token), "").await.status.is_success());
    common::eventually("A's copy ended", || async {
        h.send(Method::GET, &format!("{}/agents/154", h.admin), &[], "").await.json()["state"] == "signed_out"
    })
    .await;
    // Signed in again through B: A's views say active, though A's own copy ended.
    assert_eq!(h.call_at(&b_url, Method::POST, "/v1/session", Some(&token), "").await.status, StatusCode::CREATED);
    let one = h.send(Method::GET, &format!("{}/agents/154", h.admin), &[], "").await.json();
    assert_eq!(one["state"], "active", "{one}");
    let all = h.send(Method::GET, &format!("{}/agents", h.admin), &[], "").await.json();
    let listed: Vec<&serde_json::Value> =
        all["agents"].as_array().unwrap().iter().filter(|a| a["agent"] == "154").collect();
    assert_eq!(listed.len(), 1, "{all}");
    assert_eq!(listed[0]["state"], "active", "{all}");
    b.stop().await;
    h.stop().await;
}

//! A gateway that is down, slow, or answers garbage: each becomes a clear problem response
//! with the right status, and the proxy keeps serving.

use crate::common;

use ccgate::gateway::GatewayMethod;
use ccgate::sim::Faults;
use common::{closed_port, problem, Harness, Options};
use http::{Method, StatusCode};

const STOP: &str = "/v1/conference/announcement/stop";

#[tokio::test]
async fn gateway_down_is_503() {
    let port = closed_port().await;
    let h =
        Harness::with(Options { gateway_url: Some(format!("https://127.0.0.1:{port}")), ..Options::default() }).await;
    let r = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(problem(&r)["type"], "urn:ccgate:problem:gateway-unavailable");
    let m = h.metrics().await;
    assert!(
        m.contains(r#"ccgate_requests_total{gateway="default",method="login",outcome="upstream_unavailable"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"ccgate_signins_total{gateway="default",result="upstream_error"} 1"#), "{m}");
    h.stop().await;
}

#[tokio::test]
async fn readiness_says_why_the_gateway_is_not_usable() {
    // Down: nothing listens. ccgate itself can serve (a sidecar's app stays in its Service);
    // the gateway's state is reported beside the verdict, on /gatewayz and in the metric.
    let port = closed_port().await;
    let h =
        Harness::with(Options { gateway_url: Some(format!("https://127.0.0.1:{port}")), ..Options::default() }).await;
    tokio::time::timeout(common::WAIT, h.running().readiness.wait_gateway_checked()).await.expect("never probed");
    let r = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["gateway"], "connect_failed", "{}", r.text);
    assert_eq!(r.json()["gateway_reachable"], false);
    assert_eq!(r.json()["gateway_required"], false);
    let r = h.send(Method::GET, &format!("{}/gatewayz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json()["gateway"], "connect_failed", "{}", r.text);
    assert!(h.metrics().await.contains("ccgate_gateway_up{gateway=\"default\"} 0"));
    h.stop().await;

    // Configured to require the gateway: not ready.
    let h = Harness::with(Options {
        gateway_url: Some(format!("https://127.0.0.1:{port}")),
        config: Box::new(|c| c.admin.ready_requires_gateway = true),
        ..Options::default()
    })
    .await;
    tokio::time::timeout(common::WAIT, h.running().readiness.wait_gateway_checked()).await.expect("never probed");
    let r = h.send(Method::GET, &format!("{}/readyz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json()["gateway_required"], true);
    h.stop().await;

    // Up, but its certificate is not for the name ccgate expects: a TCP check would call this
    // ready while every request fails.
    let h = Harness::with(Options {
        config: Box::new(|c| c.gateway.tls_server_name = Some("gateway.invalid".into())),
        ..Options::default()
    })
    .await;
    tokio::time::timeout(common::WAIT, h.running().readiness.wait_gateway_checked()).await.expect("never probed");
    let r = h.send(Method::GET, &format!("{}/gatewayz", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json()["gateway"], "tls_failed", "{}", r.text);
    assert!(h.metrics().await.contains("ccgate_gateway_up{gateway=\"default\"} 0"));
    let r = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "requests fail the same way: {}", r.text);
    assert_eq!(h.sim.count(GatewayMethod::Login), 0, "no request got through");
    h.stop().await;
}

#[tokio::test]
async fn slow_gateway_is_504() {
    let h =
        Harness::with(Options { config: Box::new(|c| c.gateway.request_timeout_ms = 200), ..Options::default() }).await;
    h.chair("153").await;
    h.sim.set_faults(Faults { latency_ms: 5_000, methods: vec!["stopVoiceToConf".into()], ..Faults::default() });
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text);
    assert_eq!(problem(&r)["type"], "urn:ccgate:problem:gateway-timeout");
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 1);
    assert!(h.metrics().await.contains(r#"outcome="timeout"} 1"#));
    h.stop().await;
}

#[tokio::test]
async fn garbage_5xx_and_reset_are_502_and_the_proxy_recovers() {
    let h = Harness::start().await;
    h.chair("153").await;
    let only_stop = vec!["stopVoiceToConf".to_string()];
    let faults = [
        ("HTTP 500", Faults { http_status: Some(500), methods: only_stop.clone(), ..Faults::default() }, "bad-gateway"),
        ("HTTP 502", Faults { http_status: Some(502), methods: only_stop.clone(), ..Faults::default() }, "bad-gateway"),
        ("malformed JSON", Faults { malformed: true, methods: only_stop.clone(), ..Faults::default() }, "bad-gateway"),
        ("connection reset", Faults { reset: true, methods: only_stop.clone(), ..Faults::default() }, "bad-gateway"),
    ];
    for (name, f, slug) in faults {
        h.sim.set_faults(f);
        let r = h.call(Method::POST, STOP, Some("153"), "").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{name}: {}", r.text);
        let p = problem(&r);
        assert_eq!(p["type"], format!("urn:ccgate:problem:{slug}"), "{name}");
        assert!(!p["detail"].as_str().unwrap().contains("oops"), "gateway body not echoed: {p}");
    }
    h.sim.set_faults(Faults::default());
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK, "recovered: {}", r.text);
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 5);
    h.stop().await;
}

#[tokio::test]
async fn wrong_gateway_password_is_a_gateway_refusal_without_the_password() {
    let mut sim = common::test_sim_config();
    sim.agents.insert("153".into(), "a-different-password".into());
    let h = Harness::with(Options { sim, ..Options::default() }).await;
    let r = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(problem(&r)["retcode"], "100-004");
    assert!(!r.text.contains(common::PASSWORD));
    assert!(h.metrics().await.contains(r#"ccgate_signins_total{gateway="default",result="rejected"} 1"#));
    h.stop().await;
}

/// App requests share pooled connections to the gateway: one at a time they reuse one; at
/// once they open one each, and past `pool_max_idle_per_host` the surplus is closed when
/// given back; what is kept serves the next requests without a new dial.
#[tokio::test]
async fn app_requests_reuse_pooled_connections_up_to_the_cap() {
    let h = Harness::with(Options {
        config: Box::new(|c| {
            c.gateway.pool_max_idle_per_host = 4;
            c.rate_limits.limit.clear();
        }),
        ..Options::default()
    })
    .await;
    h.chair("153").await;
    let stop = || async {
        let r = h.call(Method::POST, STOP, Some("153"), "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    };
    stop().await;
    // The poller's own connection and one pooled.
    let open = h.sim.open_connections();
    for _ in 0..20 {
        stop().await;
    }
    assert_eq!(h.sim.open_connections(), open, "twenty stops one after another reused one connection");

    futures_util::future::join_all((0..12).map(|_| stop())).await;
    common::eventually("the surplus over the cap closed", || async { h.sim.open_connections() <= open - 1 + 4 }).await;
    let kept = h.sim.open_connections();
    for _ in 0..20 {
        stop().await;
    }
    assert_eq!(h.sim.open_connections(), kept, "the kept connections served the next stops");
    h.stop().await;
}

/// The simulator's own view (`GET /ccgate-sim/agents`, what bench/fleet.py reads): requests
/// per method as the gateway counted them, and each signed-in agent's latest poll, which
/// moves as ccgate's poller polls.
#[tokio::test]
async fn the_simulators_own_view_counts_sign_ins_and_dates_each_agents_latest_poll() {
    let h = Harness::start().await;
    let before = ccgate::clock::unix_ms();
    h.sign_in("153").await;
    let sim = h.config.gateway.url.to_string();
    let view = || async {
        let r = h.send(Method::GET, &format!("{}{}", sim.trim_end_matches('/'), ccgate::sim::VIEW_PATH), &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json()
    };
    let first = view().await;
    assert_eq!(first["counts"]["login"], 1, "{first}");
    assert_eq!(first["counts"]["logout"], 0);
    common::eventually("the poller's first poll is dated", || async {
        view().await["last_poll_ms"]["153"].as_u64().is_some_and(|t| t >= before)
    })
    .await;
    let polled = view().await["last_poll_ms"]["153"].as_u64().unwrap();
    // The test sim's long poll is 500 ms: the next poll comes after it.
    common::eventually("the next poll moves it", || async {
        view().await["last_poll_ms"]["153"].as_u64().is_some_and(|t| t > polled)
    })
    .await;
    assert!(view().await["last_poll_ms"].get("154").is_none(), "only signed-in agents");
}

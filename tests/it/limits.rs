//! Rate limits: defaults on stopVoiceToConf, 429 with Retry-After and the IETF RateLimit
//! headers, accuracy over several windows under tokio's paused clock, tenant and global
//! scopes, shadow mode, and bounded memory.

use crate::common;

use std::time::Duration;

use ccgate::clock::unix_secs as now_secs;
use ccgate::config::{LimitConfig, RateLimitsConfig, Scope};
use ccgate::gateway::GatewayMethod;
use ccgate::labels::MethodLabel;
use ccgate::metrics::Metrics;
use ccgate::ops::limits::{Limits, Tier};
use ccgate::ops::Principal;
use common::{problem, Harness, Options, AUDIENCE, ISSUER};
use http::{Method, StatusCode};
use serde_json::json;

const STOP: &str = "/v1/conference/announcement/stop";

fn limit(method: &str, scope: Scope, rate: f64, burst: u32, shadow: bool) -> LimitConfig {
    LimitConfig { method: method.into(), scope, rate, burst, shadow }
}

#[tokio::test(start_paused = true)]
async fn default_stop_limit_refuses_the_sixth_call_with_standard_headers() {
    let h = Harness::with(Options { http1_only: true, ..Options::default() }).await;
    h.chair("153").await;
    for i in 0..5 {
        let r = h.call(Method::POST, STOP, Some("153"), "").await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.text);
        let rl = r.headers.get("ratelimit").expect("allowed responses carry RateLimit").to_str().unwrap();
        assert_eq!(rl, format!("\"stopVoiceToConf.agent\";r={};t={}", 4 - i, i + 1), "call {i}");
    }
    let r = h.call(Method::POST, STOP, Some("153"), "").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert_eq!(r.headers.get("ratelimit-policy").unwrap(), "\"stopVoiceToConf.agent\";q=5;w=5");
    assert_eq!(r.headers.get("ratelimit").unwrap(), "\"stopVoiceToConf.agent\";r=0;t=1");
    let p = problem(&r);
    assert_eq!(p["type"], "urn:ccgate:problem:rate-limited");
    assert_eq!(p["limit"], "stopVoiceToConf.agent");
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 5, "the refused call never reached the gateway");
    // One second later one more is allowed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.call(Method::POST, STOP, Some("153"), "").await.status, StatusCode::OK);
    let m = h.metrics().await;
    assert!(m.contains(r#"ccgate_rate_limited_total{method="stopVoiceToConf",scope="agent"} 1"#), "{m}");
    assert!(
        m.contains(r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="rate_limited"} 1"#),
        "{m}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_over_several_windows_stay_within_rate_plus_burst() {
    let (rate, burst) = (10.0, 5u32);
    let h = Harness::with(Options {
        config: Box::new(move |c| {
            c.rate_limits.limit = vec![limit("stopVoiceToConf", Scope::Agent, rate, burst, false)]
        }),
        http1_only: true,
        ..Options::default()
    })
    .await;
    h.chair("153").await;
    let (rounds, per_round, step) = (30u32, 20usize, Duration::from_millis(100));
    let mut allowed = 0u64;
    let mut refused = 0u64;
    for _ in 0..rounds {
        let mut tasks = Vec::new();
        for _ in 0..per_round {
            tasks.push(h.spawn_call(Method::POST, STOP, "153"));
        }
        for t in tasks {
            match t.await.unwrap().status {
                StatusCode::OK => allowed += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
        tokio::time::sleep(step).await;
    }
    // The first round is at t=0 and the last at t=2.9 s.
    let elapsed = step.as_secs_f64() * f64::from(rounds - 1);
    let ceiling = (rate * elapsed).floor() as u64 + u64::from(burst);
    println!("allowed {allowed}, refused {refused}, ceiling {ceiling} over {elapsed:.1} s");
    assert!(allowed <= ceiling, "allowed {allowed} > rate*t + burst = {ceiling}");
    assert!(allowed + 1 >= ceiling, "allowed {allowed} is well under what the limit permits ({ceiling})");
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), allowed, "exactly the allowed calls reached the gateway");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn tenant_and_global_scopes_share_buckets_as_configured() {
    let h = Harness::with(Options {
        config: Box::new(|c| {
            c.rate_limits.limit = vec![
                limit("getSession", Scope::Tenant, 1.0, 3, false),
                limit("getSession", Scope::Global, 1.0, 5, false),
            ]
        }),
        http1_only: true,
        ..Options::default()
    })
    .await;
    let token = |agent: &str, tenant: &str| {
        let now = now_secs();
        h.es.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "agent_id": agent, "tenant": tenant, "exp": now + 60}))
            .unwrap()
    };
    let get = async |t: &str| h.call_with_token(Method::GET, "/v1/session", Some(t), "").await;
    let (a1, a2, b1) = (token("153", "acme"), token("154", "acme"), token("155", "globex"));
    for t in [&a1, &a2, &b1] {
        assert_eq!(h.call_with_token(Method::POST, "/v1/session", Some(t), "").await.status, StatusCode::CREATED);
    }
    for t in [&a1, &a2, &a1] {
        assert_eq!(get(t).await.status, StatusCode::OK, "tenant acme: 3 of burst 3");
    }
    let r = get(&a2).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "agents of one tenant share its bucket");
    assert_eq!(problem(&r)["limit"], "getSession.tenant");
    // Global burst 5 counts every agent and tenant: 3 used by acme, 2 left for globex.
    assert_eq!(get(&b1).await.status, StatusCode::OK, "another tenant is unaffected");
    assert_eq!(get(&b1).await.status, StatusCode::OK);
    let r = get(&b1).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "globex still has tenant room, but the global bucket is empty");
    assert_eq!(problem(&r)["limit"], "getSession.global");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shadow_limit_counts_but_refuses_nothing() {
    let h = Harness::with(Options {
        config: Box::new(|c| c.rate_limits.limit = vec![limit("stopVoiceToConf", Scope::Agent, 1.0, 1, true)]),
        http1_only: true,
        ..Options::default()
    })
    .await;
    h.chair("153").await;
    for _ in 0..5 {
        assert_eq!(h.call(Method::POST, STOP, Some("153"), "").await.status, StatusCode::OK);
    }
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 5);
    let m = h.metrics().await;
    assert!(m.contains(r#"ccgate_rate_limit_shadow_total{method="stopVoiceToConf",scope="agent"} 4"#), "{m}");
    assert!(
        m.contains(r#"ccgate_rate_limited_total{method="stopVoiceToConf",scope="agent"} 0"#),
        "nothing refused: {m}"
    );
    h.stop().await;
}

fn principal(n: u32) -> Principal {
    Principal::agent(&(101 + n).to_string())
}

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_agents_then_idle_keys_are_evicted_and_the_gauge_falls_back() {
    let metrics = Metrics::default();
    let cfg =
        RateLimitsConfig { max_keys: 200_000, limit: vec![limit("stopVoiceToConf", Scope::Agent, 1.0, 5, false)] };
    let limits = Limits::new(&cfg, &[], metrics.clone()).expect("valid limits");
    let m = MethodLabel::Gateway(GatewayMethod::StopVoiceToConf);
    for n in 0..100_000 {
        assert!(limits.check(m, Tier::Own, &principal(n)).await.is_ok());
    }
    limits.evict();
    assert_eq!(limits.tracked_keys(), 100_000, "every agent is still within its window");
    assert!(metrics.render().contains(r#"ccgate_rate_limiter_keys{limit="stopVoiceToConf.agent"} 100000"#));
    // Once a key's bucket has refilled (burst 5 at 1/s: 5 s), it holds no information.
    tokio::time::sleep(Duration::from_secs(6)).await;
    limits.evict();
    assert_eq!(limits.tracked_keys(), 0);
    assert!(metrics.render().contains(r#"ccgate_rate_limiter_keys{limit="stopVoiceToConf.agent"} 0"#));
}

#[tokio::test(start_paused = true)]
async fn the_key_table_is_capped_and_overflow_is_counted_not_refused() {
    let metrics = Metrics::default();
    let cfg = RateLimitsConfig { max_keys: 1_000, limit: vec![limit("stopVoiceToConf", Scope::Agent, 1.0, 1, false)] };
    let limits = Limits::new(&cfg, &[], metrics.clone()).expect("valid limits");
    let m = MethodLabel::Gateway(GatewayMethod::StopVoiceToConf);
    for n in 0..5_000 {
        assert!(limits.check(m, Tier::Own, &principal(n)).await.is_ok(), "a new key is never refused for lack of room");
    }
    assert_eq!(limits.tracked_keys(), 1_000);
    assert!(metrics.render().contains(r#"ccgate_rate_limiter_overflow_total{limit="stopVoiceToConf.agent"} 4000"#));
    // Tracked keys are still limited.
    assert!(limits.check(m, Tier::Own, &principal(0)).await.is_err());
}

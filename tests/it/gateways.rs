//! Several contact centres behind one ccgate (`[[gateways]]`): two simulated CC-Gateways,
//! each with its own CA and credentials, one work number (153) in both. The token's `tenant`
//! claim picks the gateway; the two agents 153 share no session, Guid, limit or event; a token
//! for no gateway reaches none; one gateway killed leaves the other serving.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;

use ccgate::config::{GatewayConfig, LimitConfig, Scope};
use ccgate::devkeys::dev_pki;
use ccgate::gateway::GatewayMethod;
use ccgate::server::{Served, Shutdown};
use ccgate::sim::{Sim, SimConfig};
use common::{problem, Harness, Options, Reply, AUDIENCE, ISSUER};
use http::{Method, StatusCode};
use serde_json::json;

const STOP: &str = "/v1/conference/announcement/stop";
const BETA_PASSWORD: &str = "beta-cti-pw-7";

/// The second contact centre: its own PKI, simulator and credentials file.
struct Beta {
    sim: Sim,
    served: Option<Served>,
    shutdown: Shutdown,
    url: String,
    ca: PathBuf,
    creds: PathBuf,
    dir: PathBuf,
}

impl Beta {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("ccgate-beta-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = dev_pki(&["127.0.0.1"]).unwrap();
        let (ca, cert, key, creds) =
            (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"), dir.join("creds.toml"));
        for (path, data) in [
            (&ca, pki.ca_pem.as_str()),
            (&cert, pki.server_cert_pem.as_str()),
            (&key, pki.server_key_pem.as_str()),
            (&creds, &format!("[agents.\"153\"]\npassword = \"{BETA_PASSWORD}\"\nphonenum = \"9990153\"\n")),
        ] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(path, data).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let sim = Sim::new(SimConfig {
            agents: HashMap::from([("153".to_string(), BETA_PASSWORD.to_string())]),
            event_wait_ms: 500,
            ..SimConfig::default()
        });
        let tls = ccgate::tls::server_config_from_files(&cert, &key).unwrap();
        let shutdown = Shutdown::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = sim.serve(listener, tls, shutdown.subscribe()).unwrap();
        let url = format!("https://127.0.0.1:{}", served.addr.port());
        Self { sim, served: Some(served), shutdown, url, ca, creds, dir }
    }

    /// The gateway goes away: its listener closes and its connections end.
    async fn kill(&mut self) {
        self.shutdown.trigger();
        if let Some(s) = self.served.take() {
            let _ = s.task.await;
        }
    }
}

/// What the proxy needs to know of the second gateway.
#[derive(Clone)]
struct BetaGateway {
    url: String,
    ca: PathBuf,
    creds: PathBuf,
}

impl Beta {
    fn config(&self) -> BetaGateway {
        BetaGateway { url: self.url.clone(), ca: self.ca.clone(), creds: self.creds.clone() }
    }
}

impl BetaGateway {
    /// Two `[[gateways]]`: "alpha" (the harness's simulator, tenant `t-alpha`) and "beta"
    /// (this one, tenant `t-beta`), picked by the token's `tenant` claim.
    fn configure(self, c: &mut ccgate::config::Config) {
        let alpha = GatewayConfig {
            name: "alpha".into(),
            url: c.gateway.url.clone(),
            ca_file: c.gateway.ca_file.clone(),
            credentials_file: c.credentials.file.take(),
            tenants: vec!["t-alpha".into()],
            ..GatewayConfig::default()
        };
        let beta = GatewayConfig {
            name: "beta".into(),
            url: self.url,
            ca_file: Some(self.ca),
            credentials_file: Some(self.creds),
            tenants: vec!["t-beta".into()],
            ..GatewayConfig::default()
        };
        c.gateway = GatewayConfig::default();
        c.gateways = vec![alpha, beta];
        c.auth.gateway_claim = "tenant".into();
    }
}

/// A token for agent 153 of `tenant` (`None`: no tenant claim).
fn token(h: &Harness, tenant: Option<&str>) -> String {
    token_for(h, "153", tenant)
}

fn token_for(h: &Harness, agent: &str, tenant: Option<&str>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "agent_id": agent, "iat": now, "exp": now + 600});
    if let Some(t) = tenant {
        claims["tenant"] = json!(t);
    }
    h.es.sign(&claims).unwrap()
}

async fn call(h: &Harness, method: Method, path: &str, token: &str, body: &str) -> Reply {
    h.call_with_token(method, path, Some(token), body).await
}

/// Reads the agent's pass-through event queue until it is empty; every event's text.
async fn drain_events(h: &Harness, token: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let r = call(h, Method::GET, "/agentgateway/resource/agentevent/153", token, "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.json()["event"].is_null() {
            return seen;
        }
        seen.push(r.text);
    }
    panic!("the queue never emptied: {seen:?}");
}

#[tokio::test]
async fn two_contact_centres_share_a_work_number_and_nothing_else() {
    let mut beta = Beta::start().await;
    let beta_gw = beta.config();
    let h = Harness::with(Options {
        config: Box::new(move |c| {
            beta_gw.configure(c);
            c.sessions.face_event_wait_ms = 300;
            // One stop per agent, then a long wait: a second stop shows whose bucket it hit.
            c.rate_limits.limit = vec![LimitConfig {
                method: "stopVoiceToConf".into(),
                scope: Scope::Agent,
                rate: 0.01,
                burst: 1,
                shadow: false,
            }];
        }),
        ..Options::default()
    })
    .await;
    let (alpha_token, beta_token) = (token(&h, Some("t-alpha")), token(&h, Some("t-beta")));

    // A token for no gateway, or with no tenant at all, is refused before any gateway call.
    for t in [token(&h, Some("t-gamma")), token(&h, None)] {
        let r = call(&h, Method::POST, "/v1/session", &t, "").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert_eq!(problem(&r)["type"], "urn:ccgate:problem:no-gateway");
        // It names the claim that matched no gateway (never the token's value).
        assert_eq!(problem(&r)["claim"], "tenant", "{}", r.text);
        assert!(problem(&r)["detail"].as_str().unwrap().contains("`tenant` claim"), "{}", r.text);
    }
    let r = call(&h, Method::PUT, "/agentgateway/resource/onlineagent/153", &token(&h, Some("t-gamma")), "{}").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "the pass-through face refuses it too: {}", r.text);
    assert_eq!((h.sim.total(), beta.sim.total()), (0, 0), "nothing reached either gateway");

    // Both 153s sign in, each at its own gateway with its own credentials, and chair a
    // conference of their own.
    for t in [&alpha_token, &beta_token] {
        let r = call(&h, Method::POST, "/v1/session", t, "").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let r = call(&h, Method::POST, "/v1/conference", t, r#"{"memberNum":3}"#).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json()["chairperson"], true, "{}", r.text);
    }
    assert!(h.sim.is_signed_in("153") && beta.sim.is_signed_in("153"));
    assert_eq!((h.sim.count(GatewayMethod::Login), beta.sim.count(GatewayMethod::Login)), (1, 1));
    assert_ne!(h.sim.current_guid("153"), beta.sim.current_guid("153"), "two sessions, two Guids");

    // A stop reaches only its own gateway (whose simulator accepts only the Guid it issued),
    // and spends only its own agent's bucket.
    let r = call(&h, Method::POST, STOP, &alpha_token, "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((h.sim.count(GatewayMethod::StopVoiceToConf), beta.sim.count(GatewayMethod::StopVoiceToConf)), (1, 0));
    let r = call(&h, Method::POST, STOP, &alpha_token, "").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "alpha's 153 spent its burst: {}", r.text);
    let r = call(&h, Method::POST, STOP, &beta_token, "").await;
    assert_eq!(r.status, StatusCode::OK, "beta's 153 has a bucket of its own: {}", r.text);
    assert_eq!((h.sim.count(GatewayMethod::StopVoiceToConf), beta.sim.count(GatewayMethod::StopVoiceToConf)), (1, 1));

    // An event at alpha's gateway is alpha's 153's only.
    h.sim.push_event("153", "AgentOther_Tagged", json!({"tag": "alpha-only"}));
    // Each drain ends with the gateway's long-poll wait on an empty queue: no timer here.
    let deadline = std::time::Instant::now() + common::WAIT;
    let mut alpha_events: Vec<String> = Vec::new();
    while !alpha_events.iter().any(|e| e.contains("alpha-only")) {
        assert!(std::time::Instant::now() < deadline, "alpha's 153 never got alpha's event: {alpha_events:?}");
        alpha_events.extend(drain_events(&h, &alpha_token).await);
    }
    let beta_events = drain_events(&h, &beta_token).await;
    assert!(!beta_events.iter().any(|e| e.contains("alpha-only")), "{beta_events:?}");

    // The operator sees two agents 153, by gateway.
    let r = h.send(Method::GET, &format!("{}/agents", h.admin), &[], "").await;
    let gateways: Vec<String> =
        r.json()["agents"].as_array().unwrap().iter().map(|a| format!("{}/{}", a["gateway"], a["agent"])).collect();
    assert_eq!(gateways, [r#""alpha"/"153""#, r#""beta"/"153""#], "{}", r.text);
    let r = h.send(Method::GET, &format!("{}/agents/153", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "which 153? {}", r.text);
    let r = h.send(Method::GET, &format!("{}/agents/beta/153", h.admin), &[], "").await;
    assert_eq!((r.status, r.json()["gateway"].as_str()), (StatusCode::OK, Some("beta")), "{}", r.text);
    let m = h.metrics().await;
    for series in [
        r#"ccgate_requests_total{gateway="alpha",method="stopVoiceToConf",outcome="ok"} 1"#,
        r#"ccgate_requests_total{gateway="alpha",method="stopVoiceToConf",outcome="rate_limited"} 1"#,
        r#"ccgate_requests_total{gateway="beta",method="stopVoiceToConf",outcome="ok"} 1"#,
        r#"ccgate_requests_total{gateway="",method="login",outcome="forbidden"} 3"#,
        r#"ccgate_auth_failures_total{reason="no_gateway"} 3"#,
        r#"ccgate_sessions{gateway="alpha",state="active"} 1"#,
        r#"ccgate_sessions{gateway="beta",state="active"} 1"#,
        r#"ccgate_upstream_responses_total{gateway="beta",method="login",retcode="0"} 1"#,
    ] {
        assert!(m.lines().any(|l| l == series), "missing {series}\n{m}");
    }
    tokio::time::timeout(common::WAIT, h.running().readiness.wait_gateway_checked()).await.expect("never probed");
    let r = h.send(Method::GET, &format!("{}/gatewayz", h.admin), &[], "").await;
    assert_eq!(r.json()["gateways"], json!({"alpha": "up", "beta": "up"}), "{}", r.text);

    // Beta's gateway dies: beta's agent gets 503, alpha's carries on at its gateway.
    beta.kill().await;
    let r = call(&h, Method::POST, "/v1/conference", &beta_token, r#"{"memberNum":3}"#).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(problem(&r)["type"], "urn:ccgate:problem:gateway-unavailable");
    let before = h.sim.count(GatewayMethod::Logout);
    let r = call(&h, Method::DELETE, "/v1/session", &alpha_token, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "alpha's gateway still serves: {}", r.text);
    assert_eq!(h.sim.count(GatewayMethod::Logout), before + 1);
    let r = call(&h, Method::POST, "/v1/session", &alpha_token, "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    h.stop().await;
    let _ = std::fs::remove_dir_all(&beta.dir);
}

/// Issue 37: one customer's app floods stops it cannot be served (agents without a session, and
/// its own agent who is not chair); the other customer's chairperson, behind the same tenant,
/// gateway and global limits, stops every announcement it asks for. The flood spends only the
/// flooding agents' own buckets.
#[tokio::test]
async fn one_customers_hopeless_flood_costs_another_customers_chairperson_nothing() {
    let beta = Beta::start().await;
    let beta_gw = beta.config();
    let limit =
        |scope, burst| LimitConfig { method: "stopVoiceToConf".into(), scope, rate: 0.01, burst, shadow: false };
    let h = Harness::with(Options {
        config: Box::new(move |c| {
            beta_gw.configure(c);
            // Every shared bucket holds 40 stops for the next 100 s; an agent's holds 25.
            c.rate_limits.limit = vec![
                limit(Scope::Agent, 25),
                limit(Scope::Tenant, 40),
                limit(Scope::Gateway, 40),
                limit(Scope::Global, 40),
            ];
        }),
        ..Options::default()
    })
    .await;
    // Alpha's 153 is signed in but not chair; beta's 153 chairs a conference.
    let alpha_153 = token(&h, Some("t-alpha"));
    let r = call(&h, Method::POST, "/v1/session", &alpha_153, "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let beta_153 = token(&h, Some("t-beta"));
    let r = call(&h, Method::POST, "/v1/session", &beta_153, "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = call(&h, Method::POST, "/v1/conference", &beta_153, r#"{"memberNum":3}"#).await;
    assert_eq!(r.json()["chairperson"], true, "{}", r.text);

    let flood: Vec<String> = (200..400).map(|n| token_for(&h, &n.to_string(), Some("t-alpha"))).collect();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut beta_ok = 0;
    for (i, t) in flood.iter().enumerate() {
        // Every agent of the flood once, alpha's 153 three times per round of ten.
        let t = if i % 10 < 3 { &alpha_153 } else { t };
        *statuses.entry(call(&h, Method::POST, STOP, t, "").await.status.as_u16()).or_default() += 1;
        if i % 10 == 0 {
            let r = call(&h, Method::POST, STOP, &beta_153, "").await;
            assert_eq!(r.status, StatusCode::OK, "beta's chair, stop {beta_ok}: {}", r.text);
            beta_ok += 1;
        }
    }
    assert_eq!(beta_ok, 20);
    // 140 agents without a session: 409 each. Alpha's 153 (60 stops): 409 not-chair until its
    // own bucket is empty (25), then 429 `stopVoiceToConf.agent`, never a shared bucket's name.
    assert_eq!(statuses.get(&409), Some(&165), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&35), "{statuses:?}");
    let r = call(&h, Method::POST, STOP, &alpha_153, "").await;
    assert_eq!(problem(&r)["limit"], "stopVoiceToConf.agent", "{}", r.text);
    assert_eq!(h.sim.count(GatewayMethod::StopVoiceToConf), 0, "nothing of the flood reached alpha's gateway");
    assert_eq!(beta.sim.count(GatewayMethod::StopVoiceToConf), 20);
    let m = h.metrics().await;
    for (scope, n) in [("agent", 36), ("tenant", 0), ("gateway", 0), ("global", 0)] {
        let series = format!(r#"ccgate_rate_limited_total{{method="stopVoiceToConf",scope="{scope}"}} {n}"#);
        assert!(m.lines().any(|l| l == series), "missing {series}\n{m}");
    }
    h.stop().await;
    let _ = std::fs::remove_dir_all(&beta.dir);
}

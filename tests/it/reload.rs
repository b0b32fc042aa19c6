//! Reload without a restart: SIGHUP and `ccgate reload` during traffic (no request fails, no
//! agent signs in again, an open event stream keeps flowing), an invalid config refused with
//! the old one kept, credentials swapped, a renewed certificate picked up from its files.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ccgate::config::{LimitConfig, Scope, UnknownChair};
use ccgate::devkeys::{jwks, DevSigner};
use common::process::Process;
use common::{eventually, problem, rsa, Harness, Options, AUDIENCE, ISSUER};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;

/// Requests on `base` as `token`s from 4 workers, round robin, until `stop`.
struct Traffic {
    ok: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    /// Returns once `n` more requests were answered 200.
    async fn flows(&self, n: u64) {
        let from = self.ok.load(Ordering::Relaxed);
        eventually("traffic flows", || async { self.ok.load(Ordering::Relaxed) >= from + n }).await;
    }

    /// Stops; (answered 200, answered otherwise or failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (self.ok.load(Ordering::Relaxed), self.bad.load(Ordering::Relaxed))
    }
}

fn traffic(h: &Harness, base: &str, tokens: Vec<String>) -> Traffic {
    let (client, url) = (h.client.clone(), format!("{base}/v1/session"));
    let (ok, bad, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let (ok2, bad2, stop2) = (ok.clone(), bad.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let (ok, bad, stop) = (ok2, bad2, stop2);
        let mut workers = Vec::new();
        for w in 0..4 {
            let (client, url, tokens, stop) = (client.clone(), url.clone(), tokens.clone(), stop.clone());
            let (ok, bad) = (ok.clone(), bad.clone());
            workers.push(tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let req = Request::get(&url)
                        .header("authorization", format!("Bearer {}", tokens[i % tokens.len()]))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let status = match client.request(req).await {
                        Ok(r) => {
                            let s = r.status();
                            let _ = r.into_body().collect().await;
                            s
                        }
                        Err(_) => StatusCode::BAD_GATEWAY,
                    };
                    if status == StatusCode::OK { &ok } else { &bad }.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
    });
    Traffic { ok, bad, stop, task }
}

fn write_config(p: &Process, config: &ccgate::config::Config) {
    let mut config = config.clone();
    config.log.format = ccgate::config::LogFormat::Json;
    std::fs::write(&p.config_path, toml::to_string(&config).unwrap()).unwrap();
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

fn strings(v: &serde_json::Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_ccgate_reload_during_traffic_lose_nothing() {
    let h = Harness::start().await;
    let p = Process::start(&h.config, &h.dir);
    let (t153, t154) = (h.token("153"), h.token("154"));
    for t in [&t153, &t154] {
        let r = h.call_at(&p.base, Method::POST, "/v1/session", Some(t), "").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let logins = h.sim.count(ccgate::gateway::GatewayMethod::Login);
    let mut sse = h.events_at(&p.base, "153", None).await;
    let load = traffic(&h, &p.base, vec![t153.clone(), t154.clone()]);
    load.flows(20).await;

    // 1. A valid change: a new signing key in the JWKS file, a policy, a limit, and one
    //    setting that needs a restart.
    let es2 = DevSigner::es256("es-2").unwrap();
    std::fs::write(h.dir.join("jwks.json"), jwks(&[&h.es, &h.ed, &rsa().signer, &es2]).to_string()).unwrap();
    let mut next = h.config.clone();
    next.policy.on_unknown_chair = UnknownChair::Deny;
    next.rate_limits.limit.push(LimitConfig {
        method: "getSession".into(),
        scope: Scope::Global,
        rate: 100_000.0,
        burst: 100_000,
        shadow: false,
    });
    next.sessions.poll_pause_ms += 1;
    write_config(&p, &next);
    let new_key_token = es2.token(ISSUER, AUDIENCE, "153", 600).unwrap();
    let r = h.call_at(&p.base, Method::GET, "/v1/session", Some(&new_key_token), "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "not before the reload");
    p.signal("-HUP");
    eventually("the reload is logged", || async { !p.logged("config reloaded").is_empty() }).await;
    load.flows(20).await;
    let line = &p.logged("config reloaded")[0];
    let (changed, restart) = (strings(&line["changed"]), strings(&line["restart_required"]));
    assert!(changed.contains("policy.on_unknown_chair") && changed.contains("rate_limits.limit"), "{line}");
    assert!(restart.contains("sessions.poll_pause_ms") && !restart.contains("policy"), "{line}");
    let r = h.call_at(&p.base, Method::GET, "/v1/session", Some(&new_key_token), "").await;
    assert_eq!(r.status, StatusCode::OK, "the new key verifies after the reload: {}", r.text);
    let m = h.send(Method::GET, &format!("{}/metrics", p.admin), &[], "").await.text;
    assert_eq!(sample(&m, r#"ccgate_config_reloads_total{result="ok"}"#), 1.0);
    assert!(m.contains(r#"ccgate_rate_limiter_keys{limit="getSession/global"}"#) || m.contains("getSession"), "{m}");
    // The event stream opened before the reload still flows.
    h.sim.push_event("153", "AgentState_Ready", json!({"after": "reload"}));
    let frame = sse.next_event().await;
    let data = frame.data.unwrap_or_default();
    assert!(data.contains("reload"), "{data}");

    // 2. An invalid change: the JWKS file is garbage. Refused; the running keys stay.
    std::fs::write(h.dir.join("jwks.json"), "{ not json").unwrap();
    p.signal("-HUP");
    eventually("the refusal is logged", || async {
        !p.logged("reload refused; the running config stays in force").is_empty()
    })
    .await;
    load.flows(20).await;
    let m = h.send(Method::GET, &format!("{}/metrics", p.admin), &[], "").await.text;
    assert_eq!(sample(&m, r#"ccgate_config_reloads_total{result="failed"}"#), 1.0);
    assert_eq!(sample(&m, "ccgate_config_last_reload_successful"), 0.0);
    let r = h.call_at(&p.base, Method::GET, "/v1/session", Some(&new_key_token), "").await;
    assert_eq!(r.status, StatusCode::OK, "the keys in force are kept: {}", r.text);

    // 3. Fixed, and reloaded with the command instead of a signal.
    std::fs::write(h.dir.join("jwks.json"), jwks(&[&h.es, &h.ed, &rsa().signer]).to_string()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["reload", "--json", "--admin", p.admin.trim_start_matches("http://")])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reloaded"], true, "{report}");
    let r = h.call_at(&p.base, Method::GET, "/v1/session", Some(&new_key_token), "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "es-2 left the JWKS file: {}", r.text);

    load.flows(20).await;
    let (ok, bad) = load.finish().await;
    eprintln!("traffic across three reloads: {ok} answered 200, {bad} otherwise");
    assert_eq!(bad, 0, "no request failed across three reloads ({ok} answered)");
    assert_eq!(h.sim.count(ccgate::gateway::GatewayMethod::Login), logins, "no agent signed in again");
    let m = h.send(Method::GET, &format!("{}/metrics", p.admin), &[], "").await.text;
    assert_eq!(sample(&m, r#"ccgate_config_reloads_total{result="ok"}"#), 2.0);
    assert_eq!(sample(&m, "ccgate_config_last_reload_successful"), 1.0);
    let logs = p.all_logs();
    assert!(!logs.contains(&t153) && !logs.contains(&new_key_token), "no token in the log");
    h.stop().await;
}

#[tokio::test]
async fn credentials_and_settings_are_swapped_and_a_bad_reload_changes_nothing() {
    let h = Harness::start().await;
    h.sign_in("153").await;
    let reloader = h.running().reloader.clone();
    // 155 leaves the credentials file.
    let creds: String = ["153", "154"]
        .iter()
        .map(|a| format!("[agents.\"{a}\"]\npassword = \"{}\"\nphonenum = \"8880{a}\"\n", common::PASSWORD))
        .collect();
    std::fs::write(h.config.credentials.file.as_ref().unwrap(), creds).unwrap();
    let report = reloader.reload_with(h.config.clone()).await.unwrap();
    assert!(report.changed.is_empty() && report.restart_required.is_empty(), "{report:?}");
    let r = h.call(Method::POST, "/v1/session", Some("155"), "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(problem(&r)["type"], "urn:ccgate:problem:no-credentials", "{}", r.text);
    assert_eq!(h.call(Method::GET, "/v1/session", Some("153"), "").await.status, StatusCode::OK, "kept");

    // Switching TLS off is not something a reload can do; nothing is swapped.
    let mut plain = h.config.clone();
    plain.server.tls_cert = None;
    plain.server.tls_key = None;
    plain.server.plaintext = true;
    let err = reloader.reload_with(plain).await.unwrap_err();
    assert!(err.contains("restart"), "{err}");
    // A config that names a missing file: refused, naming it.
    let mut missing = h.config.clone();
    missing.credentials.file = Some(h.dir.join("nope.toml"));
    let err = reloader.reload_with(missing).await.unwrap_err();
    assert!(err.contains("nope.toml"), "{err}");
    let r = h.call(Method::POST, "/v1/session", Some("154"), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "the credentials in force are kept: {}", r.text);
    let m = h.metrics().await;
    assert!(m.contains(r#"ccgate_config_reloads_total{result="failed"} 2"#), "{m}");
    h.stop().await;
}

/// A gateway's URL and credentials changed together (another customer's gateway and
/// passwords): the URL needs a restart, so the credentials wait with it. The next sign-in
/// sends the running credentials to the running gateway, never the new passwords to the old
/// gateway (issue 37); the report says both keys wait for the restart.
#[tokio::test]
async fn a_gateway_whose_url_changed_keeps_its_credentials_until_the_restart() {
    let h = Harness::start().await;
    let reloader = h.running().reloader.clone();
    let other = h.dir.join("other-customer.toml");
    std::fs::write(&other, "[agents.\"153\"]\npassword = \"another-customers-pw\"\nphonenum = \"7770153\"\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut moved = h.config.clone();
    moved.gateway.url = "https://127.0.0.1:9/".into();
    moved.credentials.file = Some(other.clone());
    let report = reloader.reload_with(moved.clone()).await.unwrap();
    for key in ["gateway.url", "credentials.file"] {
        assert!(report.restart_required.iter().any(|k| k == key), "{key} waits for the restart: {report:?}");
        assert!(!report.changed.iter().any(|k| k == key), "{key} not applied: {report:?}");
    }
    // The running gateway gets the running password: the simulator accepts it.
    let r = h.call(Method::POST, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // The same reload again still holds it (the running config was not half-updated).
    let report = reloader.reload_with(moved).await.unwrap();
    assert!(report.restart_required.iter().any(|k| k == "credentials.file"), "{report:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_signal() {
    let h = Harness::with(Options { config: Box::new(|c| c.server.tls_watch_interval_ms = 50), ..Options::default() })
        .await;
    let port = h.running().proxy_addr.port();
    // A client trusting only a new CA cannot connect yet.
    let renewed = ccgate::devkeys::dev_pki(&["localhost", "127.0.0.1"]).unwrap();
    let new_ca = h.dir.join("new-ca.pem");
    std::fs::write(&new_ca, &renewed.ca_pem).unwrap();
    let handshake = |ca: std::path::PathBuf| async move {
        let tls = ccgate::tls::client_config(Some(&ca)).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.is_ok()
    };
    assert!(!handshake(new_ca.clone()).await);
    assert!(handshake(h.dir.join("ca.pem")).await);
    // The renewal lands as cert-manager's does: new files renamed into place.
    let (cert, key) = (h.config.server.tls_cert.clone().unwrap(), h.config.server.tls_key.clone().unwrap());
    std::fs::write(h.dir.join("key.new"), &renewed.server_key_pem).unwrap();
    // A private key must not be readable by others (the secret-file rule start-up applies).
    std::fs::set_permissions(h.dir.join("key.new"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(h.dir.join("cert.new"), &renewed.server_cert_pem).unwrap();
    std::fs::rename(h.dir.join("key.new"), &key).unwrap();
    std::fs::rename(h.dir.join("cert.new"), &cert).unwrap();
    eventually("the renewed certificate is served", || handshake(new_ca.clone())).await;
    assert!(!handshake(h.dir.join("ca.pem")).await, "the old one is not");
    let m = h.metrics().await;
    assert!(m.contains(r#"ccgate_tls_certificate_reloads_total{result="ok"} 1"#), "{m}");
    h.stop().await;
}

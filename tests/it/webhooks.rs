//! Webhooks end to end: the simulator's events, polled by ccgate, pushed to a receiver that
//! verifies every delivery with the Standard Webhooks reference library (PyPI
//! `standardwebhooks`, `webhook_receiver.py`) over real HTTPS, and answers as its plan says:
//! failing twice, throttling with `Retry-After`, `410 Gone`, hanging past the timeout.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ccgate::config::WebhookConfig;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::common::{self, eventually, Harness};

const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/webhook_receiver.py");
const BIN: &str = env!("CARGO_BIN_EXE_ccgate");

/// A receiver process and the deliveries it reported, in its order.
struct Receiver {
    child: tokio::process::Child,
    port: u16,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl Receiver {
    /// Starts `webhook_receiver.py` with `plan`, over HTTPS with the harness's certificate.
    async fn start(h: &Harness, secret: &str, plan: &str, extra: &[&str]) -> Self {
        let (cert, key) = (h.dir.join("cert.pem"), h.dir.join("key.pem"));
        let tls = ["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
        Self::spawn(secret, plan, &[&tls[..], extra].concat()).await
    }

    /// Starts `webhook_receiver.py` with `plan` and `args` (plain HTTP without `--cert`).
    async fn spawn(secret: &str, plan: &str, args: &[&str]) -> Self {
        let python = common::tools::python_with(&["standardwebhooks"]);
        let mut cmd = tokio::process::Command::from(python);
        cmd.arg(RECEIVER).args(["--secret", secret, "--plan", plan]).args(args);
        cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("python3 did not start");
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(common::WAIT, out.next_line()).await.expect("the receiver never started");
        let first: Value = serde_json::from_str(&first.unwrap().expect("receiver's first line")).unwrap();
        let port = first["port"].as_u64().unwrap() as u16;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let _ = tx.send(serde_json::from_str::<Value>(&line).unwrap());
            }
        });
        Self { child, port, lines, seen: Vec::new() }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/hooks/ccgate?token=receiver-side-7788", self.port)
    }

    /// Reads deliveries until `done` holds over all seen so far.
    async fn until(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        while !done(&self.seen) {
            match tokio::time::timeout(common::WAIT, self.lines.recv()).await {
                Ok(Some(v)) => self.seen.push(v),
                _ => panic!("never happened: {what}; deliveries: {:#?}", self.seen),
            }
        }
    }

    /// Takes what arrived without waiting.
    fn drain(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A fresh `whsec_` secret in a private file: (its path, the secret).
fn secret(dir: &Path, name: &str) -> (PathBuf, String) {
    let mut b = [0u8; 32];
    b.iter_mut().enumerate().for_each(|(i, x)| *x = (i as u8).wrapping_mul(37).wrapping_add(name.len() as u8));
    let s = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(b));
    let path = dir.join(format!("{name}.whsec"));
    common::write_private(&path, format!("{s}\n").as_bytes());
    (path, s)
}

/// An endpoint for tests: every event, quick retries, the harness's CA.
fn endpoint(name: &str, url: &str, secret: &Path, ca: &Path) -> WebhookConfig {
    WebhookConfig {
        name: name.into(),
        url: url.into(),
        secret_file: Some(secret.into()),
        ca_file: Some(ca.into()),
        events: vec!["*".into()],
        timeout_ms: 2_000,
        retry_schedule_ms: vec![100, 100, 100],
        allow_private: true,
        ..WebhookConfig::default()
    }
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

async fn webhooks_view(h: &Harness) -> Value {
    let r = h.send(Method::GET, &format!("{}/webhooks", h.admin), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json()
}

/// Deliveries that got a 2xx, by agent, in the order they arrived.
fn delivered<'a>(seen: &'a [Value], agent: &str) -> Vec<&'a Value> {
    seen.iter().filter(|v| v["agent"] == agent && v["status"].as_u64().is_some_and(|s| s < 300)).collect()
}

#[tokio::test]
async fn every_delivery_verifies_and_each_agent_stays_in_order_through_failures() {
    let h = Harness::start().await;
    let (path, whsec) = secret(&h.dir, "crm");
    let mut rx = Receiver::start(&h, &whsec, "fail-twice", &[]).await;
    let mut config = h.config.clone();
    config.webhooks = vec![endpoint("crm", &rx.url(), &path, &h.dir.join("ca.pem"))];
    let r = h.running().reloader.reload_with(config).await.unwrap();
    assert!(r.changed.contains(&"webhooks".to_owned()), "{r:?}");

    h.sign_in("153").await;
    h.sign_in("154").await;
    for i in 0..3 {
        h.sim.push_event("153", "AgentEvent_Custom", json!({"n": i}));
        h.sim.push_event("154", "AgentEvent_Custom", json!({"n": i}));
    }
    let r = h.call(Method::DELETE, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    rx.until("153's session_ended and 154's three events delivered", |seen| {
        let ok = |agent| delivered(seen, agent);
        ok("153").iter().any(|v| v["type"] == "ccgate.session_ended")
            && ok("154").iter().filter(|v| v["type"] == "AgentEvent_Custom").count() == 3
    })
    .await;

    for v in &rx.seen {
        assert_eq!(v["verified"], true, "the reference library accepts every delivery: {v}");
        assert_eq!(v["gateway"], "default");
    }
    for agent in ["153", "154"] {
        // Each message: 500, 500, then 204, under one webhook-id.
        let ok = delivered(&rx.seen, agent);
        for d in &ok {
            let tries: Vec<u64> =
                rx.seen.iter().filter(|v| v["id"] == d["id"]).map(|v| v["status"].as_u64().unwrap()).collect();
            assert_eq!(tries, [500, 500, 204], "{d}");
        }
        // seq counts the agent's events one by one, and arrives in that order.
        let seqs: Vec<u64> = ok.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{agent}");
        // Event n+1 was not tried before event n got its 2xx.
        let order: Vec<u64> =
            rx.seen.iter().filter(|v| v["agent"] == agent).map(|v| v["seq"].as_u64().unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{agent}: {order:?}");
    }
    let customs: Vec<&Value> =
        delivered(&rx.seen, "154").into_iter().filter(|v| v["type"] == "AgentEvent_Custom").collect();
    assert_eq!(customs.iter().map(|v| v["event"]["content"]["n"].clone()).collect::<Vec<_>>(), [0, 1, 2]);
    let ended = delivered(&rx.seen, "153").into_iter().find(|v| v["type"] == "ccgate.session_ended").unwrap();
    assert_eq!(ended["event"], json!({"reason": "signed_out", "by": "app"}));

    // The receiver reports a delivery before ccgate reads its answer.
    let n = rx.seen.iter().filter(|v| v["status"] == 204).count() as f64;
    let labels = "endpoint=\"crm\"";
    eventually("ccgate counted every 2xx", || async {
        metric(&h.metrics().await, "ccgate_webhook_delivered_total", labels) == n
    })
    .await;
    let text = h.metrics().await;
    assert_eq!(metric(&text, "ccgate_webhook_attempts_total", "outcome=\"server_error\""), 2.0 * n);
    assert_eq!(metric(&text, "ccgate_webhook_attempts_total", "outcome=\"delivered\""), n);
    let view = webhooks_view(&h).await;
    let crm = &view["webhooks"][0];
    assert_eq!((crm["name"].as_str(), crm["state"].as_str()), (Some("crm"), Some("ok")), "{view}");
    assert!(!view.to_string().contains("receiver-side-7788"), "the URL's query is masked: {view}");
    h.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_a_hung_receiver_is_cut_at_the_timeout() {
    let h = Harness::start().await;
    let (path, whsec) = secret(&h.dir, "both");
    let mut throttle = Receiver::start(&h, &whsec, "throttle", &[]).await;
    let mut hang = Receiver::start(&h, &whsec, "hang", &[]).await;
    let ca = h.dir.join("ca.pem");
    let mut config = h.config.clone();
    let mut slow = endpoint("slow", &hang.url(), &path, &ca);
    slow.timeout_ms = 500;
    config.webhooks = vec![endpoint("busy", &throttle.url(), &path, &ca), slow];
    h.running().reloader.reload_with(config).await.unwrap();

    h.sign_in("155").await;
    h.sim.push_event("155", "AgentEvent_Custom", json!({"n": 1}));
    let custom = |seen: &[Value]| seen.iter().filter(|v| v["type"] == "AgentEvent_Custom").cloned().collect::<Vec<_>>();
    throttle.until("the throttled event delivered", |s| custom(s).iter().any(|v| v["status"] == 200)).await;
    hang.until("the hung event delivered", |s| custom(s).iter().any(|v| v["attempt"] == 2)).await;
    let t = custom(&throttle.seen);
    assert_eq!(t.iter().map(|v| v["status"].as_u64().unwrap()).collect::<Vec<_>>(), [429, 200]);
    let waited = t[1]["at"].as_f64().unwrap() - t[0]["at"].as_f64().unwrap();
    assert!(waited >= 0.9, "Retry-After: 1 is waited out, not the schedule's 100 ms: {waited}");
    // The hung attempt was given up at 500 ms and sent again while the receiver still held it.
    let s = custom(&hang.seen);
    assert_eq!(s[0]["attempt"], 2, "the second attempt is reported before the first returns: {s:?}");
    assert_eq!(s[0]["id"], t[0]["id"], "one event, one webhook-id for every endpoint");
    let text = h.metrics().await;
    assert_eq!(metric(&text, "ccgate_webhook_attempts_total", "endpoint=\"busy\",outcome=\"throttled\""), 1.0);
    assert_eq!(metric(&text, "ccgate_webhook_attempts_total", "endpoint=\"slow\",outcome=\"timeout\""), 1.0);
    h.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_until_a_replay_and_given_up_events_replay() {
    let h = Harness::start().await;
    let (path, whsec) = secret(&h.dir, "gone");
    let gone_file = h.dir.join("gone-now");
    std::fs::write(&gone_file, b"").unwrap();
    let mut rx = Receiver::start(&h, &whsec, "gone", &["--gone-file", gone_file.to_str().unwrap()]).await;
    let mut config = h.config.clone();
    config.webhooks = vec![endpoint("app", &rx.url(), &path, &h.dir.join("ca.pem"))];
    config.webhooks[0].events = vec!["AgentEvent_Custom".into()];
    h.running().reloader.reload_with(config).await.unwrap();

    h.sign_in("153").await;
    h.sim.push_event("153", "AgentEvent_Custom", json!({"n": 1}));
    rx.until("a 410", |s| s.iter().any(|v| v["status"] == 410)).await;
    eventually("the endpoint shows disabled", || async {
        let v = webhooks_view(&h).await;
        v["webhooks"][0]["state"] == "disabled"
    })
    .await;
    h.sim.push_event("153", "AgentEvent_Custom", json!({"n": 2}));
    eventually("two events wait", || async { webhooks_view(&h).await["webhooks"][0]["pending"] == 2 }).await;
    let text = h.metrics().await;
    assert_eq!(metric(&text, "ccgate_webhook_disabled", "endpoint=\"app\""), 1.0);
    rx.drain();
    assert_eq!(rx.seen.len(), 1, "nothing more was sent while disabled: {:?}", rx.seen);

    // The receiver is back; a replay (through the CLI) enables the endpoint, and both go out in order.
    std::fs::remove_file(&gone_file).unwrap();
    let admin = h.admin.trim_start_matches("http://").to_owned();
    // The CLI on its own process: the proxy answers on this test's runtime meanwhile.
    let out = tokio::process::Command::new(BIN)
        .args(["webhooks", "--admin", &admin, "--replay", "app", "--since", "2026-01-01T00:00:00Z"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "app: 0 event(s) queued again\n");
    rx.until("both events delivered", |s| delivered(s, "153").len() == 2).await;
    let seqs: Vec<u64> = delivered(&rx.seen, "153").iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[1], seqs[0] + 1);
    assert_eq!(rx.seen[0]["id"], delivered(&rx.seen, "153")[0]["id"], "the held event is the one sent again");

    h.stop().await;
}

#[tokio::test]
async fn a_given_up_event_is_kept_and_replayed_once_the_endpoint_is_mended() {
    let h = Harness::start().await;
    let (path, whsec) = secret(&h.dir, "mend");
    let ca = h.dir.join("ca.pem");
    // One attempt only, at a port nothing listens on: given up at once.
    let closed = format!("https://localhost:{}/hooks", common::closed_port().await);
    let mut broken = endpoint("app", &closed, &path, &ca);
    broken.events = vec!["AgentEvent_Custom".into()];
    broken.retry_schedule_ms = vec![];
    let mut config = h.config.clone();
    config.webhooks = vec![broken.clone()];
    h.running().reloader.reload_with(config.clone()).await.unwrap();
    h.sign_in("154").await;
    h.sim.push_event("154", "AgentEvent_Custom", json!({"n": 7}));
    eventually("the event is given up", || async { webhooks_view(&h).await["webhooks"][0]["failed"] == 1 }).await;
    let view = webhooks_view(&h).await;
    let app = &view["webhooks"][0];
    assert_eq!(app["state"], "failing", "{view}");
    assert_eq!(app["pending"], 0, "{view}");
    let failed = &app["recent_failed"][0];
    assert_eq!(
        (failed["agent"].as_str(), failed["seq"].as_u64(), failed["attempts"].as_u64()),
        (Some("154"), Some(1), Some(1)),
        "{view}"
    );
    assert!(failed["why"].as_str().unwrap().starts_with("connection failed"), "{view}");
    let text = h.metrics().await;
    assert_eq!(metric(&text, "ccgate_webhook_failed_total", "endpoint=\"app\""), 1.0);
    assert_eq!(metric(&text, "ccgate_webhook_attempts_total", "endpoint=\"app\",outcome=\"connect\""), 1.0);
    assert!(metric(&text, "ccgate_webhook_failing_since_timestamp_seconds", "endpoint=\"app\"") >= 0.0);

    // The endpoint is mended by a reload (same name: its failed list stays), then replayed.
    let mut rx = Receiver::start(&h, &whsec, "ok", &[]).await;
    config.webhooks[0].url = rx.url();
    h.running().reloader.reload_with(config).await.unwrap();
    let bad = h.send(Method::POST, &format!("{}/webhooks/app/replay?since=yesterday", h.admin), &[], "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let none =
        h.send(Method::POST, &format!("{}/webhooks/nope/replay?since=2026-01-01T00:00:00Z", h.admin), &[], "").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.text);
    let get =
        h.send(Method::GET, &format!("{}/webhooks/app/replay?since=2026-01-01T00:00:00Z", h.admin), &[], "").await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED, "{}", get.text);
    // Events taken after `since` only: a time in the future replays nothing.
    let later =
        h.send(Method::POST, &format!("{}/webhooks/app/replay?since=2999-01-01T00:00:00Z", h.admin), &[], "").await;
    assert_eq!(later.json()["replayed"], 0, "{}", later.text);
    let r = h.send(Method::POST, &format!("{}/webhooks/app/replay?since=2026-01-01T00:00:00Z", h.admin), &[], "").await;
    assert_eq!(r.json(), json!({"endpoint": "app", "replayed": 1}));
    rx.until("the replayed event delivered", |s| !delivered(s, "154").is_empty()).await;
    let d = delivered(&rx.seen, "154")[0];
    assert_eq!((d["verified"].as_bool(), d["seq"].as_u64()), (Some(true), Some(1)));
    assert_eq!(d["id"], failed["id"], "the same webhook-id as the attempt that failed");
    eventually("the endpoint is ok again", || async { webhooks_view(&h).await["webhooks"][0]["state"] == "ok" }).await;
    h.stop().await;
}

#[tokio::test]
async fn private_addresses_are_refused_unless_the_endpoint_allows_them() {
    let h = Harness::start().await;
    let config = h.config.clone();
    let (path, whsec) = secret(&h.dir, "ssrf");
    let mut rx = Receiver::start(&h, &whsec, "ok", &[]).await;
    // A literal private address is refused by the config check.
    let mut literal = config.clone();
    let mut e = endpoint("app", &format!("https://127.0.0.1:{}/", rx.port), &path, &h.dir.join("ca.pem"));
    e.allow_private = false;
    literal.webhooks = vec![e.clone()];
    let err = literal.validate().unwrap_err().to_string();
    assert!(err.contains("allow_private"), "{err}");
    let mut plain = e.clone();
    plain.url = "http://10.0.0.8/hook".into();
    literal.webhooks = vec![plain];
    assert!(literal.validate().unwrap_err().to_string().contains("loopback"), "plain http only to loopback");
    // A name that resolves to one is refused at connection time, before any byte is sent.
    let mut named = config.clone();
    e.url = rx.url();
    named.webhooks = vec![e];
    h.running().reloader.reload_with(named).await.unwrap();
    h.sign_in("153").await;
    h.sim.push_event("153", "AgentEvent_Custom", json!({}));
    eventually("an attempt is refused", || async {
        metric(&h.metrics().await, "ccgate_webhook_attempts_total", "outcome=\"forbidden_address\"") >= 1.0
    })
    .await;
    rx.drain();
    assert!(rx.seen.is_empty(), "the receiver heard nothing: {:?}", rx.seen);
    let view = webhooks_view(&h).await;
    assert!(view["webhooks"][0]["last_failure"]["why"].as_str().unwrap().contains("allow_private"), "{view}");
    h.stop().await;
}

/// Three replicas on a real redis-server: the one that polls the agents (and so queued and
/// claimed their events) is killed with SIGKILL while every delivery is failing and being
/// retried; once the receiver takes them, every event arrives, in order per agent, with at
/// most one duplicate per agent (the attempt the dead replica had in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_deliveries_are_resumed_by_the_others_and_none_is_lost() {
    use ccgate::config::{Secret, StoreBackend};
    let redis = common::redis::RedisServer::start().await;
    let dir = std::env::temp_dir().join(format!("ccgate-wh-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (path, whsec) = secret(&dir, "crm");
    let failing = dir.join("failing");
    std::fs::write(&failing, b"").unwrap();
    let mut rx = Receiver::spawn(&whsec, "fail-while", &["--gone-file", failing.to_str().unwrap()]).await;
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let redis_url = redis.url();
    let mut sim = common::test_sim_config();
    sim.event_wait_ms = 300;
    let h = Harness::with(common::Options {
        sim,
        config: Box::new(move |c| {
            c.store.backend = StoreBackend::Redis;
            c.store.url = Some(Secret::new(redis_url));
            c.store.lease_ttl_ms = 900;
            let mut e = WebhookConfig {
                name: "crm".into(),
                url,
                secret_file: Some(path),
                events: vec!["AgentEvent_Custom".into()],
                timeout_ms: 2_000,
                retry_schedule_ms: vec![200; 20],
                allow_private: true,
                ..WebhookConfig::default()
            };
            e.max_in_flight = 4;
            c.webhooks = vec![e];
        }),
        ..common::Options::default()
    })
    .await;
    let doomed = common::process::Process::start(&h.config, &h.dir);
    let other = common::process::Process::start(&h.config, &h.dir);
    let agents = ["153", "154", "155"];
    for a in agents {
        let r = h.call_at(&doomed.base, Method::POST, "/v1/session", Some(&h.token(a)), "").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    for n in 0..5 {
        for a in agents {
            h.sim.push_event(a, "AgentEvent_Custom", json!({"n": n}));
        }
    }
    // Every agent's first event has failed a few times: deliveries are being retried.
    rx.until("each agent's first event failed twice", |seen| {
        agents.iter().all(|a| seen.iter().filter(|v| v["agent"] == *a && v["status"] == 500).count() >= 2)
    })
    .await;
    doomed.signal("-KILL");
    std::fs::remove_file(&failing).unwrap();
    rx.until("every event delivered", |seen| {
        agents.iter().all(|a| {
            let ids: std::collections::BTreeSet<&str> =
                delivered(seen, a).iter().filter_map(|v| v["id"].as_str()).collect();
            ids.len() == 5
        })
    })
    .await;
    for a in agents {
        let ok = delivered(&rx.seen, a);
        assert!(ok.iter().all(|v| v["verified"] == true));
        // First deliveries in seq order; a repeat only of an event already delivered, under
        // its own webhook-id, at most one per agent.
        let mut firsts = Vec::new();
        let mut repeats = 0;
        for v in &ok {
            let seq = v["seq"].as_u64().unwrap();
            if firsts.contains(&seq) {
                repeats += 1;
                let first = ok.iter().find(|w| w["seq"] == seq).unwrap();
                assert_eq!(first["id"], v["id"], "a repeat carries the same webhook-id");
            } else {
                firsts.push(seq);
            }
        }
        let n: Vec<u64> = ok.iter().map(|v| v["event"]["content"]["n"].as_u64().unwrap()).collect();
        assert_eq!(firsts.len(), 5, "{a}: {n:?}");
        assert!(firsts.windows(2).all(|w| w[1] == w[0] + 1), "{a}: in order: {firsts:?}");
        assert!(repeats <= 1, "{a}: {repeats} repeats: {n:?}");
    }
    let text = h.metrics().await;
    assert!(metric(&text, "ccgate_webhook_attempts_total", "outcome=\"server_error\"") >= 0.0);
    drop(other);
    h.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tenants` scopes an endpoint to the agents whose session was signed in with a token of
/// those tenants (the tenant claim); `gateways` and `events` narrow it the same way.
#[tokio::test]
async fn an_endpoint_scoped_to_a_tenant_gets_only_its_agents_events() {
    let h = Harness::start().await;
    let (path, whsec) = secret(&h.dir, "scope");
    let mut all = Receiver::start(&h, &whsec, "ok", &[]).await;
    let mut globex = Receiver::start(&h, &whsec, "ok", &[]).await;
    let ca = h.dir.join("ca.pem");
    let mut config = h.config.clone();
    let mut scoped = endpoint("globex", &globex.url(), &path, &ca);
    scoped.tenants = vec!["globex".into()];
    let mut wrong_gateway = endpoint("elsewhere", &globex.url(), &path, &ca);
    wrong_gateway.gateways = vec!["default".into()];
    wrong_gateway.events = vec!["AgentEvent_Other".into()];
    config.webhooks = vec![endpoint("all", &all.url(), &path, &ca), scoped, wrong_gateway];
    h.running().reloader.reload_with(config).await.unwrap();
    let token = |agent: &str, tenant: &str| {
        let now = ccgate::clock::unix_secs();
        let claims = json!({"iss": common::ISSUER, "aud": common::AUDIENCE, "agent_id": agent, "tenant": tenant, "exp": now + 60});
        h.es.sign(&claims).unwrap()
    };
    for (agent, tenant) in [("153", "acme"), ("154", "globex")] {
        let r = h.call_with_token(Method::POST, "/v1/session", Some(&token(agent, tenant)), "").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    for agent in ["153", "154"] {
        h.sim.push_event(agent, "AgentEvent_Custom", json!({"agent": agent}));
    }
    let custom = |seen: &[Value], agent: &str| {
        seen.iter().filter(|v| v["type"] == "AgentEvent_Custom" && v["agent"] == agent).count()
    };
    all.until("both agents' events at the unscoped endpoint", |s| custom(s, "153") == 1 && custom(s, "154") == 1).await;
    globex.until("globex's agent's event", |s| custom(s, "154") == 1).await;
    // Every endpoint that wanted an event had it queued in the same step as `all`: nothing of
    // 153's is waiting, and the globex receiver heard only 154.
    // (The receivers report a delivery before ccgate has its answer: wait for those.)
    eventually("nothing waits", || async {
        webhooks_view(&h).await["webhooks"].as_array().unwrap().iter().all(|w| w["pending"] == 0)
    })
    .await;
    globex.drain();
    assert!(globex.seen.iter().all(|v| v["agent"] == "154"), "{:?}", globex.seen);
    h.stop().await;
}

//! The dashboard and the alerts against a real Prometheus server (Debian's `prometheus`, the
//! package `promtool` comes from) scraping a running demo: every panel's query, and every
//! alert's expression without its threshold, returns data. A query naming a metric ccgate
//! does not export, a label it does not set, or a series that only appears later would
//! return nothing here.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::common;

/// Alerts whose expression needs what the demo does not have, and why.
const NOT_IN_THE_DEMO: &[(&str, &str)] = &[
    ("CcgateJwksStale", "the demo's keys are a file; the metric exists for remote key sets"),
    ("CcgateWebhookFailing", "the demo has no webhook endpoint; tests/it/webhooks.rs reads these series"),
];

struct Prometheus {
    child: std::process::Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_prometheus(target: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("ccgate-prometheus-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/alerts.yml"), dir.join("alerts.yml")).unwrap();
    // As deploy/prometheus.yml, scraping every second so rates have samples within seconds.
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
         scrape_configs:\n  - job_name: ccgate\n    static_configs:\n      - targets: [\"{target}\"]\n        \
         labels:\n          service: ccgate\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = common::closed_port().await;
    let child = common::tools::command("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus did not start");
    Prometheus { child, url: format!("http://127.0.0.1:{port}"), dir }
}

/// A plain-HTTP GET: status and body as JSON.
async fn get(url: &str) -> (StatusCode, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let Ok(resp) = client.get(url.parse().unwrap()).await else {
        // Not listening yet (Prometheus starting).
        return (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    };
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn query(prom: &str, expr: &str) -> Vec<Value> {
    let (status, v) = get(&format!("{prom}/api/v1/query?query={}", urlencode(expr))).await;
    assert_eq!(status, StatusCode::OK, "{expr}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Each alert's name and expression, from the rules file (`expr:` on one line, or a `|`
/// block below it).
fn alert_exprs(yaml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name = None;
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if let Some(n) = t.strip_prefix("- alert: ") {
            name = Some(n.trim().to_owned());
        } else if let Some(e) = t.strip_prefix("expr:") {
            let indent = line.len() - t.len();
            let mut expr = e.trim().to_owned();
            if expr == "|" {
                expr.clear();
                while let Some(next) = lines.peek() {
                    let nt = next.trim_start();
                    if !nt.is_empty() && next.len() - nt.len() <= indent {
                        break;
                    }
                    expr.push_str(nt);
                    expr.push(' ');
                    lines.next();
                }
            }
            if let Some(n) = name.take() {
                out.push((n, expr.trim().to_owned()));
            }
        }
    }
    out
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An alert's expression without its threshold: the part before the last top-level
/// comparison (`up{...} == 0` → `up{...}`).
fn without_threshold(expr: &str) -> String {
    let (mut depth, mut cut) = (0i32, None);
    let bytes = expr.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            b'>' | b'<' if depth == 0 => cut = Some(i),
            b'=' if depth == 0 && bytes.get(i + 1) == Some(&b'=') => cut = Some(i),
            _ => {}
        }
    }
    cut.map_or(expr, |i| &expr[..i]).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_expression_returns_data_from_a_running_demo() {
    // The demo: traffic of every kind the panels show (sign-in, conference, stops up to the
    // agent's limit and past it, the app's own mistake, a refused token).
    let mut demo = common::demo::Demo::start().await;
    demo.drain();
    let (admin, token) = (demo.field("admin_url"), demo.field("token"));
    assert_eq!(demo.post("/v1/session", "", &token).await, StatusCode::CREATED);
    assert_eq!(demo.post("/v1/conference", r#"{"memberNum":3}"#, &token).await, StatusCode::CREATED);
    assert_eq!(demo.post("/v1/conference", r#"{"memberNum":3}"#, &token).await, StatusCode::CONFLICT);
    let mut limited = false;
    for _ in 0..10 {
        limited |= demo.post("/v1/conference/announcement/stop", "", &token).await == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "the agent's stop limit (burst 5) tripped");
    assert_eq!(demo.post("/v1/session", "", "not-a-token").await, StatusCode::UNAUTHORIZED);

    let prom = start_prometheus(admin.trim_start_matches("http://")).await;
    // Scraped several times (rates need two samples in their window).
    let scraped =
        format!("{}/api/v1/query?query={}", prom.url, urlencode("count_over_time(up{service=\"ccgate\"}[1m]) >= 4"));
    common::eventually_within(Duration::from_secs(60), "prometheus has scraped the demo several times", || async {
        let (status, v) = get(&scraped).await;
        status == StatusCode::OK && v["data"]["result"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;

    let mut empty = Vec::new();
    let dashboard: Value = serde_json::from_str(include_str!("../../deploy/grafana/ccgate-dashboard.json"))
        .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*").replace("$gateway", ".*");
            if query(&prom.url, &expr).await.is_empty() {
                empty.push(format!("panel {:?}: {expr}", panel["title"].as_str().unwrap_or_default()));
            }
        }
    }
    let alerts = alert_exprs(include_str!("../../deploy/alerts.yml"));
    assert!(alerts.len() >= 10, "every alert read: {alerts:?}");
    for (name, expr) in alerts {
        if NOT_IN_THE_DEMO.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let expr = without_threshold(&expr);
        if query(&prom.url, &expr).await.is_empty() {
            empty.push(format!("alert {name}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "queries that return nothing against the demo:\n{}", empty.join("\n"));
    drop(prom);
    assert!(demo.stop().await.success());
}

#[test]
fn thresholds_are_cut_where_the_comparison_is() {
    assert_eq!(without_threshold("up{service=\"ccgate\"} == 0"), "up{service=\"ccgate\"}");
    assert_eq!(without_threshold("time() - x > 3600"), "time() - x");
    assert_eq!(
        without_threshold("histogram_quantile(0.99, sum by (le) (rate(a{m!=\"b\"}[5m]))) > 1"),
        "histogram_quantile(0.99, sum by (le) (rate(a{m!=\"b\"}[5m])))"
    );
}

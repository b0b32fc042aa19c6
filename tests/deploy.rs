//! The operator files in deploy/ are valid: Prometheus config and alert rules pass promtool,
//! the alert unit tests pass, and the Grafana dashboard is JSON that queries only metrics
//! ccgate exports.

#[path = "common/tools.rs"]
mod tools;

fn promtool(args: &[&str]) {
    let out = tools::command("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
        .output()
        .expect("promtool did not run");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/ccgate-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exported = ccgate::metrics::Metrics::new().names();
    let mut used = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(base) = word.strip_prefix("ccgate_") {
                    let base = base.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum");
                    assert!(
                        exported.contains(&format!("ccgate_{base}")),
                        "{} uses unknown metric ccgate_{base}",
                        panel["title"]
                    );
                    used += 1;
                }
            }
        }
    }
    assert!(used > 15);
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/alerts.yml")).unwrap();
    let exported = ccgate::metrics::Metrics::new().names();
    let mut used = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(base) = word.strip_prefix("ccgate_") {
            let base = base.trim_end_matches("_bucket");
            if base.is_empty() {
                continue;
            }
            assert!(exported.contains(&format!("ccgate_{base}")), "alerts.yml uses unknown metric ccgate_{base}");
            used += 1;
        }
    }
    assert!(used >= 6);
}

#[test]
fn every_exported_metric_is_documented_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for name in ccgate::metrics::Metrics::new().names() {
        assert!(readme.contains(&format!("`{name}`")), "README's metrics table lacks {name}");
    }
}

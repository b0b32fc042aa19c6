//! The operator files are valid: Prometheus config and alert rules pass promtool, the alert
//! unit tests pass, every alert has a runbook section, the Grafana dashboard queries only
//! metrics ccgate exports, the Dockerfile passes hadolint, the Kubernetes manifests validate
//! against the schemas (offline) and hold a config ccgate accepts, the systemd unit scores
//! "OK" in `systemd-analyze security`, and LICENSE is the license Cargo.toml names.

use crate::common::tools;

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
    // The static (systemd) config passes any promtool, Debian's included.
    promtool(&["check", "config", "prometheus.yml"]);
    let out = tools::command("promtool")
        .args(["check", "config", "prometheus-kubernetes.yml"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
        .output()
        .expect("promtool did not run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && text.contains("field kubernetes_sd_configs not found") {
        // Debian builds Prometheus without Kubernetes discovery: check what such a promtool
        // can, that the pod-discovery job is the file's only difference from a valid config.
        eprintln!("this promtool has no Kubernetes discovery; checking prometheus-kubernetes.yml's other parts");
        let full = std::fs::read_to_string(repo("deploy/prometheus-kubernetes.yml")).unwrap();
        let (head, pods) = full.split_once("  # ccgate as a Kubernetes sidecar").expect("the pod-discovery job");
        assert!(pods.contains("job_name: ccgate-pods") && pods.contains("prometheus_io_scrape"));
        let dir = std::env::temp_dir().join(format!("ccgate-promtool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!("{head}  []\n").replace("scrape_configs:\n  []", "scrape_configs: []"),
        )
        .unwrap();
        std::fs::copy(repo("deploy/alerts.yml"), dir.join("alerts.yml")).unwrap();
        run_ok(tools::command("promtool").args(["check", "config", "prometheus.yml"]).current_dir(&dir), "promtool");
        std::fs::remove_dir_all(dir).unwrap();
    } else {
        assert!(out.status.success(), "promtool check config failed:\n{text}");
    }
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/ccgate-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exported = ccgate::metrics::Metrics::default().names();
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
    let exported = ccgate::metrics::Metrics::default().names();
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
    for name in ccgate::metrics::Metrics::default().names() {
        assert!(readme.contains(&format!("`{name}`")), "README's metrics table lacks {name}");
    }
}

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} did not run: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn dockerfile_passes_hadolint() {
    // Every rule at its default severity; a warning fails too (`-t warning`).
    run_ok(tools::command("hadolint").args(["-t", "warning"]).arg(repo("Dockerfile")), "hadolint Dockerfile");
}

/// The Kubernetes release the example is written for: native sidecars (`restartPolicy:
/// Always` on an init container) are on by default from 1.29.
const KUBERNETES_VERSION: &str = "1.30.0";

#[test]
fn kubernetes_manifests_validate_against_the_schemas_offline() {
    let dir = repo("deploy/kubernetes");
    let mut manifests: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 5, "{manifests:?}");
    // --strict: a misspelled or misplaced field is an error, not ignored.
    let text = run_ok(
        tools::command("kubernetes-validate").args(["--strict", "-k", KUBERNETES_VERSION]).args(&manifests),
        "kubernetes-validate",
    );
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
    for must in [
        "restartPolicy: Always",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "type: RuntimeDefault",
        "path: /livez",
        "path: /readyz",
        "defaultMode: 0440",
    ] {
        assert!(deployment.contains(must), "deployment.yaml lacks {must}");
    }
}

/// The sidecar's ConfigMap is a config ccgate accepts (only the files it names are missing).
#[test]
fn kubernetes_configmap_holds_a_valid_config() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/configmap.yaml")).unwrap();
    let body: String = text
        .split_once("ccgate.toml: |\n")
        .expect("ccgate.toml key")
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    // The Deployment sets the store URL from the Secret.
    let env = [("CCGATE__STORE__URL".to_owned(), "redis://:secret@redis:6379/0".to_owned())];
    let config = ccgate::config::Config::from_toml_with_env(&body, env)
        .unwrap_or_else(|e| panic!("configmap's ccgate.toml: {e}"));
    assert!(!config.admin.listen.ip().is_loopback(), "a pod's probes and Prometheus need the pod's address");
    assert!(config.server.listen.ip().is_loopback(), "the app reaches its sidecar on loopback");
}

#[test]
fn every_alert_has_a_runbook_section() {
    let alerts = std::fs::read_to_string(repo("deploy/alerts.yml")).unwrap();
    let runbook = std::fs::read_to_string(repo("docs/runbook.md")).unwrap();
    let anchors: Vec<String> =
        runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.trim().to_lowercase()).collect();
    let mut n = 0;
    for name in alerts.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let url = format!("runbook#{}", name.to_lowercase());
        assert!(alerts.contains(&url), "{name} has no runbook_url");
        assert!(anchors.contains(&name.to_lowercase()), "docs/runbook.md has no section {name}");
        n += 1;
    }
    assert!(n >= 8);
}

/// Where `systemd-analyze` exists (systemd 250+ for `--offline`), the unit scores "OK".
#[test]
fn systemd_unit_is_hardened_to_ok_where_systemd_analyze_exists() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(repo("deploy/systemd/ccgate.service"))
        .output()
    else {
        eprintln!("systemd-analyze not found; skipped");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(level) = text.lines().find_map(|l| l.split("Overall exposure level for ccgate.service: ").nth(1)) else {
        // systemd older than 250 has no --offline.
        eprintln!(
            "systemd-analyze cannot check a unit file offline; skipped:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 2.0, "exposure {level}; see `systemd-analyze security --offline=true` for what to add");
    assert!(out.status.success(), "{text}");
}

/// The unit's user is created by the sysusers.d file shipped beside it, and `systemctl reload`
/// runs `ccgate reload` (which fails when the new config is refused), not a bare SIGHUP.
#[test]
fn the_units_user_is_created_and_reload_reports_refusal() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/ccgate.service")).unwrap();
    let setting = |k: &str| unit.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::to_owned);
    assert_eq!(setting("ExecReload").as_deref(), Some("/usr/local/bin/ccgate reload --config /etc/ccgate/ccgate.toml"));
    let user = setting("User").unwrap();
    assert_eq!(setting("Group").as_deref(), Some(user.as_str()));
    let root = std::env::temp_dir().join(format!("ccgate-sysusers-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let Ok(out) = std::process::Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(repo("deploy/systemd/ccgate.sysusers"))
        .output()
    else {
        eprintln!("systemd-sysusers not found; skipped");
        return;
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with(&format!("{user}:")) && l.ends_with(":/usr/sbin/nologin")),
        "{passwd}"
    );
    assert!(group.lines().any(|l| l.starts_with(&format!("{user}:"))), "{group}");
}

#[test]
fn license_file_matches_cargo_toml() {
    let cargo = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    assert!(cargo.contains("license = \"Apache-2.0\""));
    let license = std::fs::read_to_string(repo("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
}

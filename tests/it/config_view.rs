//! The running configuration (issue 40, point 4): `GET /config` shows the effective config of a
//! running `ccgate serve` with every secret the config can hold masked (set in its file and in
//! its environment), the environment's overrides in force, a hash that moves with a secret and
//! the last reload's outcome; a refused reload turns the status page's banner on and makes
//! `ccgate reload` fail with the reason; a good one prints old → new; `GET /limits` shows
//! each limit's fullest buckets after a few requests.

use crate::common;

use ccgate::config::{Config, LimitConfig, Scope, UnknownChair};
use common::process::Process;
use common::{eventually, Harness, Options};
use http::{Method, StatusCode};
use serde_json::Value;

fn write_config(p: &Process, config: &Config) {
    let mut config = config.clone();
    config.log.format = ccgate::config::LogFormat::Json;
    std::fs::write(&p.config_path, toml::to_string(&config).unwrap()).unwrap();
}

/// `ccgate reload` against `p`: (succeeded, stdout, stderr).
async fn ccgate_reload(p: &Process) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgate"))
        .args(["reload", "--admin", p.admin.trim_start_matches("http://")])
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

async fn get(h: &Harness, admin: &str, path: &str) -> common::Reply {
    let r = h.send(Method::GET, &format!("{admin}{path}"), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    r
}

/// A remote key set's URL with a password and a token in it (on a port nobody listens on:
/// its keys never come, which only makes that provider's tokens wait).
fn secret_url(port: u16, password: &str, token: &str) -> String {
    format!("https://jwks-user:{password}@127.0.0.1:{port}/jwks?token={token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_masks_every_secret_the_config_can_hold_and_shows_the_effective_values() {
    let h = Harness::start().await;
    let closed = common::closed_port().await;
    // In the file: a provider's key-set URL and the OTLP endpoint, each with a password and a
    // token. The store's URLs are `Secret`s, which a written config would carry masked: they
    // come from the environment, as a Kubernetes Secret would set them, and so does an OTLP
    // endpoint overriding the file's.
    let mut config = h.config.clone();
    config.auth.jwks_startup_wait_ms = 100;
    config.auth.providers = vec![serde_json::from_value(serde_json::json!({
        "issuer": "https://other-idp.example",
        "audiences": ["ccgate"],
        "jwks_url": secret_url(closed, "file-jwks-pw", "file-jwks-tok"),
    }))
    .unwrap()];
    config.log.otlp_endpoint = Some(format!("http://otlp:file-otlp-pw@127.0.0.1:{closed}/v1/traces?key=file-otlp-key"));
    let env_otlp = format!("http://otlp:env-otlp-pw@127.0.0.1:{closed}/v1/env-traces?key=env-otlp-key");
    let env = [
        ("CCGATE__STORE__URL", "redis://redis-user:env-redis-pw@redis.internal:6379/0?token=env-redis-tok"),
        ("CCGATE__STORE__SENTINEL_URL", "redis://:env-sentinel-pw@/0"),
        ("CCGATE__LOG__OTLP_ENDPOINT", env_otlp.as_str()),
        ("CCGATE__AUTH__LEEWAY_SECS", "17"),
    ];
    let p = Process::start_wrapped(&config, &h.dir, &[], &env);
    let sentinels = [
        "file-jwks-pw",
        "file-jwks-tok",
        "file-otlp-pw",
        "file-otlp-key",
        "env-otlp-pw",
        "env-otlp-key",
        "env-redis-pw",
        "env-redis-tok",
        "env-sentinel-pw",
    ];

    let doc = get(&h, &p.admin, "/config").await;
    for s in sentinels {
        assert!(!doc.text.contains(s), "{s} on /config: {}", doc.text);
    }
    let doc = doc.json();
    let c = &doc["config"];
    assert_eq!(c["store"]["url"], "redis://***@redis.internal:6379/0?***", "{doc}");
    assert_eq!(c["store"]["sentinel_url"], "redis://***@/0");
    assert_eq!(c["log"]["otlp_endpoint"], format!("http://***@127.0.0.1:{closed}/v1/env-traces?***"), "the env's");
    assert_eq!(c["auth"]["providers"][0]["jwks_url"], format!("https://***@127.0.0.1:{closed}/jwks?***"));
    assert_eq!(c["auth"]["leeway_secs"], 17, "the environment's override is in force");
    assert_eq!(c["gateway"]["name"], "default", "the name it runs under");
    assert_eq!(c["credentials"]["file"], h.dir.join("creds.toml").display().to_string(), "a path is not a secret");
    let masked: Vec<&str> = doc["masked"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for key in ["auth.providers", "log.otlp_endpoint", "store.sentinel_url", "store.url"] {
        assert!(masked.contains(&key), "{key} listed as masked: {masked:?}");
    }
    assert_eq!(doc["source"], p.config_path.display().to_string());
    assert!(doc["loaded_at"].as_str().unwrap().ends_with('Z'), "{doc}");
    assert!(doc["last_reload"].is_null(), "none yet");
    let (hash, masked_hash) =
        (doc["hash"].as_str().unwrap().to_owned(), doc["masked_hash"].as_str().unwrap().to_owned());
    assert!(hash.starts_with("sha256:") && hash.len() == 71 && hash != masked_hash, "{hash} {masked_hash}");

    // Nowhere else either: the page, the metrics, the log.
    let page = get(&h, &p.admin, "/").await.text;
    assert!(page.contains(r#"<table id="config">"#) && page.contains(&hash), "{page}");
    let metrics = get(&h, &p.admin, "/metrics").await.text;
    for s in sentinels {
        assert!(!page.contains(s) && !metrics.contains(s), "{s} on the page or in /metrics");
        assert!(!p.all_logs().contains(s), "{s} in the log");
    }

    // Only a secret changes (the key set's password): the hash moves, the masked hash does
    // not, and the reload says the key changed without either value.
    config.auth.providers[0].jwks_url = Some(secret_url(closed, "file-jwks-pw-2", "file-jwks-tok"));
    write_config(&p, &config);
    let (ok, out, err) = ccgate_reload(&p).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied:\n  auth.providers: ") && out.contains("(a secret: values masked)"), "{out}");
    let doc = get(&h, &p.admin, "/config").await;
    assert!(!doc.text.contains("file-jwks-pw") && !out.contains("file-jwks-pw"), "{}{out}", doc.text);
    let doc = doc.json();
    assert_ne!(doc["hash"], hash.as_str(), "a secret changed");
    assert_eq!(doc["masked_hash"], masked_hash.as_str(), "nothing shown changed");
    let last = &doc["last_reload"];
    assert_eq!((last["ok"].as_bool(), last["trigger"].as_str()), (Some(true), Some("admin")), "{last}");
    assert_eq!(last["changed"][0]["key"], "auth.providers", "{last}");
    assert_eq!(last["changed"][0]["secret"], true, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_shows_on_config_and_the_page_and_a_good_one_prints_old_and_new() {
    let h = Harness::start().await;
    let p = Process::start(&h.config, &h.dir);
    let page = get(&h, &p.admin, "/").await.text;
    assert!(!page.contains(r#"id="attention""#) && page.contains("none since start"), "{page}");

    // A config that does not parse: refused, with the reason everywhere an operator looks.
    std::fs::write(&p.config_path, "[auth\nissuer = ").unwrap();
    let (ok, out, err) = ccgate_reload(&p).await;
    assert!(!ok, "ccgate reload fails: {out}");
    assert!(err.contains("reload refused: ") && err.contains("the running config stays in force"), "{err}");
    let doc = get(&h, &p.admin, "/config").await.json();
    let last = &doc["last_reload"];
    assert_eq!((last["ok"].as_bool(), last["trigger"].as_str()), (Some(false), Some("admin")), "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(!error.is_empty() && err.contains(error), "the same reason: {error} / {err}");
    let page = get(&h, &p.admin, "/").await.text;
    assert!(page.contains(r#"<p id="attention" class="bad">"#), "the page is not all green: {page}");
    assert!(page.contains(r#"<span class="bad">refused</span>"#), "{page}");
    let metrics = get(&h, &p.admin, "/metrics").await.text;
    assert!(metrics.contains("ccgate_config_last_reload_successful 0"), "{metrics}");

    // Fixed, and reloaded by SIGHUP: applied, the banner gone.
    let mut next = h.config.clone();
    next.policy.on_unknown_chair = UnknownChair::Deny;
    write_config(&p, &next);
    p.signal("-HUP");
    eventually("the SIGHUP reload shows on /config", || async {
        let doc = h.send(Method::GET, &format!("{}/config", p.admin), &[], "").await.json();
        doc["last_reload"]["trigger"] == "sighup" && doc["last_reload"]["ok"] == true
    })
    .await;
    let doc = get(&h, &p.admin, "/config").await.json();
    assert_eq!(doc["config"]["policy"]["on_unknown_chair"], "deny");
    let page = get(&h, &p.admin, "/").await.text;
    assert!(!page.contains(r#"id="attention""#), "{page}");
    assert!(page.contains("<li>policy.on_unknown_chair: &quot;forward&quot; -&gt; &quot;deny&quot;</li>"), "{page}");

    // `ccgate reload` prints each key's old and new value, applied or waiting for a restart.
    next.auth.leeway_secs = 31;
    next.sessions.poll_pause_ms += 1;
    write_config(&p, &next);
    let (ok, out, err) = ccgate_reload(&p).await;
    assert!(ok, "{err}");
    let pause = h.config.sessions.poll_pause_ms;
    assert_eq!(
        out,
        format!(
            "reloaded\napplied:\n  auth.leeway_secs: 30 -> 31\nwaits for a restart (the old value stays in force):\n  sessions.poll_pause_ms: {pause} -> {}\n",
            pause + 1
        )
    );
    let metrics = get(&h, &p.admin, "/metrics").await.text;
    assert!(metrics.contains("ccgate_config_last_reload_successful 1"), "{metrics}");
    assert!(!metrics.contains("ccgate_config_last_reload_success_timestamp_seconds 0\n"), "{metrics}");
}

#[tokio::test]
async fn limits_show_each_limit_and_its_fullest_buckets() {
    let h = Harness::with(Options {
        config: Box::new(|c| {
            c.rate_limits.limit.push(LimitConfig {
                method: "getSession".into(),
                scope: Scope::Agent,
                // One token back per 100 s: none comes back during the test.
                rate: 0.01,
                burst: 10,
                shadow: false,
            })
        }),
        ..Options::default()
    })
    .await;
    h.sign_in("153").await;
    h.sign_in("154").await;
    for (agent, n) in [("153", 3), ("154", 1)] {
        for _ in 0..n {
            assert_eq!(h.call(Method::GET, "/v1/session", Some(agent), "").await.status, StatusCode::OK);
        }
    }
    let doc = get(&h, &h.admin, "/limits").await.json();
    let limits = doc["limits"].as_array().unwrap();
    let names: Vec<&str> = limits.iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(
        names,
        ["stopVoiceToConf.agent", "stopVoiceToConf.tenant", "stopVoiceToConf.global", "getSession.agent"]
    );
    let l = &limits[3];
    assert_eq!(
        (l["scope"].as_str(), l["quota"].as_u64(), l["window_secs"].as_u64()),
        (Some("agent"), Some(10), Some(1000))
    );
    assert_eq!((l["buckets"].as_u64(), l["max_buckets_per_gateway"].as_u64()), (Some(2), Some(100_000)), "{l}");
    assert_eq!(l["decided_in"], "local");
    let fullest: Vec<(&str, &str, u64)> = l["fullest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["gateway"].as_str().unwrap(), b["key"].as_str().unwrap(), b["remaining"].as_u64().unwrap()))
        .collect();
    assert_eq!(fullest, [("default", "153", 7), ("default", "154", 9)], "{l}");
    assert_eq!(limits[0]["fullest"], serde_json::json!([]), "no stop yet: every bucket full");
    // Looking spent nothing: the next request has what the view said, less one.
    let r = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    let header = r.headers.get("ratelimit").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(header.contains("r=6"), "{header}");
    // The config shows the limits too; an instance built in memory has no file to name.
    let doc = get(&h, &h.admin, "/config").await.json();
    assert_eq!(doc["config"]["rate_limits"]["limit"][3]["method"], "getSession");
    assert!(doc["source"].is_null(), "{doc}");
    h.stop().await;
}

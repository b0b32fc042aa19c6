//! The binary: `check-config` names the bad key, and `demo --json` prints a line a script can
//! follow through the whole flow.

use crate::common;

use http::{Method, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_ccgate");

fn check_config(toml: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("ccgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ccgate.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("check-config").arg("--config").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    out
}

#[test]
fn check_config_names_the_bad_key() {
    let out = check_config("[gateway]\nurl = \"http://gw\"\n", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.url") || err.contains("server."), "{err}");

    let out = check_config("[gateway]\nconect_timeout_ms = 5\n", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("conect_timeout_ms"));

    let out = check_config("", &[("CCGATE__SESSIONS__POLL_TIMEOUT_MS", "\"soon\"")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("poll_timeout_ms"));
}

/// A config whose files all exist, except what `missing` names.
fn config_with_files(dir: &std::path::Path, missing: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let pki = ccgate::devkeys::dev_pki(&["localhost"]).unwrap();
    let es = ccgate::devkeys::DevSigner::es256("k").unwrap();
    let files = [
        ("ca.pem", pki.ca_pem.clone()),
        ("cert.pem", pki.server_cert_pem.clone()),
        ("key.pem", pki.server_key_pem.clone()),
        ("jwks.json", ccgate::devkeys::jwks(&[&es]).to_string()),
        ("creds.toml", "[agents.\"153\"]\npassword = \"pw\"\nphonenum = \"1\"\n".to_owned()),
    ];
    for (name, text) in files {
        if name != missing {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let d = dir.display();
    format!(
        "[server]\nlisten = \"0.0.0.0:8443\"\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{d}/key.pem\"\n\
         [gateway]\nca_file = \"{d}/ca.pem\"\n\
         [auth]\njwks_file = \"{d}/jwks.json\"\nissuer = \"https://idp\"\naudience = \"ccgate\"\n\
         [credentials]\nfile = \"{d}/creds.toml\"\n"
    )
}

#[test]
fn check_config_loads_every_file_serve_would() {
    let dir = std::env::temp_dir().join(format!("ccgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = check_config(&config_with_files(&dir, ""), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for missing in ["cert.pem", "key.pem", "ca.pem", "jwks.json", "creds.toml"] {
        let sub = dir.join(missing.replace('.', "-"));
        std::fs::create_dir_all(&sub).unwrap();
        let out = check_config(&config_with_files(&sub, missing), &[]);
        assert!(!out.status.success(), "{missing} is missing, yet check-config said OK");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(missing), "the error names {missing}: {err}");
    }
    // A variable that sets nothing is reported; a number given to a string setting stays a
    // string.
    let out = check_config(
        &config_with_files(&dir, ""),
        &[("CCGATE_GATEWAY_URL", "https://gw:8043"), ("CCGATE__AUTH__AUDIENCE", "12345")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: CCGATE_GATEWAY_URL sets nothing") && err.contains("CCGATE__GATEWAY__URL"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("audience = \"12345\""));
    // A collector URL's user info is masked in the printed config.
    let out = check_config(
        &config_with_files(&dir, ""),
        &[("CCGATE__LOG__OTLP_ENDPOINT", "http://spans:otlp-secret@127.0.0.1:4318/v1/traces")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("otlp_endpoint") && !printed.contains("otlp-secret"), "{printed}");
    // A JWKS URL's query (a token) is masked in the printed config and in the fetch's error.
    let remote = config_with_files(&dir, "").replace(
        &format!("jwks_file = \"{}/jwks.json\"", dir.display()),
        "jwks_url = \"https://jwks:url-secret@127.0.0.1:9/keys?token=query-secret\"\njwks_startup_wait_ms = 200",
    );
    let out = check_config(&remote, &[]);
    let (printed, said) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("jwks_url = \"https://***@127.0.0.1:9/keys?***\""), "{printed}{said}");
    assert!(said.contains("127.0.0.1:9"), "the fetch failed and said where: {said}");
    for secret in ["url-secret", "query-secret"] {
        assert!(!printed.contains(secret) && !said.contains(secret), "{secret}: {printed}{said}");
    }
    // A store URL that is not one.
    let out = check_config(
        &config_with_files(&dir, ""),
        &[("CCGATE__STORE__BACKEND", "redis"), ("CCGATE__STORE__URL", "http://redis:6379")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.url"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn demo_json_line_drives_the_whole_flow() {
    let mut demo = common::demo::Demo::start().await;
    let v = demo.json.clone();
    for k in ["proxy_url", "admin_url", "ca_file", "token", "agent_id"] {
        assert!(v[k].is_string(), "missing {k}: {v}");
    }
    let ca = std::path::PathBuf::from(v["ca_file"].as_str().unwrap());
    let tls = ccgate::tls::client_config(Some(&ca)).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let proxy = v["proxy_url"].as_str().unwrap();
    let auth = format!("Bearer {}", v["token"].as_str().unwrap());
    let steps = [
        (Method::POST, "/v1/session", "", StatusCode::CREATED),
        (Method::POST, "/v1/conference", r#"{"memberNum":3}"#, StatusCode::CREATED),
        (Method::POST, "/v1/conference/announcement/stop", "", StatusCode::OK),
    ];
    for (m, path, body, want) in steps {
        let req = http::Request::builder()
            .method(m)
            .uri(format!("{proxy}{path}"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), want, "{path}");
    }
    // The human instructions follow and name every step.
    let mut rest = String::new();
    while let Some(l) = demo.next_line().await {
        rest.push_str(&l);
        rest.push('\n');
        if l.contains("curl -s") && l.contains("/metrics") {
            break;
        }
    }
    for needle in ["--cacert", "/v1/session", "/v1/conference", "announcement/stop", "/metrics"] {
        assert!(rest.contains(needle), "instructions lack {needle}:\n{rest}");
    }
    // SIGTERM: the demo stops and removes its temporary directory (keys included).
    assert!(ca.exists());
    let status = demo.stop().await;
    assert!(status.success(), "{status}");
    assert!(!ca.parent().unwrap().exists(), "temporary directory removed");
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("ccgate {} (", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&want) && text.trim_end().ends_with(')'), "{text}");
    // Built from a git checkout (as here), the commit is known.
    let inside = text.trim_end().trim_end_matches(')').rsplit('(').next().unwrap();
    assert!(inside == "unknown" || (inside.len() >= 7 && inside.bytes().all(|b| b.is_ascii_hexdigit())), "{text}");
}

#[test]
fn rust_log_overrides_log_level_and_says_so_without_colours_into_a_pipe() {
    // `sim` starts its logging before reading its config; a missing config then ends it.
    let sim = |rust_log: &str| {
        let out = std::process::Command::new(BIN)
            .args(["sim", "--config", "/nonexistent/sim.toml"])
            .env("RUST_LOG", rust_log)
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = sim("info");
    assert!(err.contains("RUST_LOG is set and overrides log.level"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escapes in a pipe: {err:?}");
    assert!(sim("warn,ccgate=[").contains("RUST_LOG is not a valid filter"));
    assert!(!sim("").contains("RUST_LOG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_when_ready_and_1_with_the_reason_otherwise() {
    let h = common::Harness::start().await;
    let admin = h.admin.trim_start_matches("http://").to_owned();
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(BIN).arg("healthcheck").args(args).output().await.unwrap()
    };
    let ready = run(vec!["--admin".into(), admin.clone()]).await;
    assert!(ready.status.success(), "{}", String::from_utf8_lossy(&ready.stderr));
    let live = run(vec!["--admin".into(), admin.clone(), "--live".into()]).await;
    assert!(live.status.success());
    // Shutting down: /readyz turns 503 at once, and the probe says why.
    h.running().readiness.set_shutting_down();
    let draining = run(vec!["--admin".into(), admin.clone()]).await;
    assert_eq!(draining.status.code(), Some(1));
    let err = String::from_utf8_lossy(&draining.stderr);
    assert!(err.contains("not ready (HTTP 503)") && err.contains("shutting_down"), "{err}");
    // Nothing listening.
    let port = common::closed_port().await;
    let down = run(vec!["--admin".into(), format!("127.0.0.1:{port}")]).await;
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("is ccgate running?"));
    h.stop().await;
}

/// Stopping tells the truth: a second SIGTERM exits at once (status 4) while the shutdown
/// still retries a sign-out, and a shutdown that could not sign an agent out says so in its
/// status (3). Both documented in README, "CLI".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_exits_at_once_and_the_status_says_when_agents_stay_signed_in() {
    use ccgate::sim::Faults;
    use common::process::Process;
    let h = common::Harness::start().await;
    // The gateway refuses every sign-out: the shutdown retries until its grace runs out.
    h.sim.set_faults(Faults { http_status: Some(500), methods: vec!["logout".into()], ..Faults::default() });
    let mut config = h.config.clone();
    config.sessions.sign_out_on_shutdown = true;
    config.server.drain_delay_ms = 0;
    config.server.shutdown_grace_ms = 60_000;
    let mut p = Process::start(&config, &h.dir);
    let r = h.call_at(&p.base, Method::POST, "/v1/session", Some(&h.token("153")), "").await;
    assert!(r.status.is_success(), "{}", r.text);
    p.signal("-TERM");
    let retrying = "sign-out at shutdown failed; retrying";
    common::eventually("the first sign-out fails", || async { !p.logged(retrying).is_empty() }).await;
    let second = std::time::Instant::now();
    p.signal("-TERM");
    assert_eq!(p.exit_status().await.code(), Some(4));
    assert!(second.elapsed() < std::time::Duration::from_secs(10), "not the 60 s grace");
    assert!(h.sim.is_signed_in("153"), "left as it was");

    // A grace that runs out with the agent still signed in: status 3.
    config.server.shutdown_grace_ms = 1_000;
    let mut p = Process::start(&config, &h.dir);
    let r = h.call_at(&p.base, Method::POST, "/v1/session", Some(&h.token("154")), "").await;
    assert!(r.status.is_success(), "{}", r.text);
    p.signal("-TERM");
    assert_eq!(p.exit_status().await.code(), Some(3));
    assert!(h.sim.is_signed_in("154"));
    h.stop().await;
}

/// A typo'd override names the variable, not a line of a merged document; a missing default
/// config file says so and where it looked.
#[test]
fn config_errors_name_the_variable_and_the_missing_file() {
    let out = check_config("", &[("CCGATE__GATEWAY__URLL", "x")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("environment variable CCGATE__GATEWAY__URLL (config key `gateway.urll`): unknown field `urll`"),
        "{err}"
    );
    assert!(!err.contains("line "), "no line of a document the user never wrote: {err}");

    let dir = std::env::temp_dir().join(format!("ccgate-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let out =
        std::process::Command::new(BIN).arg("serve").current_dir(&dir).env_remove("CCGATE_CONFIG").output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("config file not found: ") && err.contains("config/ccgate.toml"), "{err}");
}

/// A port already taken fails the demo with the key and address, and the hint to pick free
/// ports; a failure that is not a taken port gets no such hint (`app::StartError`).
#[test]
fn a_demo_on_a_taken_port_names_it_and_hints_at_free_ports() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(BIN)
        .args(["demo", "--listen", &addr, "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("server.listen {addr}:")), "{err}");
    assert!(err.contains("hint: another ccgate demo may be running"), "{err}");
}

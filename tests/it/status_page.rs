//! The admin listener's status page in a real browser: headless Chromium (Debian's) loads it
//! from a running demo with a signed-in agent in a conference; the DOM it built shows the
//! agent and its conference state, and a screenshot is written for the test log. With two
//! gateways, one of them down, it shows a row for each and marks the one that is down.

use crate::common;

use http::StatusCode;

/// Chromium as a test runs it: headless, and without its sandbox (which needs privileges a
/// CI container running as root does not give it).
fn chromium(args: &[&str]) -> std::process::Output {
    let profile = std::env::temp_dir().join(format!("ccgate-chromium-{}", uuid::Uuid::new_v4().simple()));
    let out = common::tools::command("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium did not start");
    let _ = std::fs::remove_dir_all(profile);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_agent_and_its_conference_in_a_real_browser() {
    let mut demo = common::demo::Demo::start().await;
    demo.drain();
    let (admin, token) = (demo.field("admin_url"), demo.field("token"));
    assert_eq!(demo.post("/v1/session", "", &token).await, StatusCode::CREATED);
    assert_eq!(demo.post("/v1/conference", r#"{"memberNum":3}"#, &token).await, StatusCode::CREATED);
    let agent = demo.field("agent_id");
    let page = format!("{admin}/");
    let dom = tokio::task::spawn_blocking({
        let page = page.clone();
        move || chromium(&["--dump-dom", &page])
    })
    .await
    .unwrap();
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.status.success(), "chromium: {}", String::from_utf8_lossy(&dom.stderr));
    let row = dom_text
        .lines()
        .find(|l| l.contains(&format!(r#"data-agent="{agent}""#)))
        .unwrap_or_else(|| panic!("no row for agent {agent} in the DOM:\n{dom_text}"));
    assert!(row.contains(r#"<td class="conference">chair "#), "{row}");
    assert!(row.contains("<td>active</td>") && row.contains("<td>here</td>"), "{row}");
    assert!(dom_text.contains(r#"<span class="ok">ready</span>"#), "{dom_text}");
    assert!(dom_text.contains("<td>requestAgentConf</td>"), "request counts: {dom_text}");
    let admin_addr = admin.trim_start_matches("http://").trim_end_matches('/');
    assert!(dom_text.contains(&format!(r#"({admin_addr}) <span class="muted">"#)), "this replica: {dom_text}");
    assert!(dom_text.contains("this replica's agents only"), "the memory store's row: {dom_text}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::task::spawn_blocking({
        let arg = format!("--screenshot={}", shot.display());
        move || chromium(&[&arg, "--window-size=1280,800", &page])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("status page screenshot: {}", shot.display());
    assert!(demo.stop().await.success());
}

/// Issue 40: two gateways, one of them down (nothing ever listened at its address). Once
/// `/gatewayz` says so, the page in Chromium has a row for each: the down one marked red
/// (`class="down"`), with since when and the probe's error; the other not. (A gateway URL
/// with credentials in it is refused by the config: `config::tests::semantic_errors_name_the_key`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_gateways_the_page_marks_the_one_that_is_down_in_a_real_browser() {
    use ccgate::config::GatewayConfig;
    let port = common::closed_port().await;
    let h = common::Harness::with(common::Options {
        config: Box::new(move |c| {
            let up = GatewayConfig {
                name: "acme".into(),
                url: c.gateway.url.clone(),
                ca_file: c.gateway.ca_file.clone(),
                credentials_file: c.credentials.file.take(),
                tenants: vec!["t-acme".into()],
                ..GatewayConfig::default()
            };
            let down = GatewayConfig {
                name: "globex".into(),
                url: format!("https://127.0.0.1:{port}"),
                tenants: vec!["t-globex".into()],
                ..up.clone()
            };
            c.gateway = GatewayConfig::default();
            c.gateways = vec![up, down];
            c.auth.gateway_claim = "tenant".into();
        }),
        ..common::Options::default()
    })
    .await;
    let gatewayz = || async { h.send(http::Method::GET, &format!("{}/gatewayz", h.admin), &[], "").await };
    common::eventually("/gatewayz says acme is up and globex is not", || async {
        let v = gatewayz().await.json();
        v["gateways"] == serde_json::json!({"acme": "up", "globex": "connect_failed"})
    })
    .await;
    let r = gatewayz().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let detail = r.json()["gateway_detail"].clone();
    assert_eq!(detail[0]["name"], "acme", "{detail}");
    assert_eq!(detail[0]["last_error"], serde_json::Value::Null, "{detail}");
    assert_eq!(detail[1]["url"], format!("https://127.0.0.1:{port}"), "{detail}");
    let error = detail[1]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("Connection refused"), "the probe's error: {detail}");
    let since = detail[1]["since"].as_str().expect("since when").to_owned();
    assert!(since.len() == 20 && since.ends_with('Z') && since.as_bytes()[10] == b'T', "RFC 3339 UTC: {since}");

    let page = format!("{}/", h.admin);
    let dom = tokio::task::spawn_blocking(move || chromium(&["--dump-dom", &page])).await.unwrap();
    assert!(dom.status.success(), "chromium: {}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let row = |name: &str| {
        dom.lines()
            .find(|l| l.contains(&format!(r#"data-gateway="{name}""#)))
            .unwrap_or_else(|| panic!("no row for gateway {name} in the DOM:\n{dom}"))
            .to_owned()
    };
    let (acme, globex) = (row("acme"), row("globex"));
    assert!(globex.contains(r#"class="down""#), "the down gateway's row is red: {globex}");
    assert!(!acme.contains(r#"class="down""#) && acme.contains(r#"class="up""#), "{acme}");
    assert!(globex.contains(&format!(r#"<td class="since">{since}</td>"#)), "since when: {globex}");
    assert!(globex.contains(r#"<span class="bad">connect_failed</span>"#), "{globex}");
    assert!(globex.contains(&format!("<td>https://127.0.0.1:{port}</td>")) && globex.contains(error), "{globex}");
    assert!(acme.contains(r#"<span class="ok">up</span>"#) && acme.contains(r#"<td class="error">-</td>"#), "{acme}");
    assert!(dom.contains(r#"<span class="bad">1 of 2 up</span>"#), "the Health row: {dom}");
    // The red is the stylesheet's, for the marked row.
    assert!(dom.contains("tr.down td{background:"), "{dom}");
    h.stop().await;
}

/// Review of issue 40: `/readyz` and `/gatewayz` answer any peer and any `Host` (a probe's
/// must), so the detail behind the verdict (internal URLs, the probe's error, the store's
/// address, this replica's host and admin address) goes only to the operators' audience, as
/// the page's does: a web page reaching the admin listener by DNS rebinding reads the verdict
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_tell_a_foreign_site_the_verdict_and_not_the_layout() {
    let h = common::Harness::start().await;
    let foreign = [("host", "attacker.example")];
    for path in ["/readyz", "/gatewayz"] {
        let v = h.send(http::Method::GET, &format!("{}{path}", h.admin), &foreign, "").await.json();
        assert!(v["gateway"].is_string(), "{path}: the verdict is there: {v}");
        for detail in ["gateway_detail", "replica", "store_detail"] {
            assert!(v[detail].is_null(), "{path} to Host attacker.example shows {detail}: {v}");
        }
        let own = h.send(http::Method::GET, &format!("{}{path}", h.admin), &[], "").await.json();
        assert!(own["gateway_detail"][0]["url"].is_string(), "{path}: the operator sees it: {own}");
    }
    h.stop().await;
}

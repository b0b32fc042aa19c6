//! The admin listener's status page in a real browser: headless Chromium (Debian's) loads it
//! from a running demo with a signed-in agent in a conference; the DOM it built shows the
//! agent and its conference state, and a screenshot is written for the test log.

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

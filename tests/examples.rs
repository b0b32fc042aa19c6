//! The client examples work against the real thing: `examples/client.py` (sign in,
//! conference, stops past the rate limit with Retry-After, events resumed with
//! Last-Event-ID, sign out) and `examples/curl.sh`, each run against `ccgate demo`.

mod common;

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_ccgate");

/// A demo on free ports; its first line, and the process (SIGTERM it when done).
async fn demo() -> (String, tokio::process::Child) {
    let mut child = tokio::process::Command::new(BIN)
        .args(["demo", "--json", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(common::WAIT, lines.next_line()).await.expect("demo printed nothing").unwrap();
    // Keep reading its instructions so the pipe never fills.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (first.unwrap(), child)
}

async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(common::tools::command("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::timeout(common::WAIT, child.wait()).await.expect("demo did not exit on SIGTERM").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_runs_the_whole_flow_against_the_demo() {
    let (line, child) = demo().await;
    let out = tokio::process::Command::new(common::tools::require("python3"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/client.py"))
        .args(["--demo-json", &line])
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for step in [
        "signed in: 201",
        "'chairperson': True",
        "waiting 1 s as Retry-After says",
        "resumed after",
        "signed out: 204",
        "OK",
    ] {
        assert!(text.contains(step), "no {step:?} in:\n{text}");
    }
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_walk_through_runs_against_the_demo() {
    let (line, child) = demo().await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let out = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/curl.sh"))
        .env("URL", v["proxy_url"].as_str().unwrap())
        .env("CA", v["ca_file"].as_str().unwrap())
        .env("TOKEN", v["token"].as_str().unwrap())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "-> 201",
        "\"stopped\":true",
        "-> 429",
        "urn:ccgate:problem:rate-limited",
        "event: AgentConf_StopVoice",
        "-> 204",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    stop(child).await;
}

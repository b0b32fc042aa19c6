//! The client examples work against the real thing: `examples/client.py` (sign in,
//! conference, stops past the rate limit with Retry-After, events resumed with
//! Last-Event-ID, sign out) and `examples/curl.sh`, each run against `ccgate demo`.

use crate::common;

use common::demo::Demo;

async fn demo() -> Demo {
    let mut demo = Demo::start().await;
    demo.drain();
    demo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_runs_the_whole_flow_against_the_demo() {
    let demo = demo().await;
    let out = tokio::process::Command::new(common::tools::require("python3"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/client.py"))
        .args(["--demo-json", &demo.line])
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
    assert!(demo.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_walk_through_runs_against_the_demo() {
    let demo = demo().await;
    let out = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/curl.sh"))
        .env("URL", demo.field("proxy_url"))
        .env("CA", demo.field("ca_file"))
        .env("TOKEN", demo.field("token"))
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
    assert!(demo.stop().await.success());
}

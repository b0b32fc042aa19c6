//! `api/openapi.yaml` against the running product: `ccgate demo` (simulator and proxy on
//! loopback, a real token) probed by schemathesis with every check (status codes, content
//! types, headers and bodies conform to the description; no 5xx; schema-violating requests
//! refused, schema-valid ones accepted; requests without the token refused). The admin
//! listener serves the same description. The route set itself is checked against the router
//! in `edge::route`'s unit tests.

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_conforms_to_the_openapi_description() {
    let demo = common::demo::Demo::start().await;
    let field = |k: &str| demo.field(k);

    let served = http_get(&format!("{}/openapi.yaml", field("admin_url"))).await;
    let spec_path = concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml");
    assert_eq!(served, std::fs::read_to_string(spec_path).unwrap(), "the admin listener serves api/openapi.yaml");

    // /v1/events is an endless stream: its answers are checked by tests/it/sessions.rs.
    // A fixed seed keeps the suite repeatable; drop it to explore.
    let out = common::tools::command("schemathesis")
        .args(["run", spec_path, "--url", &field("proxy_url"), "--tls-verify", &field("ca_file")])
        .args(["-H", &format!("Authorization: Bearer {}", field("token"))])
        .args(["--checks", "all", "--exclude-path", "/v1/events", "--max-examples", "50", "--seed", "20261201"])
        .args(["--workers", "1", "--no-color"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("schemathesis did not run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("No issues found"), "{text}");
    eprintln!("{}", text.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
    assert!(demo.stop().await.success());
}

/// A plain-HTTP GET of the admin listener.
async fn http_get(url: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

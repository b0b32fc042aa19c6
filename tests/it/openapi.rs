//! `api/openapi.yaml` against the running product: `ccgate demo` (simulator and proxy on
//! loopback, a real token) probed by schemathesis with every check (status codes, content
//! types, headers and bodies conform to the description; no 5xx; schema-violating requests
//! refused, schema-valid ones accepted; requests without the token refused). The admin
//! listener serves the same description. The route set itself is checked against the router
//! in `edge::route`'s unit tests.
//!
//! And the description against the code: every example validates against its schema
//! (`openapi_examples.py`, JSON Schema 2020-12); each operation lists exactly the problem
//! types `edge::problems` says its route can answer with, each under its status and with the
//! title ccgate sends (tests/it/problems.rs drives them with real requests); the
//! `RateLimit-Policy` example is what the demo sends.

use std::collections::BTreeSet;

use ccgate::edge::problems::{problem_types, samples, unrouted_problem_types};
use ccgate::edge::render::spec;
use ccgate::edge::route::match_route;
use serde_json::Value;

use crate::common;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml");
const CHECKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/openapi_examples.py");
const PROBLEM_JSON: &str = "application/problem+json";

/// `python3` with jsonschema and PyYAML (`scripts/test` installs them).
fn python() -> std::process::Command {
    common::tools::python_with(&["jsonschema", "referencing", "yaml"])
}

/// The checker's verdict on the description at `path`: (success, its output).
fn check_examples(path: &str) -> (bool, String) {
    let out = python().args([CHECKER, "check", path]).output().expect("python3 did not run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The description as JSON (the YAML read by PyYAML, as schemathesis reads it).
fn spec_json() -> Value {
    let out = python().args([CHECKER, "json", SPEC]).output().expect("python3 did not run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the checker prints JSON")
}

/// Follows a `$ref` within the document.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("a reference outside the document: {r}"));
        v = doc.pointer(pointer).unwrap_or_else(|| panic!("{r} leads nowhere"));
    }
    v
}

/// The problem examples of a set of responses: (status, example name, example value).
fn problem_examples<'a>(doc: &'a Value, responses: &'a Value) -> Vec<(u16, &'a str, &'a Value)> {
    let mut out = Vec::new();
    for (code, response) in responses.as_object().expect("responses are a map") {
        let status = code.parse().unwrap_or_else(|_| panic!("a status code: {code}"));
        out.extend(examples_of(doc, response).into_iter().map(|(name, value)| (status, name, value)));
    }
    out
}

/// The `application/problem+json` examples of one response: (name, value).
fn examples_of<'a>(doc: &'a Value, response: &'a Value) -> Vec<(&'a str, &'a Value)> {
    let response = resolve(doc, response);
    let Some(media) = response.pointer(&format!("/content/{}", PROBLEM_JSON.replace('/', "~1"))) else {
        return Vec::new();
    };
    let examples = media["examples"].as_object().unwrap_or_else(|| panic!("problems without examples: {response}"));
    examples.iter().map(|(name, ex)| (name.as_str(), &resolve(doc, ex)["value"])).collect()
}

/// A problem example's slug, checked against what ccgate sends for it: the status it is listed
/// under, the type, and the title.
fn checked_slug<'a>(where_: &str, status: u16, name: &str, value: &'a Value) -> &'a str {
    let slug = value["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("urn:ccgate:problem:"))
        .unwrap_or_else(|| panic!("{where_} {name}: no ccgate problem type: {value}"));
    assert!(name == slug || name.starts_with(&format!("{slug}-")), "{where_}: example {name} is of type {slug}");
    let kinds: Vec<_> = samples().into_iter().filter(|f| spec(f).slug == slug).collect();
    assert!(!kinds.is_empty(), "{where_}: {slug} is no problem type ccgate has");
    let row = spec(&kinds[0]);
    assert_eq!(row.status.as_u16(), status, "{where_}: {slug} is sent with status {}", row.status);
    assert_eq!(value["status"], status, "{where_} {name}");
    assert_eq!(value["title"], row.title, "{where_} {name}: the title ccgate sends");
    slug
}

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

#[test]
fn the_openapi_examples_validate_against_their_schemas() {
    let (ok, text) = check_examples(SPEC);
    assert!(ok, "api/openapi.yaml has examples that do not fit their schemas:\n{text}");
    assert!(text.contains(" 0 problems"), "{text}");
    // The check can fail: a problem example with a string status, and a header example
    // outside its pattern, are both caught.
    let good = std::fs::read_to_string(SPEC).unwrap();
    let mut broken = good.clone();
    for (from, to) in [("\"status\": 409,", "\"status\": \"409\","), ("example: \"1042\"", "example: \"abc\"")] {
        assert!(broken.contains(from), "{from}");
        broken = broken.replacen(from, to, 1);
    }
    let dir = std::env::temp_dir().join(format!("ccgate-openapi-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("openapi.yaml");
    std::fs::write(&path, broken).unwrap();
    let (ok, text) = check_examples(path.to_str().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "a broken example passed:\n{text}");
    assert!(text.contains("'409' is not of type 'integer'") && text.contains("'abc' does not match"), "{text}");
}

/// Each operation lists exactly the problem types its route can answer with (derived from the
/// code in `edge::problems`), each under the status ccgate sends it with; the requests no
/// operation takes have theirs; the `Problem` schema's `type` enumerates them all.
#[test]
fn each_operation_lists_the_problems_its_route_can_answer() {
    let doc = spec_json();
    let mut all = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(m) = method.to_uppercase().parse::<http::Method>() else { continue };
            let route = match_route(&m, path).unwrap_or_else(|_| panic!("{method} {path} is no route"));
            let where_ = format!("{method} {path}");
            let listed: BTreeSet<&str> = problem_examples(&doc, &op["responses"])
                .into_iter()
                .map(|(status, name, value)| checked_slug(&where_, status, name, value))
                .collect();
            let code: BTreeSet<&str> = problem_types(route);
            let missing: Vec<_> = code.difference(&listed).collect();
            let extra: Vec<_> = listed.difference(&code).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{where_} ({route:?}): the spec lacks {missing:?}, lists {extra:?} that the code cannot answer"
            );
            all.extend(listed);
        }
    }
    let mut unrouted = BTreeSet::new();
    for name in ["NotFound", "MethodNotAllowed"] {
        for (ex_name, value) in examples_of(&doc, &doc["components"]["responses"][name]) {
            let status = value["status"].as_u64().unwrap_or_default() as u16;
            unrouted.insert(checked_slug(name, status, ex_name, value));
        }
    }
    assert_eq!(unrouted, unrouted_problem_types());
    all.extend(unrouted);
    let enumerated: BTreeSet<&str> = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str()?.strip_prefix("urn:ccgate:problem:"))
        .collect();
    assert_eq!(enumerated, all, "the Problem schema's types are the ones some request can get");
    // Every named example is a problem some response lists, or is used by a request or
    // response body (the checker holds each to be used somewhere).
    for (name, ex) in doc["components"]["examples"].as_object().unwrap() {
        if let Some(t) = ex["value"]["type"].as_str() {
            assert!(all.contains(t.trim_start_matches("urn:ccgate:problem:")), "{name}");
        }
    }
}

/// The end-of-stream event's reasons are the ones ccgate can write.
#[test]
fn the_session_ended_event_lists_every_reason() {
    let doc = spec_json();
    let listed: BTreeSet<&str> = doc["components"]["schemas"]["SessionEnded"]["properties"]["reason"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut sent: BTreeSet<&str> = ccgate::labels::LossReason::ALL.iter().map(|r| r.as_str()).collect();
    sent.insert("signed_out");
    assert_eq!(listed, sent);
}

/// The `RateLimit-Policy` and `RateLimit` examples are, byte for byte, what the demo (default
/// limits) sends with a chairperson's first stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_examples_are_what_the_demo_sends() {
    let doc = spec_json();
    let example = |name: &str| doc["components"]["headers"][name]["example"].as_str().unwrap().to_owned();
    let demo = common::demo::Demo::start().await;
    let token = demo.field("token");
    let (status, _, text) = demo.request(http::Method::POST, "/v1/session", "", &token).await;
    assert_eq!(status, 201, "{text}");
    let (status, _, text) = demo.request(http::Method::POST, "/v1/conference", r#"{"memberNum":3}"#, &token).await;
    assert_eq!(status, 201, "{text}");
    let (status, headers, text) =
        demo.request(http::Method::POST, "/v1/conference/announcement/stop", "", &token).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["ratelimit-policy"].as_bytes(), example("RateLimitPolicy").as_bytes());
    assert_eq!(headers["ratelimit"].as_bytes(), example("RateLimit").as_bytes());
    assert!(demo.stop().await.success());
}

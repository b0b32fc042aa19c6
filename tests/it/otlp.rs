//! `log.otlp_endpoint`: a `ccgate serve` process exports its request spans over OTLP/HTTP
//! (protobuf) to a receiver, in the app's trace; the gateway call's `traceparent` names the
//! exported span. The receiver is a small HTTP server in the test: what ccgate sends is
//! checked on the wire (path, content type, the trace id's bytes in the body).

use crate::common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::process::Process;
use common::Harness;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// (path, content-type, body) of every request the receiver got.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Received = Arc::default();
    let sink = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let ct =
                            req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                        sink.lock().unwrap().push((path, ct, body));
                        // An empty ExportTraceServiceResponse.
                        let mut r = hyper::Response::new(Full::new(Bytes::new()));
                        r.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}/v1/traces"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_in_the_apps_trace() {
    let h = Harness::start().await;
    let (endpoint, got) = receiver().await;
    let mut config = h.config.clone();
    config.log.otlp_endpoint = Some(endpoint);
    // Spans are exported whatever the log level (the harness reads the info line "ccgate serving").
    config.log.level = "warn,ccgate=info,ccgate::edge=warn".into();
    let mut p = Process::start(&config, &h.dir);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let auth = format!("Bearer {}", h.token("153"));
    let r = h.send(Method::POST, &format!("{}/v1/session", p.base), &[("authorization", &auth)], "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = h
        .send(
            Method::POST,
            &format!("{}/v1/conference", p.base),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ],
            r#"{"memberNum":3}"#,
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    // SIGTERM: ccgate flushes its exporter on the way out, so nothing is timed here.
    p.signal("-TERM");
    let deadline = std::time::Instant::now() + common::WAIT;
    while p.is_running() {
        assert!(std::time::Instant::now() < deadline, "ccgate did not stop");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = got.lock().unwrap().clone();
    assert!(!got.is_empty(), "no export arrived");
    let trace_bytes: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap()).collect();
    let (path, ct, body) = got
        .iter()
        .find(|(_, _, b)| b.windows(16).any(|w| w == trace_bytes.as_slice()))
        .expect("the app's trace id in an export");
    assert_eq!(path, "/v1/traces");
    assert_eq!(ct, "application/x-protobuf");
    assert!(body.windows(7).any(|w| w == b"request"), "the request span");
    assert!(body.windows(6).any(|w| w == b"ccgate"), "service.name");
    // The conference request went to the gateway as a child of the exported span, in the
    // same trace.
    let call = h
        .sim
        .received()
        .into_iter()
        .filter(|r| r.method == "requestAgentConf")
        .filter_map(|r| r.traceparent)
        .find(|t| t.contains(trace))
        .expect("traceparent on the gateway call");
    let span_id: Vec<u8> = (0..8).map(|i| u8::from_str_radix(&call[36 + 2 * i..38 + 2 * i], 16).unwrap()).collect();
    assert!(body.windows(8).any(|w| w == span_id.as_slice()), "the gateway call's parent is the exported span");
    h.stop().await;
}

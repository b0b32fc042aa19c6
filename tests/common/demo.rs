//! `ccgate demo --json` as a separate process on free ports, for tests that drive the
//! product as a user would: its first line, its remaining output, and a SIGTERM to stop it.

use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

pub struct Demo {
    /// The first line, as printed.
    pub line: String,
    /// The first line, parsed: proxy_url, admin_url, ca_file, token, agent_id.
    pub json: serde_json::Value,
    /// What the demo prints after the first line (the instructions), until `drain`.
    lines: Option<Lines<BufReader<ChildStdout>>>,
    child: Child,
}

impl Demo {
    pub async fn start() -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgate"))
            .args(["demo", "--json", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(super::WAIT, lines.next_line())
            .await
            .expect("demo printed nothing")
            .unwrap()
            .expect("demo exited");
        let json = serde_json::from_str(&line).expect("first line is JSON");
        Self { line, json, lines: Some(lines), child }
    }

    /// The next line of the demo's instructions (`None` once it closed its output).
    pub async fn next_line(&mut self) -> Option<String> {
        let lines = self.lines.as_mut()?;
        tokio::time::timeout(super::WAIT, lines.next_line()).await.expect("demo printed nothing more").unwrap()
    }

    /// Reads and drops the rest of the output in the background, so the demo never blocks on
    /// a full pipe.
    pub fn drain(&mut self) {
        if let Some(mut lines) = self.lines.take() {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        }
    }

    pub fn field(&self, key: &str) -> String {
        self.json[key].as_str().unwrap_or_else(|| panic!("no {key} in {}", self.line)).to_owned()
    }

    /// POSTs `body` to the demo's proxy with `token`, over TLS trusting the demo's CA; the
    /// answer's status.
    pub async fn post(&self, path: &str, body: &'static str, token: &str) -> http::StatusCode {
        self.request(http::Method::POST, path, body, token).await.0
    }

    /// A request to the demo's proxy with `token`, over TLS trusting the demo's CA: the
    /// answer's status, headers and body.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: &'static str,
        token: &str,
    ) -> (http::StatusCode, http::HeaderMap, String) {
        use http_body_util::BodyExt;
        let ca = std::path::PathBuf::from(self.field("ca_file"));
        let tls = ccgate::tls::client_config(Some(&ca)).unwrap();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.field("proxy_url")))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap();
        let resp = tokio::time::timeout(super::WAIT, client.request(req)).await.expect("no answer in time").unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// SIGTERM, as Ctrl-C would: the demo removes its throw-away keys on the way out.
    pub async fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        assert!(super::tools::command("kill").args(["-TERM", &pid]).status().unwrap().success());
        tokio::time::timeout(super::WAIT, self.child.wait()).await.expect("demo did not exit on SIGTERM").unwrap()
    }
}

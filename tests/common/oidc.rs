//! A real OpenID provider per test: node's `oidc-provider` (tests/oidc/provider.mjs), over
//! HTTPS with a throw-away CA, issuing JWT access tokens by the client credentials grant.
//! `scripts/test` installs the package into `.tools/node`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::tools;

/// The audience (resource indicator) the provider issues ccgate's tokens for.
pub const RESOURCE: &str = "urn:ccgate";
/// How long the provider may take to print its ready line: it generates its keys and loads
/// oidc-provider, a second or two on a loaded machine.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
/// Starts of the provider before a test gives up on it.
const START_ATTEMPTS: u32 = 3;

pub struct OidcProvider {
    pub issuer: String,
    pub control: String,
    pub ca_file: PathBuf,
    secret: String,
    child: Option<Child>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Where `scripts/test` installs node packages.
fn node_modules() -> PathBuf {
    let tools = std::env::var_os("CCGATE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    let modules = tools.join("node").join("node_modules");
    assert!(
        modules.join("oidc-provider").join("package.json").is_file(),
        "this test runs node's oidc-provider, which is not in {}. Run the suite with `scripts/test`, which installs it",
        modules.display()
    );
    modules
}

impl OidcProvider {
    /// Writes the provider's throw-away CA, certificate and key into `dir` (once); returns the
    /// CA file, so ccgate can be configured before the provider runs.
    pub fn prepare(dir: &Path) -> PathBuf {
        let ca = dir.join("idp-ca.pem");
        if !ca.is_file() {
            let pki = ccgate::devkeys::dev_pki(&["localhost", "127.0.0.1"]).unwrap();
            std::fs::write(dir.join("idp-cert.pem"), &pki.server_cert_pem).unwrap();
            std::fs::write(dir.join("idp-key.pem"), &pki.server_key_pem).unwrap();
            std::fs::write(&ca, &pki.ca_pem).unwrap();
        }
        ca
    }

    /// Starts a provider on a free port (or `port`), in `dir`, and waits for its ready line.
    pub fn start(dir: &Path, port: Option<u16>) -> Self {
        let ca = Self::prepare(dir);
        let (cert, key) = (dir.join("idp-cert.pem"), dir.join("idp-key.pem"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/provider.mjs");
        let mut cmd = tools::command("node");
        cmd.arg(script).arg(node_modules()).arg(&cert).arg(&key);
        if let Some(p) = port {
            cmd.arg(p.to_string());
        }
        // Once in a while node stalls before it listens (no socket, no CPU; seen once in CI):
        // a provider not ready within `READY_WAIT` is killed and started again, so the test
        // fails or passes instead of hanging. Its stderr is kept in `dir` for the message.
        let mut attempt = 0;
        let (child, ready) = loop {
            attempt += 1;
            let log = std::fs::File::create(dir.join(format!("idp-stderr-{attempt}.log"))).unwrap();
            let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().expect("node did not start");
            let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut lines = lines;
                let _ = tx.send(lines.next());
                for _ in lines {}
            });
            match rx.recv_timeout(READY_WAIT) {
                Ok(Some(Ok(line))) => break (child, line),
                outcome if attempt < START_ATTEMPTS => {
                    eprintln!("the OIDC provider was not ready ({outcome:?}); starting it again");
                    let _ = child.kill();
                    let _ = child.wait();
                }
                outcome => {
                    let _ = child.kill();
                    let stderr =
                        std::fs::read_to_string(dir.join(format!("idp-stderr-{attempt}.log"))).unwrap_or_default();
                    panic!("the OIDC provider never got ready ({outcome:?}); its stderr:\n{stderr}");
                }
            }
        };
        let ready: Value = serde_json::from_str(&ready).expect("the provider's ready line is JSON");
        let tls = ccgate::tls::client_config(Some(&ca)).unwrap();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1();
        Self {
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            control: ready["control"].as_str().unwrap().to_owned(),
            ca_file: ca,
            secret: ready["client_secret"].as_str().unwrap().to_owned(),
            child: Some(child),
            client: Client::builder(TokioExecutor::new()).build(connector.wrap_connector(http)),
        }
    }

    async fn post(&self, url: &str, auth: Option<String>, form: &str) -> (http::StatusCode, Value) {
        let mut req = http::Request::post(url).header("content-type", "application/x-www-form-urlencoded");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = self.client.request(req.body(Full::new(Bytes::from(form.to_owned()))).unwrap()).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// An access token for `agent` (its client is `agent-<agent>`), by the client credentials
    /// grant with ccgate as the resource.
    pub async fn token(&self, agent: &str) -> String {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("agent-{agent}:{}", self.secret));
        let (status, body) = self
            .post(
                &format!("{}/token", self.issuer),
                Some(format!("Basic {basic}")),
                &format!("grant_type=client_credentials&scope=agent&resource={RESOURCE}"),
            )
            .await;
        assert_eq!(status, http::StatusCode::OK, "token endpoint: {body}");
        body["access_token"].as_str().expect("an access token").to_owned()
    }

    /// A new signing key becomes current; the old one stays published. Returns the key ids.
    pub async fn rotate(&self) -> Vec<String> {
        self.control_call("rotate").await
    }

    /// Every key but the current one leaves the JWKS.
    pub async fn retire_old_keys(&self) -> Vec<String> {
        self.control_call("retire").await
    }

    async fn control_call(&self, what: &str) -> Vec<String> {
        let (status, body) = self.post(&format!("{}/{what}", self.control), None, "").await;
        assert_eq!(status, http::StatusCode::OK);
        body["kids"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect()
    }

    /// Kills the provider.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `kid` in a token's header.
pub fn kid_of(token: &str) -> String {
    use base64::Engine;
    let head = token.split('.').next().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head).unwrap();
    serde_json::from_slice::<Value>(&raw).unwrap()["kid"].as_str().unwrap().to_owned()
}

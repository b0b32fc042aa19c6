//! HTTPS client for the CC-Gateway: a keep-alive pool, a configured CA bundle, an optional
//! TLS server name, connect and request timeouts, and envelope parsing.
//!
//! Every gateway round trip (app requests and the poller alike) goes through
//! [`GatewayClient::call`]; `metrics::Metered` records each one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::envelope::Envelope;
use super::methods::GatewayMethod;
use super::trace::{TRACEPARENT, TRACESTATE};
use super::{timing, CallFuture, Gateway};
use crate::config::{ms, GatewayConfig};
use crate::tls;

/// The header carrying the session's Guid on requests.
pub const GUID_HEADER: &str = "guid";
static GUID: HeaderName = HeaderName::from_static(GUID_HEADER);
/// The response header carrying a new Guid (`JSESSIONID=<uuid>.AgentGateway<n>`).
pub const SET_GUID_HEADER: &str = "set-guid";
/// Largest gateway response body accepted; envelopes are a few hundred bytes, conference
/// queries a few KiB.
const MAX_UPSTREAM_BODY: usize = 1024 * 1024;
pub const JSON_UTF8: &str = "application/json; charset=UTF-8";

/// The credentials a session presents: Guid and the cookies captured at sign-in. Both are
/// kept as ready `HeaderValue`s (marked sensitive so they never appear in debug output) so the
/// hot path copies no strings.
#[derive(Clone)]
pub struct SessionAuth {
    pub guid: HeaderValue,
    pub cookie: Option<HeaderValue>,
}

impl std::fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionAuth(***)")
    }
}

/// One request to the gateway.
pub struct GatewayRequest<'a> {
    pub method: GatewayMethod,
    pub agent: &'a str,
    pub auth: Option<&'a SessionAuth>,
    pub body: Option<Bytes>,
    /// Overrides the configured request timeout (the event long poll needs a longer one).
    pub timeout: Option<Duration>,
    /// The caller's own connection instead of the shared pool (the agent's poller).
    pub conn: Option<&'a mut PollConnection>,
}

/// An agent poller's own connection to the gateway. A long poll holds its connection for
/// the gateway's whole wait, so every signed-in agent needs one anyway; owning it outright
/// skips the shared pool's per-request work (checkout, key hashing, a connect future built
/// and dropped, the return to the idle list), which with 10,000 agents is ~1,000 times a
/// second, and keeps the pool's idle bound (`gateway.pool_max_idle_per_host`) about app
/// requests alone. Dropped with the poller: the connection closes when the agent signs out.
#[derive(Default)]
pub struct PollConnection {
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for PollConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollConnection").field("open", &self.sender.is_some()).finish()
    }
}

/// A parsed gateway answer (HTTP 200 with an envelope).
pub struct GatewayReply {
    pub envelope: Envelope,
    /// The new Guid from `Set-GUID`, `JSESSIONID=` removed, node suffix kept.
    pub set_guid: Option<String>,
    /// `name=value` of each `Set-Cookie`, attributes removed.
    pub cookies: Vec<String>,
    pub body: Bytes,
}

impl std::fmt::Debug for GatewayReply {
    /// The envelope only: the Guid and cookies are secrets, and the body repeats the envelope.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayReply").field("envelope", &self.envelope).finish_non_exhaustive()
    }
}

impl GatewayReply {
    /// An answer with this envelope and nothing else (no Guid, no cookie).
    pub fn from_envelope(envelope: Envelope) -> Self {
        let body = envelope.to_bytes();
        Self { envelope, set_guid: None, cookies: Vec::new(), body }
    }
}

/// What the gateway said when it refused an operation (retcode != "0"): its words, and its
/// envelope as it sent it, for the pass-through face. Holds no secret (envelopes carry none).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRefusal {
    pub retcode: String,
    pub message: String,
    pub error_reason: Option<i64>,
    pub body: Bytes,
}

impl From<&GatewayReply> for GatewayRefusal {
    fn from(r: &GatewayReply) -> Self {
        let e = &r.envelope;
        Self {
            retcode: e.retcode.clone(),
            message: e.message.clone(),
            error_reason: e.error_reason(),
            body: r.body.clone(),
        }
    }
}

/// Why a gateway round trip failed. Each maps to one HTTP status at the edge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, TLS handshake failed): 503.
    #[error("gateway unreachable: {0}")]
    Unavailable(String),
    /// No complete answer within the timeout: 504.
    #[error("gateway timed out")]
    Timeout,
    /// The gateway answered with a non-200 status: 502.
    #[error("gateway answered HTTP {0}")]
    BadStatus(StatusCode),
    /// The gateway's body was not a valid envelope, or the connection broke mid-answer: 502.
    #[error("gateway answered garbage: {0}")]
    Malformed(String),
}

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why the readiness probe could not reach the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("TCP connect failed: {0}")]
    Connect(String),
    #[error("no answer within the connect timeout")]
    Timeout,
    /// The gateway answered but its certificate is not trusted or not for the expected name,
    /// or the handshake failed otherwise: every request would fail the same way.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// What the probe and the pollers' own connections need to dial the gateway exactly as the
/// pool does: the same address, TLS settings and server name.
struct Dialer {
    addr: String,
    tls: tokio_rustls::TlsConnector,
    server_name: rustls_pki_types::ServerName<'static>,
    connect_timeout: Duration,
}

#[derive(Clone)]
pub struct GatewayClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: HttpsClient,
    scheme_authority: String,
    request_timeout: Duration,
    /// `Host` for requests on a dedicated connection (the pool sets it from the URI).
    host: HeaderValue,
    dialer: Dialer,
}

impl GatewayClient {
    pub fn new(cfg: &GatewayConfig) -> Result<Self, String> {
        let url: Uri = cfg.url.parse().map_err(|e| format!("gateway.url: {e}"))?;
        let authority = url.authority().ok_or("gateway.url: no host")?.to_string();
        let tls = Arc::new(tls::client_config(cfg.ca_file.as_deref())?);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(ms(cfg.connect_timeout_ms)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let resolver: Arc<dyn hyper_rustls::ResolveServerName + Send + Sync> = match &cfg.tls_server_name {
            Some(name) => {
                let name = rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| format!("gateway.tls_server_name: {e}"))?;
                Arc::new(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
        };
        let host = HeaderValue::from_str(&authority).map_err(|e| format!("gateway.url: host: {e}"))?;
        let dialer = Dialer {
            addr: format!("{}:{}", url.host().unwrap_or_default(), url.port_u16().unwrap_or(443)),
            tls: tokio_rustls::TlsConnector::from(tls.clone()),
            server_name: resolver.resolve(&url).map_err(|e| format!("gateway.url: no TLS server name: {e}"))?,
            connect_timeout: ms(cfg.connect_timeout_ms),
        };
        let connector = hyper_rustls::HttpsConnector::new(http, tls, true, resolver);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(ms(cfg.pool_idle_timeout_ms))
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                scheme_authority: format!("https://{authority}"),
                request_timeout: ms(cfg.request_timeout_ms),
                host,
                dialer,
            }),
        })
    }

    /// Dials the gateway and completes a TLS handshake, then closes: tells "down" from "up"
    /// and also catches a certificate the configured CA or server name does not accept. It
    /// sends no request, so it costs the gateway no session work and no log line.
    pub async fn probe(&self) -> Result<(), ProbeFailure> {
        let p = &self.inner.dialer;
        let dial = async {
            let tcp =
                tokio::net::TcpStream::connect(&p.addr).await.map_err(|e| ProbeFailure::Connect(e.to_string()))?;
            let mut tls =
                p.tls.connect(p.server_name.clone(), tcp).await.map_err(|e| ProbeFailure::Tls(e.to_string()))?;
            // A polite close_notify; the probe's verdict does not depend on it.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            Ok(())
        };
        tokio::time::timeout(p.connect_timeout, dial).await.unwrap_or(Err(ProbeFailure::Timeout))
    }

    /// Sends one request and parses the envelope. Adds the round trip to the current
    /// request's gateway time (for the access log).
    pub async fn call(&self, req: GatewayRequest<'_>) -> Result<GatewayReply, UpstreamError> {
        let started = Instant::now();
        let result = self.round_trip(req).await;
        timing::add(started.elapsed());
        result
    }

    async fn round_trip(&self, req: GatewayRequest<'_>) -> Result<GatewayReply, UpstreamError> {
        let path = req.method.path(req.agent);
        // The pool takes an absolute URI (it picks the connection by it); a connection of our
        // own takes the origin form and a `Host` header, as on the wire.
        let uri = match req.conn {
            Some(_) => Uri::try_from(path),
            None => Uri::try_from(format!("{}{}", self.inner.scheme_authority, path)),
        }
        .map_err(|e| UpstreamError::Malformed(format!("cannot build request: {e}")))?;
        let mut request = Request::new(Full::new(req.body.unwrap_or_default()));
        *request.method_mut() = req.method.http_method();
        *request.uri_mut() = uri;
        let h = request.headers_mut();
        // Room for every header below at once: growing the map mid-way is a rehash.
        h.reserve(6);
        if req.conn.is_some() {
            h.insert(HOST, self.inner.host.clone());
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
        // The app's trace continues at the gateway, with ccgate's span as the parent.
        timing::with_trace(|t| {
            h.insert(TRACEPARENT.clone(), t.traceparent());
            if let Some(state) = t.tracestate() {
                h.insert(TRACESTATE.clone(), state.clone());
            }
        });
        if let Some(auth) = req.auth {
            h.insert(GUID.clone(), auth.guid.clone());
            if let Some(c) = &auth.cookie {
                h.insert(COOKIE, c.clone());
            }
        }
        let timeout = req.timeout.unwrap_or(self.inner.request_timeout);
        let conn = req.conn;
        let exchange = async {
            let resp = match conn {
                // Boxed: dialing (TLS handshake state) would otherwise make every call's future,
                // pooled ones too, several KiB larger, copied on each move.
                Some(conn) => Box::pin(self.send_on(conn, request)).await?,
                None => self.inner.client.request(request).await.map_err(classify)?,
            };
            let (parts, body) = resp.into_parts();
            let limited = http_body_util::Limited::new(body, MAX_UPSTREAM_BODY);
            let bytes =
                limited.collect().await.map_err(|e| UpstreamError::Malformed(format!("reading body: {e}")))?.to_bytes();
            Ok::<_, UpstreamError>((parts, bytes))
        };
        // A timeout drops the exchange mid-flight, which closes a dedicated connection too
        // (hyper cannot reuse an HTTP/1 connection with an unfinished answer); the next call
        // dials a new one.
        let (parts, bytes) = tokio::time::timeout(timeout, exchange).await.map_err(|_| UpstreamError::Timeout)??;
        if parts.status != StatusCode::OK {
            return Err(UpstreamError::BadStatus(parts.status));
        }
        let envelope: Envelope = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Malformed(format!("not a gateway envelope: {e}")))?;
        let set_guid = parts.headers.get(SET_GUID_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_set_guid);
        let cookies =
            parts.headers.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).filter_map(cookie_pair).collect();
        Ok(GatewayReply { envelope, set_guid, cookies, body: bytes })
    }

    /// Sends on a dedicated connection, dialing one when there is none or the last one has
    /// closed (the gateway's keep-alive timeout, a restart, an abandoned poll). A request a
    /// reused connection could not take (it closed between the check and the send) is sent
    /// once more on a new one; one already written is not, since the gateway may have acted.
    async fn send_on(
        &self,
        conn: &mut PollConnection,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        loop {
            let reused = match conn.sender.take() {
                Some(mut s) if !s.is_closed() => s.ready().await.is_ok().then_some(s),
                _ => None,
            };
            let fresh = reused.is_none();
            let mut sender = match reused {
                Some(s) => s,
                None => self.dial().await?,
            };
            match sender.try_send_request(request).await {
                Ok(resp) => {
                    conn.sender = Some(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(UpstreamError::Malformed(error_chain(e.error()))),
                },
            }
        }
    }

    /// A new connection of its own: TCP within the connect timeout, TLS as the pool does it,
    /// HTTP/1.1 (the gateway speaks nothing else), the connection driven by its own task.
    async fn dial(&self) -> Result<http1::SendRequest<Full<Bytes>>, UpstreamError> {
        let d = &self.inner.dialer;
        let tcp = tokio::time::timeout(d.connect_timeout, tokio::net::TcpStream::connect(&d.addr))
            .await
            .map_err(|_| UpstreamError::Unavailable("tcp connect timed out".into()))?
            .map_err(|e| UpstreamError::Unavailable(format!("tcp connect error: {e}")))?;
        // As the pool's connector: requests are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let tls = d
            .tls
            .connect(d.server_name.clone(), tcp)
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("TLS handshake failed: {e}")))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| UpstreamError::Unavailable(error_chain(&e)))?;
        tokio::spawn(async move {
            // Ends when the poller drops its sender or either side closes; a broken
            // connection shows up as the next request's error, where it is logged.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

impl Gateway for GatewayClient {
    fn call<'a>(&'a self, req: GatewayRequest<'a>) -> CallFuture<'a> {
        Box::pin(GatewayClient::call(self, req))
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        // The error chain names the cause (refused, TLS) but never carries request data.
        UpstreamError::Unavailable(error_chain(&e))
    } else {
        UpstreamError::Malformed(error_chain(&e))
    }
}

/// The error and its causes, as one line (hyper's top error says only "client error").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `JSESSIONID=<uuid>.AgentGateway0` → `<uuid>.AgentGateway0`. Attributes after `;` are
/// dropped; the node suffix is kept because it routes the session to its node.
pub fn parse_set_guid(v: &str) -> Option<String> {
    let v = v.split(';').next()?.trim();
    let guid = v.strip_prefix("JSESSIONID=").unwrap_or(v).trim();
    if guid.is_empty() || !guid.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(guid.to_owned())
}

/// `name=value; Path=/; Secure` → `name=value`.
pub fn cookie_pair(v: &str) -> Option<String> {
    let pair = v.split(';').next()?.trim();
    let (name, _) = pair.split_once('=')?;
    if name.is_empty() {
        return None;
    }
    Some(pair.to_owned())
}

/// Builds the `Cookie` header from captured pairs, replacing same-named cookies.
pub fn merge_cookies(existing: &[String], new: &[String]) -> Vec<String> {
    let mut out: Vec<String> = existing.to_vec();
    for n in new {
        let name = n.split('=').next().unwrap_or_default();
        out.retain(|c| c.split('=').next().unwrap_or_default() != name);
        out.push(n.clone());
    }
    out
}

/// Builds a `SessionAuth` from a Guid and cookie pairs; `None` if the Guid is not a valid
/// header value (a gateway sending control characters).
pub fn session_auth(guid: &str, cookies: &[String]) -> Option<SessionAuth> {
    let mut guid = HeaderValue::from_str(guid).ok()?;
    guid.set_sensitive(true);
    let cookie = if cookies.is_empty() {
        None
    } else {
        let mut c = HeaderValue::from_str(&cookies.join("; ")).ok()?;
        c.set_sensitive(true);
        Some(c)
    };
    Some(SessionAuth { guid, cookie })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_guid_keeps_node_suffix() {
        assert_eq!(parse_set_guid("JSESSIONID=1f0e-22.AgentGateway1").as_deref(), Some("1f0e-22.AgentGateway1"));
        assert_eq!(parse_set_guid("JSESSIONID=abc.AgentGateway0; Path=/").as_deref(), Some("abc.AgentGateway0"));
        assert_eq!(parse_set_guid("abc.AgentGateway0").as_deref(), Some("abc.AgentGateway0"));
        assert_eq!(parse_set_guid("JSESSIONID="), None);
        assert_eq!(parse_set_guid("JSESSIONID=a b"), None);
    }

    #[test]
    fn cookies_merge_by_name() {
        let a = vec![cookie_pair("huaweielbsession=1; Path=/; Secure").unwrap()];
        let b = vec!["huaweielbsession=2".to_owned(), "other=x".to_owned()];
        assert_eq!(merge_cookies(&a, &b), vec!["huaweielbsession=2", "other=x"]);
        assert_eq!(cookie_pair("=x"), None);
        assert_eq!(cookie_pair("novalue"), None);
    }

    #[test]
    fn session_auth_is_sensitive() {
        let a = session_auth("g.AgentGateway0", &["c=1".into()]).unwrap();
        assert!(a.guid.is_sensitive());
        assert_eq!(format!("{a:?}"), "SessionAuth(***)");
        assert!(session_auth("bad\nguid", &[]).is_none());
    }
}

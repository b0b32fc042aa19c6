//! HTTPS client for the CC-Gateway: a keep-alive pool, a configured CA bundle, an optional
//! TLS server name, connect and request timeouts, and envelope parsing.
//!
//! Every gateway round trip (app requests and the poller alike) goes through
//! [`GatewayClient::call`]; `metrics::Metered` records each one. App requests and sign-ins
//! take the pool (hyper); a poller brings its own connection (`poll_conn.rs`), dialed here
//! with the pool's address, TLS settings and server name.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::envelope::Envelope;
use super::methods::GatewayMethod;
use super::poll_conn::{self, Answer, PollConnection};
use super::trace::{TRACEPARENT, TRACESTATE};
use super::{timing, CallFuture, Gateway};
use crate::config::{ms, GatewayConfig};
use crate::tls;
use std::borrow::Cow;

/// The header carrying the session's Guid on requests.
pub const GUID_HEADER: &str = "guid";
static GUID: HeaderName = HeaderName::from_static(GUID_HEADER);
/// The response header carrying a new Guid (`JSESSIONID=<uuid>.AgentGateway<n>`).
pub const SET_GUID_HEADER: &str = "set-guid";
/// Largest gateway response body accepted; envelopes are a few hundred bytes, conference
/// queries a few KiB.
pub const MAX_UPSTREAM_BODY: usize = 1024 * 1024;
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
    ///
    /// Written as functions returning `async move` blocks, not as `async fn`s: an `async fn`
    /// keeps two copies of its arguments for its whole life (the argument and the binding
    /// the body moves it into), and a statement with an `.await` keeps its temporaries. Every
    /// byte of the call's future is allocated and copied once per call (the [`Gateway`] seam
    /// boxes it), which a poller does 1,000 times a second at 10,000 agents.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn call<'a>(
        &'a self,
        req: GatewayRequest<'a>,
    ) -> impl Future<Output = Result<GatewayReply, UpstreamError>> + Send + 'a {
        async move {
            let started = Instant::now();
            let timeout = req.timeout.unwrap_or(self.inner.request_timeout);
            // A timeout drops the exchange mid-flight, and the connection with an unfinished
            // answer with it (hyper closes a pooled one; a poller's own is held by the
            // exchange); the next call dials a new one.
            let result = match tokio::time::timeout(timeout, self.exchange(req)).await {
                Ok(Ok(answer)) => reply(answer),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(UpstreamError::Timeout),
            };
            timing::add(started.elapsed());
            result
        }
    }

    /// Sends the request and reads the whole answer: on the caller's own connection (the
    /// poller's), or through the pool, where the request (256 bytes) is built just before it
    /// is handed to hyper, in a statement of its own, so no frame keeps it.
    #[allow(clippy::manual_async_fn)] // on purpose: see `call`
    fn exchange<'a>(
        &'a self,
        req: GatewayRequest<'a>,
    ) -> impl Future<Output = Result<Answer, UpstreamError>> + Send + 'a {
        async move {
            if let Some(conn) = req.conn {
                conn.render(
                    req.method,
                    req.agent,
                    &self.inner.host,
                    req.auth,
                    req.body.as_deref().unwrap_or_default(),
                )?;
                return self.send_on(conn).await;
            }
            let path = request_target(req.method, req.agent)?;
            let uri = Uri::try_from(format!("{}{path}", self.inner.scheme_authority))
                .map_err(|e| UpstreamError::Malformed(format!("cannot build request: {e}")))?;
            let send = self.inner.client.request(self.request(req.method, uri, req.auth, req.body));
            let (parts, body) = send.await.map_err(classify)?.into_parts();
            let collect = http_body_util::Limited::new(body, MAX_UPSTREAM_BODY).collect();
            let body = collect.await.map_err(|e| UpstreamError::Malformed(format!("reading body: {e}")))?.to_bytes();
            let h = &parts.headers;
            Ok(Answer {
                status: parts.status,
                set_guid: h.get(SET_GUID_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_set_guid),
                cookies: h.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).filter_map(cookie_pair).collect(),
                body,
            })
        }
    }

    /// The rendered request on the connection, dialed when there is none or the gateway has
    /// closed it (its keep-alive timeout, a restart, an abandoned poll). A request a reused
    /// connection could not take is written once more on a new one; one the gateway may have
    /// read is never sent again.
    async fn send_on(&self, conn: &mut PollConnection) -> Result<Answer, UpstreamError> {
        let mut stream = match conn.take_open() {
            Some(mut s) => match poll_conn::write_request(&mut s, conn.request()).await {
                Ok(()) => s,
                Err(_) => self.dial_and_write(conn).await?,
            },
            None => self.dial_and_write(conn).await?,
        };
        // Taken out of `conn` for the exchange: a timeout that drops this future mid-answer
        // drops the connection with it, and the next poll dials a new one.
        let (answer, keep_alive) = conn.read_answer(&mut stream).await?;
        if keep_alive {
            conn.keep(stream);
        }
        Ok(answer)
    }

    async fn dial_and_write(&self, conn: &PollConnection) -> Result<Box<TlsStream<TcpStream>>, UpstreamError> {
        // Boxed: the dial's state (a TLS handshake) is KiBs; inline it would make every call's
        // future that much larger, for a step taken once per connection.
        let mut stream = Box::pin(self.dial()).await?;
        poll_conn::write_request(&mut stream, conn.request())
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("writing the request: {e}")))?;
        Ok(stream)
    }

    /// The request for the pool, which takes an absolute URI (it picks the connection by it).
    fn request(
        &self,
        method: GatewayMethod,
        uri: Uri,
        auth: Option<&SessionAuth>,
        body: Option<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method.http_method();
        *request.uri_mut() = uri;
        let h = request.headers_mut();
        // Room for every header at once: growing the map mid-way is a rehash.
        h.reserve(5);
        h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
        session_headers(auth, |name, value| {
            h.insert(name.clone(), value.into_owned());
        });
        request
    }

    /// A new connection of its own: TCP within the connect timeout, TLS as the pool does it
    /// (same CA, server name and protocol versions).
    async fn dial(&self) -> Result<Box<TlsStream<TcpStream>>, UpstreamError> {
        let d = &self.inner.dialer;
        let tcp = tokio::time::timeout(d.connect_timeout, TcpStream::connect(&d.addr))
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
        Ok(Box::new(tls))
    }
}

impl Gateway for GatewayClient {
    fn call<'a>(&'a self, req: GatewayRequest<'a>) -> CallFuture<'a> {
        Box::pin(GatewayClient::call(self, req))
    }
}

/// The request target of a call: from a work number checked again here, whoever supplied it
/// (a token, the shared store), so nothing but digits reaches the request line. Both writers
/// (hyper's pool, the poller's own connection) take it from here.
pub(super) fn request_target(method: GatewayMethod, agent: &str) -> Result<String, UpstreamError> {
    match super::parse_agent_id(agent) {
        Some(_) => Ok(method.path(agent)),
        None => Err(UpstreamError::Malformed("agent id is not a work number; request not sent".into())),
    }
}

/// The headers that carry the session and the trace, in the order both writers send them:
/// `traceparent`, `tracestate`, `guid`, `cookie` (each a `HeaderValue`, so valid by type).
/// A value made here is handed over owned, one the session keeps is lent: the pool's writer
/// then moves the one and clones the other, as it did before there was one writer.
pub(super) fn session_headers(auth: Option<&SessionAuth>, mut field: impl FnMut(&HeaderName, Cow<'_, HeaderValue>)) {
    // The app's trace continues at the gateway, with ccgate's span as the parent.
    timing::with_trace(|t| {
        field(&TRACEPARENT, Cow::Owned(t.traceparent()));
        if let Some(state) = t.tracestate() {
            field(&TRACESTATE, Cow::Borrowed(state));
        }
    });
    if let Some(auth) = auth {
        field(&GUID, Cow::Borrowed(&auth.guid));
        if let Some(c) = &auth.cookie {
            field(&COOKIE, Cow::Borrowed(c));
        }
    }
}

/// The envelope of an answer read whole, with the new Guid and cookies it carried.
fn reply(a: Answer) -> Result<GatewayReply, UpstreamError> {
    if a.status != StatusCode::OK {
        return Err(UpstreamError::BadStatus(a.status));
    }
    let envelope: Envelope = serde_json::from_slice(&a.body)
        .map_err(|e| UpstreamError::Malformed(format!("not a gateway envelope: {e}")))?;
    Ok(GatewayReply { envelope, set_guid: a.set_guid, cookies: a.cookies, body: a.body })
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
    if !valid_guid(guid) {
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

/// Cookies one session keeps at most, and their total size in `name=value` bytes. The NSLB
/// sets one sticky cookie; 16 and 4 KiB leave room for a balancer or WAF in front of it, while
/// a gateway that sets a new cookie on every answer can grow neither the request head nor the
/// shared store's record. Cookies past either bound are dropped (and counted).
pub const MAX_COOKIES: usize = 16;
pub const MAX_COOKIE_BYTES: usize = 4096;

/// Merges new `name=value` pairs into the jar, replacing same-named cookies, within
/// [`MAX_COOKIES`] and [`MAX_COOKIE_BYTES`]. Returns the jar and how many were dropped.
pub fn merge_cookies(existing: &[String], new: &[String]) -> (Vec<String>, usize) {
    let name = |c: &str| c.split('=').next().unwrap_or_default().to_owned();
    let mut out: Vec<String> = existing.to_vec();
    let mut dropped = 0;
    for n in new {
        let same = out.iter().position(|c| name(c) == name(n));
        let others: usize = out.iter().enumerate().filter(|(i, _)| Some(*i) != same).map(|(_, c)| c.len()).sum();
        if (same.is_none() && out.len() >= MAX_COOKIES) || others + n.len() > MAX_COOKIE_BYTES {
            dropped += 1;
            continue;
        }
        if let Some(i) = same {
            out.remove(i);
        }
        out.push(n.clone());
    }
    (out, dropped)
}

/// Whether a jar read from outside this process (the shared store) is one ccgate could have
/// made: within the bounds, every entry a `name=value` pair fit for a header.
pub fn valid_cookie_jar(jar: &[String]) -> bool {
    jar.len() <= MAX_COOKIES
        && jar.iter().map(String::len).sum::<usize>() <= MAX_COOKIE_BYTES
        && jar.iter().all(|c| cookie_pair(c).as_deref() == Some(c.as_str()) && HeaderValue::from_str(c).is_ok())
}

/// Whether a Guid read from outside this process is one [`parse_set_guid`] could have given,
/// and of a sane length.
pub fn valid_guid(g: &str) -> bool {
    !g.is_empty() && g.len() <= MAX_GUID_LEN && g.bytes().all(|b| b.is_ascii_graphic())
}

/// Longest Guid kept: the gateway's are a UUID and a node suffix (~50 bytes).
pub const MAX_GUID_LEN: usize = 256;

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
        assert_eq!(merge_cookies(&a, &b), (vec!["huaweielbsession=2".to_owned(), "other=x".to_owned()], 0));
        assert_eq!(cookie_pair("=x"), None);
        assert_eq!(cookie_pair("novalue"), None);
    }

    #[test]
    fn the_cookie_jar_is_bounded_in_count_and_bytes() {
        let flood: Vec<String> = (0..60).map(|i| format!("c{i}=v")).collect();
        let (jar, dropped) = merge_cookies(&[], &flood);
        assert_eq!((jar.len(), dropped), (MAX_COOKIES, 60 - MAX_COOKIES));
        assert!(valid_cookie_jar(&jar));
        // A cookie already kept can still be replaced when the jar is full.
        let (jar, dropped) = merge_cookies(&jar, &["c0=new".to_owned()]);
        assert_eq!(dropped, 0);
        assert!(jar.contains(&"c0=new".to_owned()));
        let big = format!("big={}", "x".repeat(MAX_COOKIE_BYTES));
        assert_eq!(merge_cookies(&[], std::slice::from_ref(&big)).1, 1);
        assert!(!valid_cookie_jar(&[big]));
        assert!(!valid_cookie_jar(&["a=1\r\nX: y".to_owned()]));
        assert!(!valid_cookie_jar(&["novalue".to_owned()]));
    }

    #[test]
    fn session_auth_is_sensitive() {
        let a = session_auth("g.AgentGateway0", &["c=1".into()]).unwrap();
        assert!(a.guid.is_sensitive());
        assert_eq!(format!("{a:?}"), "SessionAuth(***)");
        assert!(session_auth("bad\nguid", &[]).is_none());
    }
}

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
use http::header::{HeaderValue, CONTENT_TYPE, SET_COOKIE};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::envelope::Envelope;
use super::methods::GatewayMethod;
use super::poll_conn::{self, PollConnection};
use super::wire::{
    cookie_pair, parse_set_guid, request_target, session_headers, Answer, SessionAuth, UpstreamError, JSON_UTF8,
    MAX_UPSTREAM_BODY, SET_GUID_HEADER,
};
use super::{timing, CallFuture, Gateway};
use crate::config::{ms, GatewayConfig};
use crate::tls;

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

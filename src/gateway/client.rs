//! HTTPS client for the CC-Gateway: a keep-alive pool, a configured CA bundle, an optional
//! TLS server name, connect and request timeouts, and envelope parsing.
//!
//! Every gateway round trip (app requests and the poller alike) goes through
//! [`GatewayClient::call`]; `metrics::Metered` records each one. App requests and sign-ins
//! take a connection from the shared pool (`pool.rs`); a poller brings its own. Both are the
//! same HTTP/1.1 client (`poll_conn.rs`), dialed here with one address, TLS configuration and
//! server name.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{StatusCode, Uri};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::envelope::Envelope;
use super::methods::GatewayMethod;
use super::poll_conn::{self, PollConnection};
use super::pool::Pool;
use super::wire::{Answer, SessionAuth, UpstreamError};
use super::{timing, CallFuture, Gateway};
use crate::config::{ms, GatewayConfig};
use crate::tls;

/// Kernel keep-alive probes on every gateway connection after this long idle, as the pool's
/// connector did before (hyper's `HttpConnector::set_keepalive`).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

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

/// What every connection to the gateway is dialed with: the probe's, the pool's and the
/// pollers' alike.
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
    pool: Arc<Pool>,
    request_timeout: Duration,
    /// `Host` of every request: the URL's authority.
    host: HeaderValue,
    dialer: Dialer,
}

impl GatewayClient {
    pub fn new(cfg: &GatewayConfig) -> Result<Self, String> {
        let url: Uri = cfg.url.parse().map_err(|e| format!("gateway.url: {e}"))?;
        let authority = url.authority().ok_or("gateway.url: no host")?.to_string();
        let tls = Arc::new(tls::client_config(cfg.ca_file.as_deref())?);
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
            tls: tokio_rustls::TlsConnector::from(tls),
            server_name: resolver.resolve(&url).map_err(|e| format!("gateway.url: no TLS server name: {e}"))?,
            connect_timeout: ms(cfg.connect_timeout_ms),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool: Pool::new(cfg.pool_max_idle_per_host, ms(cfg.pool_idle_timeout_ms)),
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
        async move { self.call_timed(req).await.0 }
    }

    /// [`GatewayClient::call`], and how long the round trip took: one clock reading before it
    /// serves the deadline, the pool's idle bookkeeping and the metrics too (each reading is a
    /// `clock_gettime`; a gateway call read the clock seven times before they were shared).
    #[allow(clippy::manual_async_fn)] // on purpose: see `call`
    pub fn call_timed<'a>(
        &'a self,
        req: GatewayRequest<'a>,
    ) -> impl Future<Output = (Result<GatewayReply, UpstreamError>, Duration)> + Send + 'a {
        async move {
            let started = tokio::time::Instant::now();
            let deadline = started + req.timeout.unwrap_or(self.inner.request_timeout);
            // A timeout drops the exchange mid-flight, and the connection with an unfinished
            // answer with it (a pooled one is not given back; a poller's own is held by the
            // exchange); the next call dials a new one.
            let result = match tokio::time::timeout_at(deadline, self.exchange(req, started)).await {
                Ok(Ok(answer)) => reply(answer),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(UpstreamError::Timeout),
            };
            let elapsed = started.elapsed();
            timing::add(elapsed);
            (result, elapsed)
        }
    }

    /// Sends the request and reads the whole answer, on the caller's own connection (the
    /// poller's) or on one from the pool, given back after an answer keep-alive allows. A
    /// connection whose exchange failed, or was dropped by the timeout, is closed.
    #[allow(clippy::manual_async_fn)] // on purpose: see `call`
    fn exchange<'a>(
        &'a self,
        req: GatewayRequest<'a>,
        started: tokio::time::Instant,
    ) -> impl Future<Output = Result<Answer, UpstreamError>> + Send + 'a {
        async move {
            let body = req.body.as_deref().unwrap_or_default();
            if let Some(conn) = req.conn {
                conn.render(req.method, req.agent, &self.inner.host, req.auth, body)?;
                return self.send_on(conn).await;
            }
            // The call's start stands for both ends of the pool's bookkeeping: a connection
            // then counts as idle from when its last request began, a round trip early.
            let mut conn = self.inner.pool.checkout(started);
            conn.render(req.method, req.agent, &self.inner.host, req.auth, body)?;
            let answer = self.send_on(&mut conn).await?;
            conn.trim();
            self.inner.pool.checkin(conn, started);
            Ok(answer)
        }
    }

    /// The rendered request on the connection, dialed when there is none or the gateway has
    /// closed it (its keep-alive timeout, a restart, an abandoned poll). A request a reused
    /// connection could not take is written once more on a new one; one the gateway may have
    /// read is never sent again.
    async fn send_on(&self, conn: &mut PollConnection) -> Result<Answer, UpstreamError> {
        let had_one = conn.is_open();
        let mut stream = match conn.take_open() {
            Some(mut s) => match poll_conn::write_request(&mut s, conn.request()).await {
                Ok(()) => {
                    tracing::trace!("gateway connection reused");
                    s
                }
                Err(_) => {
                    tracing::debug!("gateway connection closed under the request; dialing a new one");
                    self.dial_and_write(conn).await?
                }
            },
            None => {
                tracing::debug!(closed_while_idle = had_one, "no open gateway connection to reuse; dialing");
                self.dial_and_write(conn).await?
            }
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

    /// A new connection: TCP within the connect timeout, then TLS with the configured CA,
    /// server name and protocol versions.
    async fn dial(&self) -> Result<Box<TlsStream<TcpStream>>, UpstreamError> {
        let d = &self.inner.dialer;
        let tcp = tokio::time::timeout(d.connect_timeout, TcpStream::connect(&d.addr))
            .await
            .map_err(|_| UpstreamError::Unavailable("tcp connect timed out".into()))?
            .map_err(|e| UpstreamError::Unavailable(format!("tcp connect error: {e}")))?;
        // Requests are small and latency-bound; an idle pooled connection the network dropped
        // is found out by the kernel's keep-alive probes.
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
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

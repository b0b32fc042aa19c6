//! Accept loop shared by the proxy, the admin endpoint and the simulator: optional TLS
//! (h2 and HTTP/1.1 by ALPN), a connection cap, a deadline for every step of a connection,
//! graceful shutdown.
//!
//! The deadlines, in the order a connection meets them:
//! - TLS handshake: `tls_handshake_timeout` from the accept;
//! - the first request (HTTP/2 preface, SETTINGS and request headers, or the HTTP/1 head):
//!   `header_read_timeout` from the end of the handshake (without TLS, from the accept),
//!   however the bytes trickle in;
//! - each later HTTP/1 head: hyper's `header_read_timeout`, which runs from the end of the
//!   previous response, so it is also HTTP/1's keep-alive idle limit;
//! - the request body: the edge's body timeout (`server.body_read_timeout_ms`);
//! - no request in flight: `idle_timeout` from the last request's start or end (HTTP/2's
//!   keep-alive idle limit; a half-sent HEADERS block is not a request yet);
//! - a peer that vanished mid-stream: HTTP/2 PINGs ([`H2_PING_INTERVAL`]).
//!
//! A connection past its deadline is dropped. Requests in flight (a long poll, an event
//! stream) keep their connection: they are bounded by their own timeouts.
//!
//! At the connection cap a listener with [`ServeOptions::shed_when_full`] (the app and admin
//! listeners) closes one open connection to make room for the new one ([`shed_one`] has the
//! order: idle ones that only carried refused requests, silent ones, then trusted idle ones,
//! the address holding the most first within each; never one with a request in flight). A pile of silent, trickling or refused sockets
//! therefore cannot keep users or the kubelet's probes out. Without it (the simulator) a new
//! connection past the cap is closed at once. A request counts as in flight while its handler
//! runs and, for a stream, while its body is sent; a finished answer a peer will not read
//! (an HTTP/2 window of 0) does not hold its connection.
//!
//! Memory per connection is bounded here (docs/architecture.md, "Bounds"): an HTTP/1 head
//! beyond [`MAX_REQUEST_HEAD_BYTES`] gets 431 (hyper's read buffer would otherwise grow to
//! ~400 KiB for an unfinished head), an HTTP/2 connection carries at most
//! [`ServeOptions::max_streams`] streams, and HTTP/2's flow-control windows and send buffers
//! are set rather than left at hyper's megabyte defaults.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::body::{Body, BoxError};

/// An HTTP/2 peer is pinged after this much silence on its connection, and dropped if the
/// PING is not answered within [`H2_PING_TIMEOUT`]: a phone app that lost its network must
/// not hold an event stream (and its connection) forever.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Back-off after a failed accept (EMFILE and friends), so a full descriptor table does not
/// turn the loop into a busy spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// A peer that stops acknowledging what ccgate sends (a phone that changed networks, a dead
/// path) is dropped this long after the first unacknowledged byte, instead of after ~15
/// minutes of retransmissions: an HTTP/1.1 event stream to a vanished client ends at its next
/// keep-alive write plus this, and gives its place among the agent's streams back.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// An HTTP/1 request head (request line and headers) or HTTP/2 header list larger than this is
/// refused (431; HTTP/2: the stream is reset). 32 KiB holds the largest token ccgate accepts
/// (`edge/auth/mod.rs: MAX_TOKEN_LEN`, 8 KiB) several times over with any proxy's headers; nginx's default
/// `large_client_header_buffers` is 4 × 8 KiB. It is also hyper's read buffer per HTTP/1
/// connection, which an unfinished head would otherwise grow to ~400 KiB.
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;
/// HTTP/2 flow-control windows: how much request body a peer may send before ccgate reads it.
/// A stream's window is the RFC's default (64 KiB, the default `server.max_body_bytes`); the
/// connection's is 4 of them, so an HTTP/2 connection never holds more than 256 KiB of unread
/// body (hyper's default is 1 MiB for each).
const H2_STREAM_WINDOW: u32 = 65_535;
const H2_CONNECTION_WINDOW: u32 = 4 * 65_535;
/// Response bytes buffered per HTTP/2 stream for a slow reader (hyper's default is 400 KiB).
/// ccgate's answers are small; an event stream's frames wait in its own bounded channel.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Something that answers requests. Implemented by the proxy, the admin endpoint and the
/// simulator. `peer` is the connection's remote address: an argument rather than a request
/// extension, whose map would cost two allocations a request. `conn` is the connection, for
/// the handler to [`Conn::trust`] it.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        conn: Conn,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// A handler's hold on its request's connection.
pub struct Conn(Arc<Progress>);

impl Conn {
    /// The connection carried a request its handler vouches for (the proxy: an authenticated
    /// one). At the cap such a connection, idle, is the last kind closed to make room; one that
    /// carried only refused requests is the first.
    pub fn trust(&self) {
        self.0.trusted.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A TLS handshake not finished in this time is abandoned.
    pub tls_handshake_timeout: Duration,
    /// The first request's deadline on a new connection, and each later HTTP/1 head's.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is dropped after this long.
    pub idle_timeout: Duration,
    /// Connections open at once (see `shed_when_full` for what happens past it).
    pub max_connections: usize,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_streams: u32,
    /// `ccgate_connections` and `ccgate_connections_refused_total`, for the listener that
    /// reports them.
    pub metrics: Option<ConnectionMetrics>,
    /// How long in-flight requests may finish after shutdown before connections are dropped.
    pub grace: Duration,
    /// At the cap, close an open connection for the new one (in [`shed_one`]'s order) instead
    /// of refusing it.
    pub shed_when_full: bool,
}

/// How long the accept loop waits for an evicted connection to give its slot back.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    pub open: prometheus::IntGauge,
    pub refused: prometheus::IntCounter,
    pub shed: prometheus::IntCounter,
}

impl Default for ServeOptions {
    fn default() -> Self {
        use crate::config::{
            ms, DEFAULT_CONNECTION_IDLE_TIMEOUT_MS, DEFAULT_HEADER_READ_TIMEOUT_MS, DEFAULT_SHUTDOWN_GRACE_MS,
        };
        Self {
            tls_handshake_timeout: ms(crate::config::DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS),
            header_read_timeout: ms(DEFAULT_HEADER_READ_TIMEOUT_MS),
            idle_timeout: ms(DEFAULT_CONNECTION_IDLE_TIMEOUT_MS),
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            max_streams: crate::config::DEFAULT_MAX_STREAMS_PER_CONNECTION,
            metrics: None,
            grace: ms(DEFAULT_SHUTDOWN_GRACE_MS),
            shed_when_full: false,
        }
    }
}

/// What a connection has done, for its deadlines: shared by its requests and its watchdog.
struct Progress {
    /// The client's address (the socket's: a balancer's, in front of one).
    peer: std::net::IpAddr,
    opened: Instant,
    /// Milliseconds after `opened` of the last request's start or end.
    last_boundary: AtomicU64,
    in_flight: AtomicUsize,
    any_request: AtomicBool,
    /// Told to close (to make room at the cap).
    evict: tokio::sync::Notify,
    /// Already chosen to make room: not chosen again.
    shed: AtomicBool,
    /// The peer has sent a byte (a ClientHello, a preface).
    spoke: AtomicBool,
    /// A handler vouched for a request on it ([`Conn::trust`]).
    trusted: AtomicBool,
}

impl Progress {
    fn new(peer: std::net::IpAddr) -> Arc<Self> {
        Arc::new(Self {
            peer,
            opened: Instant::now(),
            last_boundary: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            any_request: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
            shed: AtomicBool::new(false),
            spoke: AtomicBool::new(false),
            trusted: AtomicBool::new(false),
        })
    }

    /// Its last sign of use: the handshake's end, or a request's start or end.
    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_boundary.load(Ordering::Relaxed))
    }

    fn mark(&self) {
        let ms = Instant::now().saturating_duration_since(self.opened).as_millis() as u64;
        self.last_boundary.fetch_max(ms, Ordering::Relaxed);
    }

    /// The TLS handshake is done: the first request's deadline runs from now.
    fn restart(&self) {
        self.mark();
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.any_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.mark();
        InFlight(self.clone())
    }

    /// Resolves when the connection has passed its deadline with no request in flight.
    async fn expired(&self, first_request: Duration, idle: Duration) {
        loop {
            let now = Instant::now();
            let deadline = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again later; the idle clock restarts when the request ends.
                now + idle
            } else if !self.any_request.load(Ordering::Relaxed) {
                // From the end of the TLS handshake (`restart`).
                self.idle_since() + first_request
            } else {
                self.idle_since() + idle
            };
            if now >= deadline && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in flight on its connection, until its response body is done or dropped.
struct InFlight(Arc<Progress>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.mark();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The response body, carrying its request's [`InFlight`] until hyper has sent it all (a
/// stream's; see `run_connection`).
struct Tracked {
    body: Body,
    _in_flight: Option<InFlight>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Sender side of a shutdown signal: `trigger()` stops every server holding a receiver.
#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// Waits until the signal is triggered (or its sender is gone).
pub async fn triggered(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// A running server.
pub struct Served {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

pub fn spawn<H: Handler>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<H>,
    opts: ServeOptions,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Served> {
    let addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, tls.map(TlsAcceptor::from), handler, opts, shutdown));
    Ok(Served { addr, task })
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    opts: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(opts.max_streams.max(1))
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    // Open connections, for shedding (only on a listener that sheds); closed ones are pruned
    // when shedding and when the list reaches twice the cap.
    let mut open_conns: Vec<std::sync::Weak<Progress>> = Vec::new();
    let (handshake, first_request, idle) = (opts.tls_handshake_timeout, opts.header_read_timeout, opts.idle_timeout);
    let accept_warnings = crate::log_budget::LogBudget::default();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = triggered(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if let Some(left_out) = accept_warnings.admit() {
                        tracing::warn!(error = %e, left_out, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Past the cap: make room by closing a silent or idle connection, or close the new
        // one at once. Either way the process never runs out of file descriptors.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) if opts.shed_when_full && shed_one(&mut open_conns) => {
                if let Some(m) = &opts.metrics {
                    m.shed.inc();
                }
                tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await.ok().and_then(Result::ok)
            }
            Err(_) => None,
        };
        let Some(slot) = slot else {
            if let Some(m) = &opts.metrics {
                m.refused.inc();
            }
            tracing::debug!("connection refused: server.max_connections reached");
            drop(stream);
            continue;
        };
        let progress = Progress::new(client_of(peer.ip()));
        if opts.shed_when_full {
            if open_conns.len() >= 2 * opts.max_connections {
                open_conns.retain(|p| p.strong_count() > 0);
            }
            open_conns.push(Arc::downgrade(&progress));
        }
        let open = opts.metrics.as_ref().map(|m| m.open.clone());
        if let Some(g) = &open {
            g.inc();
        }
        let _ = stream.set_nodelay(true);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        let (handler, builder, watcher) = (handler.clone(), builder.clone(), graceful.watcher());
        let acceptor = tls.clone();
        tokio::spawn(async move {
            // The slot and the gauge are released however this task ends.
            let _closed = OnDrop(Some(move || {
                drop(slot);
                if let Some(g) = &open {
                    g.dec();
                }
            }));
            let shed = progress.clone();
            let serve = async move {
                // The first byte, within the handshake deadline (a plain listener's first
                // request deadline covers the rest): until then the socket ranks before any
                // that has talked (`shed_one`), whatever its age, so a flood of silent sockets
                // churning through the cap never pushes out a client that has started to talk.
                // `peek`, not `readable`: readiness may be reported with no byte there (it was,
                // for every idle socket, on Linux), and the byte stays for TLS or hyper.
                let deadline = Instant::now() + if acceptor.is_some() { handshake } else { first_request };
                match tokio::time::timeout_at(deadline, stream.peek(&mut [0u8; 1])).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "connection failed before its first byte"),
                    Err(_) => return tracing::debug!("no byte before the deadline"),
                }
                progress.spoke.store(true, Ordering::Relaxed);
                match acceptor {
                    // The first request's deadline runs from the accept here: no handshake.
                    None => {
                        run_connection(builder, stream, peer, handler, watcher, progress, first_request, idle).await
                    }
                    Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            // The first request's deadline runs from the handshake's end.
                            progress.restart();
                            run_connection(builder, s, peer, handler, watcher, progress, first_request, idle).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    },
                }
            };
            // Shedding reaches a connection in its handshake too.
            tokio::select! {
                _ = serve => {}
                _ = shed.evict.notified() => tracing::debug!("connection closed to make room at the cap"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; dropping remaining connections");
    }
}

/// Tells one connection to close to make room; whether there was one. By kind:
/// 1. idle connections that carried only requests no handler vouched for (refused tokens,
///    unknown paths: a pile of sockets kept alive with one 401 each), the longest idle first;
/// 2. connections with no request yet: those that never sent a byte before those that did (a
///    handshake under way, or one byte and silence), the oldest first: a real client's request
///    follows its connect within milliseconds, so the churn it takes to reach a new client is
///    the cap in that time;
/// 3. trusted idle connections, the longest idle first (the client reconnects).
///
/// Within a kind, the connections of the address (an IPv6 /64) that holds the most untrusted
/// ones go first: an attacker churning sockets from its own address pushes out its own, not a
/// client's from another address (whose newest connection may not have shown its first byte
/// yet), and a busy client's trusted connections do not count against its new ones. Behind one
/// balancer, or in a sidecar where every client is 127.0.0.1, the order is as listed. A
/// connection with a request in flight is never chosen.
fn shed_one(open: &mut Vec<std::sync::Weak<Progress>>) -> bool {
    open.retain(|p| p.strong_count() > 0);
    let live: Vec<Arc<Progress>> =
        open.iter().filter_map(std::sync::Weak::upgrade).filter(|p| !p.shed.load(Ordering::Relaxed)).collect();
    // Per address, the connections nobody vouched for: a busy client's trusted and in-flight
    // ones do not make its newest connection a target.
    let mut per_address: std::collections::HashMap<std::net::IpAddr, u32> = std::collections::HashMap::new();
    for p in live.iter().filter(|p| !p.trusted.load(Ordering::Relaxed)) {
        *per_address.entry(p.peer).or_default() += 1;
    }
    // (kind, the address's connections (most first), spoke, since when): smallest goes.
    let rank = |p: &Progress| -> Option<(u8, std::cmp::Reverse<u32>, bool, Instant)> {
        if p.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let held = std::cmp::Reverse(per_address.get(&p.peer).copied().unwrap_or(0));
        let spoke = p.spoke.load(Ordering::Relaxed);
        Some(match (p.any_request.load(Ordering::Relaxed), p.trusted.load(Ordering::Relaxed)) {
            (true, false) => (0, held, spoke, p.idle_since()),
            (false, _) => (1, held, spoke, p.opened),
            (true, true) => (2, held, spoke, p.idle_since()),
        })
    };
    let victim = live.into_iter().filter_map(|p| Some((rank(&p)?, p))).min_by_key(|(r, _)| *r);
    match victim {
        Some((_, p)) => {
            // Told once: the next newcomer picks another while this one winds down.
            p.shed.store(true, Ordering::Relaxed);
            p.evict.notify_one();
            tracing::debug!("connection cap reached: closing a silent or idle connection");
            true
        }
        None => false,
    }
}

/// The client a connection counts for when shedding: its address, an IPv6 one by its /64 (what
/// one host or one subscriber is given).
fn client_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Serves one connection until it closes or passes its deadline (see the module docs).
#[allow(clippy::too_many_arguments)]
async fn run_connection<I, H>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    peer: SocketAddr,
    handler: Arc<H>,
    watcher: Watcher,
    progress: Arc<Progress>,
    first_request: Duration,
    idle: Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let requests = progress.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let (h, in_flight, conn) = (handler.clone(), requests.start(), Conn(requests.clone()));
        async move {
            let resp = h.handle(req, peer, conn).await;
            // A body of known size is written in a moment, unless the peer will not read it
            // (an HTTP/2 window of 0): the request stops counting as in flight here, so such a
            // peer's connection idles out and can be shed. Only a stream (an event stream)
            // stays in flight while its body is sent.
            let streaming = hyper::body::Body::size_hint(resp.body()).exact().is_none();
            let in_flight = streaming.then_some(in_flight);
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _in_flight: in_flight }))
        }
    });
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service).into_owned());
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "connection ended with error");
        },
        _ = progress.expired(first_request, idle) => tracing::debug!("connection past its deadline; dropped"),
    }
}

/// Runs its closure when dropped: the connection's slot and gauge are released however its
/// task ends (handshake failure, deadline, normal close).
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_ipv6_client_is_its_64_and_an_ipv4_one_its_address() {
        let c = |s: &str| super::client_of(s.parse().unwrap()).to_string();
        assert_eq!(c("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(c("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(c("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(c("192.0.2.7"), "192.0.2.7");
    }
}

//! `[server]`: the app-facing listener (address, TLS, timeouts, connection and stream caps,
//! shutdown) and its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::net::parse_addr;

/// App-facing listener. 8443 is the conventional unprivileged HTTPS port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Request bodies of the agent API are small JSON objects (the largest, batchaddparticipant,
/// lists at most 120 members); 64 KiB leaves ample headroom and bounds memory per request.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Time a client gets to send its request head; protects against slowloris connections. Also
/// the time a new connection gets to start its first request (after TLS): HTTP/2's preface
/// and request headers, or HTTP/1's head.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Time a client gets to complete the TLS handshake; one that has not is either broken or a
/// slowloris holding a socket. A handshake is two round trips: 10 s covers the worst mobile
/// network.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Time a request body may take to arrive whole. Bodies here are small JSON objects sent at
/// once; a body still trickling after 10 s is a client holding a connection, not a slow one.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 10_000;
/// A connection with no request in flight is closed after this long. nginx's keep-alive
/// default (75 s): above the 60 s idle timeout of common load balancers, so they close first,
/// and below the 90 s after which common client pools drop idle connections themselves.
pub const DEFAULT_CONNECTION_IDLE_TIMEOUT_MS: u64 = 75_000;
/// Open connections the app-facing listener accepts; past it a silent or idle one is closed to
/// make room. A sidecar serves one app's connection pool; 512 leaves the rest of the usual
/// 1024 file descriptors for the gateway pool and the process (ccgate raises its soft limit to
/// the hard one at start, and the systemd unit raises both).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Concurrent HTTP/2 streams per app connection: nginx's `http2_max_concurrent_streams`. An
/// app backend that multiplexes more agents' event streams than this over one connection
/// opens another (HTTP/2 clients do).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Whole budget from a shutdown signal to exit: drain delay, in-flight requests, pollers and
/// sign-outs all fit in it. 10 s sits well inside Kubernetes' default 30 s termination grace.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// After a shutdown signal `/readyz` turns 503 at once, but new requests are still served
/// this long, so load balancers (Kubernetes endpoints) stop routing here before we stop
/// accepting. 3 s covers typical endpoint propagation.
pub const DEFAULT_DRAIN_DELAY_MS: u64 = 3_000;

/// Certificate files are checked this often: a renewed certificate is served within 10 s, for
/// the cost of two `stat` calls.
pub const DEFAULT_TLS_WATCH_INTERVAL_MS: u64 = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain. With `tls_key`, the listener speaks TLS (h2 and HTTP/1.1 by ALPN).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP for a sidecar reached only over loopback. Refused on other addresses.
    pub plaintext: bool,
    pub max_body_bytes: usize,
    pub tls_handshake_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    pub shutdown_grace_ms: u64,
    pub drain_delay_ms: u64,
    /// How often the certificate and key files are checked for a change (a renewal by
    /// cert-manager or certbot); a changed pair is loaded for new connections. 0: only on
    /// reload.
    pub tls_watch_interval_ms: u64,
    /// Runtime worker threads: 0 = one per core; 1 = a single-threaded runtime (a sidecar
    /// pinned to one core, as benchmarks compare it).
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: parse_addr(DEFAULT_LISTEN),
            tls_cert: None,
            tls_key: None,
            plaintext: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            tls_handshake_timeout_ms: DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_CONNECTION_IDLE_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            drain_delay_ms: DEFAULT_DRAIN_DELAY_MS,
            tls_watch_interval_ms: DEFAULT_TLS_WATCH_INTERVAL_MS,
            worker_threads: 0,
        }
    }
}

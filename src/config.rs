//! Typed configuration, parsed once at start.
//!
//! Every default is a named constant with the reason for its value. The file is TOML; any key
//! can be overridden from the environment as `CCGATE__SECTION__KEY=value` so a sidecar can be
//! configured without a file. Unknown keys are errors (a typo must not silently fall back to a
//! default), and [`Config::validate`] names the offending key for semantic errors.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where `serve` looks for its config when neither `--config` nor `CCGATE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/ccgate.toml";
/// Environment prefix for per-key overrides (`CCGATE__GATEWAY__URL=...`).
pub const ENV_PREFIX: &str = "CCGATE__";

/// App-facing listener. 8443 is the conventional unprivileged HTTPS port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Admin listener (metrics, health). 9464 is the port OpenTelemetry/Prometheus exporters use.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
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
/// Open event streams (`GET /v1/events`) per agent on one replica: a desktop client, a
/// supervisor view and a backend or two, with room for a reconnect racing its predecessor.
/// Each costs ~10 KiB; the newest past it is refused (429 `too-many-streams`).
pub const DEFAULT_MAX_STREAMS_PER_AGENT: usize = 8;
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

/// The CC-Gateway's documented HTTPS port.
pub const DEFAULT_GATEWAY_URL: &str = "https://127.0.0.1:8043";
/// A TCP+TLS handshake on a LAN takes milliseconds; 3 s means the gateway is down, and the app
/// should hear 503 quickly rather than hang.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Agent operations answer in well under a second; 10 s matches the gateway's own long-poll
/// wait, beyond which an app would rather see 504 than keep a user waiting.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Idle pooled connections are kept for 90 s (below common LB idle timeouts of 120 s, so we
/// close first and never write into a connection the NSLB already dropped).
pub const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 90_000;
/// Idle connections kept per gateway host for app requests, sign-ins and sign-outs (each
/// poller keeps a connection of its own outside the pool). Below the peak number of requests
/// in flight, connections returned past the cap are closed and re-opened at the next burst, a
/// TLS handshake each; the pool grows only to the concurrency actually seen (64 connections
/// at the benchmark's 64 in flight), so a generous cap costs nothing. Idle connections still
/// close after `pool_idle_timeout_ms`.
pub const DEFAULT_POOL_MAX_IDLE: usize = 1024;

/// Clock skew tolerated on `exp`/`nbf`. Small on purpose: 30 s covers NTP-synced hosts, and a
/// larger value extends the life of every stolen token.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Claim that names the agent (work number) a token acts for.
pub const DEFAULT_AGENT_CLAIM: &str = "agent_id";
/// Verified tokens remembered (by SHA-256), so a token seen again skips the signature check.
/// 10k covers every live token of a large contact center; an entry is ~150 bytes.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 10_000;
/// Longest reuse of one verification: bounds how long a token keeps passing after its key
/// left the JWKS (a restart or config change clears the cache at once). Each token's reuse
/// ends up to a quarter of it early (`edge::auth::TTL_SPREAD`).
pub const DEFAULT_TOKEN_CACHE_TTL_SECS: u64 = 60;
/// Claim that names the tenant, for per-tenant rate limits.
pub const DEFAULT_TENANT_CLAIM: &str = "tenant";
/// Soonest refresh of a remote key set, whatever its cache headers say: a provider answering
/// `max-age=0` must not be asked on every request's behalf.
pub const DEFAULT_JWKS_REFRESH_MIN_SECS: u64 = 60;
/// Latest refresh of a remote key set: a key the provider removed stops verifying within 10
/// minutes, Envoy's `remote_jwks` default cache duration.
pub const DEFAULT_JWKS_REFRESH_MAX_SECS: u64 = 600;
/// A token naming an unknown key triggers at most one fetch this often: the first token
/// signed with a rotated-in key is accepted at once, and tokens with made-up key ids cannot
/// make ccgate hammer the provider.
pub const DEFAULT_JWKS_UNKNOWN_KID_INTERVAL_SECS: u64 = 30;
/// A JWKS or discovery document is a few KiB; 5 s means the provider is down.
/// Signature checks of tokens ccgate has not verified before that may run at once; 0 picks
/// half the cores (at least one). A flood of distinct forged tokens then costs at most that
/// share of the CPU, whoever sends it, while tokens already verified (a hash lookup) are
/// served on the rest; new valid tokens wait their turn instead of being refused.
pub const DEFAULT_MAX_CONCURRENT_VERIFICATIONS: usize = 0;
pub const DEFAULT_JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;
/// At start-up, serving waits this long for every remote key set; past it ccgate serves
/// anyway, not ready (`/readyz`), and refuses that provider's tokens with 503 until keys come.
pub const DEFAULT_JWKS_STARTUP_WAIT_MS: u64 = 10_000;

/// The gateway's long poll answers after about 10 s when idle; the read timeout must be above
/// that or every idle poll would look like a failure.
pub const DEFAULT_POLL_TIMEOUT_MS: u64 = 15_000;
/// Huawei's clients pause 200-500 ms between polls; 300 ms is in that band.
pub const DEFAULT_POLL_PAUSE_MS: u64 = 300;
/// First back-off after a failed poll; doubled up to the maximum.
pub const DEFAULT_POLL_BACKOFF_MS: u64 = 500;
/// Cap of the poll back-off: well inside MAXTIME (120 s) so a recovering gateway does not sign
/// the agent out for silence.
pub const DEFAULT_POLL_BACKOFF_MAX_MS: u64 = 10_000;
/// How long `POST /v1/conference` waits for the gateway's RequestSuccess/RequestFailed event
/// before answering 202 (pending). Conference set-up normally completes in under a second.
pub const DEFAULT_CONFERENCE_WAIT_MS: u64 = 5_000;
/// How long `agentevent` on the pass-through face waits for an event before answering
/// empty: the gateway's own long-poll wait, so integrators' pacing stays right.
pub const DEFAULT_FACE_EVENT_WAIT_MS: u64 = 10_000;
/// Events kept per agent for the app; an app that reconnects within a few minutes of normal
/// call-center traffic (a few events a minute) can resume without a gap.
pub const DEFAULT_EVENT_BUFFER: usize = 256;
/// An agent whose app has sent nothing this long is signed out at the gateway: 120 s is the
/// gateway's own MAXTIME, so ccgate's polling never keeps alive an agent nobody uses.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Agents one replica holds at most: memory is bounded by configuration, not by traffic.
/// 10,000 is the scale the benchmark measures (bench/RESULTS.md, scenario d); raise it with
/// the memory the README's sizing table gives.
pub const DEFAULT_MAX_AGENTS: usize = 10_000;
/// Gateway sign-ins in flight at once. A sign-in is one round trip of a few milliseconds, so
/// 32 at once sign 10,000 agents in within seconds while never opening thousands of
/// connections and sign-ins at the gateway in the same instant.
pub const DEFAULT_SIGNIN_CONCURRENCY: usize = 32;
/// Sign-ins queued behind those: a whole 10,000-agent storm waits its turn instead of failing.
pub const DEFAULT_SIGNIN_QUEUE: usize = 10_000;
/// Re-polls after a failure start at most 200 a second: 10,000 agents are all polling again
/// within 50 s of a gateway's return, well inside its 120 s MAXTIME, and it never gets more
/// than 20 of them in any 100 ms.
pub const DEFAULT_REPOLL_RATE: u32 = 200;
/// Every key ccgate writes in Redis starts with this, so one Redis can serve other apps (or
/// several ccgate deployments, each with its own prefix).
pub const DEFAULT_KEY_PREFIX: &str = "ccgate:";
/// Redis answers in well under a millisecond; a second means it is down or overloaded, and a
/// request should not wait longer than that on it before falling back.
pub const DEFAULT_STORE_COMMAND_TIMEOUT_MS: u64 = 1_000;
/// Connecting to Redis on start-up and after a failure.
pub const DEFAULT_STORE_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// A poller's lease lives this long without renewal. The gateway's long poll waits about 10 s,
/// so a dead owner's agent is polled again within two poll intervals, far inside the
/// gateway's 120 s MAXTIME.
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    /// The one-gateway shorthand (with `[credentials]`); `[[gateways]]` for several.
    pub gateway: GatewayConfig,
    /// Several contact centres, each its own CC-Gateway; the token picks one
    /// (`auth.gateway_claim`, or the provider's `gateway`). Adding or removing one needs a
    /// restart; its credentials file and tenants reload.
    pub gateways: Vec<GatewayConfig>,
    pub auth: AuthConfig,
    pub credentials: CredentialsConfig,
    pub sessions: SessionsConfig,
    pub policy: PolicyConfig,
    pub rate_limits: RateLimitsConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Plain HTTP; keep it on loopback or a pod-internal address.
    pub listen: SocketAddr,
    /// `/readyz` also requires the gateway to be reachable. Off by default: in a sidecar pod a
    /// CC-Gateway outage would otherwise take every app replica out of its Service, though
    /// the app may have other work; the gateway's state is on `/gatewayz` and
    /// `ccgate_gateway_up` either way.
    pub ready_requires_gateway: bool,
    /// `/readyz` also requires the shared store (Redis) to answer. Off by default: every
    /// replica keeps serving its agents from its own copies while Redis is away, so taking
    /// every pod out of its Service for a Redis blip would turn a degraded store into an
    /// outage. `ccgate_store_up` and the `CcgateStoreDown` alert report it either way.
    pub ready_requires_store: bool,
    /// Who may read `/agents` and the status page (every agent's state, no secret).
    pub agents_from: AgentsAccess,
    /// Names (the `Host` header, without port) the agents views, the status page and reload
    /// answer to, besides IP addresses and `localhost`: a page on another site whose name
    /// resolves to this listener (DNS rebinding) is refused. Probes and `/metrics` answer any
    /// `Host`.
    pub hosts: Vec<String>,
}

/// Who may read the admin listener's agent views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentsAccess {
    /// Loopback peers only (the default): an operator on the host, or `kubectl port-forward`,
    /// which arrives on loopback; probes and scrapers on the pod address see nothing of the
    /// agents.
    #[default]
    Loopback,
    /// Any peer that reaches the admin listener (keep it on a private address then).
    Anywhere,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: parse_addr(DEFAULT_ADMIN_LISTEN),
            ready_requires_gateway: false,
            ready_requires_store: false,
            agents_from: AgentsAccess::Loopback,
            hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// A short label (`[a-z0-9-]`, at most [`MAX_GATEWAY_NAME_LEN`]): the `gateway` of
    /// metrics, logs and the agents view. Required in `[[gateways]]`; the shorthand's is
    /// [`DEFAULT_GATEWAY_NAME`].
    pub name: String,
    /// `https://host:port` of the CC-Gateway or the NSLB in front of it.
    pub url: String,
    /// PEM bundle of CAs trusted for the gateway. Gateways commonly use private CAs; there is
    /// deliberately no "skip verification" switch.
    pub ca_file: Option<PathBuf>,
    /// TLS server name to verify when the gateway is dialled by IP and its certificate names
    /// a host.
    pub tls_server_name: Option<String>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_host: usize,
    /// This gateway's agents' credentials (as `credentials.file`); the shorthand may use
    /// `[credentials] file` instead.
    pub credentials_file: Option<PathBuf>,
    /// Values of `auth.gateway_claim` whose tokens this gateway serves.
    pub tenants: Vec<String>,
    /// Agents of this gateway held at most (beside `sessions.max_agents` for all together);
    /// 0: only that bound.
    pub max_agents: usize,
}

/// The shorthand `[gateway]`'s name. A `[[gateways]]` entry of this name keeps the shorthand's
/// Redis keys, so a deployment can move from one form to the other without losing sessions.
pub const DEFAULT_GATEWAY_NAME: &str = "default";
/// Gateways one ccgate fronts at most: every one has its own connection pool, poller set and
/// metric series, so the bound keeps series and memory bounded by the config.
pub const MAX_GATEWAYS: usize = 64;
/// A gateway name is a metric label value and part of Redis keys: short and plain.
pub const MAX_GATEWAY_NAME_LEN: usize = 32;

/// Where the gateway named `name` keeps its agents in the shared store (see
/// [`GatewayConfig::namespace`]).
pub fn namespace_of(name: &str) -> &str {
    if name == DEFAULT_GATEWAY_NAME {
        ""
    } else {
        name
    }
}

impl GatewayConfig {
    /// Where this gateway's agents live in the shared store: nothing for the default gateway
    /// (the keys of one-gateway ccgate), else its name.
    pub fn namespace(&self) -> &str {
        namespace_of(&self.name)
    }

    /// Checks one gateway; on error, the field to blame and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |field, why: &str| Err((field, why.to_owned()));
        let valid_name = !self.name.is_empty()
            && self.name.len() <= MAX_GATEWAY_NAME_LEN
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return bad("name", "required: 1 to 32 of a-z, 0-9 and -");
        }
        let url: http::Uri = self.url.parse().map_err(|e| ("url", format!("{e}")))?;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return bad("url", "must be an https:// URL with a host");
        }
        if url.path() != "/" && !url.path().is_empty() {
            return bad("url", "must not have a path; ccgate adds /agentgateway/resource/");
        }
        if self.connect_timeout_ms == 0 {
            return bad("connect_timeout_ms", "must be greater than 0");
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms", "must be greater than 0");
        }
        if let Some(name) = &self.tls_server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return bad("tls_server_name", "not a valid DNS name or IP address");
            }
        }
        if self.credentials_file.is_none() {
            return bad("credentials_file", "required: agents' CTI passwords and phone numbers");
        }
        if self.tenants.iter().any(String::is_empty) {
            return bad("tenants", "must not contain an empty value");
        }
        Ok(())
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: DEFAULT_GATEWAY_URL.to_owned(),
            ca_file: None,
            tls_server_name: None,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            pool_idle_timeout_ms: DEFAULT_POOL_IDLE_TIMEOUT_MS,
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE,
            credentials_file: None,
            tenants: Vec::new(),
            max_agents: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Required `iss` of the one-issuer shorthand: with it, the keys below (`audience`,
    /// `jwks_file`/`jwks_url`/`oidc_discovery`, `algorithms`, claims) describe one provider.
    /// More issuers go in `[[auth.providers]]`; both may be used together.
    pub issuer: String,
    /// Required `aud` of the shorthand provider (one of the token's audiences must match).
    pub audience: String,
    /// JSON Web Key Set file with the apps' public keys (re-read on reload).
    pub jwks_file: Option<PathBuf>,
    /// HTTPS URL of the provider's JWKS, fetched and refreshed.
    pub jwks_url: Option<String>,
    /// Find the JWKS URL through `{issuer}/.well-known/openid-configuration`.
    pub oidc_discovery: bool,
    /// PEM bundle of CAs trusted for `jwks_url`/discovery; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Allowed signature algorithms. HS256 is accepted only with `hs256_secret_file`.
    pub algorithms: Vec<String>,
    /// Shared secret for HS256 tokens (file content, trailing newline trimmed).
    pub hs256_secret_file: Option<PathBuf>,
    /// Claim naming the agent's work number (string or number, 101..999999).
    pub agent_claim: String,
    /// Claim naming the tenant (per-tenant rate limits); tokens without it share their
    /// gateway's "no tenant" bucket.
    pub tenant_claim: String,
    /// With `[[gateways]]`: the claim naming the token's contact centre, matched against each
    /// gateway's `tenants` (empty: the gateway comes from the provider's `gateway`).
    pub gateway_claim: String,
    /// The gateway the shorthand provider's tokens go to (with `[[gateways]]`).
    pub gateway: Option<String>,
    /// Further identity providers; a token is checked against the one its `iss` names.
    pub providers: Vec<ProviderConfig>,
    // Shared by every provider.
    pub leeway_secs: u64,
    /// Verified tokens remembered; 0 turns the cache off.
    pub cache_size: usize,
    pub cache_ttl_secs: u64,
    pub jwks_refresh_min_secs: u64,
    pub jwks_refresh_max_secs: u64,
    pub jwks_unknown_kid_interval_secs: u64,
    pub jwks_fetch_timeout_ms: u64,
    pub jwks_startup_wait_ms: u64,
    /// Signature checks of not-yet-verified tokens running at once (0: half the cores).
    pub max_concurrent_verifications: usize,
    /// A budget of refused tokens per client address (20, then 1/s; past it 429 without a
    /// check). Off by default: clients share addresses (every app of a pod is 127.0.0.1,
    /// everyone behind a balancer is the balancer), and a budget keyed on a shared address
    /// lets one client's bad tokens lock out the others. Loopback clients are never budgeted.
    pub per_client_refusal_budget: bool,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the client for that
    /// budget; from any other peer the header is ignored.
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: None,
            jwks_url: None,
            oidc_discovery: false,
            ca_file: None,
            algorithms: default_algorithms(),
            hs256_secret_file: None,
            agent_claim: DEFAULT_AGENT_CLAIM.to_owned(),
            tenant_claim: DEFAULT_TENANT_CLAIM.to_owned(),
            gateway_claim: String::new(),
            gateway: None,
            providers: Vec::new(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            cache_size: DEFAULT_TOKEN_CACHE_SIZE,
            cache_ttl_secs: DEFAULT_TOKEN_CACHE_TTL_SECS,
            jwks_refresh_min_secs: DEFAULT_JWKS_REFRESH_MIN_SECS,
            jwks_refresh_max_secs: DEFAULT_JWKS_REFRESH_MAX_SECS,
            jwks_unknown_kid_interval_secs: DEFAULT_JWKS_UNKNOWN_KID_INTERVAL_SECS,
            jwks_fetch_timeout_ms: DEFAULT_JWKS_FETCH_TIMEOUT_MS,
            jwks_startup_wait_ms: DEFAULT_JWKS_STARTUP_WAIT_MS,
            max_concurrent_verifications: DEFAULT_MAX_CONCURRENT_VERIFICATIONS,
            per_client_refusal_budget: false,
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

fn default_agent_claim() -> String {
    DEFAULT_AGENT_CLAIM.to_owned()
}

fn default_tenant_claim() -> String {
    DEFAULT_TENANT_CLAIM.to_owned()
}

/// One identity provider (`[[auth.providers]]`, or the `[auth]` shorthand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them.
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub oidc_discovery: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_agent_claim")]
    pub agent_claim: String,
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// With `[[gateways]]`: every token of this provider goes to this gateway.
    #[serde(default)]
    pub gateway: Option<String>,
}

/// Where a provider's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    /// Fetched from this HTTPS URL.
    Url(String),
    /// Fetched from the `jwks_uri` of the issuer's discovery document.
    Discovery,
    /// HS256 only: no public keys.
    None,
}

impl ProviderConfig {
    pub fn key_source(&self) -> KeySource {
        match (&self.jwks_file, &self.jwks_url, self.oidc_discovery) {
            (Some(p), _, _) => KeySource::File(p.clone()),
            (None, Some(u), _) => KeySource::Url(u.clone()),
            (None, None, true) => KeySource::Discovery,
            (None, None, false) => KeySource::None,
        }
    }

    /// Checks one provider; on error, names the field to blame and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |field, why: &str| Err((field, why.to_owned()));
        if self.issuer.is_empty() {
            return bad("issuer", "required: tokens must name their issuer");
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return bad("audience", "required: tokens must name ccgate's audience");
        }
        let sources = [self.jwks_file.is_some(), self.jwks_url.is_some(), self.oidc_discovery];
        match sources.iter().filter(|s| **s).count() {
            0 if self.hs256_secret_file.is_none() => {
                return bad(
                    "jwks_file",
                    "name the keys: jwks_file, jwks_url or oidc_discovery = true (or hs256_secret_file)",
                )
            }
            0 | 1 => {}
            _ => return bad("jwks_file", "jwks_file, jwks_url and oidc_discovery are alternatives; set one"),
        }
        if let Some(url) = &self.jwks_url {
            check_https_url(url).map_err(|why| ("jwks_url", why))?;
        }
        if self.oidc_discovery {
            check_https_url(&self.issuer)
                .map_err(|why| ("oidc_discovery", format!("needs an issuer that is an https:// URL: it {why}")))?;
        }
        if self.ca_file.is_some() && self.jwks_url.is_none() && !self.oidc_discovery {
            return bad("ca_file", "only used with jwks_url or oidc_discovery");
        }
        if self.algorithms.is_empty() {
            return bad("algorithms", "list at least one algorithm");
        }
        for alg in &self.algorithms {
            match alg.as_str() {
                "RS256" | "ES256" | "EdDSA" => {}
                "HS256" if self.hs256_secret_file.is_some() => {}
                "HS256" => return bad("algorithms", "HS256 needs hs256_secret_file"),
                other => {
                    return Err(("algorithms", format!("unsupported algorithm {other:?} (RS256, ES256, EdDSA, HS256)")))
                }
            }
        }
        if self.agent_claim.is_empty() {
            return bad("agent_claim", "must name a claim");
        }
        Ok(())
    }
}

/// `Ok` for an `https://` URL with a host; else says why not.
fn check_https_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("is not a URL ({e})"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err("must be an https:// URL with a host".into());
    }
    Ok(())
}

impl AuthConfig {
    /// Every provider: the shorthand's (when `issuer` is set) first, then `[[auth.providers]]`.
    pub fn all_providers(&self) -> Vec<ProviderConfig> {
        let mut v = Vec::with_capacity(self.providers.len() + 1);
        if !self.issuer.is_empty() || self.providers.is_empty() {
            v.push(ProviderConfig {
                issuer: self.issuer.clone(),
                audiences: if self.audience.is_empty() { Vec::new() } else { vec![self.audience.clone()] },
                jwks_file: self.jwks_file.clone(),
                jwks_url: self.jwks_url.clone(),
                oidc_discovery: self.oidc_discovery,
                ca_file: self.ca_file.clone(),
                hs256_secret_file: self.hs256_secret_file.clone(),
                algorithms: self.algorithms.clone(),
                agent_claim: self.agent_claim.clone(),
                tenant_claim: self.tenant_claim.clone(),
                gateway: self.gateway.clone(),
            });
        }
        v.extend(self.providers.iter().cloned());
        v
    }

    /// How remote key sets are refreshed.
    pub fn refresh(&self) -> JwksRefresh {
        JwksRefresh {
            min: Duration::from_secs(self.jwks_refresh_min_secs),
            max: Duration::from_secs(self.jwks_refresh_max_secs),
            unknown_kid_interval: Duration::from_secs(self.jwks_unknown_kid_interval_secs),
            fetch_timeout: ms(self.jwks_fetch_timeout_ms),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        let shorthand_set = self.jwks_file.is_some()
            || self.jwks_url.is_some()
            || self.oidc_discovery
            || self.hs256_secret_file.is_some()
            || !self.audience.is_empty();
        if self.issuer.is_empty() && shorthand_set {
            return invalid("auth.issuer", "required with the other [auth] provider keys (audience, jwks_*)".into());
        }
        let providers = self.all_providers();
        let shorthand = usize::from(!self.issuer.is_empty() || self.providers.is_empty());
        for (i, p) in providers.iter().enumerate() {
            if let Err((field, why)) = p.validate() {
                if i < shorthand {
                    let key = match field {
                        "issuer" => "auth.issuer",
                        "audience" => "auth.audience",
                        "jwks_url" => "auth.jwks_url",
                        "oidc_discovery" => "auth.oidc_discovery",
                        "ca_file" => "auth.ca_file",
                        "algorithms" => "auth.algorithms",
                        "agent_claim" => "auth.agent_claim",
                        _ => "auth.jwks_file",
                    };
                    return invalid(key, why);
                }
                return invalid("auth.providers", format!("provider {} ({}): {field}: {why}", i - shorthand, p.issuer));
            }
            if providers[..i].iter().any(|q| q.issuer == p.issuer) {
                return invalid("auth.providers", format!("issuer {:?} is configured twice", p.issuer));
            }
        }
        if self.jwks_refresh_min_secs == 0 {
            return invalid("auth.jwks_refresh_min_secs", "must be at least 1".into());
        }
        if self.jwks_refresh_max_secs < self.jwks_refresh_min_secs {
            return invalid("auth.jwks_refresh_max_secs", "must not be below auth.jwks_refresh_min_secs".into());
        }
        if self.jwks_fetch_timeout_ms == 0 {
            return invalid("auth.jwks_fetch_timeout_ms", "must be greater than 0".into());
        }
        if self.jwks_unknown_kid_interval_secs == 0 {
            // 0 would let every token with a random kid trigger a fetch from the provider.
            return invalid("auth.jwks_unknown_kid_interval_secs", "must be at least 1".into());
        }
        for p in &self.trusted_proxies {
            if let Err(why) = parse_cidr(p) {
                return invalid("auth.trusted_proxies", format!("{p:?}: {why}"));
            }
        }
        Ok(())
    }
}

/// How remote key sets are refreshed (from `[auth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksRefresh {
    /// Never sooner than this, whatever the provider's cache headers say.
    pub min: Duration,
    /// Never later than this (also when the provider sends no cache headers).
    pub max: Duration,
    /// A token naming a key ccgate does not know triggers a fetch at most this often.
    pub unknown_kid_interval: Duration,
    pub fetch_timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// TOML file `[agents."153"] password = "..." phonenum = "..."`; must not be readable by
    /// group or others.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    pub poll_timeout_ms: u64,
    pub poll_pause_ms: u64,
    pub poll_backoff_ms: u64,
    pub poll_backoff_max_ms: u64,
    pub conference_wait_ms: u64,
    pub event_buffer: usize,
    /// Sign the agent out after this much silence from its app; 0 never does.
    pub idle_timeout_ms: u64,
    /// When the gateway ends a session, sign in again (once) and retry the request (once).
    /// Off by default: an agent forced out by a supervisor should stay out.
    pub resume: bool,
    /// Sign every agent out at the gateway when ccgate shuts down.
    pub sign_out_on_shutdown: bool,
    /// `agentevent` on the pass-through face waits this long for an event.
    pub face_event_wait_ms: u64,
    /// Agents this replica holds at most; a sign-in past it gets 503 `too-many-agents`.
    pub max_agents: usize,
    /// Open event streams per agent on this replica; the newest past it gets 429
    /// `too-many-streams`.
    pub max_streams_per_agent: usize,
    /// Gateway sign-ins in flight at once; more wait in a queue.
    pub signin_concurrency: usize,
    /// Sign-ins waiting for a turn at most; past it 503 `sign-in-busy`.
    pub signin_queue: usize,
    /// Polls after a failure start at most this many per second (all agents together); 0
    /// does not pace.
    pub repoll_rate: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            poll_timeout_ms: DEFAULT_POLL_TIMEOUT_MS,
            poll_pause_ms: DEFAULT_POLL_PAUSE_MS,
            poll_backoff_ms: DEFAULT_POLL_BACKOFF_MS,
            poll_backoff_max_ms: DEFAULT_POLL_BACKOFF_MAX_MS,
            conference_wait_ms: DEFAULT_CONFERENCE_WAIT_MS,
            event_buffer: DEFAULT_EVENT_BUFFER,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            resume: false,
            sign_out_on_shutdown: true,
            face_event_wait_ms: DEFAULT_FACE_EVENT_WAIT_MS,
            max_agents: DEFAULT_MAX_AGENTS,
            max_streams_per_agent: DEFAULT_MAX_STREAMS_PER_AGENT,
            signin_concurrency: DEFAULT_SIGNIN_CONCURRENCY,
            signin_queue: DEFAULT_SIGNIN_QUEUE,
            repoll_rate: DEFAULT_REPOLL_RATE,
        }
    }
}

/// Where agents' sessions live: in this process, or in Redis shared by every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Each replica holds its own agents; an agent must stick to one replica.
    #[default]
    Memory,
    /// Sessions, events, conference state, activity and limits shared through Redis.
    Redis,
}

/// How ccgate finds the Redis primary, and follows it through a failover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreMode {
    /// `store.url` names the primary: one server, or a managed endpoint or VIP whose name
    /// follows the primary (ElastiCache, Memorystore, Azure Cache). ccgate connects afresh,
    /// resolving the name again, when the node it holds stops taking writes.
    #[default]
    Standalone,
    /// The sentinels in `store.nodes` name the primary of `store.sentinel_master`.
    Sentinel,
    /// Redis Cluster, reached through the seed nodes in `store.nodes`.
    Cluster,
}

impl StoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Sentinel => "sentinel",
            Self::Cluster => "cluster",
        }
    }
}

/// At most this many sentinels or seed nodes: a Sentinel quorum is 3 or 5, a cluster needs
/// only a few seeds to learn the rest.
pub const MAX_STORE_NODES: usize = 16;

/// What a rate limit does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitsFallback {
    /// Each replica applies the limit by itself (N replicas: up to N times the limit).
    #[default]
    Local,
    /// Refuse limited operations with 503 until Redis is back.
    Closed,
}

/// What a replica in Redis mode does with its agents when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownMode {
    /// Hand the pollers over to the other replicas; sign agents out only when no other
    /// replica is alive (and `sessions.sign_out_on_shutdown` is on). Rollouts sign nobody out.
    #[default]
    Handover,
    /// Sign out the agents this replica polls, as the memory store does.
    SignOut,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// How ccgate finds the Redis primary: one endpoint, Sentinel, or Redis Cluster.
    pub mode: StoreMode,
    /// `redis://[user:password@]host:port/db` or `rediss://...` (TLS). Required for Redis.
    /// Secret because it may carry the Redis password; `check-config` prints it without.
    /// With `mode = "sentinel"` or `"cluster"` it gives the scheme, credentials and database
    /// only (`rediss://user:password@/0`); the hosts are `nodes`.
    #[serde(serialize_with = "serialize_store_url")]
    pub url: Option<Secret>,
    /// `host:port` of the sentinels (`mode = "sentinel"`) or of the cluster's seed nodes
    /// (`mode = "cluster"`).
    pub nodes: Vec<String>,
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    pub sentinel_master: Option<String>,
    /// How to reach the sentinels themselves: `redis://[user:password@]` or `rediss://...`
    /// (host ignored). Unset: `url`'s scheme, no credentials (sentinels often have none).
    #[serde(serialize_with = "serialize_store_url")]
    pub sentinel_url: Option<Secret>,
    /// PEM bundle of CAs trusted for `rediss://` (as `gateway.ca_file`); the system roots
    /// when unset.
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub command_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub lease_ttl_ms: u64,
    pub limits_fallback: LimitsFallback,
    pub on_shutdown: ShutdownMode,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Memory,
            mode: StoreMode::Standalone,
            url: None,
            nodes: Vec::new(),
            sentinel_master: None,
            sentinel_url: None,
            ca_file: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            command_timeout_ms: DEFAULT_STORE_COMMAND_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_STORE_CONNECT_TIMEOUT_MS,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            limits_fallback: LimitsFallback::Local,
            on_shutdown: ShutdownMode::Handover,
        }
    }
}

/// What to do with a chair-only request when ccgate does not know whether the agent is chair
/// (the session was taken over with forcelogin, so conference events were missed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownChair {
    /// Let the gateway judge: it answers 101-002 itself if the agent is not chair.
    #[default]
    Forward,
    /// Refuse locally.
    Deny,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub on_unknown_chair: UnknownChair,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directives; `RUST_LOG` wins when set.
    pub level: String,
    /// OTLP/HTTP endpoint for the request spans (`http://127.0.0.1:4318/v1/traces`, an
    /// OpenTelemetry Collector beside ccgate); none, the default, exports nothing.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub otlp_service_name: String,
}

/// What traces show ccgate as unless told otherwise.
pub const DEFAULT_OTLP_SERVICE_NAME: &str = "ccgate";

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
            otlp_endpoint: None,
            otlp_service_name: DEFAULT_OTLP_SERVICE_NAME.into(),
        }
    }
}

fn parse_addr(s: &str) -> SocketAddr {
    // The defaults above are literals checked by a unit test; this cannot fail at run time.
    s.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// A configuration problem, naming the key where one is to blame.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: check the path and permissions.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The TOML did not parse or a value has the wrong type; the message shows the key.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("invalid config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Loads `path` (if it exists or was asked for explicitly), applies environment overrides,
    /// and validates.
    pub fn load(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        let config: Config = load_with_env(path, must_exist, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text, applies `CCGATE__SECTION__KEY` overrides from `env`, validates.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config: Config = parse_with_env(text, env, ENV_PREFIX)?;
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        if let Some(ep) = &self.log.otlp_endpoint {
            if !ep.starts_with("http://") || ep.parse::<http::Uri>().is_err() {
                return invalid(
                    "log.otlp_endpoint",
                    "an http:// URL of an OTLP/HTTP receiver, e.g. http://127.0.0.1:4318/v1/traces (a collector beside ccgate)",
                );
            }
        }
        match (&self.server.tls_cert, &self.server.tls_key, self.server.plaintext) {
            (Some(_), Some(_), false) => {}
            (None, None, true) => {
                if !self.server.listen.ip().is_loopback() {
                    return invalid(
                        "server.plaintext",
                        "plain HTTP is only allowed on a loopback address; configure tls_cert and tls_key",
                    );
                }
            }
            (_, _, true) => return invalid("server.plaintext", "set either plaintext or tls_cert/tls_key, not both"),
            (None, _, false) => return invalid("server.tls_cert", "required unless server.plaintext = true"),
            (Some(_), None, false) => return invalid("server.tls_key", "required with tls_cert"),
        }
        if self.server.drain_delay_ms > self.server.shutdown_grace_ms {
            return invalid("server.drain_delay_ms", "must not exceed server.shutdown_grace_ms");
        }
        for (key, v) in [
            ("server.tls_handshake_timeout_ms", self.server.tls_handshake_timeout_ms),
            ("server.header_read_timeout_ms", self.server.header_read_timeout_ms),
            ("server.body_read_timeout_ms", self.server.body_read_timeout_ms),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0: a connection needs a deadline for each step");
            }
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be greater than 0");
        }
        if let Some(h) = self.admin.hosts.iter().find(|h| {
            h.is_empty() || h.len() > 253 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }) {
            return invalid(
                "admin.hosts",
                &format!("{h:?} is not a host name (letters, digits, '-' and '.'; no port)"),
            );
        }
        if self.server.max_streams_per_connection == 0 {
            return invalid("server.max_streams_per_connection", "must be greater than 0");
        }
        if self.sessions.max_streams_per_agent == 0 {
            return invalid("sessions.max_streams_per_agent", "must be greater than 0");
        }
        if self.server.max_body_bytes == 0 {
            return invalid("server.max_body_bytes", "must be greater than 0");
        }
        self.validate_gateways()?;
        self.auth.validate()?;
        if self.sessions.poll_timeout_ms == 0 {
            return invalid("sessions.poll_timeout_ms", "must be greater than 0");
        }
        if let Err((key, reason)) = self.rate_limits.validate() {
            return Err(ConfigError::Invalid { key, reason });
        }
        if self.sessions.max_agents == 0 {
            return invalid("sessions.max_agents", "must be greater than 0");
        }
        if self.sessions.signin_concurrency == 0 {
            return invalid("sessions.signin_concurrency", "must be greater than 0");
        }
        if self.sessions.event_buffer == 0 {
            return invalid("sessions.event_buffer", "must be greater than 0");
        }
        self.validate_store()
    }

    /// The gateways ccgate fronts, in config order (a gateway's index is its place here): the
    /// `[[gateways]]` entries, or the shorthand `[gateway]` + `[credentials]` named
    /// [`DEFAULT_GATEWAY_NAME`].
    pub fn gateway_list(&self) -> Vec<GatewayConfig> {
        if !self.gateways.is_empty() {
            return self.gateways.clone();
        }
        let mut g = self.gateway.clone();
        if g.name.is_empty() {
            g.name = DEFAULT_GATEWAY_NAME.into();
        }
        if g.credentials_file.is_none() {
            g.credentials_file = self.credentials.file.clone();
        }
        vec![g]
    }

    fn validate_gateways(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        // A claim with no tenant to match would refuse every token.
        if !self.auth.gateway_claim.is_empty() && self.gateway_list().iter().all(|g| g.tenants.is_empty()) {
            return invalid(
                "auth.gateway_claim",
                "set, but no gateway lists tenants: every token would be refused".into(),
            );
        }
        if self.gateways.is_empty() {
            if self.gateway.credentials_file.is_none() && self.credentials.file.is_none() {
                return invalid("credentials.file", "required: agents' CTI passwords and phone numbers".into());
            }
            if self.gateway.credentials_file.is_some() && self.credentials.file.is_some() {
                return invalid("gateway.credentials_file", "set it or credentials.file, not both".into());
            }
            if let Err((field, why)) = self.gateway_list()[0].validate() {
                let key = match field {
                    "name" => "gateway.name",
                    "url" => "gateway.url",
                    "connect_timeout_ms" => "gateway.connect_timeout_ms",
                    "request_timeout_ms" => "gateway.request_timeout_ms",
                    "tls_server_name" => "gateway.tls_server_name",
                    "credentials_file" => "credentials.file",
                    _ => "gateway.tenants",
                };
                return invalid(key, why);
            }
            return Ok(());
        }
        if self.gateway != GatewayConfig::default() || self.credentials.file.is_some() {
            return invalid(
                "gateways",
                "use either [gateway] with [credentials] (one gateway) or [[gateways]], not both".into(),
            );
        }
        if self.gateways.len() > MAX_GATEWAYS {
            return invalid("gateways", format!("at most {MAX_GATEWAYS} gateways"));
        }
        for (i, g) in self.gateways.iter().enumerate() {
            if let Err((field, why)) = g.validate() {
                return invalid("gateways", format!("gateway {i} ({}): {field}: {why}", g.name));
            }
            if self.gateways[..i].iter().any(|h| h.name == g.name) {
                return invalid("gateways", format!("name {:?} is used twice", g.name));
            }
            for t in &g.tenants {
                if let Some(other) = self.gateways[..i].iter().find(|h| h.tenants.contains(t)) {
                    return invalid(
                        "gateways",
                        format!(
                            "tenant {t:?} is listed by both {:?} and {:?}: a token must name one",
                            other.name, g.name
                        ),
                    );
                }
            }
        }
        let names: Vec<&str> = self.gateways.iter().map(|g| g.name.as_str()).collect();
        let providers = self.auth.all_providers();
        for p in &providers {
            if let Some(gw) = p.gateway.as_deref().filter(|gw| !names.contains(gw)) {
                return invalid(
                    "auth.providers",
                    format!("provider {}: gateway {gw:?} is not in [[gateways]]", p.issuer),
                );
            }
        }
        let routed = !self.auth.gateway_claim.is_empty() || providers.iter().all(|p| p.gateway.is_some());
        if self.gateways.len() > 1 && !routed {
            return invalid(
                "auth.gateway_claim",
                "with several gateways, set it (and each gateway's tenants) or give every provider a gateway".into(),
            );
        }
        Ok(())
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        let st = &self.store;
        if st.backend == StoreBackend::Memory {
            return Ok(());
        }
        let Some(url) = &st.url else {
            return invalid("store.url", "required with backend = \"redis\" (redis://host:port/db or rediss://...)");
        };
        let url = url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return invalid("store.url", "must start with redis:// or rediss:// (TLS)");
        }
        if st.ca_file.is_some() && !url.starts_with("rediss://") {
            return invalid("store.ca_file", "only used with a rediss:// URL");
        }
        self.validate_store_topology(url)?;
        if st.key_prefix.contains(['{', '}']) {
            return invalid("store.key_prefix", "must not contain { or }: ccgate adds its own Redis Cluster hash tags");
        }
        for (key, v) in [
            ("store.command_timeout_ms", st.command_timeout_ms),
            ("store.connect_timeout_ms", st.connect_timeout_ms),
            ("store.lease_ttl_ms", st.lease_ttl_ms),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        if st.lease_ttl_ms < 300 {
            return invalid("store.lease_ttl_ms", "must be at least 300: the lease is renewed every third of it");
        }
        Ok(())
    }

    /// `store.mode` and what each mode needs: its nodes, the sentinels' master name, and for
    /// a cluster database 0 (the only one a cluster has).
    fn validate_store_topology(&self, url: &str) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        let st = &self.store;
        let (host, db) = store_url_host_db(url);
        match st.mode {
            StoreMode::Standalone => {
                if !st.nodes.is_empty() {
                    return invalid("store.nodes", "only with mode = \"sentinel\" or \"cluster\"".into());
                }
                if host.is_empty() {
                    return invalid(
                        "store.url",
                        "names no host (the host is only left out with mode = \"sentinel\" or \"cluster\")".into(),
                    );
                }
            }
            StoreMode::Sentinel | StoreMode::Cluster => {
                let what = if st.mode == StoreMode::Sentinel { "the sentinels" } else { "the cluster's seed nodes" };
                if st.nodes.is_empty() {
                    return invalid(
                        "store.nodes",
                        format!("lists {what} (host:port) with mode = \"{}\"", st.mode.as_str()),
                    );
                }
                if st.nodes.len() > MAX_STORE_NODES {
                    return invalid("store.nodes", format!("at most {MAX_STORE_NODES}"));
                }
                if let Some(bad) = st.nodes.iter().find(|n| parse_host_port(n).is_none()) {
                    return invalid("store.nodes", format!("{bad:?} is not host:port"));
                }
                if !host.is_empty() {
                    return invalid(
                        "store.url",
                        format!("gives scheme, credentials and database only with mode = \"{}\" (e.g. redis:///0); the hosts are store.nodes", st.mode.as_str()),
                    );
                }
            }
        }
        match st.mode {
            StoreMode::Sentinel => {
                if st
                    .sentinel_master
                    .as_deref()
                    .is_none_or(|m| m.is_empty() || m.len() > 128 || m.contains(char::is_whitespace))
                {
                    return invalid(
                        "store.sentinel_master",
                        "names the master the sentinels monitor (one word) with mode = \"sentinel\"".into(),
                    );
                }
                if let Some(s) = &st.sentinel_url {
                    let s = s.expose();
                    if !(s.starts_with("redis://") || s.starts_with("rediss://")) {
                        return invalid("store.sentinel_url", "must start with redis:// or rediss:// (TLS)".into());
                    }
                }
            }
            _ => {
                if st.sentinel_master.is_some() {
                    return invalid("store.sentinel_master", "only with mode = \"sentinel\"".into());
                }
                if st.sentinel_url.is_some() {
                    return invalid("store.sentinel_url", "only with mode = \"sentinel\"".into());
                }
            }
        }
        if st.mode == StoreMode::Cluster && !matches!(db, "" | "0") {
            return invalid("store.url", "a Redis Cluster has database 0 only".into());
        }
        Ok(())
    }

    /// The effective config as TOML, for `check-config`. Holds paths, never secrets: secrets
    /// live in the files those paths name.
    pub fn to_masked_toml(&self) -> String {
        // Secret fields serialize masked; any other URL (jwks_url, log.otlp_endpoint) loses its
        // user info and query.
        mask_url_secrets(&toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n")))
    }
}

/// Parses TOML text into `T` after applying `{prefix}SECTION__KEY` overrides from `env`.
/// Shared by the proxy's and the simulator's config so both behave alike.
pub fn parse_with_env<T: serde::de::DeserializeOwned + Serialize + Default>(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> Result<T, ConfigError> {
    let file: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
    let schema = toml::Table::try_from(T::default()).unwrap_or_default();
    let overrides: Vec<(String, String)> = env.into_iter().filter(|(name, _)| name.starts_with(prefix)).collect();
    let mut doc = file.clone();
    apply_env_overrides(&mut doc, &schema, overrides.iter().cloned(), prefix)?;
    let merged = toml::to_string(&doc).map_err(|e| ConfigError::Parse(e.to_string()))?;
    toml::from_str(&merged).map_err(|e: toml::de::Error| {
        // A message quoting a line of the merged document would show text the user never
        // wrote: when a variable is what breaks it, name the variable instead.
        blame_override::<T>(&file, &schema, &overrides, prefix).unwrap_or_else(|| ConfigError::Parse(e.to_string()))
    })
}

/// The first override that on its own makes the file fail to deserialize as `T`, as an error
/// naming the variable, its key and what is wrong (`None` when the file fails by itself).
fn blame_override<T: serde::de::DeserializeOwned>(
    file: &toml::Table,
    schema: &toml::Table,
    overrides: &[(String, String)],
    prefix: &str,
) -> Option<ConfigError> {
    let parses = |doc: &toml::Table| -> Result<(), toml::de::Error> {
        let text = toml::to_string(doc).unwrap_or_default();
        toml::from_str::<T>(&text).map(|_| ())
    };
    parses(file).ok()?;
    overrides.iter().find_map(|(name, value)| {
        let mut doc = file.clone();
        apply_env_overrides(&mut doc, schema, [(name.clone(), value.clone())], prefix).ok()?;
        let e = parses(&doc).err()?;
        let key = name[prefix.len()..].split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
        Some(ConfigError::Parse(format!("environment variable {name} (config key `{key}`): {}", e.message())))
    })
}

/// Reads `path` (missing is fine unless `must_exist`) and parses it with overrides.
pub fn load_with_env<T: serde::de::DeserializeOwned + Serialize + Default>(
    path: &Path,
    must_exist: bool,
    prefix: &str,
) -> Result<T, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
        Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
    };
    parse_with_env(&text, std::env::vars(), prefix)
}

/// Variables that start like ccgate's but set nothing: `CCGATE_GATEWAY_URL` (one underscore)
/// or any other `CCGATE_` name that is neither an override (`CCGATE__...`), the simulator's
/// (`CCGATE_SIM__...`) nor one ccgate reads by name. Each comes with a hint. A typo'd
/// override key (`CCGATE__GATEWAY__URLL`) is not listed here: it fails the parse, naming the key.
pub fn stray_env_vars(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    /// Variables read by name (clap's `env`, the test harness's tool directory).
    const KNOWN: &[&str] = &["CCGATE_CONFIG", "CCGATE_TOOLS_DIR"];
    let mut stray: Vec<String> = env
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with("CCGATE_") && !n.starts_with(ENV_PREFIX) && !n.starts_with("CCGATE_SIM__"))
        .filter(|n| !KNOWN.contains(&n.as_str()))
        .map(|n| {
            let guess = n["CCGATE_".len()..].replacen('_', "__", 1);
            format!("{n} sets nothing (overrides are spelled {ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}{guess})")
        })
        .collect();
    stray.sort();
    stray
}

/// Writes `CCGATE__A__B=v` into `doc["a"]["b"]`. A key whose default (in `schema`, the
/// defaults as TOML) is a string, or which has no default, takes the value as a string, so
/// `CCGATE__AUTH__AUDIENCE=12345` is the audience "12345"; other keys read it as a TOML value
/// (numbers, booleans, arrays).
fn apply_env_overrides(
    doc: &mut toml::Table,
    schema: &toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Parse(format!("environment variable {name}: empty key segment")));
        }
        let mut default = Some(schema);
        let mut default_value = None;
        for (i, key) in path.iter().enumerate() {
            let v = default.and_then(|t| t.get(key));
            if i + 1 == path.len() {
                default_value = v;
            }
            default = v.and_then(toml::Value::as_table);
        }
        let value = match (default_value, parse_env_value(&raw)) {
            // A quoted TOML string stays possible (`""` for empty).
            (Some(toml::Value::String(_)) | None, quoted @ toml::Value::String(_)) => quoted,
            (Some(toml::Value::String(_)) | None, _) => toml::Value::String(raw.clone()),
            (Some(_), parsed) => parsed,
        };
        let mut table = &mut *doc;
        let (last, parents) =
            path.split_last().ok_or_else(|| ConfigError::Parse(format!("environment variable {name}: no key")))?;
        for key in parents {
            let entry = table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| ConfigError::Parse(format!("environment variable {name}: `{key}` is not a section")))?;
        }
        table.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// Milliseconds from config as a `Duration`.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let net: std::net::IpAddr = addr.trim().parse().map_err(|_| "not an IP address or CIDR block".to_owned())?;
    let net = net.to_canonical();
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or(format!("prefix must be 0..={max}"))?,
    };
    Ok(Cidr { net, prefix })
}

/// The store URL with any user info replaced by `***`.
/// A store URL's host part (empty when left out: `redis:///0`) and database (the path, `0`
/// in `redis://h:6379/0`; empty when none).
pub fn store_url_host_db(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (host, path.split(['?', '#']).next().unwrap_or(""))
}

/// `host:port` (a name, an IPv4 address or `[IPv6]`), with a port above 0.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    ok.then(|| (host.to_owned(), port))
}

/// `store.url` as it may be printed: everything before the last `@` masked (a password may hold
/// any character, `/`, `?`, `#` or quotes included), then the query; something that is not a
/// URL at all is masked whole.
pub fn masked_store_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "***".to_owned() };
    let (user, host) = match rest.rsplit_once('@') {
        Some((_, host)) => ("***@", host),
        None => ("", rest),
    };
    format!("{scheme}://{user}{}", mask_query(host))
}

/// A URL's tail with its query (`?…` up to a fragment) masked.
fn mask_query(tail: &str) -> String {
    match tail.split_once('?') {
        Some((path, query)) => match query.split_once('#') {
            Some((_, fragment)) => format!("{path}?***#{fragment}"),
            None => format!("{path}?***"),
        },
        None => tail.to_owned(),
    }
}

/// `text` with the secrets every URL in it may carry masked: the user info
/// (`scheme://user:password@host` becomes `scheme://***@host`: everything up to the URL's last
/// `@`) and the query (`?token=…` becomes `?***`). A URL ends at whitespace, a double quote or
/// angle brackets (how messages and TOML delimit one); a password holding one of those is
/// masked only by [`masked_store_url`], which knows where its URL ends. Config error messages
/// quote the offending line, fetch errors name the URL, and `store.url`, `jwks_url`,
/// `log.otlp_endpoint` and webhook URLs may carry a password or a token in either place. Every
/// URL ccgate prints goes through here or [`masked_store_url`].
pub fn mask_url_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>')).unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        let url = match url.rfind('@') {
            Some(at) => {
                out.push_str("***");
                &url[at..]
            }
            None => url,
        };
        out.push_str(&mask_query(url));
        rest = after;
    }
    out.push_str(rest);
    out
}

fn serialize_store_url<S: serde::Serializer>(url: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&masked_store_url(u.expose())),
        None => s.serialize_none(),
    }
}

// --- rate limits ----------------------------------------------------------------------------

/// Most keys tracked per keyed limit. At ~100 bytes a key this bounds each limit to ~10 MiB;
/// 100k is more agents than a CEC tenant has.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One bucket per agent (the token's agent claim).
    Agent,
    /// One bucket per (gateway, tenant) (`auth.tenant_claim`); a gateway's tokens without
    /// a tenant share one bucket of that gateway.
    Tenant,
    /// One bucket per gateway (contact centre).
    Gateway,
    /// One bucket for everyone.
    Global,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Tenant => "tenant",
            Scope::Gateway => "gateway",
            Scope::Global => "global",
        }
    }
}

/// One configured limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Gateway log name (`stopVoiceToConf`), `getSession`, `events`, or `*` for every method.
    pub method: String,
    pub scope: Scope,
    /// Sustained requests per second.
    pub rate: f64,
    /// Requests allowed at once on top of the sustained rate.
    pub burst: u32,
    /// Count what would be refused, refuse nothing.
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    pub max_keys: usize,
    pub limit: Vec<LimitConfig>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self { max_keys: DEFAULT_MAX_KEYS, limit: default_limits() }
    }
}

/// Defaults for `stopVoiceToConf`, the interface ccgate exists for:
/// - per agent 1/s, burst 5: a chairperson stops an announcement a few times per conference;
///   a burst of 5 absorbs double clicks and client retries, 1/s sustained is far above human
///   use and stops a runaway loop;
/// - per tenant 20/s, burst 40: one tenant's apps cannot take the whole gateway;
/// - global 100/s, burst 200: ccgate never forwards conference commands faster than a single
///   CC-Gateway node is sized for; raise it for a cluster behind the NSLB.
pub fn default_limits() -> Vec<LimitConfig> {
    let l = |scope, rate, burst| LimitConfig { method: "stopVoiceToConf".into(), scope, rate, burst, shadow: false };
    vec![l(Scope::Agent, 1.0, 5), l(Scope::Tenant, 20.0, 40), l(Scope::Global, 100.0, 200)]
}

impl RateLimitsConfig {
    /// Checks each limit; returns the key to blame and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_keys == 0 {
            return Err(("rate_limits.max_keys", "must be greater than 0".into()));
        }
        for (i, l) in self.limit.iter().enumerate() {
            // Whether the name is a method is checked where the limits are built
            // (`ops::limits::Limits::new`), which knows the registry.
            if l.method.is_empty() {
                return Err(("rate_limits.limit.method", format!("limit {i}: must name a method or \"*\"")));
            }
            if !(l.rate.is_finite() && l.rate > 0.0 && l.rate <= 1e9) {
                return Err((
                    "rate_limits.limit.rate",
                    format!("limit {i}: must be a positive number of requests per second"),
                ));
            }
            if l.burst == 0 {
                return Err(("rate_limits.limit.burst", format!("limit {i}: must be at least 1")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
plaintext = true
[auth]
jwks_file = "jwks.json"
issuer = "https://idp.example"
audience = "ccgate"
[credentials]
file = "creds.toml"
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults_parse() {
        assert_eq!(ServerConfig::default().listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(AdminConfig::default().listen.to_string(), DEFAULT_ADMIN_LISTEN);
        let c = Config::from_toml_with_env(MINIMAL, env(&[])).unwrap();
        assert_eq!(c.gateway.url, DEFAULT_GATEWAY_URL);
        assert_eq!(c.auth.leeway_secs, DEFAULT_LEEWAY_SECS);
        assert_eq!(c.policy.on_unknown_chair, UnknownChair::Forward);
    }

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let c = Config::from_toml_with_env(
            MINIMAL,
            env(&[
                ("CCGATE__GATEWAY__URL", "https://10.0.0.5:8043"),
                ("CCGATE__GATEWAY__CONNECT_TIMEOUT_MS", "250"),
                ("CCGATE__POLICY__ON_UNKNOWN_CHAIR", "deny"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.gateway.url, "https://10.0.0.5:8043");
        assert_eq!(c.gateway.connect_timeout_ms, 250);
        assert_eq!(c.policy.on_unknown_chair, UnknownChair::Deny);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_with_env(MINIMAL, env(&[("CCGATE__GATEWAY__URLL", "x")])).unwrap_err().to_string();
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml_with_env(&format!("{MINIMAL}\n[sessions]\npoll_timeout_ms = \"soon\"\n"), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_timeout_ms"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("CCGATE__GATEWAY__URL", "http://gw:8043", "gateway.url"),
            ("CCGATE__AUTH__ISSUER", "\"\"", "auth.issuer"),
            ("CCGATE__AUTH__ALGORITHMS", "[\"HS256\"]", "auth.algorithms"),
            ("CCGATE__AUTH__ALGORITHMS", "[\"none\"]", "auth.algorithms"),
            ("CCGATE__SERVER__LISTEN", "0.0.0.0:8443", "server.plaintext"),
        ];
        for (k, v, key) in cases {
            let err = Config::from_toml_with_env(MINIMAL, env(&[(k, v)])).unwrap_err();
            match err {
                ConfigError::Invalid { key: got, .. } => assert_eq!(got, key, "{k}={v}"),
                other => panic!("{k}={v}: {other}"),
            }
        }
    }

    #[test]
    fn store_modes_say_what_they_need() {
        let base = |extra: &str| format!("{MINIMAL}\n[store]\nbackend = \"redis\"\n{extra}\n");
        let key_of = |toml: &str| match Config::from_toml_with_env(toml, env(&[])) {
            Err(ConfigError::Invalid { key, .. }) => key.to_string(),
            Err(other) => format!("other: {other}"),
            Ok(_) => "ok".into(),
        };
        for (extra, key) in [
            ("url = \"redis://r:6379/0\"", "ok"),
            ("url = \"redis://r:6379/0\"\nnodes = [\"s:26379\"]", "store.nodes"),
            ("url = \"redis:///0\"", "store.url"),
            ("mode = \"sentinel\"\nurl = \"redis:///0\"\nsentinel_master = \"m\"", "store.nodes"),
            ("mode = \"sentinel\"\nurl = \"redis:///0\"\nnodes = [\"s:26379\"]", "store.sentinel_master"),
            ("mode = \"sentinel\"\nurl = \"redis://r:1/0\"\nnodes = [\"s:26379\"]\nsentinel_master = \"m\"", "store.url"),
            ("mode = \"sentinel\"\nurl = \"redis:///0\"\nnodes = [\"s\"]\nsentinel_master = \"m\"", "store.nodes"),
            ("mode = \"sentinel\"\nurl = \"rediss://u:p@/0\"\nnodes = [\"s:26379\", \"[::1]:26379\"]\nsentinel_master = \"m\"", "ok"),
            ("mode = \"cluster\"\nurl = \"redis:///3\"\nnodes = [\"n:6379\"]", "store.url"),
            ("mode = \"cluster\"\nurl = \"redis:///0\"\nnodes = [\"n:6379\"]\nsentinel_master = \"m\"", "store.sentinel_master"),
            ("mode = \"cluster\"\nurl = \"redis:///0\"\nnodes = [\"n:6379\"]", "ok"),
        ] {
            assert_eq!(key_of(&base(extra)), key, "{extra}");
        }
    }

    #[test]
    fn numeric_looking_env_values_of_string_settings_stay_strings() {
        let c = Config::from_toml_with_env(
            MINIMAL,
            env(&[
                ("CCGATE__AUTH__AUDIENCE", "12345"),
                ("CCGATE__AUTH__TENANT_CLAIM", "true"),
                ("CCGATE__LOG__LEVEL", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.auth.audience, "12345");
        assert_eq!(c.auth.tenant_claim, "true");
        assert_eq!(c.log.level, "1");
        // A setting with no default (an optional path) is a string too; numbers stay numbers.
        let c = Config::from_toml_with_env(
            MINIMAL,
            env(&[("CCGATE__GATEWAY__TLS_SERVER_NAME", "10.0.0.1"), ("CCGATE__SERVER__MAX_CONNECTIONS", "7")]),
        )
        .unwrap();
        assert_eq!(c.gateway.tls_server_name.as_deref(), Some("10.0.0.1"));
        assert_eq!(c.server.max_connections, 7);
    }

    #[test]
    fn stray_ccgate_variables_are_reported_with_a_hint() {
        let stray = stray_env_vars(env(&[
            ("CCGATE_GATEWAY_URL", "x"),
            ("CCGATE_CONFIG", "c.toml"),
            ("CCGATE__GATEWAY__URL", "x"),
            ("CCGATE_SIM__LISTEN", "x"),
            ("HOME", "/root"),
        ]));
        assert_eq!(stray.len(), 1, "{stray:?}");
        assert!(stray[0].contains("CCGATE_GATEWAY_URL") && stray[0].contains("CCGATE__GATEWAY__URL"), "{stray:?}");
    }

    #[test]
    fn several_providers_and_the_shorthand() {
        let text = format!(
            "{MINIMAL}\n[[auth.providers]]\nissuer = \"https://login.example\"\naudiences = [\"api://ccgate\"]\noidc_discovery = true\n"
        );
        let c = Config::from_toml_with_env(&text, env(&[])).unwrap();
        let all = c.auth.all_providers();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].issuer, "https://idp.example");
        assert_eq!(all[1].key_source(), KeySource::Discovery);
        // The same issuer twice, two key sources, discovery over http: each refused by name.
        for (extra, want) in [
            ("issuer = \"https://idp.example\"\naudiences = [\"a\"]\njwks_file = \"k\"", "twice"),
            ("issuer = \"https://b\"\naudiences = [\"a\"]\njwks_file = \"k\"\noidc_discovery = true", "alternatives"),
            ("issuer = \"http://b\"\naudiences = [\"a\"]\noidc_discovery = true", "https"),
            ("issuer = \"https://b\"\naudiences = []\njwks_file = \"k\"", "audience"),
            ("issuer = \"https://b\"\naudiences = [\"a\"]\njwks_url = \"http://b/jwks\"", "https"),
        ] {
            let err = Config::from_toml_with_env(&format!("{MINIMAL}\n[[auth.providers]]\n{extra}\n"), env(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("auth.providers") && err.contains(want), "{extra}: {err}");
        }
        // Providers alone, without the shorthand.
        let only = "[server]\nplaintext = true\n[credentials]\nfile = \"c\"\n[[auth.providers]]\nissuer = \"https://b\"\naudiences = [\"a\"]\njwks_url = \"https://b/jwks\"\n";
        let c = Config::from_toml_with_env(only, env(&[])).unwrap();
        assert_eq!(c.auth.all_providers().len(), 1);
    }

    #[test]
    fn an_unknown_kid_interval_of_zero_and_bad_proxy_blocks_are_refused() {
        for (k, v, key) in [
            ("CCGATE__AUTH__JWKS_UNKNOWN_KID_INTERVAL_SECS", "0", "auth.jwks_unknown_kid_interval_secs"),
            ("CCGATE__AUTH__TRUSTED_PROXIES", "[\"10.0.0.0/33\"]", "auth.trusted_proxies"),
            ("CCGATE__AUTH__TRUSTED_PROXIES", "[\"proxy.local\"]", "auth.trusted_proxies"),
        ] {
            let err = Config::from_toml_with_env(MINIMAL, env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
        }
        let ok =
            Config::from_toml_with_env(MINIMAL, env(&[("CCGATE__AUTH__TRUSTED_PROXIES", "[\"10.0.0.0/8\", \"::1\"]")]));
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn address_blocks_match_as_cidr_says() {
        let c = parse_cidr("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()) && c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(parse_cidr("0.0.0.0/0").unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!(parse_cidr("2001:db8::/32").unwrap().contains("2001:db8:1::9".parse().unwrap()));
        assert!(parse_cidr("192.0.2.7").unwrap().contains("192.0.2.7".parse().unwrap()));
        assert!(!parse_cidr("192.0.2.7").unwrap().contains("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn user_info_and_queries_in_messages_are_masked() {
        let m = mask_url_secrets("line 3 | url = \"redis://:hunter2@redis:6379/0\" and https://idp/x");
        assert!(!m.contains("hunter2") && m.contains("redis://***@redis:6379/0") && m.contains("https://idp/x"), "{m}");
        let m = mask_url_secrets(
            "GET https://u:p@idp.example/jwks?token=s3cret&x=1: 500; otlp http://c:4318/v1/traces?key=k2 <x://h?q>",
        );
        assert_eq!(m, "GET https://***@idp.example/jwks?*** 500; otlp http://c:4318/v1/traces?*** <x://h?***>");
        // Passwords with a quote, '/', '?' or '#', and '@' elsewhere: masked up to the last '@'.
        for (url, masked) in [
            ("redis://:pa'ss@redis:6379/0", "redis://***@redis:6379/0"),
            ("redis://:p/a?s#s@redis:6379/0", "redis://***@redis:6379/0"),
            ("https://h/p?u=a@b", "https://***@b"),
            ("https://x/claims#tenant", "https://x/claims#tenant"),
            ("https://h/p?a=1#frag", "https://h/p?***#frag"),
        ] {
            assert_eq!(mask_url_secrets(url), masked, "{url}");
        }
        assert_eq!(masked_store_url("rediss://default:pw@r:6380/0?protocol=resp3"), "rediss://***@r:6380/0?***");
        assert_eq!(masked_store_url("redis://:p\"a'>ss@r:6379/0"), "redis://***@r:6379/0");
        assert_eq!(masked_store_url("redis://r:6379/0"), "redis://r:6379/0");
        assert_eq!(masked_store_url("not a url"), "***");
    }

    #[test]
    fn secret_debug_is_masked() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    const TWO_GATEWAYS: &str = r#"
[server]
plaintext = true
[auth]
jwks_file = "jwks.json"
issuer = "https://idp.example"
audience = "ccgate"
gateway_claim = "tenant"
[[gateways]]
name = "acme"
url = "https://10.0.0.1:8043"
credentials_file = "acme.toml"
tenants = ["acme"]
[[gateways]]
name = "globex"
url = "https://10.0.0.2:8043"
credentials_file = "globex.toml"
tenants = ["globex", "globex-eu"]
max_agents = 500
"#;

    #[test]
    fn several_gateways_parse_and_the_shorthand_is_one_named_default() {
        let c = Config::from_toml_with_env(TWO_GATEWAYS, env(&[])).unwrap();
        let list = c.gateway_list();
        assert_eq!(list.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["acme", "globex"]);
        assert_eq!((list[1].max_agents, list[1].namespace()), (500, "globex"));
        let one = Config::from_toml_with_env(MINIMAL, env(&[])).unwrap().gateway_list();
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].name.as_str(), one[0].namespace()), (DEFAULT_GATEWAY_NAME, ""), "the old Redis keys");
        assert_eq!(one[0].credentials_file.as_deref(), Some(Path::new("creds.toml")));
    }

    #[test]
    fn several_gateways_are_refused_when_a_token_could_not_pick_one() {
        let bad = |change: &str, key: &str| {
            let text = format!("{TWO_GATEWAYS}{change}");
            let err = Config::from_toml_with_env(&text, env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{change:?}: {err}");
        };
        // Both forms at once.
        bad("[credentials]\nfile = \"c.toml\"\n", "`gateways`");
        bad("[gateway]\nurl = \"https://10.0.0.9:8043\"\n", "`gateways`");
        // A name twice, a bad name, a tenant in two gateways, no credentials.
        bad("[[gateways]]\nname = \"acme\"\ncredentials_file = \"x\"\n", "used twice");
        bad("[[gateways]]\nname = \"Acme Corp\"\ncredentials_file = \"x\"\n", "name");
        bad("[[gateways]]\nname = \"initech\"\ncredentials_file = \"x\"\ntenants = [\"acme\"]\n", "listed by both");
        bad("[[gateways]]\nname = \"initech\"\n", "credentials_file");
        bad("[[gateways]]\nname = \"initech\"\nurl = \"http://10.0.0.3\"\ncredentials_file = \"x\"\n", "https");
        // Without the claim, every provider must name its gateway.
        let no_claim = TWO_GATEWAYS.replace("gateway_claim = \"tenant\"\n", "");
        let err = Config::from_toml_with_env(&no_claim, env(&[])).unwrap_err().to_string();
        assert!(err.contains("auth.gateway_claim"), "{err}");
        let by_provider = no_claim.replace("audience = \"ccgate\"\n", "audience = \"ccgate\"\ngateway = \"acme\"\n");
        assert!(Config::from_toml_with_env(&by_provider, env(&[])).is_ok());
        let unknown = by_provider.replace("gateway = \"acme\"", "gateway = \"initech\"");
        let err = Config::from_toml_with_env(&unknown, env(&[])).unwrap_err().to_string();
        assert!(err.contains("not in [[gateways]]"), "{err}");
    }
}

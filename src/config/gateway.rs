//! `[gateway]` / `[[gateways]]` (the CC-Gateways ccgate fronts: URL, TLS, pool, timeouts,
//! tenants) and `[credentials]`, the one-gateway shorthand's credentials file. How the
//! gateways fit together with `[auth]` is checked in `mod.rs`, which sees both.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
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
        // The gateway knows agents by Guid, not by HTTP credentials; user info here would go
        // out in every request's Host header and show on the admin pages as the URL.
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return bad("url", "must not carry credentials (user:password@): the gateway authenticates agents by Guid");
        }
        if url.query().is_some() {
            return bad("url", "must not have a query");
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    /// TOML file `[agents."153"] password = "..." phonenum = "..."`; must not be readable by
    /// group or others.
    pub file: Option<PathBuf>,
}

//! `[[webhooks]]`: the HTTPS endpoints the agents' events are pushed to, signed as Standard
//! Webhooks 1.0 (`webhooks/`). Endpoints come from here only, never from an app's request:
//! an app cannot make ccgate call an address of its choosing.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A receiver that has not answered within 15 s is treated as down for this attempt: the
/// common receivers (Svix, Stripe) allow about that long, and a slower one holds one of the
/// endpoint's few connections for no one else.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 15_000;
/// The waits between attempts: Standard Webhooks' own example schedule (5 s, 5 min, 30 min,
/// 2 h, 5 h, 10 h, 10 h), so an endpoint that is down for a day and a half still gets every
/// event. Each wait gets up to 20 % added at random, so retries that failed together do not
/// return together.
pub const DEFAULT_RETRY_SCHEDULE_MS: [u64; 7] =
    [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000];
/// Attempts in flight to one endpoint, each on its own kept-alive connection: enough to keep
/// up with a busy contact centre (one attempt per agent at a time keeps each agent in order),
/// few enough that a receiver is not flooded.
pub const DEFAULT_WEBHOOK_MAX_IN_FLIGHT: usize = 4;
/// Events waiting for one endpoint, all agents together: about an hour of a 1,000-agent
/// centre's events while the endpoint is down, a few tens of MB at most. Past it new events
/// for the endpoint are dropped and counted (`ccgate_webhook_dropped_total`).
pub const DEFAULT_WEBHOOK_MAX_PENDING: usize = 100_000;
/// The bytes those events may take, all agents together: 64 MiB, about 100,000 of the
/// gateway's few-hundred-byte events; the count above bounds small events, this one large.
pub const DEFAULT_WEBHOOK_MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Events that used every attempt, kept per endpoint for `replay` (the oldest go first): at
/// most 16 MiB of bodies (16 KiB each at most).
pub const DEFAULT_WEBHOOK_MAX_FAILED: usize = 1_000;

/// Endpoints at most: each has its own delivery task, connections and metric series.
pub const MAX_WEBHOOKS: usize = 16;
/// Attempts at most: the schedule's entries plus the first.
pub const MAX_RETRY_SCHEDULE: usize = 20;
/// The longest wait one schedule entry may ask for (a day): past that an event is stale.
pub const MAX_RETRY_DELAY_MS: u64 = 86_400_000;
/// Connections to one endpoint at most.
pub const MAX_WEBHOOK_IN_FLIGHT: usize = 64;
/// An attempt may wait five minutes at most: a receiver slower than that is down.
pub const MAX_WEBHOOK_TIMEOUT_MS: u64 = 300_000;
/// Pending events per endpoint at most (each is also within `max_pending_bytes`).
pub const MAX_WEBHOOK_PENDING: usize = 1_000_000;
/// Pending bytes per endpoint at most: 1 GiB.
pub const MAX_WEBHOOK_PENDING_BYTES: usize = 1 << 30;
/// Given-up events kept per endpoint at most.
pub const MAX_WEBHOOK_FAILED: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// A short label (`[a-z0-9-]`, at most 32): the `endpoint` of metrics, logs, `/webhooks`.
    pub name: String,
    /// `https://host[:port]/path` of the receiver; `http://` only to a loopback address (a
    /// receiver in the same pod). Printed with its path masked: receivers put tokens there.
    #[serde(serialize_with = "super::secret::serialize_url_path_masked")]
    pub url: String,
    /// The signing secrets, one per line, each `whsec_` and the base64 of at least 24 bytes.
    /// Every line signs every delivery, so a secret is rotated by adding the new line, moving
    /// the receiver to it, and removing the old one (each step a reload).
    pub secret_file: Option<PathBuf>,
    /// PEM bundle of the CAs trusted for the receiver; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Event names (`eventType` as `/v1/events` names them, or ccgate's own such as
    /// `ccgate.session_ended`), or `"*"` for all.
    pub events: Vec<String>,
    /// Only these gateways' agents (by name); every gateway's when empty.
    pub gateways: Vec<String>,
    /// Only the agents whose session was signed in with a token of these tenants
    /// (`auth.tenant_claim`); every tenant's (and none) when empty.
    pub tenants: Vec<String>,
    pub timeout_ms: u64,
    pub retry_schedule_ms: Vec<u64>,
    pub max_in_flight: usize,
    pub max_pending: usize,
    pub max_pending_bytes: usize,
    pub max_failed: usize,
    /// Allows addresses in loopback, link-local and private ranges (server-side request
    /// forgery protection is on by default): for a receiver in the same pod or network.
    pub allow_private: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            secret_file: None,
            ca_file: None,
            events: Vec::new(),
            gateways: Vec::new(),
            tenants: Vec::new(),
            timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
            retry_schedule_ms: DEFAULT_RETRY_SCHEDULE_MS.to_vec(),
            max_in_flight: DEFAULT_WEBHOOK_MAX_IN_FLIGHT,
            max_pending: DEFAULT_WEBHOOK_MAX_PENDING,
            max_pending_bytes: DEFAULT_WEBHOOK_MAX_PENDING_BYTES,
            max_failed: DEFAULT_WEBHOOK_MAX_FAILED,
            allow_private: false,
        }
    }
}

impl WebhookConfig {
    /// Whether events named `kind` go to this endpoint.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == kind)
    }

    /// Whether gateway `gateway`'s agent, signed in for `tenant`, is in scope.
    pub fn serves(&self, gateway: &str, tenant: Option<&str>) -> bool {
        (self.gateways.is_empty() || self.gateways.iter().any(|g| g == gateway))
            && (self.tenants.is_empty() || tenant.is_some_and(|t| self.tenants.iter().any(|w| w == t)))
    }

    /// The entry's own checks; `(field, why)`. `gateways` are the configured gateways' names.
    pub(super) fn validate(&self, gateways: &[String]) -> Result<(), (&'static str, String)> {
        let bad = |field, why: &str| Err((field, why.to_owned()));
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 32
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return bad("name", "required: 1 to 32 of a-z, 0-9 and -");
        }
        let url: http::Uri = self.url.parse().map_err(|e| ("url", format!("not a URL: {e}")))?;
        let Some(host) = url.host() else { return bad("url", "required: https://host/path of the receiver") };
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return bad("url", "must not carry credentials (user:password@): deliveries are signed instead");
        }
        match url.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback_host(host) => {
                if !self.allow_private {
                    return bad("url", "a loopback receiver needs allow_private = true");
                }
            }
            Some("http") => return bad("url", "plain http:// only to a loopback address; use https://"),
            _ => return bad("url", "must be an https:// URL"),
        }
        if let Some(ip) = literal_ip(host) {
            if !self.allow_private && !crate::config::is_public_address(ip) {
                return bad(
                    "url",
                    "a loopback, link-local or private address: set allow_private = true if the receiver is meant to be there",
                );
            }
        }
        if self.secret_file.is_none() {
            return bad("secret_file", "required: the whsec_ signing secret(s), one per line");
        }
        if self.events.is_empty() {
            return bad("events", "required: event names, or [\"*\"] for all");
        }
        // As the webhooks carry event names: anything else would never match.
        let name = |e: &str| {
            e == "*"
                || (!e.is_empty()
                    && e.len() <= 128
                    && e.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
        };
        if let Some(e) = self.events.iter().find(|e| !name(e)) {
            return Err(("events", format!("{e:?} is not an event name ([A-Za-z0-9_.-], or \"*\")")));
        }
        if let Some(g) = self.gateways.iter().find(|g| !gateways.contains(g)) {
            return Err(("gateways", format!("{g:?} is not a configured gateway")));
        }
        if self
            .tenants
            .iter()
            .any(|t| t.is_empty() || t.len() > 128 || t.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return bad("tenants", "tenant names are the tenant claim's values: not empty, no spaces");
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_WEBHOOK_TIMEOUT_MS {
            return Err(("timeout_ms", format!("1 to {MAX_WEBHOOK_TIMEOUT_MS}")));
        }
        if self.retry_schedule_ms.len() > MAX_RETRY_SCHEDULE {
            return Err(("retry_schedule_ms", format!("at most {MAX_RETRY_SCHEDULE} retries")));
        }
        if self.retry_schedule_ms.iter().any(|&d| d > MAX_RETRY_DELAY_MS) {
            return bad("retry_schedule_ms", "each wait at most 86400000 (a day)");
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_WEBHOOK_IN_FLIGHT {
            return Err(("max_in_flight", format!("1 to {MAX_WEBHOOK_IN_FLIGHT}")));
        }
        if self.max_pending == 0 || self.max_pending > MAX_WEBHOOK_PENDING {
            return Err(("max_pending", format!("1 to {MAX_WEBHOOK_PENDING}")));
        }
        if !(1 << 20..=MAX_WEBHOOK_PENDING_BYTES).contains(&self.max_pending_bytes) {
            return Err(("max_pending_bytes", format!("1 MiB ({}) to 1 GiB ({MAX_WEBHOOK_PENDING_BYTES})", 1 << 20)));
        }
        if self.max_failed == 0 || self.max_failed > MAX_WEBHOOK_FAILED {
            return Err(("max_failed", format!("1 to {MAX_WEBHOOK_FAILED}: a given-up event is kept for replay")));
        }
        Ok(())
    }
}

/// `localhost`, or a loopback address literal.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || literal_ip(host).is_some_and(|ip| ip.is_loopback())
}

/// The address a URL's host spells, if it is one (`[::1]` included).
fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

//! `[store]`: where sessions live (memory or Redis), how Redis is found (standalone, Sentinel,
//! Cluster) and what ccgate does when it is away; the store URL's helpers and masking, and the
//! section's checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::net::parse_host_port;
use super::secret::Secret;

/// Every key ccgate writes in Redis starts with this, so one Redis can serve other apps (or
/// several ccgate deployments, each with its own prefix).
pub const DEFAULT_KEY_PREFIX: &str = "ccgate:";
/// Redis answers in well under a millisecond; a second means it is down or overloaded, and a
/// request should not wait longer than that on it before falling back.
pub const DEFAULT_STORE_COMMAND_TIMEOUT_MS: u64 = 1_000;
/// Connecting to Redis on start-up and after a failure.
pub const DEFAULT_STORE_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// A poller's lease passes to another replica once its holder has not refreshed the agents
/// index for this long (it does every third of it). The gateway's long poll waits about 10 s,
/// so a dead owner's agent is polled again within two poll intervals, far inside the
/// gateway's 120 s MAXTIME.
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;

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
    pub url: Option<Secret>,
    /// `host:port` of the sentinels (`mode = "sentinel"`) or of the cluster's seed nodes
    /// (`mode = "cluster"`).
    pub nodes: Vec<String>,
    /// The name the sentinels monitor the primary under (`sentinel monitor NAME ...`).
    pub sentinel_master: Option<String>,
    /// How to reach the sentinels themselves: `redis://[user:password@]` or `rediss://...`
    /// (host ignored). Unset: `url`'s scheme, no credentials (sentinels often have none).
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

impl StoreConfig {
    /// Checks `[store]`; with `backend = "redis"`, its URL, topology and timings.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        let st = self;
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
        self.validate_topology(url)?;
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
            return invalid("store.lease_ttl_ms", "must be at least 300: the maintenance round runs every third of it");
        }
        Ok(())
    }

    /// `store.mode` and what each mode needs: its nodes, the sentinels' master name, and for
    /// a cluster database 0 (the only one a cluster has).
    fn validate_topology(&self, url: &str) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        let st = self;
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
}

/// A store URL's host part (empty when left out: `redis:///0`) and database (the path, `0`
/// in `redis://h:6379/0`; empty when none).
pub fn store_url_host_db(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (host, path.split(['?', '#']).next().unwrap_or(""))
}

/// `store.url` as it may be printed: the mask every [`Secret`] prints as (user info and query
/// masked; something that is not a URL at all masked whole).
pub fn masked_store_url(url: &str) -> String {
    super::secret::mask_secret(url)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{env, MINIMAL};
    use crate::config::{Config, ConfigError};

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
}

//! Typed configuration, parsed once at start.
//!
//! Every default is a named constant with the reason for its value. The file is TOML; any key
//! can be overridden from the environment as `CCGATE__SECTION__KEY=value` so a sidecar can be
//! configured without a file. Unknown keys are errors (a typo must not silently fall back to a
//! default), and [`Config::validate`] names the offending key for semantic errors.
//!
//! One file per section (`server`, `admin`, `gateway`, `auth`, `sessions`, `store`,
//! `limits`, `policy`, `log`), each with its defaults and, where it has them, its own checks;
//! the `CCGATE__` override engine in `env`; what they share (`ConfigError`, `Secret`, `Cidr`
//! and URL masking, `ms`) in leaf files below them; the effective config as operators see it
//! (masked, flattened, hashed) in `view`. This file holds the root [`Config`], its
//! loading and [`Config::validate`] (the checks that span sections, those of the small
//! sections, and the calls to the others'), and re-exports every item, so paths stay
//! `crate::config::X`.

use std::path::Path;

use serde::{Deserialize, Serialize};

mod admin;
mod auth;
mod duration;
mod env;
mod error;
mod gateway;
mod limits;
mod log;
mod net;
mod policy;
mod secret;
mod server;
mod sessions;
mod store;
mod view;
mod webhooks;

pub use admin::{AdminConfig, AgentsAccess, DEFAULT_ADMIN_LISTEN};
pub use auth::{
    AuthConfig, JwksRefresh, KeySource, ProviderConfig, DEFAULT_AGENT_CLAIM, DEFAULT_JWKS_FETCH_TIMEOUT_MS,
    DEFAULT_JWKS_REFRESH_MAX_SECS, DEFAULT_JWKS_REFRESH_MIN_SECS, DEFAULT_JWKS_STARTUP_WAIT_MS,
    DEFAULT_JWKS_UNKNOWN_KID_INTERVAL_SECS, DEFAULT_LEEWAY_SECS, DEFAULT_MAX_CONCURRENT_VERIFICATIONS,
    DEFAULT_TENANT_CLAIM, DEFAULT_TOKEN_CACHE_SIZE, DEFAULT_TOKEN_CACHE_TTL_SECS,
};
pub use duration::ms;
pub use env::{load_with_env, parse_with_env, stray_env_vars, ENV_PREFIX};
pub use error::ConfigError;
pub use gateway::{
    namespace_of, CredentialsConfig, GatewayConfig, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_GATEWAY_NAME,
    DEFAULT_GATEWAY_URL, DEFAULT_POOL_IDLE_TIMEOUT_MS, DEFAULT_POOL_MAX_IDLE, DEFAULT_REQUEST_TIMEOUT_MS, MAX_GATEWAYS,
    MAX_GATEWAY_NAME_LEN,
};
pub use limits::{default_limits, LimitConfig, RateLimitsConfig, Scope, DEFAULT_MAX_KEYS};
pub use log::{LogConfig, LogFormat, DEFAULT_OTLP_SERVICE_NAME};
pub use net::{is_public_address, mask_url_secrets, parse_cidr, parse_host_port, Cidr};
pub use policy::{PolicyConfig, UnknownChair};
pub use secret::{mask_secret, mask_url_path, Secret, MASK};
pub use server::{
    ServerConfig, DEFAULT_BODY_READ_TIMEOUT_MS, DEFAULT_CONNECTION_IDLE_TIMEOUT_MS, DEFAULT_DRAIN_DELAY_MS,
    DEFAULT_HEADER_READ_TIMEOUT_MS, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_SHUTDOWN_GRACE_MS, DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
    DEFAULT_TLS_WATCH_INTERVAL_MS,
};
pub use sessions::{
    SessionsConfig, DEFAULT_CONFERENCE_WAIT_MS, DEFAULT_EVENT_BUFFER, DEFAULT_FACE_EVENT_WAIT_MS,
    DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_MAX_AGENTS, DEFAULT_MAX_STREAMS_PER_AGENT, DEFAULT_POLL_BACKOFF_MAX_MS,
    DEFAULT_POLL_BACKOFF_MS, DEFAULT_POLL_PAUSE_MS, DEFAULT_POLL_TIMEOUT_MS, DEFAULT_REPOLL_RATE,
    DEFAULT_SIGNIN_CONCURRENCY, DEFAULT_SIGNIN_QUEUE,
};
pub use store::{
    masked_store_url, store_url_host_db, LimitsFallback, ShutdownMode, StoreBackend, StoreConfig, StoreMode,
    DEFAULT_KEY_PREFIX, DEFAULT_LEASE_TTL_MS, DEFAULT_STORE_COMMAND_TIMEOUT_MS, DEFAULT_STORE_CONNECT_TIMEOUT_MS,
    MAX_STORE_NODES,
};
pub use view::{changes, flatten, Change, Effective, Flat, Leaf};
pub use webhooks::{
    WebhookConfig, DEFAULT_RETRY_SCHEDULE_MS, DEFAULT_WEBHOOK_MAX_FAILED, DEFAULT_WEBHOOK_MAX_IN_FLIGHT,
    DEFAULT_WEBHOOK_MAX_PENDING, DEFAULT_WEBHOOK_MAX_PENDING_BYTES, DEFAULT_WEBHOOK_TIMEOUT_MS, MAX_WEBHOOKS,
};

/// Where `serve` looks for its config when neither `--config` nor `CCGATE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/ccgate.toml";

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
    /// Endpoints the agents' events are pushed to (`webhooks/`); none by default.
    pub webhooks: Vec<WebhookConfig>,
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
        // Sizes and counts where 0 would refuse everything or divide by nothing.
        for (key, v) in [
            ("server.max_connections", self.server.max_connections as u64),
            ("server.max_streams_per_connection", u64::from(self.server.max_streams_per_connection)),
            ("server.max_body_bytes", self.server.max_body_bytes as u64),
            ("sessions.max_streams_per_agent", self.sessions.max_streams_per_agent as u64),
            ("sessions.poll_timeout_ms", self.sessions.poll_timeout_ms),
            ("sessions.max_agents", self.sessions.max_agents as u64),
            ("sessions.signin_concurrency", self.sessions.signin_concurrency as u64),
            ("sessions.event_buffer", self.sessions.event_buffer as u64),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        if let Some(h) = self.admin.hosts.iter().find(|h| {
            h.is_empty() || h.len() > 253 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }) {
            return invalid(
                "admin.hosts",
                &format!("{h:?} is not a host name (letters, digits, '-' and '.'; no port)"),
            );
        }
        self.validate_gateways()?;
        self.validate_webhooks()?;
        self.auth.validate()?;
        if let Err((key, reason)) = self.rate_limits.validate() {
            return Err(ConfigError::Invalid { key, reason });
        }
        self.store.validate()
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

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError::Invalid { key: "webhooks", reason });
        if self.webhooks.len() > MAX_WEBHOOKS {
            return invalid(format!("at most {MAX_WEBHOOKS} endpoints"));
        }
        let gateways: Vec<String> = self.gateway_list().into_iter().map(|g| g.name).collect();
        for (i, w) in self.webhooks.iter().enumerate() {
            if let Err((field, why)) = w.validate(&gateways) {
                return invalid(format!("endpoint {i} ({}): {field}: {why}", w.name));
            }
            if self.webhooks[..i].iter().any(|v| v.name == w.name) {
                return invalid(format!("name {:?} is used twice", w.name));
            }
        }
        Ok(())
    }

    /// This config with the names it runs under: the one-gateway `[gateway]` as `default`.
    fn with_effective_names(&self) -> Config {
        let mut effective = self.clone();
        if effective.gateways.is_empty() && effective.gateway.name.is_empty() {
            effective.gateway.name = DEFAULT_GATEWAY_NAME.into();
        }
        effective
    }

    /// The effective config as TOML, for `check-config`: what `serve` would run, names
    /// included (the one-gateway `[gateway]` shows the name it gets, `default`, as metrics,
    /// logs and `/agents` call it). Holds paths, never secrets: secrets live in the files
    /// those paths name.
    pub fn to_masked_toml(&self) -> String {
        let effective = self.with_effective_names();
        // Secret fields serialize masked; any other URL (jwks_url, log.otlp_endpoint) loses its
        // user info and query.
        mask_url_secrets(&toml::to_string_pretty(&effective).unwrap_or_else(|e| format!("# cannot render: {e}\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const MINIMAL: &str = r#"
[server]
plaintext = true
[auth]
jwks_file = "jwks.json"
issuer = "https://idp.example"
audience = "ccgate"
[credentials]
file = "creds.toml"
"#;

    /// `pairs` as the environment (also for the sections' own tests).
    pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
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

    /// `check-config` prints what `serve` runs: the shorthand gateway's effective name, and a
    /// config that reads back as the same gateways.
    #[test]
    fn the_printed_config_names_the_default_gateway_and_reads_back_the_same() {
        let c = Config::from_toml_with_env(MINIMAL, env(&[])).unwrap();
        assert_eq!(c.gateway.name, "", "the shorthand names none");
        let printed = c.to_masked_toml();
        assert!(printed.contains(&format!("name = \"{DEFAULT_GATEWAY_NAME}\"")), "{printed}");
        let again = Config::from_toml_with_env(&printed, env(&[])).unwrap();
        let names = |c: &Config| {
            c.gateway_list().into_iter().map(|g| (g.name.clone(), g.namespace().to_owned())).collect::<Vec<_>>()
        };
        assert_eq!(names(&again), names(&c));
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("CCGATE__GATEWAY__URL", "http://gw:8043", "gateway.url"),
            ("CCGATE__GATEWAY__URL", "https://user:pw7788@gw:8043", "gateway.url"),
            ("CCGATE__GATEWAY__URL", "https://gw:8043/?token=pw7788", "gateway.url"),
            ("CCGATE__AUTH__ISSUER", "\"\"", "auth.issuer"),
            ("CCGATE__AUTH__ALGORITHMS", "[\"HS256\"]", "auth.algorithms"),
            ("CCGATE__AUTH__ALGORITHMS", "[\"none\"]", "auth.algorithms"),
            ("CCGATE__SERVER__LISTEN", "0.0.0.0:8443", "server.plaintext"),
            ("CCGATE__SERVER__MAX_CONNECTIONS", "0", "server.max_connections"),
            ("CCGATE__SERVER__MAX_STREAMS_PER_CONNECTION", "0", "server.max_streams_per_connection"),
            ("CCGATE__SERVER__MAX_BODY_BYTES", "0", "server.max_body_bytes"),
            ("CCGATE__SESSIONS__MAX_STREAMS_PER_AGENT", "0", "sessions.max_streams_per_agent"),
            ("CCGATE__SESSIONS__POLL_TIMEOUT_MS", "0", "sessions.poll_timeout_ms"),
            ("CCGATE__SESSIONS__MAX_AGENTS", "0", "sessions.max_agents"),
            ("CCGATE__SESSIONS__SIGNIN_CONCURRENCY", "0", "sessions.signin_concurrency"),
            ("CCGATE__SESSIONS__EVENT_BUFFER", "0", "sessions.event_buffer"),
        ];
        for (k, v, key) in cases {
            let err = Config::from_toml_with_env(MINIMAL, env(&[(k, v)])).unwrap_err();
            assert!(!err.to_string().contains("pw7788"), "the refusal does not repeat it: {err}");
            match err {
                ConfigError::Invalid { key: got, .. } => assert_eq!(got, key, "{k}={v}"),
                other => panic!("{k}={v}: {other}"),
            }
        }
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

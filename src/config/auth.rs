//! `[auth]` and `[[auth.providers]]`: the identity providers whose tokens ccgate accepts, where
//! their keys come from and how they are refreshed, and the token cache and refusal settings
//! shared by them all.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::ms;
use super::error::ConfigError;
use super::net::parse_cidr;

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
/// ends up to a quarter of it early (`edge::auth::cache::TTL_SPREAD`).
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
/// Signature checks of tokens ccgate has not verified before that may run at once; 0 picks
/// half the cores (at least one). A flood of distinct forged tokens then costs at most that
/// share of the CPU, whoever sends it, while tokens already verified (a hash lookup) are
/// served on the rest; new valid tokens wait their turn instead of being refused.
pub const DEFAULT_MAX_CONCURRENT_VERIFICATIONS: usize = 0;
/// A JWKS or discovery document is a few KiB; 5 s means the provider is down.
pub const DEFAULT_JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;
/// At start-up, serving waits this long for every remote key set; past it ccgate serves
/// anyway, not ready (`/readyz`), and refuses that provider's tokens with 503 until keys come.
pub const DEFAULT_JWKS_STARTUP_WAIT_MS: u64 = 10_000;

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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{env, MINIMAL};
    use crate::config::Config;

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
}

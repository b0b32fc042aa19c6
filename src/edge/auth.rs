//! Phase `authenticate`: bearer JWT → [`Principal`].
//!
//! Order of checks, each with its own failure reason so an app developer can tell what is
//! wrong: header present → three base64url parts → the provider its `iss` names (with several
//! providers; an unknown issuer is `wrong_issuer`) → `alg` allow-listed by that provider
//! (before any key is touched, so `alg: none` and HS256-with-an-RSA-public-key die here) → key
//! found by `kid` and of the algorithm's family → signature → `exp`/`nbf` → `iss` → `aud` →
//! agent claim. A header with `crit` is refused: ccgate understands no JOSE extension (RFC
//! 7515 §4.1.11).
//!
//! A token naming a key a remote provider has not published (yet) makes the provider's keys
//! be fetched again, at most once per short interval (`jwks::remote`), and is checked again:
//! a key rotation needs no restart.
//!
//! A signature check is the one costly step an anonymous client can trigger. Its cost is
//! bounded without picking victims by address (in a sidecar every app is 127.0.0.1, behind a
//! balancer everyone is the balancer, so one client's bad tokens must not lock out the rest):
//! - a refused token is remembered by its hash, whatever the reason (forged, expired, wrong
//!   audience...), so the same bad token sent again costs a hash, not a check; a client
//!   looping a stale token is the commonest case;
//! - signature checks of tokens not seen before share a global allowance of concurrent checks
//!   (`auth.max_concurrent_verifications`, half the cores by default): a flood of distinct
//!   forged tokens gets that share of the CPU and no more, tokens already verified are a hash
//!   lookup on the rest, and a new valid token waits its turn rather than being refused;
//! - a per-client budget of refused tokens remains as an option (`auth.per_client_refusal_budget`,
//!   off), keyed on the address `X-Forwarded-For` names when the peer is a trusted proxy, and
//!   never applied to a loopback client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, Cidr, GatewayConfig, KeySource, ProviderConfig};
use crate::gateway::parse_agent_id;
use crate::jwks::remote::{OnChange, RemoteKeys};
use crate::jwks::KeySet;
use crate::metrics::Metrics;
use crate::ops::principal::AuthFailureReason as Reason;
use crate::ops::Principal;

/// Longest tenant value kept; longer ones share the "no tenant" bucket rather than letting a
/// token make ccgate store arbitrary amounts of key data.
const MAX_TENANT_LEN: usize = 128;

/// Upper bound on a bearer token's length. Real JWTs are 1-2 KiB; refusing larger ones early
/// bounds the base64 and JSON work an unauthenticated client can cause.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Every configured identity provider, and the caches and budgets shared by them. Built
/// whole from the config ([`Authenticator::from_config`]) and replaced whole on reload.
pub struct Authenticator {
    /// In config order: the `[auth]` shorthand first.
    providers: Vec<Provider>,
    leeway: u64,
    cache: Option<TokenCache<Verified>>,
    /// Refused tokens, by hash, with why.
    refused: TokenCache<Reason>,
    /// The optional per-client budget (`auth.per_client_refusal_budget`).
    budget: Option<RefusalBudget>,
    /// `auth.trusted_proxies`: peers whose `X-Forwarded-For` names the client.
    trusted: Vec<Cidr>,
    /// Signature checks of unknown tokens running at once (`auth.max_concurrent_verifications`).
    verifications: tokio::sync::Semaphore,
    /// `ccgate_auth_throttled_total`, `ccgate_auth_refusals_remembered_total`.
    counters: Option<(prometheus::IntCounter, prometheus::IntCounter)>,
    ttl: u64,
    /// Which gateway a verified token is for.
    routing: Routing,
}

/// Which gateway (contact centre) a verified token is for, from the token only: its
/// provider's `gateway`, or `auth.gateway_claim` matched against each gateway's `tenants`.
/// Nothing the client controls outside the signed token takes part.
#[derive(Debug)]
struct Routing {
    /// `auth.gateway_claim` (`None`: not configured).
    claim: Option<String>,
    /// Tenant value → gateway index.
    tenants: HashMap<String, usize>,
    /// Gateways configured; with one and nothing else configured, every token is for it.
    count: usize,
}

impl Default for Routing {
    /// One gateway, no claim: every token is for it.
    fn default() -> Self {
        Self { claim: None, tenants: HashMap::new(), count: 1 }
    }
}

impl Routing {
    /// `gateways`: the running gateways in index order (a reload cannot add or remove one:
    /// tenants of a gateway not running yet are left out until the restart).
    fn new(cfg: &AuthConfig, gateways: &[GatewayConfig]) -> Self {
        let tenants =
            gateways.iter().enumerate().flat_map(|(i, g)| g.tenants.iter().map(move |t| (t.clone(), i))).collect();
        let claim = (!cfg.gateway_claim.is_empty()).then(|| cfg.gateway_claim.clone());
        Self { claim, tenants, count: gateways.len().max(1) }
    }

    /// The provider's gateway as an index (`None`: it names none, or one not running).
    fn index_of(gateways: &[GatewayConfig], name: Option<&str>) -> Option<usize> {
        gateways.iter().position(|g| Some(g.name.as_str()) == name)
    }

    /// The gateway of a token verified by a provider whose own gateway is `by_provider`.
    /// Refused (`no_gateway`) when the token maps to none, or to two different ones.
    fn route(&self, by_provider: Option<usize>, claims: &Map<String, Value>) -> Result<usize, Reason> {
        let by_claim = match &self.claim {
            None => None,
            Some(c) => {
                let value = match claims.get(c) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                match value.and_then(|v| self.tenants.get(&v).copied()) {
                    Some(i) => Some(i),
                    // A claim that names no gateway is refused, unless the provider decides.
                    None if by_provider.is_none() => return Err(Reason::NoGateway),
                    None => None,
                }
            }
        };
        match (by_provider, by_claim) {
            (Some(p), Some(c)) if p != c => Err(Reason::NoGateway),
            (Some(g), _) | (None, Some(g)) => Ok(g),
            (None, None) if self.count == 1 => Ok(0),
            (None, None) => Err(Reason::NoGateway),
        }
    }
}

/// One identity provider, ready to verify.
struct Provider {
    issuer: String,
    audiences: Vec<String>,
    keys: Keys,
    hs256: Option<DecodingKey>,
    allowed: Vec<Algorithm>,
    agent_claim: String,
    tenant_claim: String,
    /// The gateway all its tokens are for (`gateway` of `[[auth.providers]]`).
    gateway: Option<usize>,
}

enum Keys {
    /// Read from a file (re-read on reload only).
    Static(KeySet),
    /// Fetched and refreshed.
    Remote(Arc<RemoteKeys>),
    /// HS256 only.
    None,
}

impl Provider {
    /// Bumped whenever a key this provider verified with may have gone: cached verifications
    /// made before are void.
    fn removals(&self) -> u64 {
        match &self.keys {
            Keys::Remote(r) => r.removals(),
            _ => 0,
        }
    }
}

/// A cached verification: who, by which provider, and that provider's [`Provider::removals`]
/// at the time.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    provider: usize,
    removals: u64,
}

/// Tokens already verified, keyed by the SHA-256 of the token so the cache never holds a
/// bearer credential. Profiling showed RSA signature checks at over a quarter of the CPU of a
/// proxied request; apps reuse a token for its lifetime, so most requests skip the check.
/// An entry is reused until the earlier of the token's expiry (with leeway) and `ttl` after
/// its verification, less a spread ([`reuse_until`]). Two generations bound the size: when
/// the current one holds half the capacity it becomes the previous one, and the old previous
/// is dropped (approximate LRU, O(1), no per-entry bookkeeping).
/// The same structure remembers tokens refused for their signature ([`REFUSED_TOKENS`]).
struct TokenCache<V> {
    half: usize,
    /// (current, previous).
    generations: Mutex<(Generation<V>, Generation<V>)>,
}

type Generation<V> = HashMap<[u8; 32], Cached<V>>;

#[derive(Clone)]
struct Cached<V> {
    value: V,
    valid_until: u64,
}

/// Refused tokens remembered this many at most (~80 bytes each) and this long, so the same
/// bad token sent again costs a hash, not a signature check. 4,096 covers every app instance
/// of a large deployment looping its own stale token at once.
const REFUSED_TOKENS: usize = 4096;
const REFUSED_TOKEN_TTL_SECS: u64 = 60;
/// With `auth.per_client_refusal_budget`: each client address may have this many tokens
/// refused at once, then one more per second; the refusal that overdraws the budget closes
/// it: until it refills, the address's tokens that are not already known good get 429
/// without a signature check. A real app refuses a token rarely (expiry); 20 covers a
/// restart storm.
const REFUSED_PER_ADDRESS_BURST: u32 = 20;
const REFUSED_PER_ADDRESS_PER_SEC: u32 = 1;
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Client addresses tracked for that budget; more are not blocked (fail open, bounded memory).
const MAX_BLOCKED_ADDRESSES: usize = 10_000;

/// A verified entry's reuse ends up to `ttl / TTL_SPREAD` early, by an amount each token's
/// key picks. Tokens first seen together (a restart, a fleet of apps reconnecting, the
/// benchmark's 10,000) would otherwise all expire in the same second, and the requests of
/// that second would queue behind thousands of signature checks; spread over a quarter of the
/// TTL the checks are a trickle. Ending early only ever costs a check, never trusts longer.
const TTL_SPREAD: u64 = 4;

/// When a verified token's cache entry stops being reused: at its expiry (with leeway) or
/// `ttl` after `now` less the token's own share of the spread, whichever is first.
fn reuse_until(key: &[u8; 32], expires: u64, now: u64, ttl: u64) -> u64 {
    let spread = ttl / TTL_SPREAD;
    // The key is a SHA-256: its first bytes are as good as random, and free.
    let early = u64::from_le_bytes([key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7]]) % (spread + 1);
    expires.min(now.saturating_add(ttl - early))
}

impl<V: Clone> TokenCache<V> {
    fn new(capacity: usize) -> Self {
        Self { half: (capacity / 2).max(1), generations: Mutex::new((HashMap::new(), HashMap::new())) }
    }

    fn key(token: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    fn get(&self, key: &[u8; 32], now: u64) -> Option<V> {
        let mut g = crate::sync::lock(&self.generations);
        let (current, previous) = &mut *g;
        if let Some(c) = current.get(key) {
            if now <= c.valid_until {
                return Some(c.value.clone());
            }
            current.remove(key);
            return None;
        }
        let c = previous.remove(key)?;
        if now > c.valid_until {
            return None;
        }
        let v = c.value.clone();
        current.insert(*key, c);
        Some(v)
    }

    fn put(&self, key: [u8; 32], value: &V, valid_until: u64) {
        let mut g = crate::sync::lock(&self.generations);
        if g.0.len() >= self.half {
            g.1 = std::mem::take(&mut g.0);
        }
        g.0.insert(key, Cached { value: value.clone(), valid_until });
    }
}

/// What is known of a token before any signature work.
enum Known {
    /// Verified or refused before (or its client is over budget).
    Decided(Result<Principal, Refused>),
    /// Needs a check; the token's cache key.
    Unknown([u8; 32]),
}

/// Why a request's token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The token is missing or invalid.
    Token(Reason),
    /// The client's address had too many tokens refused: come back after this long.
    Throttled(std::time::Duration),
    /// The token's provider has no keys yet (its keys could not be fetched since start).
    KeysUnavailable,
}

type AddressLimiter = governor::RateLimiter<
    IpAddr,
    governor::state::keyed::DashMapStateStore<IpAddr>,
    crate::ops::limits::TokioClock,
    governor::middleware::NoOpMiddleware<crate::ops::limits::TokioInstant>,
>;

/// The per-client budget of refused tokens (optional, off by default).
struct RefusalBudget {
    limiter: AddressLimiter,
    /// Addresses over budget, until when.
    blocked: Mutex<HashMap<IpAddr, tokio::time::Instant>>,
    /// Peers whose `X-Forwarded-For` names the client.
    trusted: Vec<Cidr>,
}

impl RefusalBudget {
    fn new(trusted: Vec<Cidr>) -> Self {
        let quota =
            governor::Quota::per_second(NonZeroU32::new(REFUSED_PER_ADDRESS_PER_SEC).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(REFUSED_PER_ADDRESS_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: governor::RateLimiter::new(quota, Default::default(), crate::ops::limits::TokioClock),
            blocked: Mutex::new(HashMap::new()),
            trusted,
        }
    }

    /// The client a request is budgeted as ([`client_of`]). `None` (no budget) for a
    /// loopback client, and for a trusted proxy's request whose header names no client (the
    /// proxy itself is shared by everyone behind it).
    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        client_of(&self.trusted, peer, headers).filter(|c| !c.is_loopback())
    }

    /// How long `ip` must still wait, if it is over budget.
    fn blocked_for(&self, ip: IpAddr) -> Option<std::time::Duration> {
        let now = tokio::time::Instant::now();
        let mut blocked = crate::sync::lock(&self.blocked);
        match blocked.get(&ip) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                blocked.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Counts a refused token against `ip`.
    fn refused(&self, ip: IpAddr) {
        use governor::clock::Clock;
        if let Err(not_until) = self.limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(crate::ops::limits::TokioClock.now());
            let mut blocked = crate::sync::lock(&self.blocked);
            if blocked.len() < MAX_BLOCKED_ADDRESSES || blocked.contains_key(&ip) {
                blocked.insert(ip, tokio::time::Instant::now() + wait);
            }
        }
    }

    /// Forgets addresses whose budget has refilled (called with the rate limiter eviction).
    fn evict(&self) {
        self.limiter.retain_recent();
        let now = tokio::time::Instant::now();
        crate::sync::lock(&self.blocked).retain(|_, until| *until > now);
    }
}

impl Authenticator {
    /// Builds every provider of the config, loading files and starting remote fetchers.
    /// `previous` (on reload) lends its fetchers for providers whose key settings did not
    /// change, so a reload does not refetch or lose keys. Errors name the provider and file.
    pub fn from_config(
        cfg: &AuthConfig,
        gateways: &[GatewayConfig],
        metrics: &Metrics,
        previous: Option<&Authenticator>,
        on_change: Option<OnChange>,
    ) -> Result<Self, String> {
        let mut providers = Vec::new();
        metrics.clear_jwks_keys();
        for p in cfg.all_providers() {
            let allowed = algorithms(&p)?;
            let hs256 = match &p.hs256_secret_file {
                Some(path) => Some(hs256_key(path)?),
                None => None,
            };
            let keys = match p.key_source() {
                KeySource::File(path) => {
                    let (set, skipped) = KeySet::from_file(&path).map_err(|e| format!("{}: {e}", p.issuer))?;
                    if set.usable_with(&allowed) == 0 && hs256.is_none() {
                        let why = if skipped.is_empty() { "the JWKS is empty".to_owned() } else { skipped.join("; ") };
                        return Err(format!("{}: no usable signing key ({why})", path.display()));
                    }
                    metrics.set_jwks_keys(&p.issuer, set.len());
                    Keys::Static(set)
                }
                KeySource::Url(_) | KeySource::Discovery => {
                    let reused = previous.and_then(|prev| {
                        prev.providers.iter().find_map(|q| match &q.keys {
                            Keys::Remote(r) if r.serves(&p, &allowed, cfg.refresh()) => Some(r.clone()),
                            _ => None,
                        })
                    });
                    match reused {
                        Some(r) => {
                            if let Some(set) = r.keys() {
                                metrics.set_jwks_keys(&p.issuer, set.len());
                            }
                            Keys::Remote(r)
                        }
                        None => Keys::Remote(RemoteKeys::start(
                            &p,
                            allowed.clone(),
                            cfg.refresh(),
                            metrics,
                            on_change.clone(),
                        )?),
                    }
                }
                KeySource::None => Keys::None,
            };
            providers.push(Provider {
                issuer: p.issuer.clone(),
                audiences: p.audiences.clone(),
                keys,
                hs256,
                allowed,
                agent_claim: p.agent_claim.clone(),
                tenant_claim: p.tenant_claim.clone(),
                gateway: Routing::index_of(gateways, p.gateway.as_deref()),
            });
        }
        if providers.is_empty() {
            return Err("no identity provider configured".into());
        }
        let mut a = Self::assemble(cfg, providers, Routing::new(cfg, gateways))?;
        a.counters = Some((metrics.auth_throttled(), metrics.auth_refusals_remembered()));
        Ok(a)
    }

    /// One provider (`cfg`'s shorthand) with keys given as JWKs (tests and tools).
    pub fn new(cfg: &AuthConfig, jwks: &[Value], hs256: Option<DecodingKey>) -> Result<Self, String> {
        let p = cfg.all_providers().into_iter().next().ok_or("no provider")?;
        let allowed = algorithms(&p)?;
        let (set, skipped) = KeySet::from_jwks(jwks);
        if set.usable_with(&allowed) == 0 && hs256.is_none() {
            let why = if skipped.is_empty() { "the JWKS is empty".to_owned() } else { skipped.join("; ") };
            return Err(format!("no usable signing key ({why})"));
        }
        let provider = Provider {
            issuer: p.issuer,
            audiences: p.audiences,
            keys: Keys::Static(set),
            hs256,
            allowed,
            agent_claim: p.agent_claim,
            tenant_claim: p.tenant_claim,
            gateway: None,
        };
        Self::assemble(cfg, vec![provider], Routing::default())
    }

    /// The caches, budgets and allowances around `providers`, as `cfg` sets them.
    fn assemble(cfg: &AuthConfig, providers: Vec<Provider>, routing: Routing) -> Result<Self, String> {
        let trusted = cfg
            .trusted_proxies
            .iter()
            .map(|p| crate::config::parse_cidr(p).map_err(|e| format!("auth.trusted_proxies {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let concurrent = match cfg.max_concurrent_verifications {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1),
            n => n,
        };
        Ok(Self {
            providers,
            leeway: cfg.leeway_secs,
            cache: (cfg.cache_size > 0).then(|| TokenCache::new(cfg.cache_size)),
            refused: TokenCache::new(REFUSED_TOKENS),
            budget: cfg.per_client_refusal_budget.then(|| RefusalBudget::new(trusted.clone())),
            trusted,
            verifications: tokio::sync::Semaphore::new(concurrent),
            counters: None,
            ttl: cfg.cache_ttl_secs,
            routing,
        })
    }

    /// Counts throttled requests and remembered refusals in these metrics.
    pub fn with_metrics(mut self, m: &Metrics) -> Self {
        self.counters = Some((m.auth_throttled(), m.auth_refusals_remembered()));
        self
    }

    /// Waits (at most `wait` in all) for every remote provider's first key set; the issuers
    /// still without keys.
    pub async fn wait_for_keys(&self, wait: std::time::Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut missing = Vec::new();
        for p in &self.providers {
            if let Keys::Remote(r) = &p.keys {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !r.wait_loaded(left).await {
                    missing.push(p.issuer.clone());
                }
            }
        }
        missing
    }

    /// Every provider has keys to verify with (`/readyz`).
    pub fn keys_loaded(&self) -> bool {
        self.providers.iter().all(|p| match &p.keys {
            Keys::Remote(r) => r.is_loaded(),
            _ => true,
        })
    }

    /// Issuers whose keys are fetched, and whether they are loaded (`/readyz`).
    pub fn remote_issuers(&self) -> Vec<(String, bool)> {
        self.providers
            .iter()
            .filter_map(|p| match &p.keys {
                Keys::Remote(r) => Some((p.issuer.clone(), r.is_loaded())),
                _ => None,
            })
            .collect()
    }

    /// Authenticates a request from its headers, sent from `peer` (when known). A token not
    /// verified before waits for a verification slot; one naming a key its remote provider
    /// has not published makes that provider fetch its keys (see `jwks::remote`), then is
    /// checked once more.
    pub async fn authenticate(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<Principal, Refused> {
        let token = bearer_token(headers).map_err(Refused::Token)?;
        let client = self.client(peer, headers);
        let key = match self.known(token, client) {
            Known::Decided(r) => return r,
            Known::Unknown(key) => key,
        };
        let first = self.verify_in_turn(token, key, client).await;
        match first {
            Err(Refused::Token(Reason::UnknownKey)) => match self.remote_for(token) {
                Some(remote) => {
                    remote.refresh_for_unknown_key().await;
                    self.verify_in_turn(token, key, client).await
                }
                None => first,
            },
            other => other,
        }
    }

    /// The synchronous part of [`Self::authenticate`]: a decision when it needs no wait (the
    /// token is known, or a verification slot is free and no key fetch is needed); `None`
    /// when the caller must await [`Self::authenticate`].
    pub fn authenticate_now(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<Result<Principal, Refused>> {
        let token = match bearer_token(headers) {
            Ok(t) => t,
            Err(reason) => return Some(Err(Refused::Token(reason))),
        };
        let client = self.client(peer, headers);
        let key = match self.known(token, client) {
            Known::Decided(r) => return Some(r),
            Known::Unknown(key) => key,
        };
        let slot = self.verifications.try_acquire().ok()?;
        let r = self.verify_unknown(token, key, client);
        drop(slot);
        match r {
            Err(Refused::Token(Reason::UnknownKey)) if self.remote_for(token).is_some() => None,
            other => Some(other),
        }
    }

    /// [`Self::authenticate`] for a bare token, with no client address, no wait and no fetch
    /// (tools and tests).
    pub fn verify(&self, token: &str) -> Result<Principal, Reason> {
        let r = match self.known(token, None) {
            Known::Decided(r) => r,
            Known::Unknown(key) => self.verify_unknown(token, key, None),
        };
        r.map_err(|r| match r {
            Refused::Token(reason) => reason,
            Refused::Throttled(_) | Refused::KeysUnavailable => Reason::UnknownKey,
        })
    }

    /// The client address of a request from `peer`, for the access line and the refusal log:
    /// the peer, or the client a trusted proxy names (the proxy when it names none).
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_of(&self.trusted, peer, headers).unwrap_or(peer.to_canonical())
    }

    /// The issuer of the request's bearer token, if it is one of the configured providers'
    /// (read without verifying: only a configured issuer is ever named, never the text of a
    /// token).
    pub fn known_issuer(&self, headers: &HeaderMap) -> Option<&str> {
        let iss = peek_issuer(bearer_token(headers).ok()?).ok()?;
        self.providers.iter().find(|p| p.issuer == iss).map(|p| p.issuer.as_str())
    }

    /// The address the optional per-client budget counts `peer`'s request against.
    fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        self.budget.as_ref().and_then(|b| b.client(peer?, headers))
    }

    /// The remote key source of the token's provider, if it has one.
    fn remote_for(&self, token: &str) -> Option<Arc<RemoteKeys>> {
        let p = &self.providers[self.provider_of(token).ok()?];
        match &p.keys {
            Keys::Remote(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// The provider a token's `iss` names. With one provider, that one (its check of `iss`
    /// then says `wrong_issuer` if the token names another), so the payload is not decoded
    /// twice.
    fn provider_of(&self, token: &str) -> Result<usize, Reason> {
        if self.providers.len() == 1 {
            return Ok(0);
        }
        let iss = peek_issuer(token)?;
        self.providers.iter().position(|p| p.issuer == iss).ok_or(Reason::WrongIssuer)
    }

    /// What is known of a token without checking its signature: verified before, refused
    /// before, its client over budget, or unknown (with its cache key).
    fn known(&self, token: &str, client: Option<IpAddr>) -> Known {
        let malformed = Known::Decided(Err(Refused::Token(Reason::Malformed)));
        if token.len() > MAX_TOKEN_LEN {
            return malformed;
        }
        let now = crate::clock::unix_secs();
        // Every token ccgate accepts at all (up to `MAX_TOKEN_LEN`) has a key: verified and
        // refused ones alike are remembered by their hash, whatever their length.
        let key = TokenCache::<Verified>::key(token);
        if let Some(c) = &self.cache {
            if let Some(v) = c.get(&key, now) {
                // Void if a key of its provider was removed since (or a reload changed the
                // providers: the cache is new then anyway).
                if self.providers.get(v.provider).is_some_and(|p| p.removals() == v.removals) {
                    return Known::Decided(Ok(v.principal));
                }
            }
        }
        // The shape is checked after the cache: a cached token was verified whole, so the
        // common case skips three scans of the token. `split` finds the dots with memchr (a
        // byte loop here measured twice as dear).
        if token.split('.').count() != 3 {
            return malformed;
        }
        // Before the budget: a token refused before is refused for what it is, not as 429.
        if let Some(reason) = self.refused.get(&key, now) {
            if let Some((_, remembered)) = &self.counters {
                remembered.inc();
            }
            return Known::Decided(Err(Refused::Token(reason)));
        }
        if let Some(wait) = client.and_then(|ip| self.budget.as_ref()?.blocked_for(ip)) {
            if let Some((throttled, _)) = &self.counters {
                throttled.inc();
            }
            return Known::Decided(Err(Refused::Throttled(wait)));
        }
        Known::Unknown(key)
    }

    /// [`Self::verify_unknown`] once a verification slot is free.
    async fn verify_in_turn(&self, token: &str, key: [u8; 32], client: Option<IpAddr>) -> Result<Principal, Refused> {
        // The semaphore is never closed; if it were, verifying unbounded beats refusing.
        let _slot = self.verifications.acquire().await.ok();
        self.verify_unknown(token, key, client)
    }

    /// Full verification of a token not known yet; remembers the verdict.
    fn verify_unknown(&self, token: &str, key: [u8; 32], client: Option<IpAddr>) -> Result<Principal, Refused> {
        let now = crate::clock::unix_secs();
        let index = self.provider_of(token).map_err(Refused::Token)?;
        let provider = &self.providers[index];
        // Read before the keys, so a removal racing this check voids what it caches.
        let removals = provider.removals();
        match verify_with(provider, &self.routing, token, self.leeway) {
            Ok((principal, exp)) => {
                if let Some(c) = &self.cache {
                    let until = reuse_until(&key, exp.saturating_add(self.leeway), now, self.ttl);
                    c.put(key, &Verified { principal: principal.clone(), provider: index, removals }, until);
                }
                Ok(principal)
            }
            Err(Refused::Token(reason)) => {
                // An unknown key costs no signature check and may be published by the next
                // fetch (a rotation makes every app send one at once); a token not yet valid
                // becomes valid. Every other verdict is final for the token.
                let lasting = !matches!(reason, Reason::UnknownKey | Reason::NotYetValid);
                if lasting {
                    self.refused.put(key, &reason, now.saturating_add(REFUSED_TOKEN_TTL_SECS));
                    if let (Some(b), Some(ip)) = (&self.budget, client) {
                        b.refused(ip);
                    }
                }
                Err(Refused::Token(reason))
            }
            Err(other) => Err(other),
        }
    }

    /// Forgets client addresses whose refusal budget has refilled.
    pub fn evict(&self) {
        if let Some(b) = &self.budget {
            b.evict();
        }
    }
}

/// The provider's algorithms as `jsonwebtoken` names them.
fn algorithms(p: &ProviderConfig) -> Result<Vec<Algorithm>, String> {
    p.algorithms
        .iter()
        .map(|a| match a.as_str() {
            "RS256" => Ok(Algorithm::RS256),
            "ES256" => Ok(Algorithm::ES256),
            "EdDSA" => Ok(Algorithm::EdDSA),
            "HS256" if p.hs256_secret_file.is_some() => Ok(Algorithm::HS256),
            other => Err(format!("{}: algorithm {other} not usable", p.issuer)),
        })
        .collect()
}

fn hs256_key(path: &std::path::Path) -> Result<DecodingKey, String> {
    let raw = crate::secret_file::read(path, "HS256 secret file")?;
    let s = String::from_utf8(raw).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let s = s.trim_end_matches(['\n', '\r']);
    // RFC 7518 §3.2: the HS256 key must be at least as long as the hash output.
    if s.len() < 32 {
        return Err(format!("{}: HS256 secret must be at least 32 bytes", path.display()));
    }
    Ok(DecodingKey::from_secret(s.as_bytes()))
}

/// Full verification by one provider; returns the principal and the token's `exp`.
fn verify_with(p: &Provider, routing: &Routing, token: &str, leeway: u64) -> Result<(Principal, u64), Refused> {
    let refuse = |r| Refused::Token(r);
    let (alg, kid) = peek_header(token).map_err(refuse)?;
    let alg = match alg.as_str() {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        _ => return Err(refuse(Reason::AlgorithmNotAllowed)),
    };
    if !p.allowed.contains(&alg) {
        return Err(refuse(Reason::AlgorithmNotAllowed));
    }
    let remote_set;
    let key = if alg == Algorithm::HS256 {
        p.hs256.as_ref().ok_or(refuse(Reason::AlgorithmNotAllowed))?
    } else {
        let set = match &p.keys {
            Keys::Static(set) => set,
            Keys::Remote(r) => {
                remote_set = r.keys().ok_or(Refused::KeysUnavailable)?;
                &*remote_set
            }
            Keys::None => return Err(refuse(Reason::UnknownKey)),
        };
        set.find(kid.as_deref().unwrap_or_default(), alg).ok_or(refuse(Reason::UnknownKey))?
    };
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    // jsonwebtoken checks iss/aud only when set, and presence only when listed here.
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(&[&p.issuer]);
    v.set_audience(&p.audiences);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| {
        refuse(match e.kind() {
            ErrorKind::InvalidSignature => Reason::BadSignature,
            ErrorKind::ExpiredSignature => Reason::Expired,
            ErrorKind::ImmatureSignature => Reason::NotYetValid,
            ErrorKind::InvalidIssuer => Reason::WrongIssuer,
            ErrorKind::InvalidAudience => Reason::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => Reason::MissingClaim,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Reason::AlgorithmNotAllowed,
            ErrorKind::InvalidKeyFormat | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey => {
                Reason::BadSignature
            }
            _ => Reason::Malformed,
        })
    })?;
    let agent = match data.claims.get(&p.agent_claim) {
        None | Some(Value::Null) => return Err(refuse(Reason::MissingAgent)),
        Some(Value::String(s)) => parse_agent_id(s),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| parse_agent_id(&n.to_string())),
        Some(_) => None,
    }
    .ok_or(refuse(Reason::InvalidAgent))?;
    let tenant = match data.claims.get(&p.tenant_claim) {
        Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_TENANT_LEN => Some(t.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let exp = data.claims.get("exp").and_then(Value::as_u64).ok_or(refuse(Reason::MissingClaim))?;
    let gateway = routing.route(p.gateway, &data.claims).map_err(refuse)?;
    Ok((Principal { agent_id: agent.to_string(), tenant, gateway }, exp))
}

/// The payload's `iss`, unverified: only to pick the provider that then verifies everything.
fn peek_issuer(token: &str) -> Result<String, Reason> {
    let payload = token.split('.').nth(1).ok_or(Reason::Malformed)?;
    let raw = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Reason::Malformed)?;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let claims: Iss = serde_json::from_slice(&raw).map_err(|_| Reason::Malformed)?;
    claims.iss.ok_or(Reason::MissingClaim)
}

/// The client behind a request: the peer, or when the peer is one of the `trusted` proxies the
/// nearest address in `X-Forwarded-For` that is not one. `None` when a trusted proxy's header
/// names no client (or an unparsable one): the proxy alone is known.
fn client_of(trusted: &[Cidr], peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    for v in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for hop in v.to_str().ok()?.rsplit(',') {
            let ip = hop.trim().parse::<IpAddr>().ok()?.to_canonical();
            if !is_trusted(ip) {
                return Some(ip);
            }
        }
    }
    None
}

/// Extracts the token from `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750).
fn bearer_token(headers: &HeaderMap) -> Result<&str, Reason> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(Reason::MissingToken)?;
    if values.next().is_some() {
        return Err(Reason::Malformed);
    }
    let s = value.to_str().map_err(|_| Reason::Malformed)?;
    let (scheme, token) = s.split_once(' ').ok_or(Reason::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reason::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Reason::MissingToken);
    }
    Ok(token)
}

/// Reads `alg` and `kid` from the JOSE header without trusting anything else in it.
fn peek_header(token: &str) -> Result<(String, Option<String>), Reason> {
    let head = token.split('.').next().ok_or(Reason::Malformed)?;
    let raw = URL_SAFE_NO_PAD.decode(head).map_err(|_| Reason::Malformed)?;
    let v: Map<String, Value> = serde_json::from_slice(&raw).map_err(|_| Reason::Malformed)?;
    if v.contains_key("crit") {
        // Whatever it lists, ccgate implements no extension, so it must refuse (RFC 7515
        // §4.1.11); an empty or malformed `crit` is invalid anyway.
        return Err(Reason::Crit);
    }
    let alg = v.get("alg").and_then(Value::as_str).ok_or(Reason::Malformed)?.to_owned();
    let kid = match v.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Reason::Malformed),
    };
    Ok((alg, kid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn cache(size: usize) -> TokenCache<Principal> {
        TokenCache::new(size)
    }

    /// As `check` computes it: the earlier of exp + leeway and now + ttl (60 s).
    fn until(exp: u64, leeway: u64, now: u64) -> u64 {
        exp.saturating_add(leeway).min(now.saturating_add(60))
    }

    fn who(a: &str) -> Principal {
        Principal::agent(a)
    }

    #[test]
    fn cache_honours_expiry_and_ttl() {
        let c = cache(10);
        let k = TokenCache::<Principal>::key("t1");
        c.put(k, &who("153"), until(1_000, 30, 900));
        assert_eq!(c.get(&k, 960), Some(who("153")), "within ttl (900+60) and exp+leeway (1030)");
        assert_eq!(c.get(&k, 961), None, "the 60 s reuse cap is over");
        let k2 = TokenCache::<Principal>::key("t2");
        c.put(k2, &who("154"), until(1_000, 30, 990));
        assert_eq!(c.get(&k2, 1_030), Some(who("154")));
        assert_eq!(c.get(&k2, 1_031), None, "expired (with leeway) even though the ttl is not over");
        assert_eq!(c.get(&TokenCache::<Principal>::key("t3"), 0), None);
    }

    #[test]
    fn tokens_verified_together_expire_spread_over_a_quarter_of_the_ttl() {
        let ends: Vec<u64> = (0..1_000)
            .map(|i| reuse_until(&TokenCache::<Principal>::key(&format!("token-{i}")), u64::MAX, 1_000, 60))
            .collect();
        assert!(ends.iter().all(|&e| (1_045..=1_060).contains(&e)), "never later than the ttl, at most 15 s early");
        let distinct: std::collections::BTreeSet<_> = ends.iter().collect();
        assert_eq!(distinct.len(), 16, "every second of the spread is used");
        let in_last_second = ends.iter().filter(|&&e| e == 1_060).count();
        assert!(in_last_second < 150, "not bunched: {in_last_second} of 1,000 in one second");
        assert_eq!(reuse_until(&[7; 32], 1_030, 1_000, 60), 1_030, "the token's own expiry still comes first");
        assert_eq!(reuse_until(&[7; 32], u64::MAX, 1_000, 0), 1_000, "ttl 0: not past the second of the check");
    }

    #[test]
    fn cache_size_is_bounded_and_recent_entries_survive() {
        let c = cache(100);
        let hot = TokenCache::<Principal>::key("hot");
        c.put(hot, &who("153"), u64::MAX / 2);
        for i in 0..10_000 {
            c.put(TokenCache::<Principal>::key(&format!("cold-{i}")), &who("154"), u64::MAX / 2);
            if i % 40 == 0 {
                assert!(c.get(&hot, 1).is_some(), "a token in use stays cached");
            }
        }
        let g = c.generations.lock().unwrap();
        assert!(g.0.len() + g.1.len() <= 100, "at most the capacity: {}", g.0.len() + g.1.len());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&HeaderMap::new()), Err(Reason::MissingToken));
        assert_eq!(bearer_token(&headers("Basic abc")), Err(Reason::MissingToken));
        assert_eq!(bearer_token(&headers("Bearer ")), Err(Reason::MissingToken));
        assert_eq!(bearer_token(&headers("bearer a.b.c")), Ok("a.b.c"));
    }

    #[test]
    fn header_peek_rejects_garbage_and_none() {
        assert_eq!(peek_header("!!!.b.c"), Err(Reason::Malformed));
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(peek_header(&format!("{none}.e30.")).unwrap().0, "none");
        let bad_kid = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":5}"#);
        assert_eq!(peek_header(&format!("{bad_kid}.e30.x")), Err(Reason::Malformed));
    }

    fn config() -> AuthConfig {
        AuthConfig { issuer: "https://idp.test".into(), audience: "ccgate".into(), ..AuthConfig::default() }
    }

    fn good() -> (crate::devkeys::DevSigner, Authenticator) {
        let es = crate::devkeys::DevSigner::es256("es-1").unwrap();
        let keys = crate::devkeys::jwks(&[&es])["keys"].as_array().unwrap().clone();
        let a = Authenticator::new(&config(), &keys, None).unwrap();
        (es, a)
    }

    /// A token whose signature is valid in form but wrong: the last part of another token.
    fn forged(es: &crate::devkeys::DevSigner, agent: &str) -> String {
        let t = es.token("https://idp.test", "ccgate", agent, 600).unwrap();
        let other = es.token("https://idp.test", "ccgate", "999", 600).unwrap();
        let (head_payload, _) = t.rsplit_once('.').unwrap();
        format!("{head_payload}.{}", other.rsplit_once('.').unwrap().1)
    }

    #[test]
    fn a_crit_header_is_refused_whatever_it_lists() {
        let (es, a) = good();
        let t = es.token("https://idp.test", "ccgate", "153", 600).unwrap();
        assert!(a.verify(&t).is_ok());
        let (_, rest) = t.split_once('.').unwrap();
        for crit in [r#"["exp"]"#, r#"["x-unknown"]"#, "[]", r#""b64""#] {
            let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"es-1","crit":{crit}}}"#));
            assert_eq!(a.verify(&format!("{head}.{rest}")), Err(Reason::Crit), "{crit}");
        }
    }

    #[test]
    fn keys_ccgate_cannot_use_are_skipped_and_only_none_left_is_fatal() {
        let b64 = |n: usize, first: u8| {
            let mut v = vec![0x5au8; n];
            v[0] = first;
            URL_SAFE_NO_PAD.encode(v)
        };
        let unusable = vec![
            serde_json::json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64(48, 1), "y": b64(48, 2)}),
            serde_json::json!({"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc", "n": b64(256, 0xc1), "e": "AQAB"}),
            serde_json::json!({"kty": "RSA", "alg": "PS256", "kid": "ps", "n": b64(256, 0xc1), "e": "AQAB"}),
            serde_json::json!({"kty": "RSA", "kid": "weak", "n": b64(128, 0xc1), "e": "AQAB"}),
            serde_json::json!({"kty": "AKP", "kid": "future"}),
        ];
        let err = Authenticator::new(&config(), &unusable, None).err().unwrap();
        for (kid, why) in [("p384", "curve"), ("enc", "use: enc"), ("ps", "PS256"), ("weak", "2048"), ("future", "JWK")]
        {
            assert!(err.contains(kid) && err.contains(why), "{kid}/{why} in: {err}");
        }
        let (es, _) = good();
        let mut keys = unusable.clone();
        keys.extend(crate::devkeys::jwks(&[&es])["keys"].as_array().unwrap().iter().cloned());
        let a = Authenticator::new(&config(), &keys, None).unwrap();
        assert!(a.verify(&es.token("https://idp.test", "ccgate", "153", 600).unwrap()).is_ok());
        let Keys::Static(set) = &a.providers[0].keys else { panic!("static keys") };
        assert_eq!(set.len(), 1, "only the usable key was loaded");
    }

    #[test]
    fn a_cached_token_with_parts_added_or_cut_is_malformed() {
        let (es, a) = good();
        let t = es.token("https://idp.test", "ccgate", "153", 600).unwrap();
        assert!(a.verify(&t).is_ok());
        assert!(a.verify(&t).is_ok(), "now from the cache, whose hit skips the shape check");
        let cut = t.rsplit_once('.').unwrap().0;
        for bad in [format!("{t}.e30"), cut.to_owned(), format!("{t}.")] {
            assert_eq!(a.verify(&bad), Err(Reason::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_forged_token_sent_again_is_refused_from_memory() {
        let (es, a) = good();
        let m = crate::metrics::Metrics::default();
        let a = a.with_metrics(&m);
        let t = forged(&es, "153");
        assert_eq!(a.verify(&t), Err(Reason::BadSignature));
        assert_eq!(a.verify(&t), Err(Reason::BadSignature));
        assert!(m.render().contains("ccgate_auth_refusals_remembered_total 1"));
    }

    fn bearer(t: &str) -> HeaderMap {
        headers(&format!("Bearer {t}"))
    }

    /// An expired token, validly signed.
    fn expired(es: &crate::devkeys::DevSigner, agent: &str) -> String {
        let now = crate::clock::unix_secs();
        let claims = serde_json::json!({"iss": "https://idp.test", "aud": "ccgate", "agent_id": agent,
            "iat": now - 7200, "exp": now - 3600});
        es.sign(&claims).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn no_client_can_make_another_clients_valid_token_refused() {
        let (es, a) = good();
        let m = crate::metrics::Metrics::default();
        let a = a.with_metrics(&m);
        let shared: IpAddr = "127.0.0.1".parse().unwrap();
        // One client on the shared address: distinct forged tokens, and one stale token looped.
        let stale = expired(&es, "153");
        for i in 0..200 {
            let r = a.authenticate_now(&bearer(&forged(&es, &format!("{}", 200 + i))), Some(shared));
            assert_eq!(r, Some(Err(Refused::Token(Reason::BadSignature))));
            let r = a.authenticate_now(&bearer(&stale), Some(shared));
            assert_eq!(r, Some(Err(Refused::Token(Reason::Expired))));
        }
        assert!(m.render().contains("ccgate_auth_refusals_remembered_total 199"), "the stale token costs a hash");
        // Every other client's new valid token is verified and served.
        for agent in 101..111 {
            let t = es.token("https://idp.test", "ccgate", &agent.to_string(), 600).unwrap();
            let who = a.authenticate(&bearer(&t), Some(shared)).await.unwrap();
            assert_eq!(who.agent_id, agent.to_string());
        }
    }

    #[test]
    fn every_lasting_refusal_is_remembered_and_a_not_yet_valid_token_is_not() {
        let (es, a) = good();
        let m = crate::metrics::Metrics::default();
        let a = a.with_metrics(&m);
        let wrong_aud = es.token("https://idp.test", "someone-else", "153", 600).unwrap();
        for t in [expired(&es, "153"), wrong_aud, forged(&es, "154")] {
            let first = a.verify(&t);
            assert!(first.is_err());
            assert_eq!(a.verify(&t), first);
        }
        assert!(m.render().contains("ccgate_auth_refusals_remembered_total 3"), "{}", m.render());
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_waits_for_a_verification_slot_rather_than_being_refused() {
        let cfg = AuthConfig { max_concurrent_verifications: 1, ..config() };
        let es = crate::devkeys::DevSigner::es256("es-1").unwrap();
        let keys = crate::devkeys::jwks(&[&es])["keys"].as_array().unwrap().clone();
        let a = Arc::new(Authenticator::new(&cfg, &keys, None).unwrap());
        let t = es.token("https://idp.test", "ccgate", "153", 600).unwrap();
        let busy = a.verifications.try_acquire().unwrap();
        assert_eq!(a.authenticate_now(&bearer(&t), None), None, "no free slot: the caller must wait");
        let waiting = tokio::spawn({
            let (a, t) = (a.clone(), t.clone());
            async move { a.authenticate(&bearer(&t), None).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(busy);
        assert_eq!(waiting.await.unwrap().unwrap().agent_id, "153");
        // Known now: no slot needed.
        let _busy = a.verifications.try_acquire().unwrap();
        assert!(matches!(a.authenticate_now(&bearer(&t), None), Some(Ok(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn the_optional_per_client_budget_throttles_one_client_but_never_loopback() {
        let cfg =
            AuthConfig { per_client_refusal_budget: true, trusted_proxies: vec!["10.0.0.0/8".into()], ..config() };
        let es = crate::devkeys::DevSigner::es256("es-1").unwrap();
        let keys = crate::devkeys::jwks(&[&es])["keys"].as_array().unwrap().clone();
        let a = Authenticator::new(&cfg, &keys, None).unwrap();
        let (attacker, other): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let valid = es.token("https://idp.test", "ccgate", "153", 600).unwrap();
        assert!(matches!(a.authenticate_now(&bearer(&valid), Some(attacker)), Some(Ok(_))), "known good from now on");
        // The burst's refusals fit the budget; the one after it is checked and closes it.
        for i in 0..=REFUSED_PER_ADDRESS_BURST {
            let r = a.authenticate_now(&bearer(&forged(&es, &format!("{}", 200 + i))), Some(attacker));
            assert_eq!(r, Some(Err(Refused::Token(Reason::BadSignature))), "refusal {i} is checked");
        }
        let r = a.authenticate_now(&bearer(&forged(&es, "300")), Some(attacker));
        assert!(matches!(r, Some(Err(Refused::Throttled(_)))), "{r:?}");
        // Another address is not affected; a token already verified still passes.
        assert_eq!(
            a.authenticate_now(&bearer(&forged(&es, "301")), Some(other)),
            Some(Err(Refused::Token(Reason::BadSignature)))
        );
        assert!(matches!(a.authenticate_now(&bearer(&valid), Some(attacker)), Some(Ok(_))));
        // Loopback (also as an IPv4-mapped IPv6 address) is never budgeted.
        for lo in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let lo: IpAddr = lo.parse().unwrap();
            for i in 0..2 * REFUSED_PER_ADDRESS_BURST {
                let r = a.authenticate_now(&bearer(&forged(&es, &format!("{}", 400 + i))), Some(lo));
                assert_eq!(r, Some(Err(Refused::Token(Reason::BadSignature))), "{lo}");
            }
        }
        // Behind a trusted proxy the client is the address X-Forwarded-For names.
        let mut h = bearer(&forged(&es, "500"));
        h.insert(X_FORWARDED_FOR.clone(), http::HeaderValue::from_static("192.0.2.1, 10.1.1.1"));
        assert!(matches!(a.authenticate_now(&h, Some("10.2.2.2".parse().unwrap())), Some(Err(Refused::Throttled(_)))));
        // From an untrusted peer the header is ignored.
        assert_eq!(
            a.authenticate_now(&h, Some("192.0.2.9".parse().unwrap())),
            Some(Err(Refused::Token(Reason::BadSignature)))
        );
        // The budget refills.
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        let r = a.authenticate_now(&bearer(&forged(&es, "302")), Some(attacker));
        assert_eq!(r, Some(Err(Refused::Token(Reason::BadSignature))));
    }

    /// The client address logged: the peer, or the nearest untrusted hop a trusted proxy
    /// names; with no budget configured too. The issuer logged is only ever a configured one.
    #[test]
    fn the_client_address_and_issuer_logged_are_resolved_from_trusted_sources() {
        let cfg = AuthConfig { trusted_proxies: vec!["10.0.0.0/8".into()], ..config() };
        let es = crate::devkeys::DevSigner::es256("es-1").unwrap();
        let keys = crate::devkeys::jwks(&[&es])["keys"].as_array().unwrap().clone();
        let a = Authenticator::new(&cfg, &keys, None).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR.clone(), "203.0.113.5, 10.2.2.2".parse().unwrap());
        assert_eq!(a.client_address(ip("10.1.1.1"), &h), ip("203.0.113.5"), "through two proxies");
        assert_eq!(
            a.client_address(ip("198.51.100.7"), &h),
            ip("198.51.100.7"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(a.client_address(ip("10.1.1.1"), &HeaderMap::new()), ip("10.1.1.1"), "no header: the proxy");
        assert_eq!(
            a.known_issuer(&bearer(&es.token("https://idp.test", "ccgate", "153", 600).unwrap())),
            Some("https://idp.test")
        );
        let stranger = es.token("https://evil.example/\nforged line", "ccgate", "153", 600).unwrap();
        assert_eq!(a.known_issuer(&bearer(&stranger)), None, "an unknown issuer is never logged");
    }
}

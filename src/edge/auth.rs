//! Phase `authenticate`: bearer JWT → [`Principal`].
//!
//! Order of checks, each with its own failure reason so an app developer can tell what is
//! wrong: header present → three base64url parts → `alg` allow-listed (before any key is
//! touched, so `alg: none` and HS256-with-an-RSA-public-key die here) → key found by `kid` and
//! of the algorithm's family → signature → `exp`/`nbf` → `iss` → `aud` → agent claim. A
//! header with `crit` is refused: ccgate understands no JOSE extension (RFC 7515 §4.1.11).
//!
//! A signature check is the one costly step an anonymous client can trigger, so its cost is
//! bounded twice: a token refused for its signature is remembered for a while (the same bad
//! token is refused without checking again), and each client address has a budget of refused
//! tokens; past it, tokens that are not already known good get 429 without any check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;
use crate::gateway::parse_agent_id;
use crate::metrics::AuthFailureReason as Reason;
use crate::ops::Principal;

/// Longest tenant value kept; longer ones share the "no tenant" bucket rather than letting a
/// token make ccgate store arbitrary amounts of key data.
const MAX_TENANT_LEN: usize = 128;

/// Upper bound on a bearer token's length. Real JWTs are 1-2 KiB; refusing larger ones early
/// bounds the base64 and JSON work an unauthenticated client can cause.
const MAX_TOKEN_LEN: usize = 8 * 1024;

struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

pub struct Authenticator {
    /// Keys by `kid`. A key without `kid` is stored under "" and used only by tokens without
    /// one.
    keys: HashMap<String, Vec<Key>>,
    hs256: Option<DecodingKey>,
    allowed: Vec<Algorithm>,
    issuer: String,
    audience: String,
    leeway: u64,
    agent_claim: String,
    tenant_claim: String,
    cache: Option<TokenCache<Principal>>,
    /// Signature-refused tokens, by hash.
    refused: TokenCache<Reason>,
    budget: RefusalBudget,
    /// `ccgate_auth_throttled_total`, `ccgate_auth_refusals_remembered_total`.
    counters: Option<(prometheus::IntCounter, prometheus::IntCounter)>,
    ttl: u64,
}

/// Tokens already verified, keyed by the SHA-256 of the token so the cache never holds a
/// bearer credential. Profiling showed RSA signature checks at over a quarter of the CPU of a
/// proxied request; apps reuse a token for its lifetime, so most requests skip the check.
/// An entry is reused until the earlier of the token's expiry (with leeway) and `ttl` after
/// its verification. Two generations bound the size: when the current one holds half the
/// capacity it becomes the previous one, and the old previous is dropped (approximate LRU,
/// O(1), no per-entry bookkeeping).
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

/// Tokens refused for their signature, remembered this many at most and this long, so the
/// same forged token sent again costs a hash, not a signature check.
const REFUSED_TOKENS: usize = 1024;
const REFUSED_TOKEN_TTL_SECS: u64 = 60;
/// Each client address may have this many tokens refused at once, then one more per second;
/// the refusal that overdraws the budget closes it: until it refills, the address's tokens
/// that are not already known good get 429 without a signature check.
/// A real app refuses a token rarely (expiry); 20 covers a restart storm.
const REFUSED_PER_ADDRESS_BURST: u32 = 20;
const REFUSED_PER_ADDRESS_PER_SEC: u32 = 1;
/// Client addresses tracked for that budget; more are not blocked (fail open, bounded memory).
const MAX_BLOCKED_ADDRESSES: usize = 10_000;

/// Tokens longer than this are verified every time rather than cached.
const MAX_CACHED_TOKEN_LEN: usize = 4096;

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
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() >= self.half {
            g.1 = std::mem::take(&mut g.0);
        }
        g.0.insert(key, Cached { value: value.clone(), valid_until });
    }
}

/// Why a request's token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The token is missing or invalid.
    Token(Reason),
    /// The client's address had too many tokens refused: come back after this long.
    Throttled(std::time::Duration),
}

type AddressLimiter = governor::RateLimiter<
    IpAddr,
    governor::state::keyed::DashMapStateStore<IpAddr>,
    crate::ops::limits::TokioClock,
    governor::middleware::NoOpMiddleware<crate::ops::limits::TokioInstant>,
>;

/// The per-address budget of refused tokens.
struct RefusalBudget {
    limiter: AddressLimiter,
    /// Addresses over budget, until when.
    blocked: Mutex<HashMap<IpAddr, tokio::time::Instant>>,
}

impl RefusalBudget {
    fn new() -> Self {
        let quota =
            governor::Quota::per_second(NonZeroU32::new(REFUSED_PER_ADDRESS_PER_SEC).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(REFUSED_PER_ADDRESS_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: governor::RateLimiter::new(quota, Default::default(), crate::ops::limits::TokioClock),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must still wait, if it is over budget.
    fn blocked_for(&self, ip: IpAddr) -> Option<std::time::Duration> {
        let now = tokio::time::Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
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
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            if blocked.len() < MAX_BLOCKED_ADDRESSES || blocked.contains_key(&ip) {
                blocked.insert(ip, tokio::time::Instant::now() + wait);
            }
        }
    }

    /// Forgets addresses whose budget has refilled (called with the rate limiter eviction).
    fn evict(&self) {
        self.limiter.retain_recent();
        let now = tokio::time::Instant::now();
        self.blocked.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, until| *until > now);
    }
}

impl Authenticator {
    /// Loads keys named by the config. Fails with a message naming the file and the problem.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, String> {
        let jwks = match &cfg.jwks_file {
            Some(p) => load_jwks(p)?,
            None => Vec::new(),
        };
        let hs256 = match &cfg.hs256_secret_file {
            Some(p) => {
                let raw = crate::secret_file::read(p, "HS256 secret file")?;
                let s = String::from_utf8(raw).map_err(|_| format!("{}: not UTF-8", p.display()))?;
                let s = s.trim_end_matches(['\n', '\r']);
                // RFC 7518 §3.2: the HS256 key must be at least as long as the hash output.
                if s.len() < 32 {
                    return Err(format!("{}: HS256 secret must be at least 32 bytes", p.display()));
                }
                Some(DecodingKey::from_secret(s.as_bytes()))
            }
            None => None,
        };
        Self::new(cfg, &jwks, hs256)
    }

    /// Builds the verifier from raw JWKs (each judged on its own: see [`usable_key`]).
    pub fn new(cfg: &AuthConfig, jwks: &[Value], hs256: Option<DecodingKey>) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for a in &cfg.algorithms {
            allowed.push(match a.as_str() {
                "RS256" => Algorithm::RS256,
                "ES256" => Algorithm::ES256,
                "EdDSA" => Algorithm::EdDSA,
                "HS256" if hs256.is_some() => Algorithm::HS256,
                other => return Err(format!("auth.algorithms: {other} not usable")),
            });
        }
        let mut keys: HashMap<String, Vec<Key>> = HashMap::new();
        let mut skipped = Vec::new();
        for raw in jwks {
            let kid = raw.get("kid").and_then(Value::as_str).unwrap_or("(no kid)").to_owned();
            let usable = usable_key(raw).and_then(|(jwk, alg)| {
                if !allowed.contains(&alg) {
                    return Err(format!("{alg:?}, which auth.algorithms does not allow"));
                }
                let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unreadable ({e})"))?;
                Ok((alg, key))
            });
            match usable {
                Ok((alg, key)) => keys.entry(kid_of(raw)).or_default().push(Key { alg, key }),
                Err(why) => {
                    tracing::warn!(kid = %kid, reason = %why, "JWKS key skipped");
                    skipped.push(format!("{kid}: {why}"));
                }
            }
        }
        if keys.is_empty() && hs256.is_none() {
            let why = if skipped.is_empty() { "the JWKS is empty".to_owned() } else { skipped.join("; ") };
            return Err(format!("no usable signing key ({why})"));
        }
        Ok(Self {
            keys,
            hs256,
            allowed,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_secs,
            agent_claim: cfg.agent_claim.clone(),
            tenant_claim: cfg.tenant_claim.clone(),
            cache: (cfg.cache_size > 0).then(|| TokenCache::new(cfg.cache_size)),
            refused: TokenCache::new(REFUSED_TOKENS),
            budget: RefusalBudget::new(),
            counters: None,
            ttl: cfg.cache_ttl_secs,
        })
    }

    /// Counts throttled requests and remembered refusals in these metrics.
    pub fn with_metrics(mut self, m: &crate::metrics::Metrics) -> Self {
        self.counters = Some((m.auth_throttled(), m.auth_refusals_remembered()));
        self
    }

    /// Authenticates a request from its headers, sent from `client` (when known).
    pub fn authenticate(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Result<Principal, Refused> {
        let token = bearer_token(headers).map_err(Refused::Token)?;
        self.check(token, client)
    }

    /// [`Self::authenticate`] for a bare token, with no client address (tools and tests).
    pub fn verify(&self, token: &str) -> Result<Principal, Reason> {
        self.check(token, None).map_err(|r| match r {
            Refused::Token(reason) => reason,
            Refused::Throttled(_) => Reason::BadSignature,
        })
    }

    fn check(&self, token: &str, client: Option<IpAddr>) -> Result<Principal, Refused> {
        if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
            return Err(Refused::Token(Reason::Malformed));
        }
        let now = unix_now();
        let key = (token.len() <= MAX_CACHED_TOKEN_LEN).then(|| TokenCache::<Principal>::key(token));
        if let (Some(c), Some(k)) = (&self.cache, &key) {
            if let Some(p) = c.get(k, now) {
                return Ok(p);
            }
        }
        // Past here the token may cost a signature check.
        if let Some(wait) = client.and_then(|ip| self.budget.blocked_for(ip)) {
            if let Some((throttled, _)) = &self.counters {
                throttled.inc();
            }
            return Err(Refused::Throttled(wait));
        }
        if let Some(reason) = key.as_ref().and_then(|k| self.refused.get(k, now)) {
            if let Some((_, remembered)) = &self.counters {
                remembered.inc();
            }
            return Err(Refused::Token(reason));
        }
        match self.verify_uncached(token) {
            Ok((principal, exp)) => {
                if let (Some(c), Some(k)) = (&self.cache, key) {
                    c.put(k, &principal, exp.saturating_add(self.leeway).min(now.saturating_add(self.ttl)));
                }
                Ok(principal)
            }
            Err(reason) => {
                if let Some(ip) = client {
                    self.budget.refused(ip);
                }
                if let (Reason::BadSignature, Some(k)) = (reason, key) {
                    self.refused.put(k, &reason, now.saturating_add(REFUSED_TOKEN_TTL_SECS));
                }
                Err(Refused::Token(reason))
            }
        }
    }

    /// Forgets client addresses whose refusal budget has refilled.
    pub fn evict(&self) {
        self.budget.evict();
    }

    /// Full verification; returns the principal and the token's `exp`.
    fn verify_uncached(&self, token: &str) -> Result<(Principal, u64), Reason> {
        let (alg, kid) = peek_header(token)?;
        let alg = match alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            "HS256" => Algorithm::HS256,
            _ => return Err(Reason::AlgorithmNotAllowed),
        };
        if !self.allowed.contains(&alg) {
            return Err(Reason::AlgorithmNotAllowed);
        }
        let key = if alg == Algorithm::HS256 {
            self.hs256.as_ref().ok_or(Reason::AlgorithmNotAllowed)?
        } else {
            let candidates = self.keys.get(kid.as_deref().unwrap_or_default()).ok_or(Reason::UnknownKey)?;
            &candidates.iter().find(|k| k.alg == alg).ok_or(Reason::UnknownKey)?.key
        };
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        // jsonwebtoken checks iss/aud only when set, and presence only when listed here.
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| match e.kind() {
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
        })?;
        let agent = match data.claims.get(&self.agent_claim) {
            None | Some(Value::Null) => return Err(Reason::MissingAgent),
            Some(Value::String(s)) => parse_agent_id(s),
            Some(Value::Number(n)) => n.as_u64().and_then(|n| parse_agent_id(&n.to_string())),
            Some(_) => None,
        }
        .ok_or(Reason::InvalidAgent)?;
        let tenant = match data.claims.get(&self.tenant_claim) {
            Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_TENANT_LEN => Some(t.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let exp = data.claims.get("exp").and_then(Value::as_u64).ok_or(Reason::MissingClaim)?;
        Ok((Principal { agent_id: agent.to_string(), tenant }, exp))
    }
}

/// The `kid` a key is stored under ("" for a key without one: used only by tokens without).
fn kid_of(raw: &Value) -> String {
    raw.get("kid").and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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

/// Reads a JWK Set file. Only the set's shape must be right; each key is judged on its own.
fn load_jwks(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let set: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    match set.get("keys") {
        Some(Value::Array(keys)) => Ok(keys.clone()),
        _ => Err(format!("{}: not a JWK Set (no \"keys\" array)", path.display())),
    }
}

/// Smallest RSA modulus accepted (NIST SP 800-57: 2048 bits until 2030).
const MIN_RSA_BITS: usize = 2048;

/// A key ccgate can verify signatures with, and for which algorithm; or why not. Identity
/// providers publish encryption keys and other algorithms beside their signing keys, so a key
/// that does not fit is skipped, not fatal.
fn usable_key(raw: &Value) -> Result<(Jwk, Algorithm), String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("not a JWK ccgate can read ({e})"))?;
    if jwk.common.public_key_use == Some(jsonwebtoken::jwk::PublicKeyUse::Encryption) {
        return Err("an encryption key (use: enc)".into());
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = URL_SAFE_NO_PAD.decode(p.n.trim_end_matches('=')).map_err(|_| "RSA modulus is not base64url")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("an RSA key of about {bits} bits; at least {MIN_RSA_BITS} are required"));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return Err("a key type or curve ccgate does not verify with (RSA, P-256, Ed25519 only)".into()),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        let (declared, implied_name) = (format!("{declared:?}"), format!("{implied:?}"));
        if declared != implied_name {
            return Err(format!("alg {declared}, which ccgate does not verify"));
        }
    }
    Ok((jwk, implied))
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
        Principal { agent_id: a.into(), tenant: None }
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
        assert_eq!(a.keys.values().map(Vec::len).sum::<usize>(), 1, "only the usable key was loaded");
    }

    #[test]
    fn a_forged_token_sent_again_is_refused_from_memory() {
        let (es, a) = good();
        let m = crate::metrics::Metrics::new();
        let a = a.with_metrics(&m);
        let t = forged(&es, "153");
        assert_eq!(a.verify(&t), Err(Reason::BadSignature));
        assert_eq!(a.verify(&t), Err(Reason::BadSignature));
        assert!(m.render().contains("ccgate_auth_refusals_remembered_total 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_with_too_many_refused_tokens_is_throttled_but_known_good_tokens_pass() {
        let (es, a) = good();
        let (attacker, other): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut h = HeaderMap::new();
        let mut bearer = |t: &str| {
            h.insert(AUTHORIZATION, http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
            h.clone()
        };
        let valid = es.token("https://idp.test", "ccgate", "153", 600).unwrap();
        assert!(a.authenticate(&bearer(&valid), Some(attacker)).is_ok(), "known good from now on");
        // The burst's refusals fit the budget; the one after it is checked and closes it.
        for i in 0..=REFUSED_PER_ADDRESS_BURST {
            let r = a.authenticate(&bearer(&forged(&es, &format!("{}", 200 + i))), Some(attacker));
            assert_eq!(r, Err(Refused::Token(Reason::BadSignature)), "refusal {i} is checked");
        }
        let r = a.authenticate(&bearer(&forged(&es, "300")), Some(attacker));
        assert!(matches!(r, Err(Refused::Throttled(_))), "{r:?}");
        // Another address is not affected; a token already verified still passes.
        assert_eq!(
            a.authenticate(&bearer(&forged(&es, "301")), Some(other)),
            Err(Refused::Token(Reason::BadSignature))
        );
        assert!(a.authenticate(&bearer(&valid), Some(attacker)).is_ok());
        // The budget refills.
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        let r = a.authenticate(&bearer(&forged(&es, "302")), Some(attacker));
        assert_eq!(r, Err(Refused::Token(Reason::BadSignature)));
    }
}

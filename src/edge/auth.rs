//! Phase `authenticate`: bearer JWT → [`Principal`].
//!
//! Order of checks, each with its own failure reason so an app developer can tell what is
//! wrong: header present → three base64url parts → `alg` allow-listed (before any key is
//! touched, so `alg: none` and HS256-with-an-RSA-public-key die here) → key found by `kid` and
//! of the algorithm's family → signature → `exp`/`nbf` → `iss` → `aud` → agent claim.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
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
    cache: Option<VerifiedCache>,
}

/// Tokens already verified, keyed by the SHA-256 of the token so the cache never holds a
/// bearer credential. Profiling showed RSA signature checks at over a quarter of the CPU of a
/// proxied request; apps reuse a token for its lifetime, so most requests skip the check.
/// An entry is reused until the earlier of the token's expiry (with leeway) and `ttl` after
/// its verification. Two generations bound the size: when the current one holds half the
/// capacity it becomes the previous one, and the old previous is dropped (approximate LRU,
/// O(1), no per-entry bookkeeping).
struct VerifiedCache {
    half: usize,
    ttl: u64,
    /// (current, previous).
    generations: Mutex<(Generation, Generation)>,
}

type Generation = HashMap<[u8; 32], Cached>;

#[derive(Clone)]
struct Cached {
    principal: Principal,
    valid_until: u64,
}

/// Tokens longer than this are verified every time rather than cached.
const MAX_CACHED_TOKEN_LEN: usize = 4096;

impl VerifiedCache {
    fn key(token: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    fn get(&self, key: &[u8; 32], now: u64) -> Option<Principal> {
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let (current, previous) = &mut *g;
        if let Some(c) = current.get(key) {
            if now <= c.valid_until {
                return Some(c.principal.clone());
            }
            current.remove(key);
            return None;
        }
        let c = previous.remove(key)?;
        if now > c.valid_until {
            return None;
        }
        let p = c.principal.clone();
        current.insert(*key, c);
        Some(p)
    }

    fn put(&self, key: [u8; 32], principal: &Principal, exp: u64, leeway: u64, now: u64) {
        let valid_until = exp.saturating_add(leeway).min(now.saturating_add(self.ttl));
        let mut g = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() >= self.half {
            g.1 = std::mem::take(&mut g.0);
        }
        g.0.insert(key, Cached { principal: principal.clone(), valid_until });
    }
}

impl Authenticator {
    /// Loads keys named by the config. Fails with a message naming the file and the problem.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, String> {
        let jwks = match &cfg.jwks_file {
            Some(p) => Some(load_jwks(p)?),
            None => None,
        };
        let hs256 = match &cfg.hs256_secret_file {
            Some(p) => {
                let s = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                let s = s.trim_end_matches(['\n', '\r']);
                // RFC 7518 §3.2: the HS256 key must be at least as long as the hash output.
                if s.len() < 32 {
                    return Err(format!("{}: HS256 secret must be at least 32 bytes", p.display()));
                }
                Some(DecodingKey::from_secret(s.as_bytes()))
            }
            None => None,
        };
        Self::new(cfg, jwks.as_ref(), hs256)
    }

    pub fn new(cfg: &AuthConfig, jwks: Option<&JwkSet>, hs256: Option<DecodingKey>) -> Result<Self, String> {
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
        for jwk in jwks.map(|s| s.keys.as_slice()).unwrap_or_default() {
            let alg = key_algorithm(jwk)?;
            if !allowed.contains(&alg) {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key {:?}: {e}", jwk.common.key_id))?;
            keys.entry(jwk.common.key_id.clone().unwrap_or_default()).or_default().push(Key { alg, key });
        }
        if keys.is_empty() && hs256.is_none() {
            return Err("no usable key: the JWKS has no key for the allowed algorithms".into());
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
            cache: (cfg.cache_size > 0).then(|| VerifiedCache {
                half: (cfg.cache_size / 2).max(1),
                ttl: cfg.cache_ttl_secs,
                generations: Mutex::new((HashMap::new(), HashMap::new())),
            }),
        })
    }

    /// Authenticates a request from its headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Reason> {
        let token = bearer_token(headers)?;
        self.verify(token)
    }

    pub fn verify(&self, token: &str) -> Result<Principal, Reason> {
        if token.len() > MAX_TOKEN_LEN || token.split('.').count() != 3 {
            return Err(Reason::Malformed);
        }
        let cache = self.cache.as_ref().filter(|_| token.len() <= MAX_CACHED_TOKEN_LEN);
        let now = unix_now();
        let key = cache.map(|_| VerifiedCache::key(token));
        if let (Some(c), Some(k)) = (cache, &key) {
            if let Some(p) = c.get(k, now) {
                return Ok(p);
            }
        }
        let (principal, exp) = self.verify_uncached(token)?;
        if let (Some(c), Some(k)) = (cache, key) {
            c.put(k, &principal, exp, self.leeway, now);
        }
        Ok(principal)
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
    let alg = v.get("alg").and_then(Value::as_str).ok_or(Reason::Malformed)?.to_owned();
    let kid = match v.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Reason::Malformed),
    };
    Ok((alg, kid))
}

fn load_jwks(path: &Path) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a JWK Set: {e}", path.display()))
}

/// The algorithm a JWK is for: its `alg` if given, else implied by key type and curve.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return Err(format!("JWKS key {:?}: unsupported key type or curve", jwk.common.key_id)),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        let declared = format!("{declared:?}");
        let implied_name = format!("{implied:?}");
        if declared != implied_name {
            return Err(format!("JWKS key {:?}: alg {declared} does not match its key type", jwk.common.key_id));
        }
    }
    Ok(implied)
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

    fn cache(size: usize) -> VerifiedCache {
        VerifiedCache { half: size / 2, ttl: 60, generations: Mutex::new((HashMap::new(), HashMap::new())) }
    }

    fn who(a: &str) -> Principal {
        Principal { agent_id: a.into(), tenant: None }
    }

    #[test]
    fn cache_honours_expiry_and_ttl() {
        let c = cache(10);
        let k = VerifiedCache::key("t1");
        c.put(k, &who("153"), 1_000, 30, 900);
        assert_eq!(c.get(&k, 960), Some(who("153")), "within ttl (900+60) and exp+leeway (1030)");
        assert_eq!(c.get(&k, 961), None, "the 60 s reuse cap is over");
        let k2 = VerifiedCache::key("t2");
        c.put(k2, &who("154"), 1_000, 30, 990);
        assert_eq!(c.get(&k2, 1_030), Some(who("154")));
        assert_eq!(c.get(&k2, 1_031), None, "expired (with leeway) even though the ttl is not over");
        assert_eq!(c.get(&VerifiedCache::key("t3"), 0), None);
    }

    #[test]
    fn cache_size_is_bounded_and_recent_entries_survive() {
        let c = cache(100);
        let hot = VerifiedCache::key("hot");
        c.put(hot, &who("153"), u64::MAX / 2, 0, 0);
        for i in 0..10_000 {
            c.put(VerifiedCache::key(&format!("cold-{i}")), &who("154"), u64::MAX / 2, 0, 0);
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
}

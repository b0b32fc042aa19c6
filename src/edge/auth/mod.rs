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
//!
//! This file is the facade, [`Authenticator`], which runs those steps in order; each step lives
//! beside it: `verify` (one token against its provider), `routing` (the token's gateway),
//! `cache` (tokens verified or refused before) and `refusals` (why a token is refused, how
//! long a refusal is remembered, the per-client budget).

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use jsonwebtoken::DecodingKey;
use serde_json::Value;

use crate::config::{AuthConfig, Cidr, GatewayConfig, KeySource};
use crate::jwks::remote::{OnChange, RemoteKeys};
use crate::jwks::KeySet;
use crate::labels::AuthFailureReason as Reason;
use crate::metrics::Metrics;
use crate::ops::Principal;

mod cache;
mod refusals;
mod routing;
mod verify;

use cache::{reuse_until, TokenCache, Verified};
pub use refusals::Refused;
use refusals::{client_of, RefusalBudget, REFUSED_TOKENS, REFUSED_TOKEN_TTL_SECS};
use routing::Routing;
use verify::{algorithms, bearer_token, hs256_key, peek_issuer, verify_with, Keys, Provider};

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

/// What is known of a token before any signature work.
enum Known {
    /// Verified or refused before (or its client is over budget).
    Decided(Result<Principal, Refused>),
    /// Needs a check; the token's cache key.
    Unknown([u8; 32]),
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

    /// `auth.gateway_claim`, when set: what a `no-gateway` refusal names.
    pub fn gateway_claim(&self) -> Option<std::sync::Arc<str>> {
        self.routing.claim()
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use http::header::AUTHORIZATION;
    use http::HeaderValue;

    use super::refusals::X_FORWARDED_FOR;

    pub(super) fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    pub(super) fn config() -> AuthConfig {
        AuthConfig { issuer: "https://idp.test".into(), audience: "ccgate".into(), ..AuthConfig::default() }
    }

    pub(super) fn good() -> (crate::devkeys::DevSigner, Authenticator) {
        let es = crate::devkeys::DevSigner::es256("es-1").unwrap();
        let keys = crate::devkeys::jwks(&[&es])["keys"].as_array().unwrap().clone();
        let a = Authenticator::new(&config(), &keys, None).unwrap();
        (es, a)
    }

    /// A token whose signature is valid in form but wrong: the last part of another token.
    pub(super) fn forged(es: &crate::devkeys::DevSigner, agent: &str) -> String {
        let t = es.token("https://idp.test", "ccgate", agent, 600).unwrap();
        let other = es.token("https://idp.test", "ccgate", "999", 600).unwrap();
        let (head_payload, _) = t.rsplit_once('.').unwrap();
        format!("{head_payload}.{}", other.rsplit_once('.').unwrap().1)
    }

    pub(super) fn bearer(t: &str) -> HeaderMap {
        headers(&format!("Bearer {t}"))
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

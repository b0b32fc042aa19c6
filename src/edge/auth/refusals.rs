//! What a refused token costs and leaves behind: [`Refused`] (why a request's token was not
//! accepted), how many refused tokens are remembered and for how long, the optional per-client
//! budget of refusals, and the client address behind a trusted proxy that budget is keyed on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;

use http::HeaderMap;

use crate::config::Cidr;
use crate::labels::AuthFailureReason as Reason;

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

/// Refused tokens remembered this many at most (~80 bytes each) and this long, so the same
/// bad token sent again costs a hash, not a signature check. 4,096 covers every app instance
/// of a large deployment looping its own stale token at once.
pub(super) const REFUSED_TOKENS: usize = 4096;
pub(super) const REFUSED_TOKEN_TTL_SECS: u64 = 60;
/// With `auth.per_client_refusal_budget`: each client address may have this many tokens
/// refused at once, then one more per second; the refusal that overdraws the budget closes
/// it: until it refills, the address's tokens that are not already known good get 429
/// without a signature check. A real app refuses a token rarely (expiry); 20 covers a
/// restart storm.
const REFUSED_PER_ADDRESS_BURST: u32 = 20;
const REFUSED_PER_ADDRESS_PER_SEC: u32 = 1;
pub(super) static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Client addresses tracked for that budget; more are not blocked (fail open, bounded memory).
const MAX_BLOCKED_ADDRESSES: usize = 10_000;

type AddressLimiter = governor::RateLimiter<
    IpAddr,
    governor::state::keyed::DashMapStateStore<IpAddr>,
    crate::ops::limits::TokioClock,
    governor::middleware::NoOpMiddleware<crate::ops::limits::TokioInstant>,
>;

/// The per-client budget of refused tokens (optional, off by default).
pub(super) struct RefusalBudget {
    limiter: AddressLimiter,
    /// Addresses over budget, until when.
    blocked: Mutex<HashMap<IpAddr, tokio::time::Instant>>,
    /// Peers whose `X-Forwarded-For` names the client.
    trusted: Vec<Cidr>,
}

impl RefusalBudget {
    pub(super) fn new(trusted: Vec<Cidr>) -> Self {
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
    pub(super) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        client_of(&self.trusted, peer, headers).filter(|c| !c.is_loopback())
    }

    /// How long `ip` must still wait, if it is over budget.
    pub(super) fn blocked_for(&self, ip: IpAddr) -> Option<std::time::Duration> {
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
    pub(super) fn refused(&self, ip: IpAddr) {
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
    pub(super) fn evict(&self) {
        self.limiter.retain_recent();
        let now = tokio::time::Instant::now();
        crate::sync::lock(&self.blocked).retain(|_, until| *until > now);
    }
}

/// The client behind a request: the peer, or when the peer is one of the `trusted` proxies the
/// nearest address in `X-Forwarded-For` that is not one. `None` when a trusted proxy's header
/// names no client (or an unparsable one): the proxy alone is known.
pub(super) fn client_of(trusted: &[Cidr], peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthConfig;
    use crate::edge::auth::tests::{bearer, config, forged, good};
    use crate::edge::auth::Authenticator;

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
}

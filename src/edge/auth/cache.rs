//! The token caches, keyed by a token's SHA-256: [`TokenCache`] (two generations, bounded, O(1))
//! holds the verified tokens ([`Verified`]) and, apart, the refused ones; and when a verified
//! entry stops being reused ([`reuse_until`], spread so tokens seen together expire apart).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::ops::Principal;

/// A cached verification: who, by which provider, and that provider's
/// [`Provider::removals`](super::verify::Provider::removals) at the time.
#[derive(Clone)]
pub(super) struct Verified {
    pub(super) principal: Principal,
    pub(super) provider: usize,
    pub(super) removals: u64,
}

/// Tokens already verified, keyed by the SHA-256 of the token so the cache never holds a
/// bearer credential. Profiling showed RSA signature checks at over a quarter of the CPU of a
/// proxied request; apps reuse a token for its lifetime, so most requests skip the check.
/// An entry is reused until the earlier of the token's expiry (with leeway) and `ttl` after
/// its verification, less a spread ([`reuse_until`]). Two generations bound the size: when
/// the current one holds half the capacity it becomes the previous one, and the old previous
/// is dropped (approximate LRU, O(1), no per-entry bookkeeping).
/// The same structure remembers refused tokens
/// ([`REFUSED_TOKENS`](super::refusals::REFUSED_TOKENS)), except those refused for a reason
/// that can pass: an unknown key (a rotation not fetched yet) or not yet valid.
pub(super) struct TokenCache<V> {
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

/// A verified entry's reuse ends up to `ttl / TTL_SPREAD` early, by an amount each token's
/// key picks. Tokens first seen together (a restart, a fleet of apps reconnecting, the
/// benchmark's 10,000) would otherwise all expire in the same second, and the requests of
/// that second would queue behind thousands of signature checks; spread over a quarter of the
/// TTL the checks are a trickle. Ending early only ever costs a check, never trusts longer.
const TTL_SPREAD: u64 = 4;

/// When a verified token's cache entry stops being reused: at its expiry (with leeway) or
/// `ttl` after `now` less the token's own share of the spread, whichever is first.
pub(super) fn reuse_until(key: &[u8; 32], expires: u64, now: u64, ttl: u64) -> u64 {
    let spread = ttl / TTL_SPREAD;
    // The key is a SHA-256: its first bytes are as good as random, and free.
    let early = u64::from_le_bytes([key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7]]) % (spread + 1);
    expires.min(now.saturating_add(ttl - early))
}

impl<V: Clone> TokenCache<V> {
    pub(super) fn new(capacity: usize) -> Self {
        Self { half: (capacity / 2).max(1), generations: Mutex::new((HashMap::new(), HashMap::new())) }
    }

    pub(super) fn key(token: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    pub(super) fn get(&self, key: &[u8; 32], now: u64) -> Option<V> {
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

    pub(super) fn put(&self, key: [u8; 32], value: &V, valid_until: u64) {
        let mut g = crate::sync::lock(&self.generations);
        if g.0.len() >= self.half {
            g.1 = std::mem::take(&mut g.0);
        }
        g.0.insert(key, Cached { value: value.clone(), valid_until });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

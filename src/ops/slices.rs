//! Token slices: with the shared store, a replica takes several of a bucket's tokens in one
//! round trip to Redis and spends them locally, instead of a round trip per limited request.
//!
//! How much to take is learnt per bucket from this replica's own demand: one token at first,
//! twice as many each time a slice was spent before it expired, half as many when one expired
//! unspent, one again when the bucket said no; never more than [`cap`] (a 64th of the burst,
//! and what the bucket refills in [`SLICE_TTL`]), nor more than a quarter of what the bucket
//! held at the last take, so slices shrink to single tokens as the bucket runs dry and the
//! decisions near the limit are the store's own. A slice is void [`SLICE_TTL`] after it was
//! taken. One take of a slice at a time per bucket: requests that find the slice empty while
//! one is being fetched take their single token from the store, as without slices.
//!
//! **What it costs in accuracy.** Every token spent was taken from the shared bucket first,
//! so within any window the replicas together admit at most what the bucket allows plus the
//! tokens that were taken earlier and spent later: at most one slice per replica, spent
//! within [`SLICE_TTL`] of its take. Worst case: `replicas × cap` requests beyond the limit
//! in any window (with the defaults, 3 replicas over a burst of 6,400: 300, 4.7 %), and only
//! while the bucket is full enough for slices that big; at the limit every decision takes one
//! token. The other way, an unspent slice expires: a replica whose traffic stops leaves at
//! most its last slice unused for one refill. Buckets whose cap is 1 (a burst under 128, or
//! a rate under 4/s) never slice: every decision is the store's, as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::shared::Grant;

/// How long a slice stays spendable after it was taken: the window of the over-admission
/// bound, and the longest a stranded token stays out of the bucket. Short, so a slice is
/// spent at about the time it was counted; long enough that a busy replica makes a handful
/// of round trips a second per bucket.
pub const SLICE_TTL: Duration = Duration::from_millis(500);
/// A replica's slice is at most this fraction of the burst (1/64): the over-admission bound
/// per replica, ~1.6 % of the burst.
pub const BURST_SHARE: u32 = 64;
/// A slice is at most this fraction (1/4) of what the bucket held at the last take: as it
/// drains, slices shrink, and near empty each request takes its own token.
pub const REMAINING_SHARE: u32 = 4;

/// The largest slice for a bucket of this rate and burst; 1 means never slice.
pub fn cap(rate: f64, burst: u32) -> u32 {
    let refill = (rate * SLICE_TTL.as_secs_f64()).floor().clamp(0.0, f64::from(u32::MAX)) as u32;
    (burst / BURST_SHARE).min(refill).max(1)
}

/// What a request does for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Spent a token of this replica's slice; the bucket's remaining burst, as last known.
    Local(u32),
    /// Ask the store for `want` tokens; `refill`: the answer is the bucket's next slice (this
    /// request spends one of them), to be given to [`Slices::settle`].
    Fetch { want: u32, refill: bool },
}

/// The slices of one limit, one map per gateway where the limit's buckets are per gateway.
pub struct Slices {
    cap: u32,
    /// Buckets tracked per map; past it a new bucket is not sliced.
    max_keys: usize,
    maps: Vec<Mutex<HashMap<String, Slice>>>,
}

#[derive(Debug)]
struct Slice {
    /// Tokens left to spend.
    tokens: u32,
    /// The bucket's remaining burst after the take.
    remaining: u32,
    expires: Instant,
    /// The size of the next take.
    next: u32,
    /// When the take in flight started; a take older than the TTL was abandoned (its request
    /// went away), and another may start.
    fetching: Option<Instant>,
}

impl Slices {
    /// `None` when the cap is 1: such buckets are never sliced.
    pub fn new(cap: u32, maps: usize, max_keys: usize) -> Option<Self> {
        (cap > 1).then(|| Self { cap, max_keys, maps: (0..maps.max(1)).map(|_| Mutex::default()).collect() })
    }

    fn map(&self, i: usize) -> std::sync::MutexGuard<'_, HashMap<String, Slice>> {
        // A panic while the lock was held left whole entries: still usable.
        crate::sync::lock(&self.maps[i.min(self.maps.len() - 1)])
    }

    /// A token from the slice of bucket `key` in map `map`, or what to ask the store for.
    pub fn take(&self, map: usize, key: &str, now: Instant) -> Take {
        const SINGLE: Take = Take::Fetch { want: 1, refill: false };
        let mut m = self.map(map);
        if !m.contains_key(key) {
            if m.len() >= self.max_keys {
                return SINGLE;
            }
            let fresh = Slice { tokens: 0, remaining: u32::MAX, expires: now, next: 1, fetching: None };
            m.insert(key.to_owned(), fresh);
        }
        let Some(s) = m.get_mut(key) else { return SINGLE };
        if s.tokens > 0 && now < s.expires {
            s.tokens -= 1;
            return Take::Local(s.remaining.saturating_add(s.tokens));
        }
        if s.fetching.is_some_and(|t| now.duration_since(t) < SLICE_TTL) {
            return SINGLE;
        }
        if s.tokens > 0 {
            // Expired unspent: too big for this replica's demand.
            s.next = (s.next / 2).max(1);
        } else if now < s.expires {
            // Spent before it expired: too small.
            s.next = s.next.saturating_mul(2).min(self.cap);
        }
        s.tokens = 0;
        s.fetching = Some(now);
        let want = s.next.min((s.remaining / REMAINING_SHARE).max(1));
        Take::Fetch { want, refill: true }
    }

    /// The store's answer to a refill of bucket `key`: the request that asked spends one of
    /// the tokens, the rest are the slice. `None`: the store failed (the next request asks
    /// again).
    pub fn settle(&self, map: usize, key: &str, answer: Option<Result<Grant, Duration>>) {
        let mut m = self.map(map);
        let Some(s) = m.get_mut(key) else { return };
        let Some(started) = s.fetching.take() else { return };
        match answer {
            Some(Ok(g)) => {
                s.tokens = g.taken.saturating_sub(1);
                s.remaining = g.remaining;
                // From the take's start, not its answer: the bound counts from when the
                // store counted the tokens at the latest.
                s.expires = started + SLICE_TTL;
            }
            Some(Err(_)) => {
                s.next = 1;
                s.remaining = 0;
            }
            None => {}
        }
    }

    /// Forgets buckets whose slice expired and has no take in flight.
    pub fn evict(&self, now: Instant) {
        for i in 0..self.maps.len() {
            self.map(i).retain(|_, s| now < s.expires || s.fetching.is_some_and(|t| now.duration_since(t) < SLICE_TTL));
        }
    }

    /// Buckets tracked.
    pub fn tracked(&self) -> usize {
        (0..self.maps.len()).map(|i| self.map(i).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_slow_buckets_are_never_sliced() {
        assert_eq!(cap(10.0, 5), 1);
        assert_eq!(cap(1_000.0, 127), 1, "a burst under 128");
        assert_eq!(cap(3.0, 100_000), 1, "under 4/s refills under two tokens in a TTL");
        assert!(Slices::new(1, 1, 10).is_none());
        assert_eq!(cap(200.0, 6_400), 100);
        assert_eq!(cap(1_000_000.0, 1_000_000), 15_625);
    }

    fn grant(taken: u32, remaining: u32) -> Option<Result<Grant, Duration>> {
        Some(Ok(Grant { taken, remaining }))
    }

    /// Demand doubles the slice up to the cap; one fetch at a time; tokens spent locally
    /// report the bucket's remaining as last known.
    #[tokio::test(start_paused = true)]
    async fn a_busy_replica_grows_its_slice_to_the_cap() {
        let s = Slices::new(8, 1, 10).unwrap();
        let now = Instant::now();
        assert_eq!(s.take(0, "k", now), Take::Fetch { want: 1, refill: true });
        assert_eq!(s.take(0, "k", now), Take::Fetch { want: 1, refill: false }, "one refill at a time");
        s.settle(0, "k", grant(1, 999));
        let mut wants = Vec::new();
        for _ in 0..6 {
            match s.take(0, "k", now) {
                Take::Fetch { want, refill: true } => {
                    wants.push(want);
                    s.settle(0, "k", grant(want, 900));
                    for left in (0..want - 1).rev() {
                        assert_eq!(s.take(0, "k", now), Take::Local(900 + left));
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(wants, [2, 4, 8, 8, 8, 8]);
    }

    /// A slice is void after its TTL and the next one is halved; a dry bucket and a refusal
    /// bring single tokens.
    #[tokio::test(start_paused = true)]
    async fn slices_expire_shrink_and_fall_to_single_tokens_near_the_limit() {
        let s = Slices::new(64, 1, 10).unwrap();
        let refill = |now, remaining| match s.take(0, "k", now) {
            Take::Fetch { want, refill: true } => {
                s.settle(0, "k", grant(want, remaining));
                want
            }
            other => panic!("{other:?}"),
        };
        let local = |now| assert!(matches!(s.take(0, "k", now), Take::Local(_)));
        let t0 = Instant::now();
        assert_eq!(refill(t0, 10_000), 1);
        assert_eq!(refill(t0, 10_000), 2);
        local(t0);
        assert_eq!(refill(t0, 10_000), 4);
        // 3 tokens left unspent past the TTL: void, and the next slice is half as big.
        let late = t0 + SLICE_TTL;
        assert_eq!(refill(late, 10), 2);
        local(late);
        // Spent in time (so 4 next), but the bucket held 10: at most a quarter of it.
        assert_eq!(refill(late, 3), 2);
        local(late);
        assert_eq!(refill(late, 3), 1, "a quarter of 3 is under one: single tokens");
        // Refused: single tokens.
        assert_eq!(s.take(0, "k", late), Take::Fetch { want: 1, refill: true });
        s.settle(0, "k", Some(Err(Duration::from_millis(5))));
        assert_eq!(s.take(0, "k", late), Take::Fetch { want: 1, refill: true });
    }

    /// A refill whose request went away is not waited for past the TTL; eviction forgets
    /// expired buckets; past `max_keys` new buckets take single tokens.
    #[tokio::test(start_paused = true)]
    async fn abandoned_takes_eviction_and_the_key_bound() {
        let s = Slices::new(8, 1, 2).unwrap();
        let t0 = Instant::now();
        assert_eq!(s.take(0, "a", t0), Take::Fetch { want: 1, refill: true });
        // Never settled (the request was dropped).
        assert_eq!(s.take(0, "a", t0 + SLICE_TTL / 2), Take::Fetch { want: 1, refill: false });
        assert_eq!(s.take(0, "a", t0 + SLICE_TTL), Take::Fetch { want: 1, refill: true });
        assert_eq!(s.take(0, "b", t0), Take::Fetch { want: 1, refill: true });
        assert_eq!(s.take(0, "c", t0), Take::Fetch { want: 1, refill: false }, "past max_keys");
        assert_eq!(s.tracked(), 2);
        s.evict(t0 + SLICE_TTL * 3);
        assert_eq!(s.tracked(), 0);
    }
}

//! What `GET /limits` shows of the rate limits in force: each configured limit (its name,
//! scope, quota and window) and its state now: how many buckets this process tracks against
//! its bound, and the fullest few (the least quota left), named by what they count: an agent's
//! work number or a tenant, never a token. Reading a bucket does not spend from it.
//!
//! With the shared store the buckets that decide live in Redis, shared by every replica; they
//! are not scanned (a `SCAN` over every agent's key on each page load would cost Redis more
//! than the page is worth). What is shown is this replica's part: the slices of those buckets
//! it holds, and its local buckets, which decide only while Redis is away
//! (`store.limits_fallback = "local"`).

use std::collections::BinaryHeap;
use std::time::Duration;

use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use serde::Serialize;

use super::limits::{Limit, Limits, Observed, ObservedBuckets};
use crate::config::{LimitsFallback, Scope};

/// Buckets shown per limit: the fullest ones are where a refusal comes next; a page of every
/// agent's bucket (up to `rate_limits.max_keys` per gateway) would bury them.
pub const FULLEST_BUCKETS: usize = 5;

/// One configured limit and its state.
#[derive(Debug, Clone, Serialize)]
pub struct LimitView {
    /// The policy name in `RateLimit-Policy` and problem bodies (`stopVoiceToConf.agent`).
    pub name: String,
    pub method: String,
    /// What one bucket counts: `agent`, `tenant`, `gateway` or `global`.
    pub scope: &'static str,
    /// Requests per second, sustained.
    pub rate: f64,
    /// Requests a full bucket allows at once (the policy's quota).
    pub quota: u32,
    /// Seconds an empty bucket takes to fill.
    pub window_secs: u64,
    pub shadow: bool,
    /// Where the deciding buckets are: `local` (this process) or `redis` (shared).
    pub decided_in: &'static str,
    /// With Redis: what the local buckets are for (`local`: they decide while Redis is away;
    /// `closed`: limited requests are refused then, and they stay empty).
    pub fallback: Option<&'static str>,
    /// Buckets this process tracks: for agents and tenants, those seen recently (idle ones
    /// are evicted); for a gateway or global limit, one per gateway or one.
    pub buckets: usize,
    /// The most an agent or tenant limit tracks per gateway (`rate_limits.max_keys`): past it
    /// a new key is judged as fresh without being kept (`ccgate_rate_limiter_overflow_total`).
    pub max_buckets_per_gateway: Option<usize>,
    /// With Redis: buckets this replica holds a slice of (tokens taken from Redis ahead).
    pub slices_held: Option<usize>,
    /// The local buckets with the least quota left, at most [`FULLEST_BUCKETS`]; full ones
    /// are left out.
    pub fullest: Vec<BucketView>,
}

/// One bucket's state now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketView {
    pub gateway: String,
    /// The agent's work number or the tenant; `None` for a tenant limit's bucket of tokens
    /// without a tenant, and for gateway and global buckets.
    pub key: Option<String>,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub full_in_secs: u64,
}

impl Limits {
    /// Every configured limit with its state now, in config order.
    pub fn view(&self) -> Vec<LimitView> {
        let now = tokio::time::Instant::now();
        self.all
            .iter()
            .map(|l| {
                let keyed = matches!(l.cfg.scope, Scope::Agent | Scope::Tenant);
                LimitView {
                    name: l.name.to_string(),
                    method: l.cfg.method.clone(),
                    scope: l.cfg.scope.as_str(),
                    rate: l.cfg.rate,
                    quota: l.cfg.burst,
                    window_secs: l.window_secs,
                    shadow: l.cfg.shadow,
                    decided_in: if self.shared.is_some() { "redis" } else { "local" },
                    fallback: self.shared.as_ref().map(|(_, f)| match f {
                        LimitsFallback::Local => "local",
                        LimitsFallback::Closed => "closed",
                    }),
                    buckets: if keyed { l.keys() } else { l.observed.len() },
                    max_buckets_per_gateway: keyed.then_some(self.max_keys),
                    slices_held: self.shared.as_ref().map(|_| l.slices.as_ref().map_or(0, |s| s.tracked())),
                    fullest: fullest(l, now),
                }
            })
            .collect()
    }
}

/// The limit's [`FULLEST_BUCKETS`] local buckets with the least left, fullest first.
fn fullest(l: &Limit, now: tokio::time::Instant) -> Vec<BucketView> {
    let t = l.interval.as_nanos().max(1);
    let burst = l.cfg.burst.max(1);
    let tau = t * u128::from(burst - 1);
    // A max-heap on (remaining, full_in reversed): popping drops the least full.
    let mut heap: BinaryHeap<(u32, std::cmp::Reverse<u64>, usize, Option<String>)> = BinaryHeap::new();
    let mut consider = |gateway: usize, key: Option<String>, tat: Option<Nanos>, o: &Observed| {
        let Some(tat) = tat else { return };
        let tat = Duration::from(tat).as_nanos();
        let at = now.saturating_duration_since(o.origin).as_nanos();
        if tat <= at {
            return;
        }
        // GCRA: a request is allowed while now >= tat - tau, and each one moves tat by t.
        let remaining = ((at + tau + t).saturating_sub(tat) / t).min(u128::from(burst)) as u32;
        let full_in = Duration::from_nanos(u64::try_from(tat - at).unwrap_or(u64::MAX));
        let full_in_secs = full_in.as_secs() + u64::from(full_in.subsec_nanos() > 0);
        heap.push((remaining, std::cmp::Reverse(full_in_secs), gateway, key));
        if heap.len() > FULLEST_BUCKETS {
            heap.pop();
        }
    };
    for (gateway, o) in l.observed.iter().enumerate() {
        match &o.buckets {
            ObservedBuckets::Direct(state) => consider(gateway, None, peek(state), o),
            ObservedBuckets::Keyed(map) => {
                for entry in map.iter() {
                    let key = Some(entry.key().clone()).filter(|k| !k.is_empty());
                    consider(gateway, key, peek(entry.value()), o);
                }
            }
        }
    }
    let mut out: Vec<BucketView> = heap
        .into_sorted_vec()
        .into_iter()
        .map(|(remaining, std::cmp::Reverse(full_in_secs), gateway, key)| BucketView {
            gateway: l.gateways.get(gateway).map(|(_, name)| name.to_string()).unwrap_or_default(),
            key,
            remaining,
            full_in_secs,
        })
        .collect();
    out.sort_by(|a, b| (a.remaining, b.full_in_secs).cmp(&(b.remaining, a.full_in_secs)));
    out
}

/// A bucket's theoretical arrival time, read without changing it (a measurement that
/// declines to write leaves the state as it was).
fn peek(state: &InMemoryState) -> Option<Nanos> {
    state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>).err().flatten()
}

#[cfg(test)]
mod tests {
    use crate::config::{LimitConfig, RateLimitsConfig, Scope};
    use crate::labels::MethodLabel;
    use crate::metrics::Metrics;
    use crate::ops::limits::{Limits, Tier};
    use crate::ops::principal::Principal;

    /// Under the paused clock: an agent limit of 5 at 1/s. Three agents spend 4, 2 and 0;
    /// the view shows the two spent, fullest first, with what is left and when they are full
    /// again; looking spends nothing; a second later each has one more.
    #[tokio::test(start_paused = true)]
    async fn the_view_shows_the_fullest_buckets_and_spends_nothing() {
        let stop = MethodLabel::Gateway(crate::gateway::GatewayMethod::StopVoiceToConf);
        let cfg = RateLimitsConfig {
            limit: vec![
                LimitConfig {
                    method: "stopVoiceToConf".into(),
                    scope: Scope::Agent,
                    rate: 1.0,
                    burst: 5,
                    shadow: false,
                },
                LimitConfig { method: "*".into(), scope: Scope::Global, rate: 100.0, burst: 1000, shadow: true },
            ],
            ..RateLimitsConfig::default()
        };
        let limits = Limits::new(&cfg, &["acme".into()], Metrics::default()).unwrap();
        for (agent, n) in [("153", 4), ("154", 2)] {
            for _ in 0..n {
                assert!(limits.check(stop, Tier::All, &Principal::agent(agent)).await.is_ok());
            }
        }
        let view = limits.view();
        let agent = &view[0];
        assert_eq!(
            (agent.name.as_str(), agent.scope, agent.quota, agent.window_secs),
            ("stopVoiceToConf.agent", "agent", 5, 5)
        );
        assert_eq!((agent.buckets, agent.max_buckets_per_gateway, agent.decided_in), (2, Some(100_000), "local"));
        let shown: Vec<(Option<&str>, u32, u64)> =
            agent.fullest.iter().map(|b| (b.key.as_deref(), b.remaining, b.full_in_secs)).collect();
        assert_eq!(shown, [(Some("153"), 1, 4), (Some("154"), 3, 2)]);
        assert_eq!(agent.fullest[0].gateway, "acme");
        assert_eq!(limits.view()[0].fullest, agent.fullest, "looking spends nothing");
        let global = &view[1];
        assert_eq!(
            (global.scope, global.buckets, global.max_buckets_per_gateway, global.shadow),
            ("global", 1, None, true)
        );
        assert_eq!((global.fullest[0].key.as_deref(), global.fullest[0].remaining), (None, 994));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let later: Vec<u32> = limits.view()[0].fullest.iter().map(|b| b.remaining).collect();
        assert_eq!(later, [2, 4]);
    }

    /// With the shared store the view says the buckets that decide are in Redis, what the
    /// local ones are for, and how many slices this replica holds; it scans nothing there.
    #[tokio::test(start_paused = true)]
    async fn with_redis_the_view_says_what_is_local() {
        use crate::config::LimitsFallback;
        use crate::shared::memory::MemoryHub;
        let hub = MemoryHub::new(std::time::Duration::from_secs(3), crate::shared::TOMBSTONE);
        let stop = MethodLabel::Gateway(crate::gateway::GatewayMethod::StopVoiceToConf);
        let cfg = RateLimitsConfig {
            limit: vec![LimitConfig {
                method: "stopVoiceToConf".into(),
                scope: Scope::Global,
                rate: 200.0,
                burst: 6_400,
                shadow: false,
            }],
            ..RateLimitsConfig::default()
        };
        let limits = Limits::new(&cfg, &[], Metrics::default()).unwrap().shared(hub.join(), LimitsFallback::Local);
        for _ in 0..64 {
            assert!(limits.check(stop, Tier::Shared, &Principal::agent("153")).await.is_ok());
        }
        let v = &limits.view()[0];
        assert_eq!((v.decided_in, v.fallback, v.slices_held), ("redis", Some("local"), Some(1)), "{v:?}");
        assert!(v.fullest.is_empty(), "the local bucket decided nothing: {v:?}");
    }
}

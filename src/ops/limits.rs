//! Rate limits: per-method limits per agent, per tenant, per gateway and global, on governor's
//! GCRA. An agent is (gateway, work number): agent 1001 of two contact centres has two buckets.
//!
//! Each limit is `rate` (requests per second, sustained) plus `burst`. A refused operation
//! never reaches the gateway; the edge renders the refusal (429, `Retry-After`, the IETF
//! `RateLimit-Policy`/`RateLimit` headers) and, for allowed ones, the tightest limit's state.
//! A limit in shadow mode only counts what it would refuse. Nothing here speaks HTTP.
//!
//! Time comes from tokio's clock, so limits behave identically under tokio's paused clock in
//! tests. Keyed state lives in a capped map: idle keys are evicted periodically, and when the
//! cap is reached a new key is judged as a fresh one without being stored (fail-open, counted)
//! while tenant and global limits still apply, so memory stays bounded whatever the traffic.
//!
//! With the shared store the buckets live in Redis, and a replica spends slices of a big
//! bucket's tokens locally (`slices.rs`, where the accuracy it trades is stated).

use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::failure::Failure;
pub use super::limit_state::{LimitState, Refusal};
use super::principal::Principal;
use super::slices::{self, Slices, Take};
use crate::config::{LimitConfig, LimitsFallback, RateLimitsConfig, Scope};
use crate::labels::MethodLabel;
use crate::metrics::Metrics;
use crate::shared::{Bucket, Buckets, Grant, StoreError};

/// How often idle keys are evicted and the key gauges refreshed.
pub const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

// --- time: tokio's clock for governor -------------------------------------------------------

/// A tokio instant as governor's time reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;
    fn add(self, n: Nanos) -> Self {
        Self(self.0 + Duration::from(n))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }
    fn saturating_sub(&self, d: Nanos) -> Self {
        Self(self.0.checked_sub(Duration::from(d)).unwrap_or(self.0))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

// --- capped keyed state ---------------------------------------------------------------------

/// governor's DashMap store with a hard cap on keys. The map is shared with the limit's
/// [`Observed`], so `GET /limits` can read the buckets without counting as a request.
pub struct CappedStore {
    map: Arc<DashMapStateStore<String>>,
    cap: usize,
    /// `ccgate_rate_limiter_overflow_total{limit}`: new keys judged without being stored.
    overflow: prometheus::IntCounter,
}

impl StateStore for CappedStore {
    type Key = String;
    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.map.len() >= self.cap && !self.map.contains_key(key) {
            self.overflow.inc();
            // Judged as a key seen for the first time; its state is not kept.
            return f(None).map(|(t, _)| t);
        }
        self.map.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map.retain_recent(drop_below);
    }
    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.map);
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A direct limiter's state, shared with the limit's [`Observed`] like [`CappedStore`]'s map.
pub struct DirectState(Arc<InMemoryState>);

impl StateStore for DirectState {
    type Key = NotKeyed;
    fn measure_and_replace<T, F, E>(&self, key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

type Keyed = RateLimiter<String, CappedStore, TokioClock, StateInformationMiddleware>;
type Direct = RateLimiter<NotKeyed, DirectState, TokioClock, StateInformationMiddleware>;

/// One limiter's buckets as `GET /limits` reads them (`limit_view.rs`): governor keeps each
/// bucket as its theoretical arrival time in nanoseconds since the limiter was made, so the
/// reader needs that instant too (taken just after: a bucket may read as at most a few
/// microseconds fuller than it is).
pub(super) struct Observed {
    pub(super) origin: tokio::time::Instant,
    pub(super) buckets: ObservedBuckets,
}

pub(super) enum ObservedBuckets {
    Keyed(Arc<DashMapStateStore<String>>),
    Direct(Arc<InMemoryState>),
}

/// The limiter of one limit. Indexed by gateway where the scope needs it: agent buckets per
/// gateway (work numbers repeat across contact centres), one per gateway for `gateway`.
enum Limiter {
    /// `agent` and `tenant`: one per gateway (a tenant of one contact centre is not the
    /// same-named tenant of another; a token without a tenant counts against its gateway's
    /// "no tenant" bucket).
    Keyed(Vec<Keyed>),
    /// `gateway`: one per gateway; `global`: one.
    Direct(Vec<Direct>),
}

/// The limiter of gateway `i` (`i` comes from the authenticator, which knows the same
/// gateways; past the end is a bug, judged by the last rather than a panic).
fn of<T>(v: &[T], i: usize) -> &T {
    &v[i.min(v.len() - 1)]
}

pub struct Limit {
    pub cfg: LimitConfig,
    /// Bucket key for tokens that name no tenant: empty, which no tenant is (the edge keeps
    /// only non-empty tenant values).
    no_tenant: String,
    /// `stopVoiceToConf.agent`: the policy name in headers and problem bodies.
    pub name: Arc<str>,
    /// Seconds to refill the whole burst: the policy's window.
    pub(super) window_secs: u64,
    /// Time between two requests at the sustained rate (GCRA's emission interval).
    pub(super) interval: Duration,
    limiter: Limiter,
    /// The limiter's buckets, per gateway as `limiter`, for reading.
    pub(super) observed: Vec<Observed>,
    /// Each gateway's key in the shared store: its namespace (agent buckets) and name
    /// (gateway buckets).
    pub(super) gateways: Arc<[(Arc<str>, Arc<str>)]>,
    /// With the shared store: this replica's slices of the limit's buckets (`None` for
    /// buckets too small to slice).
    pub(super) slices: Option<Slices>,
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

impl Limit {
    fn new(cfg: LimitConfig, max_keys: usize, metrics: &Metrics, gateways: Arc<[(Arc<str>, Arc<str>)]>) -> Self {
        let period = Duration::from_secs_f64(1.0 / cfg.rate).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
        let name: Arc<str> = format!("{}.{}", cfg.method.replace('*', "all"), cfg.scope.as_str()).into();
        let per_gateway = gateways.len().max(1);
        let mut observed = Vec::new();
        let mut direct = || {
            let state = Arc::new(InMemoryState::default());
            let plain: RateLimiter<NotKeyed, DirectState, TokioClock, NoOpMiddleware<TokioInstant>> =
                RateLimiter::new(quota, DirectState(state.clone()), TokioClock);
            let origin = tokio::time::Instant::now();
            observed.push(Observed { origin, buckets: ObservedBuckets::Direct(state) });
            plain.with_middleware()
        };
        let limiter = match cfg.scope {
            Scope::Global => Limiter::Direct(vec![direct()]),
            Scope::Gateway => Limiter::Direct((0..per_gateway).map(|_| direct()).collect()),
            Scope::Tenant | Scope::Agent => Limiter::Keyed(
                (0..per_gateway)
                    .map(|_| {
                        let overflow = metrics.rate_limiter_overflow(&name);
                        let map = Arc::new(DashMapStateStore::default());
                        let store = CappedStore { map: map.clone(), cap: max_keys, overflow };
                        let plain: RateLimiter<String, CappedStore, TokioClock, NoOpMiddleware<TokioInstant>> =
                            RateLimiter::new(quota, store, TokioClock);
                        let origin = tokio::time::Instant::now();
                        observed.push(Observed { origin, buckets: ObservedBuckets::Keyed(map) });
                        plain.with_middleware()
                    })
                    .collect(),
            ),
        };
        let window_secs = ceil_secs(period * cfg.burst);
        let slices = Slices::new(slices::cap(cfg.rate, cfg.burst), per_gateway, max_keys);
        Self { cfg, no_tenant: String::new(), name, window_secs, interval: period, limiter, observed, gateways, slices }
    }

    fn state(&self, remaining: u32, reset_secs: u64) -> LimitState {
        LimitState {
            name: self.name.clone(),
            quota: self.cfg.burst,
            window_secs: self.window_secs,
            remaining,
            reset_secs,
        }
    }

    /// `Ok(remaining)` or `Err(wait)`.
    fn check(&self, who: &Principal) -> Result<u32, Duration> {
        let now = TokioClock.now();
        let outcome = match &self.limiter {
            Limiter::Direct(l) => of(l, who.gateway).check(),
            Limiter::Keyed(l) => match self.cfg.scope {
                Scope::Tenant => of(l, who.gateway).check_key(who.tenant.as_ref().unwrap_or(&self.no_tenant)),
                _ => of(l, who.gateway).check_key(&who.agent_id),
            },
        };
        match outcome {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => Err(not_until.wait_time_from(now)),
        }
    }

    /// Which of the limit's buckets `who` counts against: (slice map, namespace, key).
    fn bucket_of<'a>(&'a self, who: &'a Principal) -> (usize, &'a str, &'a str) {
        let (namespace, gateway) = match self.gateways.get(who.gateway) {
            Some((ns, name)) => (&**ns, &**name),
            None => ("", ""),
        };
        match self.cfg.scope {
            Scope::Agent => (who.gateway, namespace, who.agent_id.as_str()),
            Scope::Tenant => (who.gateway, namespace, who.tenant.as_deref().unwrap_or(&self.no_tenant)),
            Scope::Gateway => (who.gateway, namespace, gateway),
            Scope::Global => (0, namespace, ""),
        }
    }

    /// A token of this replica's slice of `who`'s bucket, or what to ask the store for.
    fn take_local(&self, who: &Principal) -> Take {
        match &self.slices {
            Some(s) => {
                let (map, _, key) = self.bucket_of(who);
                s.take(map, key, tokio::time::Instant::now())
            }
            None => Take::Fetch { want: 1, refill: false },
        }
    }

    /// The decision on the limit's bucket in Redis, shared by every replica: `want` tokens
    /// taken, and with `refill` the surplus kept as this replica's slice.
    async fn check_shared(
        &self,
        shared: &dyn Buckets,
        who: &Principal,
        want: u32,
        refill: bool,
    ) -> Result<Result<u32, Duration>, StoreError> {
        let (map, namespace, key) = self.bucket_of(who);
        let bucket = Bucket { limit: &self.name, scope: self.cfg.scope, key, namespace };
        let answer = shared.gcra(bucket, self.interval, self.cfg.burst, want).await;
        if refill {
            if let Some(s) = &self.slices {
                s.settle(map, key, answer.as_ref().ok().copied());
            }
        }
        // This request spends one of the tokens; the bucket's remaining counts the slice's.
        Ok(answer?.map(|Grant { taken, remaining }| remaining.saturating_add(taken.saturating_sub(1))))
    }

    pub(super) fn keys(&self) -> usize {
        match &self.limiter {
            Limiter::Keyed(l) => l.iter().map(|l| l.len()).sum(),
            Limiter::Direct(_) => 0,
        }
    }
}

/// Which of a request's limits to check: the caller's own buckets, the ones it shares with
/// others, or all. The core checks the shared ones only for a request it can serve, so a flood
/// of requests that could never succeed (no session, not chair) spends the flooding agent's
/// buckets, never those of the other customers or the other agents of its own tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `agent` limits.
    Own,
    /// `tenant`, `gateway` and `global` limits.
    Shared,
    /// Both at once (one round trip to Redis), for a request already known servable.
    All,
}

impl Tier {
    fn of(scope: Scope) -> Self {
        match scope {
            Scope::Agent => Self::Own,
            Scope::Tenant | Scope::Gateway | Scope::Global => Self::Shared,
        }
    }
}

pub struct Limits {
    /// Limits applying to each method label, by `MethodLabel::index`, most specific first.
    by_method: Vec<Vec<Arc<Limit>>>,
    pub(super) all: Vec<Arc<Limit>>,
    pub(super) max_keys: usize,
    metrics: Metrics,
    /// With the shared store, buckets live in Redis (global across replicas); the local ones
    /// serve as the fallback while Redis is away, if so configured.
    pub(super) shared: Option<(Arc<dyn Buckets>, LimitsFallback)>,
}

impl Limits {
    /// Builds every configured limit for these gateways (by name, in config order; none: the
    /// default gateway alone, as `Metrics::new` reads it). Fails
    /// naming the key when a limit names no method ccgate knows (`check-config` builds them
    /// too, so it reports the same error as `serve`). `max_keys` bounds each keyed limiter:
    /// an agent limit's per gateway.
    pub fn new(cfg: &RateLimitsConfig, gateways: &[String], metrics: Metrics) -> Result<Self, String> {
        let default = [crate::config::DEFAULT_GATEWAY_NAME.to_owned()];
        let gateways = if gateways.is_empty() { &default[..] } else { gateways };
        let gateways: Arc<[(Arc<str>, Arc<str>)]> =
            gateways.iter().map(|n| (crate::config::namespace_of(n).into(), n.as_str().into())).collect();
        for (i, l) in cfg.limit.iter().enumerate() {
            if l.method != "*" && MethodLabel::from_name(&l.method).is_none() {
                return Err(format!("rate_limits.limit.method: limit {i}: unknown method {:?}", l.method));
            }
        }
        let all: Vec<Arc<Limit>> = cfg
            .limit
            .iter()
            .map(|l| Arc::new(Limit::new(l.clone(), cfg.max_keys, &metrics, gateways.clone())))
            .collect();
        let by_method = MethodLabel::all()
            .map(|label| {
                // Agent, then tenant, then global: the most specific limit trips first.
                let mut ls: Vec<Arc<Limit>> =
                    all.iter().filter(|l| l.cfg.method == "*" || l.cfg.method == label.as_str()).cloned().collect();
                ls.sort_by_key(|l| l.cfg.scope as u8);
                ls
            })
            .collect();
        // Every series the configured limits can write exists from the start (at 0), so
        // `rate()` and `increase()` see their first refusal, and the key gauges show before
        // the first eviction round.
        for l in &all {
            let methods: Vec<MethodLabel> = match MethodLabel::from_name(&l.cfg.method) {
                Some(m) => vec![m],
                None => vec![MethodLabel::Gateway(crate::gateway::GatewayMethod::StopVoiceToConf)],
            };
            for m in methods {
                metrics.zero_rate_limited(m, l.cfg.scope.as_str());
            }
            metrics.set_rate_limiter_keys(&l.name, l.keys());
        }
        Ok(Self { by_method, all, max_keys: cfg.max_keys, metrics, shared: None })
    }

    /// Keeps the buckets in Redis, shared by every replica.
    pub fn shared(mut self, shared: Arc<dyn Buckets>, fallback: LimitsFallback) -> Self {
        self.shared = Some((shared, fallback));
        self
    }

    /// Whether the buckets live in the shared store. There a check of several tiers at once
    /// takes from every bucket before any answer is known, so a refusal by the caller's own
    /// bucket would still spend the shared ones: the core checks the tiers in turn then.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether any limit of `tier` applies to `method` (the core skips a phase that has none).
    pub fn applies(&self, method: MethodLabel, tier: Tier) -> bool {
        self.by_method
            .get(method.index())
            .is_some_and(|ls| ls.iter().any(|l| tier == Tier::All || Tier::of(l.cfg.scope) == tier))
    }

    /// Checks the limits of `tier` for `method`: the tightest limit's state when allowed
    /// (`None` when no limit applies), or the refusal.
    pub async fn check(&self, method: MethodLabel, tier: Tier, who: &Principal) -> Result<Option<LimitState>, Failure> {
        let Some(all) = self.by_method.get(method.index()) else {
            return Ok(None);
        };
        // Sorted by scope, agent first: each tier is a contiguous run.
        let own = all.partition_point(|l| Tier::of(l.cfg.scope) == Tier::Own);
        let limits = match tier {
            Tier::Own => &all[..own],
            Tier::Shared => &all[own..],
            Tier::All => &all[..],
        };
        if limits.is_empty() {
            return Ok(None);
        }
        // With Redis, a limit whose bucket this replica holds a slice of decides locally;
        // the others are asked at once: one round trip on the multiplexed connection, not one
        // per limit. (A bucket is then charged even when a more specific one refuses; the
        // local limiter stops at the first refusal.)
        let shared_outcomes = match &self.shared {
            None => None,
            Some((shared, _)) => {
                let takes: Vec<Take> = limits.iter().map(|l| l.take_local(who)).collect();
                let answers = limits.iter().zip(&takes).map(|(l, take)| async move {
                    match *take {
                        Take::Local(remaining) => Ok(Ok(remaining)),
                        Take::Fetch { want, refill } => l.check_shared(&**shared, who, want, refill).await,
                    }
                });
                Some(futures_util::future::join_all(answers).await)
            }
        };
        let mut tightest: Option<(u32, &Limit)> = None;
        for (i, limit) in limits.iter().enumerate() {
            let outcome = match (&self.shared, shared_outcomes.as_ref().and_then(|o| o.get(i))) {
                (Some(_), Some(Ok(outcome))) => *outcome,
                (Some((_, LimitsFallback::Closed)), _) => return Err(Failure::StoreUnavailable),
                _ => limit.check(who),
            };
            match outcome {
                Ok(remaining) => {
                    if tightest.is_none_or(|(r, _)| remaining < r) {
                        tightest = Some((remaining, limit));
                    }
                }
                Err(_) if limit.cfg.shadow => {
                    self.metrics.count_rate_limit_shadow(method, limit.cfg.scope.as_str());
                }
                Err(wait) => {
                    self.metrics.count_rate_limited(method, limit.cfg.scope.as_str());
                    let retry = ceil_secs(wait);
                    return Err(Failure::RateLimited(Box::new(Refusal {
                        scope: limit.cfg.scope,
                        retry_after_secs: retry,
                        state: limit.state(0, retry),
                    })));
                }
            }
        }
        Ok(tightest.map(|(remaining, l)| {
            // Seconds until the bucket is full again.
            let missing = l.cfg.burst.saturating_sub(remaining);
            let reset =
                if missing == 0 { 0 } else { ceil_secs(Duration::from_secs_f64(f64::from(missing) / l.cfg.rate)) };
            l.state(remaining, reset)
        }))
    }

    /// Evicts idle keys and refreshes the key gauges.
    pub fn evict(&self) {
        let now = tokio::time::Instant::now();
        for l in &self.all {
            if let Some(s) = &l.slices {
                s.evict(now);
            }
            if let Limiter::Keyed(ks) = &l.limiter {
                for k in ks {
                    k.retain_recent();
                    k.shrink_to_fit();
                }
            }
            self.metrics.set_rate_limiter_keys(&l.name, l.keys());
        }
    }

    /// Tracked keys across all limits.
    pub fn tracked_keys(&self) -> usize {
        self.all.iter().map(|l| l.keys()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(method: &str) -> LimitConfig {
        LimitConfig { method: method.into(), scope: Scope::Agent, rate: 1.0, burst: 1, shadow: false }
    }

    #[test]
    fn a_limit_must_name_a_method_ccgate_knows() {
        let cfg = |l| RateLimitsConfig { limit: vec![l], ..RateLimitsConfig::default() };
        let err = Limits::new(&cfg(limit("stopVoiceToconf")), &[], Metrics::default()).err().unwrap();
        assert!(err.starts_with("rate_limits.limit.method"), "{err}");
        for ok in ["stopVoiceToConf", "getSession", "events", "*"] {
            assert!(Limits::new(&cfg(limit(ok)), &[], Metrics::default()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn each_label_gets_its_own_limits_most_specific_first() {
        let mut global = limit("stopVoiceToConf");
        global.scope = Scope::Global;
        let cfg = RateLimitsConfig { limit: vec![global, limit("*")], ..RateLimitsConfig::default() };
        let limits = Limits::new(&cfg, &[], Metrics::default()).unwrap();
        let stop = &limits.by_method[MethodLabel::Gateway(crate::gateway::GatewayMethod::StopVoiceToConf).index()];
        assert_eq!(stop.iter().map(|l| l.cfg.scope).collect::<Vec<_>>(), [Scope::Agent, Scope::Global]);
        assert_eq!(limits.by_method[MethodLabel::Events.index()].len(), 1, "only the `*` limit");
        assert_eq!(limits.by_method.len(), MethodLabel::COUNT);
    }

    /// Tenant buckets are per (gateway, tenant): a tenant name two contact centres both use is
    /// two buckets, and a gateway's tokens without a tenant share that gateway's bucket only.
    /// The same with the shared store, where the buckets are keys.
    #[tokio::test(start_paused = true)]
    async fn tenant_buckets_are_per_gateway_locally_and_shared() {
        use crate::shared::memory::MemoryHub;
        let stop = MethodLabel::Gateway(crate::gateway::GatewayMethod::StopVoiceToConf);
        let cfg = RateLimitsConfig {
            limit: vec![LimitConfig { scope: Scope::Tenant, rate: 0.01, burst: 1, ..limit("stopVoiceToConf") }],
            ..RateLimitsConfig::default()
        };
        let who = |gateway, tenant: Option<&str>| Principal {
            agent_id: "153".into(),
            tenant: tenant.map(Into::into),
            gateway,
            subject: None,
        };
        let gateways = ["acme".to_string(), "globex".to_string()];
        let hub = MemoryHub::new(Duration::from_secs(3), crate::shared::TOMBSTONE);
        let local = Limits::new(&cfg, &gateways, Metrics::default()).unwrap();
        let shared =
            Limits::new(&cfg, &gateways, Metrics::default()).unwrap().shared(hub.join(), LimitsFallback::Closed);
        for limits in [local, shared] {
            assert!(limits.applies(stop, Tier::Shared) && !limits.applies(stop, Tier::Own));
            for gateway in [0, 1] {
                for tenant in [Some("blue"), None] {
                    let w = who(gateway, tenant);
                    assert!(limits.check(stop, Tier::Shared, &w).await.is_ok(), "{w:?}: a bucket of its own");
                    assert!(limits.check(stop, Tier::Shared, &w).await.is_err(), "{w:?}: and it is spent");
                }
            }
            assert!(limits.check(stop, Tier::Own, &who(0, None)).await.unwrap().is_none(), "no agent limit");
        }
    }

    /// Three replicas' limits on one shared store (the in-memory one, Redis's semantics),
    /// under the paused clock: one bucket for all of them, refilled by the store's clock, and
    /// the configured fallback while the store is away.
    #[tokio::test(start_paused = true)]
    async fn a_shared_bucket_holds_across_replicas_and_falls_back_as_configured() {
        use crate::shared::memory::MemoryHub;
        let hub = MemoryHub::new(Duration::from_secs(3), crate::shared::TOMBSTONE);
        let stop = MethodLabel::Gateway(crate::gateway::GatewayMethod::StopVoiceToConf);
        let who = Principal::agent("153");
        let cfg = RateLimitsConfig {
            limit: vec![LimitConfig { rate: 1.0, burst: 2, ..limit("stopVoiceToConf") }],
            ..RateLimitsConfig::default()
        };
        let replica = |fallback| {
            let store: Arc<dyn Buckets> = hub.join();
            Limits::new(&cfg, &[], Metrics::default()).unwrap().shared(store, fallback)
        };
        let replicas =
            [replica(LimitsFallback::Local), replica(LimitsFallback::Local), replica(LimitsFallback::Closed)];
        let mut allowed = 0;
        for r in replicas.iter().cycle().take(6) {
            allowed += usize::from(r.check(stop, Tier::Own, &who).await.is_ok());
        }
        assert_eq!(allowed, 2, "the burst, shared");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(replicas[1].check(stop, Tier::Own, &who).await.is_ok(), "one more a second later, on any replica");
        assert!(replicas[2].check(stop, Tier::Own, &who).await.is_err());
        // The store away: `local` judges by the replica's own bucket, `closed` refuses.
        hub.set_down(true);
        assert!(replicas[0].check(stop, Tier::Own, &who).await.is_ok());
        assert!(matches!(replicas[2].check(stop, Tier::Own, &who).await, Err(Failure::StoreUnavailable)));
    }

    /// Slices (issue 27): three replicas, uneven demand far above the rate, on one bucket big
    /// enough to slice. Admitted within the stated bound (`slices.rs`): what GCRA allows
    /// (burst + rate × time) plus at most one slice per replica; and with slices in hand a
    /// replica decides without the store.
    #[tokio::test(start_paused = true)]
    async fn sliced_buckets_stay_within_the_stated_bound_across_three_replicas() {
        use crate::shared::memory::MemoryHub;
        let hub = MemoryHub::new(Duration::from_secs(3), crate::shared::TOMBSTONE);
        let stop = MethodLabel::Gateway(crate::gateway::GatewayMethod::StopVoiceToConf);
        let who = Principal::agent("153");
        let (rate, burst) = (200.0, 6_400);
        let cfg = RateLimitsConfig {
            limit: vec![LimitConfig { rate, burst, scope: Scope::Global, ..limit("stopVoiceToConf") }],
            ..RateLimitsConfig::default()
        };
        let cap = slices::cap(rate, burst);
        assert_eq!(cap, 100);
        let replicas: Vec<Limits> = (0..3)
            .map(|_| {
                let store: Arc<dyn Buckets> = hub.join();
                Limits::new(&cfg, &[], Metrics::default()).unwrap().shared(store, LimitsFallback::Closed)
            })
            .collect();
        // Requests per ms: 2, 1 and one every 10 ms (3,100/s against 200/s).
        let (ms, mut admitted) = (20_000u32, 0u32);
        for t in 0..ms {
            for (i, r) in replicas.iter().enumerate() {
                let n = match i {
                    0 => 2,
                    1 => 1,
                    _ => u32::from(t % 10 == 0),
                };
                for _ in 0..n {
                    admitted += u32::from(r.check(stop, Tier::Shared, &who).await.is_ok());
                }
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let allowed = burst as f64 + rate * f64::from(ms) / 1000.0;
        let over = f64::from(admitted) - allowed;
        assert!(over <= f64::from(3 * cap), "admitted {admitted}, GCRA allows {allowed}: {over} over");
        assert!(over >= -f64::from(3 * cap), "admitted {admitted}, GCRA allows {allowed}: {over} under");

        // A full bucket again: after a few takes a busy replica holds a slice, and spends it
        // with the store away (`closed` would refuse any request that needed the store).
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..64 {
            assert!(replicas[0].check(stop, Tier::Shared, &who).await.is_ok());
        }
        hub.set_down(true);
        assert!(replicas[0].check(stop, Tier::Shared, &who).await.is_ok(), "decided locally, from the slice");
        assert!(
            matches!(replicas[1].check(stop, Tier::Shared, &who).await, Err(Failure::StoreUnavailable)),
            "no slice: the store"
        );
    }
}

//! Phase `rate limit`: per-method limits per agent, per tenant and global, on governor's GCRA.
//!
//! Each limit is `rate` (requests per second, sustained) plus `burst`. A refused request gets
//! 429 with `Retry-After` and the IETF `RateLimit-Policy`/`RateLimit` headers and never
//! reaches the gateway; allowed requests carry `RateLimit` for their tightest limit. A limit in
//! shadow mode only counts what it would refuse.
//!
//! Time comes from tokio's clock, so limits behave identically under tokio's paused clock in
//! tests. Keyed state lives in a capped map: idle keys are evicted periodically, and when the
//! cap is reached a new key is judged as a fresh one without being stored (fail-open, counted)
//! while tenant and global limits still apply, so memory stays bounded whatever the traffic.

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
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use crate::metrics::{MethodLabel, Metrics};

/// Most keys tracked per keyed limit. At ~100 bytes a key this bounds each limit to ~10 MiB;
/// 100k is more agents than a CEC tenant has.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// How often idle keys are evicted and the key gauges refreshed.
pub const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One bucket per agent (the token's agent claim).
    Agent,
    /// One bucket per tenant (`auth.tenant_claim`); tokens without one share a bucket.
    Tenant,
    /// One bucket for everyone.
    Global,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Tenant => "tenant",
            Scope::Global => "global",
        }
    }
}

/// One configured limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Gateway log name (`stopVoiceToConf`), `getSession`, `events`, or `*` for every method.
    pub method: String,
    pub scope: Scope,
    /// Sustained requests per second.
    pub rate: f64,
    /// Requests allowed at once on top of the sustained rate.
    pub burst: u32,
    /// Count what would be refused, refuse nothing.
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    pub max_keys: usize,
    pub limit: Vec<LimitConfig>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self { max_keys: DEFAULT_MAX_KEYS, limit: default_limits() }
    }
}

/// Defaults for `stopVoiceToConf`, the interface ccgate exists for:
/// - per agent 1/s, burst 5: a chairperson stops an announcement a few times per conference;
///   a burst of 5 absorbs double clicks and client retries, 1/s sustained is far above human
///   use and stops a runaway loop;
/// - per tenant 20/s, burst 40: one tenant's apps cannot take the whole gateway;
/// - global 100/s, burst 200: ccgate never forwards conference commands faster than a single
///   CC-Gateway node is sized for; raise it for a cluster behind the NSLB.
pub fn default_limits() -> Vec<LimitConfig> {
    let l = |scope, rate, burst| LimitConfig { method: "stopVoiceToConf".into(), scope, rate, burst, shadow: false };
    vec![l(Scope::Agent, 1.0, 5), l(Scope::Tenant, 20.0, 40), l(Scope::Global, 100.0, 200)]
}

impl RateLimitsConfig {
    /// Checks each limit; returns the key to blame and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_keys == 0 {
            return Err(("rate_limits.max_keys", "must be greater than 0".into()));
        }
        for (i, l) in self.limit.iter().enumerate() {
            if l.method != "*" && label_index(&l.method).is_none() {
                return Err(("rate_limits.limit.method", format!("limit {i}: unknown method {:?}", l.method)));
            }
            if !(l.rate.is_finite() && l.rate > 0.0 && l.rate <= 1e9) {
                return Err((
                    "rate_limits.limit.rate",
                    format!("limit {i}: must be a positive number of requests per second"),
                ));
            }
            if l.burst == 0 {
                return Err(("rate_limits.limit.burst", format!("limit {i}: must be at least 1")));
            }
        }
        Ok(())
    }
}

/// Every `method` label value a limit may name, in `MethodLabel` index order.
fn label_index(name: &str) -> Option<usize> {
    all_labels().iter().position(|l| l.as_str() == name)
}

fn all_labels() -> Vec<MethodLabel> {
    let mut v: Vec<MethodLabel> = crate::gateway::GatewayMethod::ALL.iter().map(|m| MethodLabel::Gateway(*m)).collect();
    v.extend([MethodLabel::GetSession, MethodLabel::Events, MethodLabel::Unmatched]);
    v
}

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

/// governor's DashMap store with a hard cap on keys.
pub struct CappedStore {
    map: DashMapStateStore<String>,
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
        ShrinkableKeyedStateStore::shrink_to_fit(&self.map);
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type Keyed = RateLimiter<String, CappedStore, TokioClock, StateInformationMiddleware>;
type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

enum Limiter {
    Keyed(Keyed),
    Global(Direct),
}

pub struct Limit {
    pub cfg: LimitConfig,
    /// Bucket key for tokens that name no tenant.
    no_tenant: String,
    /// `stopVoiceToConf.agent`: the policy name in headers and problem bodies.
    pub name: String,
    /// Seconds to refill the whole burst: the policy's window.
    window_secs: u64,
    limiter: Limiter,
}

/// What an allowed request reports: the tightest applicable limit.
#[derive(Debug, Clone)]
pub struct RateHeaders {
    pub policy: HeaderValue,
    pub state: HeaderValue,
}

impl RateHeaders {
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        h.insert(RATELIMIT.clone(), self.state.clone());
    }
}

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub name: String,
    pub scope: Scope,
    pub retry_after_secs: u64,
    pub headers: RateHeaders,
}

impl Refusal {
    pub fn apply(&self, h: &mut HeaderMap) {
        self.headers.apply(h);
        h.insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs));
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

impl Limit {
    fn new(cfg: LimitConfig, max_keys: usize, metrics: &Metrics) -> Self {
        let period = Duration::from_secs_f64(1.0 / cfg.rate).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(cfg.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
        let name = format!("{}.{}", cfg.method.replace('*', "all"), cfg.scope.as_str());
        let limiter = match cfg.scope {
            Scope::Global => Limiter::Global(RateLimiter::direct_with_clock(quota, TokioClock).with_middleware()),
            Scope::Agent | Scope::Tenant => {
                let overflow = metrics.rate_limiter_overflow(&name);
                let store = CappedStore { map: DashMapStateStore::default(), cap: max_keys, overflow };
                let plain: RateLimiter<String, CappedStore, TokioClock, NoOpMiddleware<TokioInstant>> =
                    RateLimiter::new(quota, store, TokioClock);
                Limiter::Keyed(plain.with_middleware())
            }
        };
        let window_secs = ceil_secs(period * cfg.burst);
        Self { cfg, no_tenant: "-".into(), name, window_secs, limiter }
    }

    fn policy(&self) -> HeaderValue {
        // draft-ietf-httpapi-ratelimit-headers: quota q over window w seconds.
        HeaderValue::from_str(&format!("\"{}\";q={};w={}", self.name, self.cfg.burst, self.window_secs))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""))
    }

    fn state(&self, remaining: u32, reset_secs: u64) -> HeaderValue {
        HeaderValue::from_str(&format!("\"{}\";r={};t={}", self.name, remaining, reset_secs))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""))
    }

    /// `Ok(remaining)` or `Err(wait)`.
    fn check(&self, who: &Principal) -> Result<u32, Duration> {
        let now = TokioClock.now();
        let outcome = match &self.limiter {
            Limiter::Global(l) => l.check(),
            Limiter::Keyed(l) => match self.cfg.scope {
                Scope::Tenant => l.check_key(who.tenant.as_ref().unwrap_or(&self.no_tenant)),
                _ => l.check_key(&who.agent_id),
            },
        };
        match outcome {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => Err(not_until.wait_time_from(now)),
        }
    }

    fn keys(&self) -> usize {
        match &self.limiter {
            Limiter::Keyed(l) => l.len(),
            Limiter::Global(_) => 0,
        }
    }
}

pub struct Limits {
    /// Limits applying to each method label, by `MethodLabel` index.
    by_method: Vec<Vec<Arc<Limit>>>,
    all: Vec<Arc<Limit>>,
    metrics: Metrics,
}

impl Limits {
    pub fn new(cfg: &RateLimitsConfig, metrics: Metrics) -> Self {
        let labels = all_labels();
        let all: Vec<Arc<Limit>> =
            cfg.limit.iter().map(|l| Arc::new(Limit::new(l.clone(), cfg.max_keys, &metrics))).collect();
        let mut by_method: Vec<Vec<Arc<Limit>>> = vec![Vec::new(); labels.len()];
        for (i, label) in labels.iter().enumerate() {
            // Agent, then tenant, then global: the most specific limit trips first.
            let mut ls: Vec<Arc<Limit>> =
                all.iter().filter(|l| l.cfg.method == "*" || l.cfg.method == label.as_str()).cloned().collect();
            ls.sort_by_key(|l| l.cfg.scope as u8);
            by_method[i] = ls;
        }
        Self { by_method, all, metrics }
    }

    /// Checks every limit for `method`. `Ok(None)` when no limit applies.
    pub fn check(&self, method: MethodLabel, who: &Principal) -> Result<Option<RateHeaders>, Refusal> {
        let Some(limits) = label_index(method.as_str()).and_then(|i| self.by_method.get(i)) else {
            return Ok(None);
        };
        let mut tightest: Option<(u32, &Limit)> = None;
        for limit in limits {
            match limit.check(who) {
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
                    return Err(Refusal {
                        name: limit.name.clone(),
                        scope: limit.cfg.scope,
                        retry_after_secs: retry,
                        headers: RateHeaders { policy: limit.policy(), state: limit.state(0, retry) },
                    });
                }
            }
        }
        Ok(tightest.map(|(remaining, l)| {
            // Seconds until the bucket is full again.
            let missing = l.cfg.burst.saturating_sub(remaining);
            let reset =
                if missing == 0 { 0 } else { ceil_secs(Duration::from_secs_f64(f64::from(missing) / l.cfg.rate)) };
            RateHeaders { policy: l.policy(), state: l.state(remaining, reset) }
        }))
    }

    /// Evicts idle keys and refreshes the key gauges.
    pub fn evict(&self) {
        for l in &self.all {
            if let Limiter::Keyed(k) = &l.limiter {
                k.retain_recent();
                k.shrink_to_fit();
            }
            self.metrics.set_rate_limiter_keys(&l.name, l.keys());
        }
    }

    /// Tracked keys across all limits.
    pub fn tracked_keys(&self) -> usize {
        self.all.iter().map(|l| l.keys()).sum()
    }
}

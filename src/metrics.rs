//! Prometheus metrics (the contract is in README, "Metrics"). Every label value comes from a bounded enum or a
//! fixed list: never an agent id, token subject, raw path or Guid.
//!
//! Each `Metrics` owns its own registry so several proxies can live in one process (tests).
//! Hot-path children are resolved once and cached, so recording a request is a few atomic
//! adds with no hashing and no allocation.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::gateway::{CallFuture, Gateway, GatewayClient, GatewayMethod, GatewayRequest, Retcode};
use crate::labels::{
    AuthFailureReason, Discarded, JwksFetchResult, LossReason, MethodLabel, Outcome, ReloadResult, SessionState,
    SigninResult, SignoutTrigger, StoreOp, StoreReconnect, UpstreamErrorKind, WebhookDrop, WebhookOutcome,
};

/// Buckets for a gateway round trip and for a whole proxied request. A LAN round trip to the
/// CC-Gateway is a few milliseconds; CTI operations (conference set-up) take up to a few
/// hundred; 10 s is our request timeout. Finer steps below 100 ms keep p50/p99 readable where
/// most requests land; the 10 s bucket makes timeouts visible as such.
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The gateway client with every round trip recorded: duration, and retcode or failure kind,
/// per method. The session layer calls the gateway through it, so app requests and the poller
/// alike are counted, and the gateway layer itself knows nothing of metrics. It holds the
/// client itself, not another `dyn Gateway`, so a call costs one boxed future, not two.
pub struct Metered {
    inner: GatewayClient,
    metrics: Metrics,
}

impl Metered {
    pub fn new(inner: GatewayClient, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }
}

impl Gateway for Metered {
    fn call<'a>(&'a self, req: GatewayRequest<'a>) -> CallFuture<'a> {
        let method = req.method;
        Box::pin(async move {
            let (result, elapsed) = self.inner.call_timed(req).await;
            let m = &self.metrics;
            m.observe_upstream(method, elapsed);
            match &result {
                Ok(reply) => m.count_upstream_retcode(method, reply.envelope.code()),
                Err(e) => m.count_upstream_failure(method, e.into()),
            }
            result
        })
    }
}

/// The registry, and (for what one gateway's session store and client record) which
/// gateway: [`Metrics::gateway`] gives each gateway's parts their own handle, whose
/// per-gateway families carry its name as the `gateway` label.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>, usize);

/// Every metric family ccgate exports, declared once: its field, type, name (after the
/// `ccgate_` prefix), help and labels. The macro makes the struct, registers each family and
/// lists them for [`Metrics::names`]; the typed methods below are the only way to write them.
macro_rules! families {
    ($($field:ident: $kind:ty = ($name:literal, $help:literal $(, [$($label:literal),+])?);)+) => {
        struct Families { $($field: $kind,)+ }

        impl Families {
            fn register(r: &Registry) -> Self {
                Self { $($field: register::<$kind>(r, $name, $help, &[$($($label),+)?]),)+ }
            }

            fn collectors(&self) -> Vec<&dyn prometheus::core::Collector> {
                vec![$(&self.$field),+]
            }
        }
    };
}

families! {
    requests: IntCounterVec = ("requests_total", "Requests handled, by gateway (empty before a token named one), method and outcome.", ["gateway", "method", "outcome"]);
    request_duration: HistogramVec =
        ("request_duration_seconds", "Whole request time in the proxy, by method.", ["method"]);
    upstream_duration: HistogramVec = ("upstream_duration_seconds", "Gateway round-trip time, by gateway and method.", ["gateway", "method"]);
    upstream_responses: IntCounterVec = (
        "upstream_responses_total",
        "Gateway answers by gateway, method and retcode (documented codes, else other).",
        ["gateway", "method", "retcode"]
    );
    upstream_errors: IntCounterVec = (
        "upstream_errors_total",
        "Gateway round trips that failed in transport, by gateway, method and kind.",
        ["gateway", "method", "kind"]
    );
    rate_limited: IntCounterVec =
        ("rate_limited_total", "Requests refused by a rate limit, by method and scope.", ["method", "scope"]);
    rate_limit_shadow: IntCounterVec = (
        "rate_limit_shadow_total",
        "Requests a shadow-mode limit would have refused, by method and scope.",
        ["method", "scope"]
    );
    rate_limiter_keys: IntGaugeVec =
        ("rate_limiter_keys", "Keys (agents or tenants) tracked by each keyed limit.", ["limit"]);
    rate_limiter_overflow: IntCounterVec = (
        "rate_limiter_overflow_total",
        "Requests judged without tracking their key because the limit's key table was full.",
        ["limit"]
    );
    auth_failures: IntCounterVec = ("auth_failures_total", "Refused tokens, by reason.", ["reason"]);
    sessions: IntGaugeVec = ("sessions", "Agent gateway sessions held, by gateway and state.", ["gateway", "state"]);
    signins: IntCounterVec = ("signins_total", "Gateway sign-ins attempted, by gateway and result.", ["gateway", "result"]);
    session_losses: IntCounterVec = ("session_losses_total", "Sessions the gateway ended, by gateway and reason.", ["gateway", "reason"]);
    guid_rotations: IntCounter = ("guid_rotations_total", "Guid changes picked up from Set-GUID.");
    idle_signouts: IntCounter = (
        "idle_signouts_total",
        "Agents signed out because their app was silent for sessions.idle_timeout_ms."
    );
    signout_failures: IntCounterVec = (
        "signout_failures_total",
        "Sign-outs the gateway could not be told of (each attempt), by what asked for them.",
        ["trigger"]
    );
    connections: IntGauge = ("connections", "Open connections on the app-facing listener.");
    connections_refused: IntCounter = (
        "connections_refused_total",
        "Connections closed at once because server.max_connections were open and none could be shed."
    );
    connections_shed: IntCounter = (
        "connections_shed_total",
        "Connections closed to make room at server.max_connections: silent ones (no request yet) oldest first, else the longest idle."
    );
    in_flight: IntGauge = ("requests_in_flight", "App requests being handled now (both faces).");
    event_streams: IntGauge = ("event_streams", "Open SSE event streams (GET /v1/events subscribers).");
    auth_throttled: IntCounter = (
        "auth_throttled_total",
        "Requests answered 429 without a signature check: their address had too many tokens refused."
    );
    auth_refusals_remembered: IntCounter = (
        "auth_refusals_remembered_total",
        "Tokens refused again from memory (a forged signature seen before) without a check."
    );
    events_dropped: IntCounter = (
        "events_dropped_total",
        "Gateway events dropped from a full per-agent buffer before an app read them."
    );
    input_discarded: IntCounterVec = (
        "input_discarded_total",
        "Input from the gateway or Redis discarded to keep a bound or because it was invalid, by what it was.",
        ["what"]
    );
    gateway_up: IntGaugeVec = (
        "gateway_up",
        "1 when the readiness probe completes a TLS handshake with the gateway, else 0; per gateway.",
        ["gateway"]
    );
    store_up: IntGauge = ("store_up", "1 while the shared store (Redis) answers, else 0; 1 with the memory store.");
    store_errors: IntCounterVec =
        ("store_errors_total", "Shared store (Redis) operations that failed, by operation.", ["op"]);
    store_reconnects: IntCounterVec = (
        "store_reconnects_total",
        "Times the Redis connection was dropped and made afresh (a failover, a restart), by reason.",
        ["reason"]
    );
    leases: IntGaugeVec = (
        "leases",
        "Agents whose gateway events this replica polls (the memory store: all of them), per gateway.",
        ["gateway"]
    );
    lease_takeovers: IntCounter = (
        "lease_takeovers_total",
        "Pollers this replica took over from a replica that stopped renewing its lease."
    );
    lease_losses: IntCounter =
        ("lease_losses_total", "Pollers this replica stopped because another replica holds the lease.");
    build_info: IntGaugeVec = ("build_info", "Build information; always 1.", ["version", "commit"]);
    replica_info: IntGaugeVec = (
        "replica_info",
        "This replica: its name in leases (what \"polled by\" shows), host and admin listener; always 1.",
        ["replica", "host", "admin"]
    );
    jwks_fetches: IntCounterVec = (
        "jwks_fetches_total",
        "Fetches of an identity provider's keys (discovery included), by issuer and result.",
        ["issuer", "result"]
    );
    jwks_keys: IntGaugeVec =
        ("jwks_keys", "Signing keys loaded for each issuer (from a file or fetched).", ["issuer"]);
    signin_wait: Histogram = (
        "signin_wait_seconds",
        "Time sign-ins waited for a turn at the gateway (sessions.signin_concurrency)."
    );
    config_reloads: IntCounterVec = (
        "config_reloads_total",
        "Reloads (SIGHUP, ccgate reload) by result; a failed one left the running config in place.",
        ["result"]
    );
    config_last_reload_ok: IntGauge = (
        "config_last_reload_successful",
        "1 when the last reload succeeded (or none was tried), else 0."
    );
    config_last_reload_success: IntGauge = (
        "config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful reload (of the start while none succeeded)."
    );
    certificate_reloads: IntCounterVec = (
        "tls_certificate_reloads_total",
        "Server certificate reloads after its files changed, by result.",
        ["result"]
    );
    webhook_attempts: IntCounterVec = (
        "webhook_attempts_total",
        "Webhook delivery attempts, by endpoint and outcome (delivered, redirect, rejected, gone, throttled, server_error, timeout, connect, forbidden_address).",
        ["endpoint", "outcome"]
    );
    webhook_delivered: IntCounterVec =
        ("webhook_delivered_total", "Events a webhook endpoint answered with a 2xx, by endpoint.", ["endpoint"]);
    webhook_failed: IntCounterVec = (
        "webhook_failed_total",
        "Events given up after the endpoint's last scheduled attempt (kept for replay), by endpoint.",
        ["endpoint"]
    );
    webhook_dropped: IntCounterVec = (
        "webhook_dropped_total",
        "Events not queued for a webhook endpoint, by endpoint and reason (queue_full, too_large, failed_evicted).",
        ["endpoint", "reason"]
    );
    webhook_pending: IntGaugeVec =
        ("webhook_pending", "Events waiting for a webhook endpoint (in flight included), by endpoint.", ["endpoint"]);
    webhook_oldest_pending_age: IntGaugeVec = (
        "webhook_oldest_pending_age_seconds",
        "Age of the oldest event waiting for a webhook endpoint (0 when none waits), by endpoint.",
        ["endpoint"]
    );
    webhook_disabled: IntGaugeVec = (
        "webhook_disabled",
        "1 while a webhook endpoint is disabled (it answered 410 Gone; a replay enables it), by endpoint.",
        ["endpoint"]
    );
    webhook_failing_since: IntGaugeVec = (
        "webhook_failing_since_timestamp_seconds",
        "When a webhook endpoint's attempts began failing (Unix seconds; 0 while its last attempt delivered), by endpoint.",
        ["endpoint"]
    );
    webhook_delivery: HistogramVec = (
        "webhook_delivery_seconds",
        "From an event's arrival to its 2xx from a webhook endpoint, retries included, by endpoint.",
        ["endpoint"]
    );
}

struct Inner {
    registry: Registry,
    process: Registry,
    f: Families,
    /// Computed at scrape time (see their types).
    jwks_age: Arc<FreshnessCollector>,
    cert_expiry: Arc<CertExpiry>,
    /// The configured gateways' names (the `gateway` label's values), by index; bounded by
    /// the config (`MAX_GATEWAYS`).
    gateways: Vec<String>,
    // Lazily resolved children: a series appears once it has been used.
    req_cells: Vec<OnceLock<IntCounter>>,
    req_dur_cells: Vec<OnceLock<Histogram>>,
    up_dur_cells: Vec<OnceLock<Histogram>>,
    /// `upstream_responses_total{retcode="0"}` per method: every successful poll counts one,
    /// 1,000 a second at 10,000 agents, so it skips the label lookup.
    up_ok_cells: Vec<OnceLock<IntCounter>>,
}

impl std::ops::Deref for Inner {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.f
    }
}

/// A metric family type the table can declare. Histograms take the latency buckets.
trait Family: prometheus::core::Collector + Clone + 'static {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self>;
}

impl Family for IntCounter {
    fn make(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        IntCounter::new(name, help)
    }
}

impl Family for IntCounterVec {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        IntCounterVec::new(Opts::new(name, help), labels)
    }
}

impl Family for IntGauge {
    fn make(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        IntGauge::new(name, help)
    }
}

impl Family for IntGaugeVec {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        IntGaugeVec::new(Opts::new(name, help), labels)
    }
}

impl Family for Histogram {
    fn make(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
    }
}

impl Family for HistogramVec {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
    }
}

fn register<F: Family>(r: &Registry, name: &str, help: &str, labels: &[&str]) -> F {
    // Names, help and labels are literals of the table above: a failure is a bug the first
    // test run finds, not input.
    let f = F::make(name, help, labels).expect("static metric definition");
    r.register(Box::new(f.clone())).expect("metric registered once");
    f
}

/// Creates each child at 0 (see `Metrics::new`).
fn zero<'a, const N: usize>(v: &IntCounterVec, labels: impl Iterator<Item = [&'a str; N]>) {
    for l in labels {
        v.with_label_values(&l).reset();
    }
}

/// One webhook endpoint's series (`Metrics::webhook`): its name is the `endpoint` label,
/// bounded by the config (`MAX_WEBHOOKS`).
#[derive(Clone)]
pub struct WebhookMetrics {
    all: Metrics,
    endpoint: Arc<str>,
}

impl WebhookMetrics {
    fn f(&self) -> &Families {
        &self.all.0.f
    }

    /// Every series of the endpoint at 0, so rates and alerts see it before its first event.
    pub fn zero(&self) {
        let e = &*self.endpoint;
        zero(&self.f().webhook_attempts, WebhookOutcome::ALL.iter().map(|o| [e, o.as_str()]));
        zero(&self.f().webhook_dropped, WebhookDrop::ALL.iter().map(|d| [e, d.as_str()]));
        zero(&self.f().webhook_delivered, std::iter::once([e]));
        zero(&self.f().webhook_failed, std::iter::once([e]));
        self.set_pending(0);
        self.set_oldest_age(0.0);
        self.set_disabled(false);
        self.set_failing_since(0);
    }

    pub fn count_attempt(&self, outcome: WebhookOutcome) {
        self.f().webhook_attempts.with_label_values(&[&*self.endpoint, outcome.as_str()]).inc();
    }

    /// A 2xx, `took` after the event arrived.
    pub fn count_delivered(&self, took: Duration) {
        self.f().webhook_delivered.with_label_values(&[&*self.endpoint]).inc();
        self.f().webhook_delivery.with_label_values(&[&*self.endpoint]).observe(took.as_secs_f64());
    }

    pub fn count_failed(&self) {
        self.f().webhook_failed.with_label_values(&[&*self.endpoint]).inc();
    }

    pub fn count_dropped(&self, why: WebhookDrop) {
        self.f().webhook_dropped.with_label_values(&[&*self.endpoint, why.as_str()]).inc();
    }

    pub fn set_pending(&self, n: usize) {
        self.f().webhook_pending.with_label_values(&[&*self.endpoint]).set(n as i64);
    }

    pub fn set_oldest_age(&self, secs: f64) {
        self.f().webhook_oldest_pending_age.with_label_values(&[&*self.endpoint]).set(secs as i64);
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.f().webhook_disabled.with_label_values(&[&*self.endpoint]).set(i64::from(disabled));
    }

    pub fn set_failing_since(&self, unix_secs: u64) {
        self.f().webhook_failing_since.with_label_values(&[&*self.endpoint]).set(unix_secs as i64);
    }
}

/// Counts something for as long as it lives (a request in flight, an open stream, a
/// poller): +1 now, -1 when dropped, however its task ends (finished, failed, aborted).
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(g: IntGauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Metrics of a ccgate with one gateway, the default one (tests and tools).
impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Metrics {
    /// Metrics of a ccgate with these gateways (by name, in config order; none: the default
    /// gateway alone).
    pub fn new(gateways: &[String]) -> Self {
        let gateways: Vec<String> =
            if gateways.is_empty() { vec![crate::config::DEFAULT_GATEWAY_NAME.to_owned()] } else { gateways.to_vec() };
        let r = Registry::new_custom(Some("ccgate".into()), None).expect("valid prefix");
        let f = Families::register(&r);
        f.store_up.set(1);
        f.config_last_reload_ok.set(1);
        f.config_last_reload_success.set(crate::clock::unix_secs() as i64);
        f.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CCGATE_COMMIT")]).set(1);
        let jwks_age = Arc::new(FreshnessCollector::new());
        let cert_expiry = Arc::new(CertExpiry::new());
        r.register(Box::new(CertExpiryRef(cert_expiry.clone()))).expect("metric registered once");
        r.register(Box::new(FreshnessRef(jwks_age.clone()))).expect("metric registered once");
        // Every series with a known label set exists from the start at 0, so `increase(...)`
        // and `rate(...)` see the first event after a restart (a series born at 1 has no
        // increase). Per-method series are made for the stop method, the product's reason to
        // be, and the poller's method, whose failures the alerts watch; the other methods'
        // appear when first used, which keeps the exposition a few hundred lines.
        for g in &gateways {
            for s in SessionState::ALL {
                f.sessions.with_label_values(&[g, s.as_str()]).set(0);
            }
            f.gateway_up.with_label_values(&[g]).set(0);
            f.leases.with_label_values(&[g]).set(0);
            zero(&f.signins, SigninResult::ALL.iter().map(|r| [g, r.as_str()]));
            zero(&f.session_losses, LossReason::ALL.iter().map(|r| [g, r.as_str()]));
            let stop = GatewayMethod::StopVoiceToConf.log_name();
            zero(&f.requests, Outcome::ALL.iter().map(|o| [g, stop, o.as_str()]));
            for m in [GatewayMethod::StopVoiceToConf, GatewayMethod::GetAgentEvent] {
                zero(&f.upstream_errors, UpstreamErrorKind::ALL.iter().map(|k| [g, m.log_name(), k.as_str()]));
            }
        }
        zero(&f.input_discarded, Discarded::ALL.iter().map(|d| [d.as_str()]));
        zero(&f.store_errors, StoreOp::ALL.iter().map(|op| [op.as_str()]));
        zero(&f.store_reconnects, StoreReconnect::ALL.iter().map(|r| [r.as_str()]));
        zero(&f.config_reloads, ReloadResult::ALL.iter().map(|r| [r.as_str()]));
        zero(&f.certificate_reloads, ReloadResult::ALL.iter().map(|r| [r.as_str()]));
        zero(&f.auth_failures, AuthFailureReason::ALL.iter().map(|r| [r.as_str()]));
        zero(&f.signout_failures, SignoutTrigger::ALL.iter().map(|t| [t.as_str()]));
        // The standard `process_*` series, without the `ccgate_` prefix dashboards expect
        // them under, so in a registry of their own.
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        if let Err(e) = process.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
            tracing::warn!(error = %e, "process metrics unavailable");
        }
        // Requests are counted per gateway and once more for "no gateway" (refused before a
        // token named one).
        let n = gateways.len();
        Self(
            Arc::new(Inner {
                registry: r,
                process,
                f,
                jwks_age,
                cert_expiry,
                req_cells: (0..(n + 1) * MethodLabel::COUNT * Outcome::COUNT).map(|_| OnceLock::new()).collect(),
                req_dur_cells: (0..MethodLabel::COUNT).map(|_| OnceLock::new()).collect(),
                up_dur_cells: (0..n * GatewayMethod::COUNT).map(|_| OnceLock::new()).collect(),
                up_ok_cells: (0..n * GatewayMethod::COUNT).map(|_| OnceLock::new()).collect(),
                gateways,
            }),
            0,
        )
    }

    /// Webhook endpoint `name`'s series.
    pub fn webhook(&self, name: &str) -> WebhookMetrics {
        WebhookMetrics { all: self.clone(), endpoint: Arc::from(name) }
    }

    /// The same metrics, recording for gateway `index` (config order) where a family has a
    /// `gateway` label.
    pub fn gateway(&self, index: usize) -> Self {
        Self(self.0.clone(), index.min(self.0.gateways.len() - 1))
    }

    /// The `gateway` label of this handle.
    fn gw(&self) -> &str {
        &self.0.gateways[self.1]
    }

    /// Records one finished request; `gateway`: the one its token named, if it got that far.
    pub fn record_request(&self, gateway: Option<usize>, method: MethodLabel, outcome: Outcome, elapsed: Duration) {
        let i = &self.0;
        let g = gateway.filter(|g| *g < i.gateways.len());
        let row = g.unwrap_or(i.gateways.len());
        let cell = (row * MethodLabel::COUNT + method.index()) * Outcome::COUNT + outcome as usize;
        let name = g.map_or("", |g| i.gateways[g].as_str());
        i.req_cells[cell]
            .get_or_init(|| i.requests.with_label_values(&[name, method.as_str(), outcome.as_str()]))
            .inc();
        i.req_dur_cells[method.index()]
            .get_or_init(|| i.request_duration.with_label_values(&[method.as_str()]))
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_upstream(&self, method: GatewayMethod, elapsed: Duration) {
        let i = &self.0;
        i.up_dur_cells[self.1 * GatewayMethod::COUNT + method.index()]
            .get_or_init(|| i.upstream_duration.with_label_values(&[self.gw(), method.log_name()]))
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_upstream_retcode(&self, method: GatewayMethod, code: Retcode) {
        let i = &self.0;
        let labels = [self.gw(), method.log_name(), code.as_str()];
        match code {
            Retcode::Success => i.up_ok_cells[self.1 * GatewayMethod::COUNT + method.index()]
                .get_or_init(|| i.upstream_responses.with_label_values(&labels))
                .inc(),
            _ => i.upstream_responses.with_label_values(&labels).inc(),
        }
    }

    pub fn count_upstream_failure(&self, method: GatewayMethod, kind: UpstreamErrorKind) {
        self.0.upstream_errors.with_label_values(&[self.gw(), method.log_name(), kind.as_str()]).inc();
    }

    pub fn count_rate_limited(&self, method: MethodLabel, scope: &'static str) {
        self.0.rate_limited.with_label_values(&[method.as_str(), scope]).inc();
    }

    /// Creates a limit's refusal series at 0 (both: a limit's shadow flag may change on reload).
    pub fn zero_rate_limited(&self, method: MethodLabel, scope: &'static str) {
        self.0.rate_limited.with_label_values(&[method.as_str(), scope]);
        self.0.rate_limit_shadow.with_label_values(&[method.as_str(), scope]);
    }

    pub fn count_rate_limit_shadow(&self, method: MethodLabel, scope: &'static str) {
        self.0.rate_limit_shadow.with_label_values(&[method.as_str(), scope]).inc();
    }

    /// `limit` names come from the operator's config: bounded by it.
    pub fn set_rate_limiter_keys(&self, limit: &str, keys: usize) {
        self.0.rate_limiter_keys.with_label_values(&[limit]).set(keys as i64);
    }

    pub fn rate_limiter_overflow(&self, limit: &str) -> IntCounter {
        self.0.rate_limiter_overflow.with_label_values(&[limit])
    }

    pub fn count_auth_failure(&self, reason: AuthFailureReason) {
        self.0.auth_failures.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn count_signin(&self, result: SigninResult) {
        self.0.signins.with_label_values(&[self.gw(), result.as_str()]).inc();
    }

    pub fn count_session_loss(&self, reason: LossReason) {
        self.0.session_losses.with_label_values(&[self.gw(), reason.as_str()]).inc();
    }

    pub fn sessions_gauge(&self, state: SessionState) -> IntGauge {
        self.0.sessions.with_label_values(&[self.gw(), state.as_str()])
    }

    /// Active sessions of every gateway together (`sessions.max_agents`).
    pub fn active_sessions_all(&self) -> i64 {
        let active = SessionState::Active.as_str();
        self.0.gateways.iter().map(|g| self.0.sessions.with_label_values(&[g, active]).get()).sum()
    }

    pub fn count_guid_rotation(&self) {
        self.0.guid_rotations.inc();
    }

    pub fn set_gateway_up(&self, up: bool) {
        self.0.gateway_up.with_label_values(&[self.gw()]).set(i64::from(up));
    }

    /// Who this replica is (one series: set once the admin listener is bound). The host is
    /// the kernel's name, made of host name characters (`shared::ReplicaIdentity`).
    pub fn set_replica(&self, replica: &str, host: &str, admin: &str) {
        self.0.replica_info.reset();
        self.0.replica_info.with_label_values(&[replica, host, admin]).set(1);
    }

    pub fn set_store_up(&self, up: bool) {
        self.0.store_up.set(i64::from(up));
    }

    pub fn store_up(&self) -> bool {
        self.0.store_up.get() == 1
    }

    pub fn count_store_error(&self, op: StoreOp) {
        self.0.store_errors.with_label_values(&[op.as_str()]).inc();
    }

    pub fn count_store_reconnect(&self, reason: StoreReconnect) {
        self.0.store_reconnects.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn leases(&self) -> IntGauge {
        self.0.leases.with_label_values(&[self.gw()])
    }

    pub fn count_lease_takeover(&self) {
        self.0.lease_takeovers.inc();
    }

    pub fn lease_takeovers(&self) -> u64 {
        self.0.lease_takeovers.get()
    }

    pub fn lease_losses(&self) -> u64 {
        self.0.lease_losses.get()
    }

    pub fn count_lease_loss(&self) {
        self.0.lease_losses.inc();
    }

    pub fn count_idle_signout(&self) {
        self.0.idle_signouts.inc();
    }

    pub fn auth_throttled(&self) -> IntCounter {
        self.0.auth_throttled.clone()
    }

    pub fn auth_refusals_remembered(&self) -> IntCounter {
        self.0.auth_refusals_remembered.clone()
    }

    /// The app-facing listener's open connections (`ccgate_connections`).
    /// `ccgate_requests_in_flight`, held by [`GaugeGuard`] for a request's life.
    pub fn in_flight(&self) -> IntGauge {
        self.0.in_flight.clone()
    }

    /// `ccgate_event_streams`, held by [`GaugeGuard`] for an SSE stream's life.
    pub fn event_streams(&self) -> IntGauge {
        self.0.event_streams.clone()
    }

    pub fn connections_gauge(&self) -> IntGauge {
        self.0.connections.clone()
    }

    /// Connections refused at the cap (`ccgate_connections_refused_total`).
    pub fn connections_refused(&self) -> IntCounter {
        self.0.connections_refused.clone()
    }

    /// Connections closed to make room at the cap (`ccgate_connections_shed_total`).
    pub fn connections_shed(&self) -> IntCounter {
        self.0.connections_shed.clone()
    }

    pub fn count_signout_failure(&self, trigger: SignoutTrigger) {
        self.0.signout_failures.with_label_values(&[trigger.as_str()]).inc();
    }

    pub fn count_event_dropped(&self) {
        self.0.events_dropped.inc();
    }

    pub fn count_discarded(&self, what: Discarded, n: u64) {
        self.0.input_discarded.with_label_values(&[what.as_str()]).inc_by(n);
    }

    /// Creates `issuer`'s fetch series at 0 for every result (before its first fetch), so
    /// `increase()` sees the first failure.
    pub fn init_jwks_fetches(&self, issuer: &str) {
        for r in JwksFetchResult::ALL {
            self.0.jwks_fetches.with_label_values(&[issuer, r.as_str()]);
        }
    }

    pub fn count_jwks_fetch(&self, issuer: &str, result: JwksFetchResult) {
        self.0.jwks_fetches.with_label_values(&[issuer, result.as_str()]).inc();
    }

    pub fn set_jwks_keys(&self, issuer: &str, keys: usize) {
        self.0.jwks_keys.with_label_values(&[issuer]).set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// Forgets every issuer's key count (a reload sets them again for the providers it keeps).
    pub fn clear_jwks_keys(&self) {
        self.0.jwks_keys.reset();
    }

    /// Reports the expiry of the certificate `resolver` serves, at each scrape (so a reload or
    /// a renewal picked up by the file watcher shows at once).
    pub fn watch_certificate(&self, resolver: &Arc<crate::tls::CertResolver>) {
        *crate::sync::lock(&self.0.cert_expiry.source) = Some(Arc::downgrade(resolver));
    }

    /// Exports `ccgate_jwks_last_fetch_timestamp_seconds{issuer}` from `last_success` while it
    /// lives.
    pub fn watch_jwks_age(&self, issuer: &str, last_success: &Arc<std::sync::Mutex<Option<std::time::Instant>>>) {
        self.0.jwks_age.watch(issuer, last_success);
    }

    pub fn observe_signin_wait(&self, waited: Duration) {
        self.0.signin_wait.observe(waited.as_secs_f64());
    }

    pub fn count_config_reload(&self, result: ReloadResult) {
        self.0.config_reloads.with_label_values(&[result.as_str()]).inc();
        self.0.config_last_reload_ok.set(i64::from(result == ReloadResult::Ok));
        if result == ReloadResult::Ok {
            self.0.config_last_reload_success.set(crate::clock::unix_secs() as i64);
        }
    }

    pub fn count_certificate_reload(&self, result: ReloadResult) {
        self.0.certificate_reloads.with_label_values(&[result.as_str()]).inc();
    }

    /// Names of every metric family ccgate exports, including label vectors with no series
    /// yet (for checking dashboards and alert rules against them).
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let i = &self.0;
        let age = FreshnessRef(i.jwks_age.clone());
        let expiry = CertExpiryRef(i.cert_expiry.clone());
        let mut collectors = i.f.collectors();
        collectors.extend([&age as &dyn Collector, &expiry]);
        // The registry adds the `ccgate_` prefix when gathering; descriptors lack it.
        let mut v: Vec<String> =
            collectors.iter().flat_map(|c| c.desc()).map(|d| format!("ccgate_{}", d.fq_name)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// `ccgate_requests_total` as (method, outcome, count), every gateway together, for the
    /// status page.
    pub fn request_totals(&self) -> Vec<(String, String, u64)> {
        let mut sums: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for (mut l, n) in labelled_counts(&self.0.requests, &["method", "outcome"]) {
            *sums.entry((std::mem::take(&mut l[0]), std::mem::take(&mut l[1]))).or_default() += n;
        }
        sums.into_iter().map(|((m, o), n)| (m, o, n)).collect()
    }

    /// `ccgate_auth_failures_total` as (reason, count), for the status page.
    pub fn auth_failure_totals(&self) -> Vec<(String, u64)> {
        labelled_counts(&self.0.auth_failures, &["reason"])
            .into_iter()
            .map(|(mut l, n)| (std::mem::take(&mut l[0]), n))
            .collect()
    }

    /// When the served certificate expires (its `notAfter`, Unix seconds), if known.
    pub fn certificate_expiry(&self) -> Option<i64> {
        let source = crate::sync::lock(&self.0.cert_expiry.source).clone();
        source
            .and_then(|w| w.upgrade())
            .and_then(|r| r.current().cert.first().and_then(|c| crate::x509_expiry::not_after(c.as_ref())))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut families = self.0.registry.gather();
        families.extend(self.0.process.gather());
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Each series of a counter family: its label values (in `names` order) and its count.
fn labelled_counts(v: &IntCounterVec, names: &[&str]) -> Vec<(Vec<String>, u64)> {
    use prometheus::core::Collector;
    v.collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| {
            let labels = names
                .iter()
                .map(|n| {
                    m.get_label().iter().find(|l| l.name() == *n).map(|l| l.value().to_owned()).unwrap_or_default()
                })
                .collect();
            (labels, m.get_counter().get_value() as u64)
        })
        .collect()
}

type LastSuccess = Weak<std::sync::Mutex<Option<std::time::Instant>>>;

/// `ccgate_jwks_last_fetch_timestamp_seconds`: each fetcher's last success as a Unix time
/// (Prometheus practice: alerts compare it with `time()`), read when scraped. Fetchers that a
/// reload dropped disappear.
struct FreshnessCollector {
    vec: prometheus::GaugeVec,
    sources: std::sync::Mutex<Vec<(String, LastSuccess)>>,
}

impl FreshnessCollector {
    fn new() -> Self {
        let vec = prometheus::GaugeVec::new(
            Opts::new(
                "jwks_last_fetch_timestamp_seconds",
                "Unix time of the last successful fetch of each issuer's remote keys.",
            ),
            &["issuer"],
        )
        .expect("static metric definition");
        Self { vec, sources: std::sync::Mutex::new(Vec::new()) }
    }

    fn watch(&self, issuer: &str, last: &Arc<std::sync::Mutex<Option<std::time::Instant>>>) {
        let mut sources = crate::sync::lock(&self.sources);
        sources.retain(|(i, w)| i != issuer && w.strong_count() > 0);
        sources.push((issuer.to_owned(), Arc::downgrade(last)));
    }
}

/// `ccgate_tls_certificate_expiry_timestamp_seconds`: the `notAfter` of the certificate in
/// force as a Unix time (as cert-manager exports it; alerts subtract `time()`), read at scrape
/// (absent without TLS or when its `notAfter` cannot be read).
struct CertExpiry {
    gauge: prometheus::Gauge,
    source: std::sync::Mutex<Option<std::sync::Weak<crate::tls::CertResolver>>>,
}

impl CertExpiry {
    fn new() -> Self {
        let gauge = prometheus::Gauge::new(
            "tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the server certificate in force expires (its notAfter).",
        )
        .expect("static metric definition");
        Self { gauge, source: std::sync::Mutex::new(None) }
    }
}

struct CertExpiryRef(Arc<CertExpiry>);

impl prometheus::core::Collector for CertExpiryRef {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let source = crate::sync::lock(&self.0.source).clone();
        let not_after = source
            .and_then(|w| w.upgrade())
            .and_then(|r| r.current().cert.first().and_then(|c| crate::x509_expiry::not_after(c.as_ref())));
        let Some(not_after) = not_after else { return Vec::new() };
        self.0.gauge.set(not_after as f64);
        self.0.gauge.collect()
    }
}

/// The registry owns a `Box<dyn Collector>`; this lets `Metrics` keep the collector too.
struct FreshnessRef(Arc<FreshnessCollector>);

impl prometheus::core::Collector for FreshnessRef {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.vec.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let c = &self.0;
        c.vec.reset();
        let mut sources = crate::sync::lock(&c.sources);
        sources.retain(|(_, w)| w.strong_count() > 0);
        for (issuer, last) in sources.iter() {
            let at = last.upgrade().and_then(|m| *crate::sync::lock(&m));
            if let Some(at) = at {
                let unix = std::time::SystemTime::now()
                    .checked_sub(at.elapsed())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                c.vec.with_label_values(&[issuer]).set(unix);
            }
        }
        c.vec.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels() {
        let m = Metrics::default();
        m.record_request(
            Some(0),
            MethodLabel::Gateway(GatewayMethod::StopVoiceToConf),
            Outcome::NotChairperson,
            Duration::from_millis(2),
        );
        m.count_upstream_retcode(GatewayMethod::StopVoiceToConf, Retcode::parse("totally-new-code"));
        let text = m.render();
        assert!(
            text.contains(
                r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="not_chairperson"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ccgate_upstream_responses_total{gateway="default",method="stopVoiceToConf",retcode="other"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("ccgate_build_info{commit=") && text.contains(",version=\""), "{text}");
    }

    #[test]
    fn the_replica_is_one_series() {
        let m = Metrics::default();
        assert!(!m.render().contains("ccgate_replica_info{"), "none before the admin listener is bound");
        m.set_replica("782d6587", "old-host", "127.0.0.1:1");
        m.set_replica("782d6587", "ccgate-0", "10.0.0.7:9464");
        let text = m.render();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("ccgate_replica_info{")).collect();
        assert_eq!(series, [r#"ccgate_replica_info{admin="10.0.0.7:9464",host="ccgate-0",replica="782d6587"} 1"#]);
    }

    #[test]
    fn known_label_sets_start_at_zero_and_process_metrics_are_unprefixed() {
        let text = Metrics::default().render();
        for series in [
            r#"ccgate_auth_failures_total{reason="expired"} 0"#,
            r#"ccgate_signins_total{gateway="default",result="at_capacity"} 0"#,
            r#"ccgate_session_losses_total{gateway="default",reason="guid_refused"} 0"#,
            r#"ccgate_signout_failures_total{trigger="idle"} 0"#,
            r#"ccgate_requests_total{gateway="default",method="stopVoiceToConf",outcome="not_chairperson"} 0"#,
            r#"ccgate_upstream_errors_total{gateway="default",kind="timeout",method="getAgentEvent"} 0"#,
            "ccgate_requests_in_flight 0",
            "ccgate_event_streams 0",
        ] {
            assert!(text.lines().any(|l| l == series), "missing {series}:\n{text}");
        }
        #[cfg(target_os = "linux")]
        {
            assert!(text.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "{text}");
            assert!(!text.contains("ccgate_process_"), "{text}");
        }
    }
}

//! A provider's keys fetched over HTTPS and kept fresh: from `jwks_url`, or from the
//! `jwks_uri` of its OpenID Connect discovery document.
//!
//! - Refresh follows the answer's `Cache-Control: max-age`, clamped to
//!   `[jwks_refresh_min_secs, jwks_refresh_max_secs]` (the maximum when there is none).
//! - A token naming a key ccgate does not know asks for a fetch at most once per
//!   `jwks_unknown_kid_interval_secs`; requests arriving meanwhile wait for the fetch in flight
//!   instead of starting their own, so the first tokens signed with a rotated-in key pass.
//! - A failed fetch (provider down, garbage, a set with no usable key) keeps the last good set
//!   and is retried with a doubling delay up to the minimum refresh interval.
//! - Each set that removes or changes a key bumps [`RemoteKeys::removals`], which the token
//!   cache checks, so no cached verification outlives the key that made it.
//!
//! The background task holds only a weak reference: when a reload replaces the provider, the
//! task ends with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::KeySet;
use crate::config::{JwksRefresh, KeySource, ProviderConfig};
use crate::gateway::client::error_chain;
use crate::labels::JwksFetchResult;
use crate::metrics::Metrics;

/// Largest JWKS or discovery document accepted. Real ones are a few KiB (Entra ID's, with
/// certificate chains, about 10 KiB).
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// First retry after a failed fetch; doubled each time up to the minimum refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

type FetchClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Called after every change of the key set (readiness listens).
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

pub struct RemoteKeys {
    issuer: String,
    source: KeySource,
    ca_file: Option<std::path::PathBuf>,
    refresh: JwksRefresh,
    allowed: Vec<Algorithm>,
    client: FetchClient,
    keys: ArcSwapOption<KeySet>,
    /// Bumped after each set that removed or changed a key (after the new set is in place).
    removals: AtomicU64,
    /// Bumped after each change of the set.
    generation: AtomicU64,
    /// The discovered `jwks_uri`; forgotten after a failed fetch so discovery runs again.
    jwks_uri: Mutex<Option<Uri>>,
    /// When the last fetch succeeded (`ccgate_jwks_age_seconds`).
    last_success: Arc<Mutex<Option<Instant>>>,
    /// When a token with an unknown key last caused a fetch.
    last_forced: Mutex<Option<Instant>>,
    /// One fetch at a time; unknown-key requests wait on it for the fetch in flight.
    fetching: tokio::sync::Mutex<()>,
    /// Woken after every fetch attempt (start-up waits on it; it never fetches itself).
    attempted: tokio::sync::Notify,
    metrics: Metrics,
    on_change: Option<OnChange>,
}

/// Why a fetch failed; the `result` label.
#[derive(Debug)]
struct FetchError(JwksFetchResult, String);

impl RemoteKeys {
    /// Builds the fetcher and starts its refresh task (which makes the first fetch at once).
    pub fn start(
        provider: &ProviderConfig,
        allowed: Vec<Algorithm>,
        refresh: JwksRefresh,
        metrics: &Metrics,
        on_change: Option<OnChange>,
    ) -> Result<Arc<Self>, String> {
        let source = provider.key_source();
        if !matches!(source, KeySource::Url(_) | KeySource::Discovery) {
            return Err(format!("{}: not a remote key source", provider.issuer));
        }
        let this = Arc::new(Self {
            issuer: provider.issuer.clone(),
            source,
            ca_file: provider.ca_file.clone(),
            refresh,
            allowed,
            client: client(provider.ca_file.as_deref(), refresh.fetch_timeout)?,
            keys: ArcSwapOption::empty(),
            removals: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            jwks_uri: Mutex::new(None),
            last_success: Arc::new(Mutex::new(None)),
            last_forced: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            attempted: tokio::sync::Notify::new(),
            metrics: metrics.clone(),
            on_change,
        });
        metrics.watch_jwks_age(&this.issuer, &this.last_success);
        metrics.init_jwks_fetches(&this.issuer);
        tokio::spawn(refresh_loop(Arc::downgrade(&this)));
        Ok(this)
    }

    /// Whether this fetcher serves `provider` with these settings as it is: a reload keeps it
    /// (its keys, its schedule) instead of fetching again.
    pub fn serves(&self, provider: &ProviderConfig, allowed: &[Algorithm], refresh: JwksRefresh) -> bool {
        self.issuer == provider.issuer
            && self.source == provider.key_source()
            && self.ca_file == provider.ca_file
            && self.allowed == allowed
            && self.refresh == refresh
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The current key set; `None` until the first fetch succeeded.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// See the module doc: compared by the token cache.
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }

    /// Waits for the first key set, at most `wait`; whether it came. The refresh task makes
    /// the attempts (with its back-off); this only watches them.
    pub async fn wait_loaded(&self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so an attempt between check and wait is not missed.
            let attempt = self.attempted.notified();
            tokio::pin!(attempt);
            attempt.as_mut().enable();
            if self.is_loaded() {
                return true;
            }
            if tokio::time::timeout_at(deadline, attempt).await.is_err() {
                return self.is_loaded();
            }
        }
    }

    /// A token named a key this set lacks: fetch now if the last such fetch is long enough
    /// ago, else wait for any fetch in flight. The caller checks the token again afterwards.
    pub async fn refresh_for_unknown_key(&self) {
        let allowed = {
            let mut last = crate::sync::lock(&self.last_forced);
            let due = last.is_none_or(|t| t.elapsed() >= self.refresh.unknown_kid_interval);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        let guard = self.fetching.lock().await;
        if allowed {
            tracing::info!(issuer = %self.issuer, "token names an unknown key; fetching the provider's keys");
            let _ = self.fetch_locked(guard).await;
        }
    }

    async fn fetch(&self) -> Result<Duration, FetchError> {
        let guard = self.fetching.lock().await;
        self.fetch_locked(guard).await
    }

    /// One fetch (with discovery when needed), recorded; the next refresh is due after the
    /// returned delay.
    async fn fetch_locked(&self, _one: tokio::sync::MutexGuard<'_, ()>) -> Result<Duration, FetchError> {
        let result = self.fetch_set().await;
        match &result {
            Ok((set, _)) => {
                self.metrics.count_jwks_fetch(&self.issuer, JwksFetchResult::Ok);
                *crate::sync::lock(&self.last_success) = Some(Instant::now());
                self.metrics.set_jwks_keys(&self.issuer, set.len());
            }
            Err(FetchError(kind, why)) => {
                self.metrics.count_jwks_fetch(&self.issuer, *kind);
                *crate::sync::lock(&self.jwks_uri) = None;
                let kept = self.keys.load().as_ref().map_or(0, |k| k.len());
                tracing::warn!(issuer = %self.issuer, result = kind.as_str(),
                    error = %crate::config::mask_url_secrets(why), kept_keys = kept,
                    "JWKS fetch failed; keeping the last good keys");
            }
        }
        let next = result.map(|(set, max_age)| {
            self.install(set);
            max_age.unwrap_or(self.refresh.max).clamp(self.refresh.min, self.refresh.max)
        });
        self.attempted.notify_waiters();
        next
    }

    /// Puts a fetched set in place; logs and counts what changed.
    fn install(&self, set: KeySet) {
        let old = self.keys.load_full();
        let (added, removed) = match &old {
            Some(old) => (old.added_in(&set), old.removed_in(&set)),
            None => (set.added_in(&set), Vec::new()),
        };
        let first = old.is_none();
        if !first && added.is_empty() && removed.is_empty() {
            return;
        }
        let count = set.len();
        self.keys.store(Some(Arc::new(set)));
        if !removed.is_empty() {
            self.removals.fetch_add(1, Ordering::SeqCst);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        if first {
            let kids = KeySet::kids_of(self.keys.load().as_deref());
            tracing::info!(issuer = %self.issuer, keys = count, kids = ?kids, "JWKS loaded");
        } else {
            tracing::info!(issuer = %self.issuer, keys = count, added = ?added, removed = ?removed, "JWKS keys changed");
        }
        if let Some(hook) = &self.on_change {
            hook();
        }
    }

    async fn fetch_set(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        let uri = self.jwks_uri().await?;
        let (headers, body) = self.get(&uri, "application/jwk-set+json, application/json").await?;
        let keys = super::parse_set(&body).map_err(|e| FetchError(JwksFetchResult::Invalid, format!("{uri}: {e}")))?;
        let (set, skipped) = KeySet::from_jwks(&keys);
        if set.usable_with(&self.allowed) == 0 {
            let why = if skipped.is_empty() { "the set is empty".to_owned() } else { skipped.join("; ") };
            return Err(FetchError(JwksFetchResult::Invalid, format!("{uri}: no usable signing key ({why})")));
        }
        Ok((set, max_age(&headers)))
    }

    /// The JWKS URL: configured, or discovered (and remembered until a fetch fails).
    async fn jwks_uri(&self) -> Result<Uri, FetchError> {
        let invalid = |why: String| FetchError(JwksFetchResult::Invalid, why);
        match &self.source {
            KeySource::Url(u) => u.parse().map_err(|e| invalid(format!("jwks_url: {e}"))),
            _ => {
                if let Some(u) = crate::sync::lock(&self.jwks_uri).clone() {
                    return Ok(u);
                }
                let at = format!("{}{DISCOVERY_PATH}", self.issuer.trim_end_matches('/'));
                let uri: Uri = at.parse().map_err(|e| invalid(format!("{at}: {e}")))?;
                let (_, body) = self.get(&uri, "application/json").await?;
                let doc: Value = serde_json::from_slice(&body).map_err(|e| invalid(format!("{at}: not JSON: {e}")))?;
                // OpenID Connect Discovery 1.0 §4.3: the document must name this issuer exactly.
                let named = doc.get("issuer").and_then(Value::as_str).unwrap_or_default();
                if named != self.issuer {
                    return Err(invalid(format!("{at}: names issuer {named:?}, not {:?}", self.issuer)));
                }
                let jwks =
                    doc.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| invalid(format!("{at}: no jwks_uri")))?;
                let jwks: Uri = jwks.parse().map_err(|e| invalid(format!("{at}: jwks_uri: {e}")))?;
                if jwks.scheme_str() != Some("https") {
                    return Err(invalid(format!("{at}: jwks_uri is not https")));
                }
                *crate::sync::lock(&self.jwks_uri) = Some(jwks.clone());
                Ok(jwks)
            }
        }
    }

    async fn get(&self, uri: &Uri, accept: &'static str) -> Result<(HeaderMap, Bytes), FetchError> {
        let req = Request::get(uri.clone())
            .header(ACCEPT, HeaderValue::from_static(accept))
            .body(Empty::new())
            .map_err(|e| FetchError(JwksFetchResult::Invalid, format!("{uri}: {e}")))?;
        let round_trip = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError(JwksFetchResult::Unreachable, format!("{uri}: {}", error_chain(&e))))?;
            if resp.status() != StatusCode::OK {
                return Err(FetchError(JwksFetchResult::HttpError, format!("{uri}: HTTP {}", resp.status())));
            }
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| FetchError(JwksFetchResult::Invalid, format!("{uri}: body: {e}")))?
                .to_bytes();
            Ok((parts.headers, body))
        };
        tokio::time::timeout(self.refresh.fetch_timeout, round_trip)
            .await
            .unwrap_or_else(|_| Err(FetchError(JwksFetchResult::Unreachable, format!("{uri}: no answer in time"))))
    }
}

impl KeySet {
    fn kids_of(set: Option<&KeySet>) -> Vec<String> {
        let mut kids: Vec<String> = set.map(|s| s.keys.keys().cloned().collect()).unwrap_or_default();
        kids.sort();
        kids
    }
}

/// Fetches on schedule until the fetcher is dropped.
async fn refresh_loop(this: Weak<RemoteKeys>) {
    let mut failures = 0u32;
    loop {
        let Some(keys) = this.upgrade() else { return };
        let wait = match keys.fetch().await {
            Ok(next) => {
                failures = 0;
                next
            }
            Err(_) => {
                failures = failures.saturating_add(1);
                FIRST_RETRY.saturating_mul(1 << failures.min(16).saturating_sub(1)).min(keys.refresh.min)
            }
        };
        drop(keys);
        tokio::time::sleep(wait).await;
    }
}

/// `max-age` of `Cache-Control` (`no-cache`/`no-store` count as 0: the minimum applies).
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for value in headers.get_all(CACHE_CONTROL) {
        for directive in value.to_str().ok()?.split(',') {
            let d = directive.trim();
            if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if let Some((name, v)) = d.split_once('=') {
                if name.trim().eq_ignore_ascii_case("max-age") {
                    found = v.trim().trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
                }
            }
        }
    }
    found
}

/// An HTTPS-only client trusting `ca_file`, or the system's roots.
fn client(ca_file: Option<&std::path::Path>, timeout: Duration) -> Result<FetchClient, String> {
    let tls = match ca_file {
        Some(p) => crate::tls::client_config(Some(p)).map_err(|e| format!("auth ca_file: {e}"))?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set ca_file for the identity provider".into());
            }
            crate::tls::client_config_with_roots(roots)?
        }
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).timer(TokioTimer::new()).build(https))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(max_age(&h("public, max-age=3600")), Some(Duration::from_secs(3600)));
        assert_eq!(max_age(&h("no-store")), Some(Duration::ZERO));
        assert_eq!(max_age(&h("public")), None);
        assert_eq!(max_age(&HeaderMap::new()), None);
        assert_eq!(max_age(&h("max-age=junk")), None);
    }
}

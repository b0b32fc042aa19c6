//! Admin listener: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (config and keys loaded, gateway reachable, not shutting down).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use super::body::{self, Body};
use super::Handler;
use crate::metrics::Metrics;

/// Prometheus text exposition format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the last gateway probe found: `"unchecked"` until the first probe ends, then `"up"`
/// or the probe's failure label (`connect_failed`, `timeout`, `tls_failed`).
pub const GATEWAY_UNCHECKED: &str = "unchecked";
pub const GATEWAY_UP: &str = "up";

/// Readiness facts, set by whoever knows them.
#[derive(Debug)]
pub struct Readiness {
    gateway: Mutex<&'static str>,
    shutting_down: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            gateway: Mutex::new(GATEWAY_UNCHECKED),
            shutting_down: AtomicBool::new(false),
            changed: Default::default(),
        }
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.gateway_reachable() && !self.shutting_down.load(Ordering::Acquire)
    }

    /// The last probe's verdict (see [`GATEWAY_UNCHECKED`]).
    pub fn gateway(&self) -> &'static str {
        *self.gateway.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn gateway_reachable(&self) -> bool {
        self.gateway() == GATEWAY_UP
    }

    /// Records a probe's verdict; returns whether it changed.
    pub fn set_gateway(&self, state: &'static str) -> bool {
        let previous =
            std::mem::replace(&mut *self.gateway.lock().unwrap_or_else(std::sync::PoisonError::into_inner), state);
        let changed = previous != state;
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// Resolves once a probe has given a verdict.
    pub async fn wait_gateway_checked(&self) {
        self.wait_for(|r| r.gateway() != GATEWAY_UNCHECKED).await
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Resolves once shutdown has begun.
    pub async fn wait_shutting_down(&self) {
        self.wait_for(|r| r.shutting_down.load(Ordering::Acquire)).await
    }

    /// Resolves once `is_ready()` holds.
    pub async fn wait_ready(&self) {
        self.wait_for(Self::is_ready).await
    }

    async fn wait_for(&self, done: impl Fn(&Self) -> bool) {
        loop {
            // Registered before the check, so a change between check and await is not lost.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(self) {
                return;
            }
            notified.await;
        }
    }
}

pub struct Admin {
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
}

impl Handler for Admin {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return body::json(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "GET only"}));
        }
        match req.uri().path() {
            "/metrics" => {
                let mut r = Response::new(body::full(self.metrics.render()));
                r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                r
            }
            "/healthz" => body::json(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => {
                let r = &self.readiness;
                let ready = r.is_ready();
                let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                body::json(
                    status,
                    &json!({
                        "ready": ready,
                        "config_loaded": true,
                        "keys_loaded": true,
                        "gateway_reachable": r.gateway_reachable(),
                        "gateway": r.gateway(),
                        "shutting_down": r.shutting_down.load(Ordering::Acquire),
                    }),
                )
            }
            _ => body::json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
        }
    }
}

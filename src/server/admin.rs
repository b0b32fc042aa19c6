//! Admin listener: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (config and keys loaded, gateway reachable, not shutting down).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Readiness facts, set by whoever knows them.
#[derive(Debug, Default)]
pub struct Readiness {
    gateway_reachable: AtomicBool,
    shutting_down: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.gateway_reachable.load(Ordering::Acquire) && !self.shutting_down.load(Ordering::Acquire)
    }

    pub fn gateway_reachable(&self) -> bool {
        self.gateway_reachable.load(Ordering::Acquire)
    }

    /// Records the probe result; returns whether it changed.
    pub fn set_gateway_reachable(&self, ok: bool) -> bool {
        let changed = self.gateway_reachable.swap(ok, Ordering::AcqRel) != ok;
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Resolves once shutdown has begun.
    pub async fn wait_shutting_down(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once `is_ready()` holds.
    pub async fn wait_ready(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_ready() {
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
                        "shutting_down": r.shutting_down.load(Ordering::Acquire),
                    }),
                )
            }
            _ => body::json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
        }
    }
}

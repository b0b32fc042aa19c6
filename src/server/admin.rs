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

/// What the last gateway probe found; `/readyz` shows it as `"gateway"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayState {
    /// No probe has finished yet.
    Unchecked,
    /// TCP and a TLS handshake with the configured CA and server name succeeded.
    Up,
    ConnectFailed,
    Timeout,
    /// The gateway answered but its certificate or handshake was refused.
    TlsFailed,
}

impl GatewayState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Up => "up",
            Self::ConnectFailed => "connect_failed",
            Self::Timeout => "timeout",
            Self::TlsFailed => "tls_failed",
        }
    }
}

/// Readiness facts, set by whoever knows them.
#[derive(Debug)]
pub struct Readiness {
    gateway: Mutex<GatewayState>,
    /// The shared store: `None` with the memory store, else whether Redis answered last.
    store: Mutex<Option<bool>>,
    shutting_down: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            gateway: Mutex::new(GatewayState::Unchecked),
            store: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            changed: Default::default(),
        }
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.gateway_reachable() && self.store() != Some(false) && !self.shutting_down.load(Ordering::Acquire)
    }

    /// `None` with the memory store; else whether the shared store answered last.
    pub fn store(&self) -> Option<bool> {
        *self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records whether the shared store answers; returns whether that changed.
    pub fn set_store(&self, up: bool) -> bool {
        let previous = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace(up);
        let changed = previous != Some(up);
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// The last probe's verdict.
    pub fn gateway(&self) -> GatewayState {
        *self.gateway.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn gateway_reachable(&self) -> bool {
        self.gateway() == GatewayState::Up
    }

    /// Records a probe's verdict; returns whether it changed.
    pub fn set_gateway(&self, state: GatewayState) -> bool {
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
        self.wait_for(|r| r.gateway() != GatewayState::Unchecked).await
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
                        "gateway": r.gateway().as_str(),
                        "store": match r.store() { None => "memory", Some(true) => "up", Some(false) => "down" },
                        "shutting_down": r.shutting_down.load(Ordering::Acquire),
                    }),
                )
            }
            _ => body::json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
        }
    }
}

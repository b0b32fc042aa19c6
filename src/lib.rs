//! ccgate: an authenticating sidecar for the Huawei CEC CC-Gateway.
//!
//! Apps call ccgate with their own JWTs; ccgate holds each agent's gateway session (Guid,
//! cookies, event polling), enforces the chairperson policy on `stopVoiceToConf`, forwards to
//! the gateway and reports every method to Prometheus.
//!
//! Layers, each depending only on the ones below it (docs/architecture.md):
//! `edge` (HTTP faces) → `ops` (the operations core) → `session` → `gateway`, with `config`,
//! `metrics` and `server` (listeners) beside them, and `shared` (Redis, for replicas that
//! share agents) under `session` and the limits.

pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod demo;
pub mod descriptors;
pub mod devkeys;
pub mod edge;
pub mod gateway;
pub mod jwks;
pub mod labels;
pub mod log_budget;
pub mod metrics;
pub mod ops;
pub mod otel;
pub mod reload;
pub mod secret_file;
pub mod server;
pub mod session;
pub mod shared;
pub mod sim;
pub mod sync;
pub mod tls;
pub mod webhooks;
pub mod x509_expiry;

//! ccgate: an authenticating sidecar for the Huawei CEC CC-Gateway.
//!
//! Apps call ccgate with their own JWTs; ccgate holds each agent's gateway session (Guid,
//! cookies, event polling), enforces the chairperson policy on `stopVoiceToConf`, forwards to
//! the gateway and reports every method to Prometheus. See `DESIGN.md` for the request flow.

pub mod app;
pub mod config;
pub mod demo;
pub mod devkeys;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod session;
pub mod sim;
pub mod tls;

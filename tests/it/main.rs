//! The integration suite, one binary: each file is a module, so the crate and its
//! dependencies are linked once rather than once per file (issue 38: 27 binaries of ~195 MB
//! each made a fresh `cargo test` write ~7 GB). Run one file with
//! `scripts/test --test it flow::` (a name filter), one test with its full path.
//!
//! Two tests keep a binary of their own, because they observe their whole process:
//! `tests/hostile_gateway.rs` measures its peak RSS, which other tests running beside it would
//! move, and `tests/logs.rs` captures the logs (tracing's interest cache is process-wide).

#[path = "../common/mod.rs"]
mod common;

mod agents;
mod auth;
mod cli;
mod config_view;
mod connections;
mod deploy;
mod examples;
mod flow;
mod gateways;
mod isolation;
mod layering;
mod limits;
mod metrics;
mod oidc;
mod openapi;
mod otlp;
mod passthrough;
mod problems;
mod prometheus;
mod properties;
mod redis_outage;
mod reload;
mod replicas;
mod sessions;
mod status_page;
mod store_contract;
mod store_failover;
mod upstream;
mod webhooks;

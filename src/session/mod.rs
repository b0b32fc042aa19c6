//! Agent gateway sessions: one [`Session`] per signed-in agent (Guid, cookies, conference
//! state, event buffer, poller) and the [`SessionStore`] that signs agents in and out, one
//! operation at a time per agent. Nothing here speaks HTTP to apps; failures are
//! [`SessionError`]s. Why the gateway needs all this: docs/gateway.md.
//!
//! The files, bottom up (each uses only those above it):
//! - `state`, `error`, `conference`, `events`, `credentials`, `pacing`, `outlet`: the
//!   vocabulary and the parts.
//! - `copy`: what replication may do to a session's local copy (a trait `Session` implements).
//! - `link`: one session's part in the shared store (lease, fencing, compare-and-set).
//! - `replica`: the per-session half of the replication seam (in process, or a `Link`).
//! - `agent`: the [`Session`] itself and its gateway calls.
//! - `poller`: the task that long-polls the gateway for each session.
//! - `cluster`: the store-wide half on the shared store (adoption, locks, maintenance).
//! - `replication`: the store-wide seam, chosen once at start (in process, or a `Cluster`).
//! - `store`: the [`SessionStore`] (one gateway's agents); `view`: what the admin shows of
//!   each agent.
//! - `gateways`: every gateway's store ([`Gateways`]).

mod agent;
mod cluster;
pub mod conference;
mod copy;
pub mod credentials;
mod error;
pub mod events;
mod gateways;
pub mod history;
mod limit_snapshot;
mod link;
mod listing;
mod outlet;
mod pacing;
mod poller;
mod replication;
mod sharing;
mod store;
pub mod view;

pub use agent::{Listening, Session, Snapshot};
pub use conference::ConfState;
pub use credentials::{AgentCredentials, CredentialStore};
pub use error::{Ended, SessionError};
pub use gateways::{AgentQuery, Gateways};
pub use limit_snapshot::LimitSnapshot;
pub use outlet::{EventSink, Outlet};
pub use store::{GatewayIdentity, SessionStore, SignInOptions};

#[cfg(test)]
mod replication_tests;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

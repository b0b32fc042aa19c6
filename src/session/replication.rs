//! The replication seam, store-wide half: chosen once at start from `store.backend`.
//! `InProcess` (the memory store): sessions live in this process only; sign-in, sign-out and
//! shutdown need nobody's agreement. `Shared` (Redis): the [`Cluster`] finds sessions other
//! replicas signed in, locks sign-ins cluster-wide, maintains leases and hands agents over.
//! The session store calls these methods and never asks which one it has; each session gets
//! its [`Sharing`] from here.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::cluster::{Claim, Cluster, Host};
use super::conference::ConfState;
use super::error::SessionError;
use super::link::Link;
use super::sharing::Sharing;
use super::view::Remote;
use crate::config::ShutdownMode;
use crate::gateway::GatewayReply;
use crate::shared::{NewRecord, OpLock, SharedStore};

pub(crate) enum Replication {
    InProcess,
    Shared { cluster: Arc<Cluster>, on_shutdown: ShutdownMode },
}

/// What shutdown does with the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShutdownPlan {
    /// Sign agents out at the gateway.
    pub sign_out: bool,
    /// Only those this replica polls (each replica signs out its own).
    pub only_polled: bool,
}

impl Replication {
    /// `store`: the shared store, if any; `op_wait`: how long a sign-in or sign-out waits
    /// for another replica's.
    pub(crate) fn new(store: Option<Arc<dyn SharedStore>>, op_wait: Duration, on_shutdown: ShutdownMode) -> Self {
        match store {
            None => Self::InProcess,
            Some(store) => Self::Shared { cluster: Arc::new(Cluster::new(store, op_wait)), on_shutdown },
        }
    }

    /// Starts following the other replicas (nothing to follow in process).
    pub(crate) fn start<H: Host>(&self, host: Weak<H>) {
        if let Self::Shared { cluster, .. } = self {
            cluster.start(host);
        }
    }

    /// The shared store, when there is one.
    pub(crate) fn shared_store(&self) -> Option<Arc<dyn SharedStore>> {
        match self {
            Self::InProcess => None,
            Self::Shared { cluster, .. } => Some(cluster.store().clone()),
        }
    }

    /// The cluster, for tests that drive maintenance rounds themselves.
    #[cfg(test)]
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            Self::InProcess => None,
            Self::Shared { cluster, .. } => Some(cluster),
        }
    }

    /// The agent's live session, from any replica.
    pub(crate) async fn lookup<H: Host>(&self, host: &H, agent: &str) -> Result<Arc<H::Session>, SessionError> {
        match self {
            Self::InProcess => host.active(agent),
            Self::Shared { cluster, .. } => cluster.lookup(host, agent).await,
        }
    }

    /// Before signing `agent` in: a live session to adopt, or the go-ahead (with the lock to
    /// release after).
    pub(crate) async fn claim<H: Host>(
        &self,
        host: &H,
        agent: &str,
        force: bool,
    ) -> Result<Claim<H::Session>, SessionError> {
        match self {
            Self::InProcess => Ok(Claim::Granted(None)),
            Self::Shared { cluster, .. } => cluster.claim(host, agent, force).await,
        }
    }

    /// Records a successful sign-in for the other replicas; the new session's replica.
    pub(crate) async fn record_sign_in(
        &self,
        agent: &str,
        reply: &GatewayReply,
        conf: ConfState,
        resumable: bool,
        since: u64,
        tenant: Option<&str>,
    ) -> Result<Sharing, SessionError> {
        let Self::Shared { cluster, .. } = self else { return Ok(Sharing::InProcess) };
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let conf = Link::conf_json(conf);
        let record = NewRecord {
            sid: &sid,
            guid: reply.set_guid.as_deref().unwrap_or_default(),
            cookies: &reply.cookies,
            answer: &reply.body,
            resumable,
            conf: &conf,
            since,
            tenant,
        };
        Ok(Sharing::Shared(cluster.record_sign_in(agent, &record).await?))
    }

    /// Before signing `agent` out: its session adopted here if another replica signed it in,
    /// and the cluster-wide lock.
    pub(crate) async fn lock_for_sign_out<H: Host>(
        &self,
        host: &H,
        agent: &str,
    ) -> Result<Option<OpLock>, SessionError> {
        match self {
            Self::InProcess => Ok(None),
            Self::Shared { cluster, .. } => cluster.lock_for_sign_out(host, agent).await.map(Some),
        }
    }

    pub(crate) async fn unlock(&self, agent: &str, lock: Option<OpLock>) {
        if let (Self::Shared { cluster, .. }, Some(lock)) = (self, lock) {
            cluster.unlock(agent, &lock).await;
        }
    }

    /// Who polls `session`'s agent, and whether this replica does.
    pub(crate) async fn poller_of(&self, agent: &str, replica: &Sharing) -> (Option<String>, bool) {
        match (self, replica.link()) {
            (Self::Shared { cluster, .. }, Some(link)) => cluster.poller_of(agent, link).await,
            _ => (Some("this replica".into()), true),
        }
    }

    /// Agents other replicas hold (nothing, in process): see [`Cluster::remote_agents`].
    /// An error: the store could not be read, so the view is this replica's alone.
    pub(crate) async fn remote_agents(
        &self,
        one: Option<&str>,
        known: &[String],
        max: usize,
    ) -> Result<Vec<Remote>, crate::shared::StoreError> {
        match self {
            Self::InProcess => Ok(Vec::new()),
            Self::Shared { cluster, .. } => cluster.remote_agents(one, known, max).await,
        }
    }

    /// At shutdown (pollers already stopped): whom to sign out. In process, as configured.
    /// Shared, rollouts sign nobody out: the leases are handed over and the other replicas
    /// take the agents; the last replica standing signs them out as one replica would. With
    /// `store.on_shutdown = "sign_out"`, each replica signs out the agents it polls.
    pub(crate) async fn shutdown_plan<H: Host>(&self, host: &H, sign_out_on_shutdown: bool) -> ShutdownPlan {
        match self {
            Self::InProcess => ShutdownPlan { sign_out: sign_out_on_shutdown, only_polled: false },
            Self::Shared { cluster, on_shutdown: ShutdownMode::SignOut } => {
                // Leaving is all that matters here: every replica signs out its own. No round
                // runs after it, so none joins the set again or takes an agent over meanwhile.
                cluster.stop_rounds().await;
                let _ = cluster.leave().await;
                ShutdownPlan { sign_out: true, only_polled: true }
            }
            Self::Shared { cluster, .. } => {
                ShutdownPlan { sign_out: cluster.hand_over(host).await && sign_out_on_shutdown, only_polled: false }
            }
        }
    }
}

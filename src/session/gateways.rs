//! Every gateway's session store: what the core, the admin views and shutdown see of the
//! agents of all contact centres together. An agent is (gateway, work number): each gateway
//! has its own [`SessionStore`], chosen by the index the authenticator put in the principal.

use std::sync::Arc;

use tokio::time::Instant;

use super::store::{SessionStore, MAX_AGENTS_LISTED};
use super::view::Listing;

/// The configured gateways' stores, in config order (never empty).
pub struct Gateways {
    stores: Vec<Arc<SessionStore>>,
}

/// Which agents a view asks for.
#[derive(Debug, Clone, Default)]
pub struct AgentQuery {
    /// Only this gateway's (by name).
    pub gateway: Option<String>,
    /// Only this work number, with its recent events.
    pub agent: Option<String>,
}

impl Gateways {
    /// `stores` in config order; at least one.
    pub fn new(stores: Vec<Arc<SessionStore>>) -> Arc<Self> {
        Arc::new(Self { stores })
    }

    /// One gateway's store.
    pub fn one(store: Arc<SessionStore>) -> Arc<Self> {
        Self::new(vec![store])
    }

    /// Gateway `i`'s store. `i` comes from the authenticator, which knows the same gateways;
    /// past the end would be a bug, answered with the last store rather than a panic.
    pub fn get(&self, i: usize) -> &Arc<SessionStore> {
        &self.stores[i.min(self.stores.len() - 1)]
    }

    pub fn name(&self, i: usize) -> &str {
        &self.get(i).identity.name
    }

    pub fn first(&self) -> &Arc<SessionStore> {
        self.get(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<SessionStore>> {
        self.stores.iter()
    }

    pub fn len(&self) -> usize {
        self.stores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    pub fn start_replication(&self) {
        for s in &self.stores {
            s.start_replication();
        }
    }

    /// Every gateway's shutdown at once (see [`SessionStore::shutdown`]); how many agents
    /// were left signed in, in all.
    pub async fn shutdown(&self, deadline: Instant) -> usize {
        futures_util::future::join_all(self.stores.iter().map(|s| s.shutdown(deadline))).await.into_iter().sum()
    }

    /// Agents with a live session here, every gateway's.
    pub fn live_agents(&self) -> usize {
        self.stores.iter().map(|s| s.live_agents()).sum()
    }

    /// The admin's view: every gateway's agents (at most [`MAX_AGENTS_LISTED`] in all),
    /// sorted by gateway in config order, then work number; or those `q` names.
    /// `partial` when a gateway's list is its replica's alone (the shared store away).
    pub async fn agents(&self, q: &AgentQuery) -> Listing {
        let mut all = Listing::default();
        for s in &self.stores {
            if q.gateway.as_deref().is_some_and(|g| g != &*s.identity.name) {
                continue;
            }
            let room = MAX_AGENTS_LISTED.saturating_sub(all.agents.len());
            let one = s.agents(q.agent.as_deref()).await;
            all.partial |= one.partial;
            all.agents.extend(one.agents.into_iter().take(room));
        }
        all
    }
}

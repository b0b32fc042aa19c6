//! Who this replica is, and who the others are: the agents view names each agent's polling
//! replica by its lease name (`polled_by`), which says nothing to an operator; each replica
//! registers its host and admin listener in the shared store (`shared::Membership`), and
//! this puts them beside the name (`polled_by_host`, `polled_by_admin`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::session::view::AgentView;
use crate::shared::{Membership, ReplicaIdentity};

/// Distinct polling replicas one view looks up in the shared store. A deployment runs a
/// handful of replicas; the bound keeps a view from costing one round trip per agent if the
/// leases name many (a store someone else wrote to).
const MAX_POLLERS_LOOKED_UP: usize = 32;

pub struct Replicas {
    /// This replica.
    pub me: ReplicaIdentity,
    /// The other replicas' identities: the shared store, if any.
    store: Option<Arc<dyn Membership>>,
}

impl Replicas {
    /// This replica, and (with Redis) where the others registered; registers this one there.
    pub fn new(me: ReplicaIdentity, store: Option<Arc<dyn Membership>>) -> Self {
        if let Some(s) = &store {
            s.register(me.clone());
        }
        Self { me, store }
    }

    /// Fills in each view's polling replica's host and admin address: this replica's own
    /// where it polls, else as the poller registered them (one look-up per distinct replica,
    /// at most [`MAX_POLLERS_LOOKED_UP`]). An unknown or unreadable one stays absent: the
    /// view still names the replica.
    pub async fn name_pollers(&self, views: &mut [AgentView]) {
        let mut known: HashMap<String, Option<ReplicaIdentity>> = HashMap::new();
        for v in views.iter_mut() {
            let who = if v.polled_here || v.polled_by.as_deref() == Some(self.me.id.as_str()) {
                Some(self.me.clone())
            } else {
                match (&self.store, v.polled_by.as_deref()) {
                    (Some(store), Some(id)) => match known.get(id) {
                        Some(found) => found.clone(),
                        None if known.len() < MAX_POLLERS_LOOKED_UP => {
                            let found = store.replica_identity(id).await.unwrap_or_else(|e| {
                                tracing::debug!(replica = id, error = %e, "could not look up a replica's identity");
                                None
                            });
                            known.insert(id.to_owned(), found.clone());
                            found
                        }
                        None => None,
                    },
                    _ => None,
                }
            };
            if let Some(who) = who {
                v.polled_by_host = Some(who.host);
                v.polled_by_admin = Some(who.admin);
            }
        }
    }
}

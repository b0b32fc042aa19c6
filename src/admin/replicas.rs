//! Who this replica is, and who the others are: the agents view names each agent's polling
//! replica by its lease name (`polled_by`), which says nothing to an operator; each replica
//! registers its host and admin listener in the shared store (`shared::Membership`), and
//! this puts them beside the name (`polled_by_host`, `polled_by_admin`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::session::view::AgentView;
use crate::shared::{Membership, ReplicaIdentity};

/// Distinct polling replicas one view looks up in the shared store. A deployment runs a
/// handful of replicas; the bound keeps a view from costing one round trip per agent if the
/// leases name many (a store someone else wrote to).
const MAX_POLLERS_LOOKED_UP: usize = 32;

/// How long an identity looked up serves the views: the status page reloads every 5 s in
/// every tab open on it, and identities change only when a replica restarts.
const IDENTITY_KEPT: Duration = Duration::from_secs(30);

/// Identities looked up, and when; at most [`MAX_POLLERS_LOOKED_UP`].
type Seen = HashMap<String, (Instant, Option<ReplicaIdentity>)>;

pub struct Replicas {
    /// This replica.
    pub me: ReplicaIdentity,
    /// The other replicas' identities: the shared store, if any.
    store: Option<Arc<dyn Membership>>,
    seen: Mutex<Seen>,
}

impl Replicas {
    /// This replica, and (with Redis) where the others registered; registers this one there.
    pub fn new(me: ReplicaIdentity, store: Option<Arc<dyn Membership>>) -> Self {
        if let Some(s) = &store {
            s.register(me.clone());
        }
        Self { me, store, seen: Mutex::new(HashMap::new()) }
    }

    /// A replica's identity, from the views' recent look-ups or the store; `Err` when the
    /// store did not answer.
    async fn identity(&self, store: &dyn Membership, id: &str) -> Result<Option<ReplicaIdentity>, ()> {
        if let Some((at, who)) = crate::sync::lock(&self.seen).get(id) {
            if at.elapsed() < IDENTITY_KEPT {
                return Ok(who.clone());
            }
        }
        let who = match store.replica_identity(id).await {
            Ok(Some(who)) => Some(who),
            // Not registered yet (a replica registers at its first heartbeat after start):
            // asked again by the next view, not remembered as unknown.
            Ok(None) => return Ok(None),
            // Invalid: counted and logged by the store once; remembered as unknown.
            Err(crate::shared::StoreError::Malformed(_)) => None,
            Err(e) => {
                tracing::debug!(replica = id, error = %e, "could not look up a replica's identity");
                return Err(());
            }
        };
        let mut seen = crate::sync::lock(&self.seen);
        if seen.len() >= MAX_POLLERS_LOOKED_UP {
            seen.clear();
        }
        seen.insert(id.to_owned(), (Instant::now(), who.clone()));
        Ok(who)
    }

    /// Fills in each view's polling replica's host and admin address: this replica's own
    /// where it polls, else as the poller registered them (one look-up per distinct replica,
    /// at most [`MAX_POLLERS_LOOKED_UP`]). An unknown or unreadable one stays absent: the
    /// view still names the replica.
    ///
    /// `look_up`: false when the view is partial (the store away): no look-up is tried. The
    /// first look-up the store does not answer ends the others, so a hanging store costs a
    /// view one timeout, not one per replica.
    pub async fn name_pollers(&self, views: &mut [AgentView], look_up: bool) {
        let mut known: HashMap<String, Option<ReplicaIdentity>> = HashMap::new();
        let mut store_away = !look_up;
        for v in views.iter_mut() {
            let who = if v.polled_here || v.polled_by.as_deref() == Some(self.me.id.as_str()) {
                Some(self.me.clone())
            } else {
                match (&self.store, v.polled_by.as_deref()) {
                    (Some(store), Some(id)) => match known.get(id) {
                        Some(found) => found.clone(),
                        None if !store_away && known.len() < MAX_POLLERS_LOOKED_UP => {
                            let found = self.identity(&**store, id).await.unwrap_or_else(|()| {
                                store_away = true;
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

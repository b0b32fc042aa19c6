//! The per-session half of the replication seam: what a session does with its changes
//! besides keeping them. Chosen once, when the session is made, by the store's
//! [`Replication`](super::replication::Replication): `InProcess` (the memory store: the
//! local copy is the session) or `Shared` (a [`Link`] to the shared store). The session's
//! code calls these methods and never asks which one it has.

use std::time::Duration;

use bytes::Bytes;

use super::conference::ConfState;
use super::copy::LocalCopy;
use super::error::GuidVerdict;
use super::events::BufferedEvent;
use super::link::Link;
use crate::labels::LossReason;

/// A local copy's half of the seam, as the replication side reaches it.
pub(crate) trait SharedCopy {
    fn sharing(&self) -> &Sharing;
}

pub(crate) enum Sharing {
    /// Sessions live in this process only.
    InProcess,
    /// Sessions are shared with other replicas through the shared store.
    Shared(Link),
}

impl Sharing {
    /// The session's id in the shared store (the same on every replica).
    pub fn shared_id(&self) -> Option<&str> {
        match self {
            Self::InProcess => None,
            Self::Shared(link) => Some(link.sid()),
        }
    }

    pub fn link(&self) -> Option<&Link> {
        match self {
            Self::InProcess => None,
            Self::Shared(link) => Some(link),
        }
    }

    /// Whether this replica polls the gateway for the session (always, in process; the lease
    /// holder, shared).
    pub fn polls_here(&self) -> bool {
        match self {
            Self::InProcess => true,
            Self::Shared(link) => link.owns(),
        }
    }

    /// App activity seen here.
    pub fn touched(&self) {
        if let Self::Shared(link) = self {
            link.touched();
        }
    }

    /// Changes the conference state by `f` (on the record first, when shared: compare-and-set
    /// on its version, so a change another replica made first is never overwritten).
    /// Returns the state the change was applied to (the record's, with the shared store) and
    /// the new one: the change that was made, whatever this copy said before.
    pub async fn update_conf(
        &self,
        s: &impl LocalCopy,
        f: &(dyn Fn(ConfState) -> ConfState + Sync),
    ) -> (ConfState, ConfState) {
        match self {
            Self::InProcess => s.modify_conf(f),
            Self::Shared(link) => link.update_conf(s, f).await,
        }
    }

    /// Brings the copy's conference state up to date before a chair check: a copy that says
    /// "not chair" is checked against the record (a conference created through another
    /// replica a moment ago may not have reached it); a chair is trusted without a round
    /// trip, since the gateway itself refuses a stale chair (`101-002`).
    pub async fn refresh_conf(&self, s: &impl LocalCopy) {
        if let Self::Shared(link) = self {
            if !matches!(s.conf(), ConfState::Chair { .. }) {
                link.refresh(s).await;
            }
        }
    }

    /// How long the agent's apps have been silent on every replica, when known beyond this one.
    pub async fn idle_for(&self, s: &impl LocalCopy) -> Option<Duration> {
        match self {
            Self::InProcess => None,
            Self::Shared(link) => link.idle_for(s).await,
        }
    }

    /// Records a gateway event; returns whether an old one was dropped to make room.
    pub async fn record_event(&self, s: &impl LocalCopy, kind: &str, data: Bytes) -> bool {
        match self {
            Self::InProcess => s.events().push(kind, data),
            Self::Shared(link) => link.append(s, kind, data).await,
        }
    }

    /// The next event of the pass-through queue (shared by every replica, when shared).
    pub async fn take_next(&self, s: &impl LocalCopy) -> Option<BufferedEvent> {
        match self {
            Self::InProcess => s.events().take_next(),
            Self::Shared(link) => link.take_next(s).await,
        }
    }

    /// The session took a new Guid or cookies (`old`: the Guid the answer replied to).
    pub async fn publish_auth(&self, s: &impl LocalCopy, old: &str) {
        if let Self::Shared(link) = self {
            link.publish_auth(s, old).await;
        }
    }

    /// The gateway refused the copy's Guid `refused`: what that means (see [`GuidVerdict`]).
    pub async fn refused(&self, s: &impl LocalCopy, reason: LossReason, refused: &str) -> GuidVerdict {
        match self {
            Self::InProcess => {
                s.mark_lost(reason);
                GuidVerdict::Ended
            }
            Self::Shared(link) => link.refused(s, reason, refused).await,
        }
    }

    /// The gateway ended the session by other means (the poller saw it).
    pub async fn lost(&self, s: &impl LocalCopy, reason: LossReason) {
        match self {
            Self::InProcess => {
                s.mark_lost(reason);
            }
            Self::Shared(link) => link.lost(s, reason).await,
        }
    }

    /// The session was signed out here.
    pub async fn signed_out(&self, s: &impl LocalCopy) {
        if let Self::Shared(link) = self {
            link.signed_out(s).await;
        }
    }
}

//! What replication may read and change in a session's local copy. `Session` implements it;
//! the replication code (`link.rs`, `cluster.rs`) is written against this trait, so it sits
//! below the session type in the module graph instead of beside it in a circle.

use super::conference::ConfState;
use super::error::Ended;
use super::events::EventBuffer;
use crate::labels::LossReason;
use crate::metrics::Metrics;

pub(crate) trait LocalCopy: Send + Sync {
    fn agent_id(&self) -> &str;
    fn metrics(&self) -> &Metrics;
    fn events(&self) -> &EventBuffer;

    /// The conference state as this copy has it.
    fn conf(&self) -> ConfState;
    /// Replaces the conference state (another replica's, or one just written).
    fn set_conf(&self, conf: ConfState);
    /// Changes the conference state by `f` here; returns the state it changed and the new one.
    fn modify_conf(&self, f: &(dyn Fn(ConfState) -> ConfState + Sync)) -> (ConfState, ConfState);

    /// `f` on the Guid and cookies, under the lock new ones are taken in with.
    fn with_raw_auth<R>(&self, f: impl FnOnce(&str, &[String]) -> R) -> R;
    /// Replaces the Guid and cookies with what another replica stored, without announcing it.
    fn adopt_auth(&self, guid: &str, cookies: &[String]);

    fn ended(&self) -> Option<Ended>;
    /// Ends the copy once; returns whether this call did.
    fn end(&self, why: Ended) -> bool;
    /// Ends it as lost, counted and logged once.
    fn mark_lost(&self, reason: LossReason) -> bool;
    /// Stops polling (another replica polls now).
    fn stop_poller(&self);
    /// An app has an event stream open on this copy.
    fn has_listeners(&self) -> bool;
    /// The gateway's sign-in answer and whether ccgate may sign in again by itself: what a
    /// record put back from this copy carries.
    fn login(&self) -> (&[u8], bool);
    /// When the agent was signed in (Unix ms; 0 when unknown).
    fn signed_in_at_ms(&self) -> u64;
    /// The tenant the signing-in token named.
    fn tenant(&self) -> Option<&str>;
}

//! What the session layer answers when it cannot do what was asked, and why a session ended.

use crate::gateway::{GatewayRefusal, UpstreamError};
use crate::labels::LossReason;

/// Why the session layer could not do what was asked. Each variant says what the caller can
/// do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// The agent has no session through ccgate: sign in first.
    #[error("no session")]
    NoSession,
    /// The gateway ended the session (refused its Guid, or sent `AgentOther_ShutdownService`):
    /// sign in again.
    #[error("session lost")]
    Lost,
    /// The gateway says the agent is signed in elsewhere (`100-002`): sign in with force to
    /// take over.
    #[error("agent already signed in elsewhere")]
    AlreadySignedIn(Option<GatewayRefusal>),
    /// The credentials file has no entry for the agent: an operator must add one.
    #[error("no credentials for agent")]
    NoCredentials,
    /// The gateway refused the sign-in or sign-out with a business retcode.
    #[error("gateway refused: retcode {}", .0.retcode)]
    Refused(GatewayRefusal),
    /// The gateway could not be reached, timed out or answered garbage.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// This replica holds `sessions.max_agents` sessions: no new agent until one leaves.
    #[error("too many agents on this replica")]
    AtCapacity,
    /// The process's open-file limit leaves room for no more agents (`descriptors.rs`).
    #[error("the open-file limit holds no more agents")]
    FileLimit,
    /// `sessions.signin_queue` sign-ins are already waiting for the gateway.
    #[error("sign-in queue full")]
    SignInQueueFull,
    /// The shared store (Redis) is needed and cannot be reached.
    #[error(transparent)]
    Store(#[from] crate::shared::StoreError),
    /// The gateway refused this replica's Guid, and whether the session ended is not this
    /// replica's to say: the replica polling the agent knows the newest Guid, and Redis could
    /// not be read or has not heard of a newer one yet. Nothing was done; retry shortly.
    #[error("the session's current Guid is not confirmed yet")]
    Unconfirmed,
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The gateway refused its Guid or sent `AgentOther_ShutdownService`.
    Lost(LossReason),
    /// Signed out: by the app, for idleness, or at shutdown.
    SignedOut,
}

/// What a refused Guid meant for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuidVerdict {
    /// The Guid was not refused.
    None,
    /// The session ended (the gateway's word, from the party that knows the newest Guid).
    Ended,
    /// The record holds a newer Guid, now taken: the call may be sent once more.
    Retry,
    /// Not this replica's to say (the shared store unreadable, or no newer Guid published yet): the
    /// copy stays, the caller retries later.
    Unconfirmed,
}

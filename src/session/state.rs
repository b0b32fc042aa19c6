//! Where a session stands, and why the gateway ended one: vocabularies of the session layer
//! that the shared store (a record's `lost:REASON`) and the metrics label with.

use crate::labels::label_enum;

label_enum! {
    /// Why the gateway ended a session; the `reason` label of `ccgate_session_losses_total`,
    /// and of the `lost:REASON` state in the shared store.
    LossReason {
        GuidRefused => "guid_refused",
        ShutdownEvent => "shutdown_event",
    }
}

label_enum! {
    /// Session states; the `state` label of `ccgate_sessions`.
    SessionState {
        Active => "active",
        Lost => "lost",
    }
}

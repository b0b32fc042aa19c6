//! Where a session stands, how it ended and how a sign-in or sign-out went: vocabularies of
//! the session layer that the shared store (a record's `lost:REASON`) and the metrics name.

use super::label_enum;

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

label_enum! {
    /// Result of a sign-in attempt; the `result` label of `ccgate_signins_total`.
    SigninResult {
        Ok => "ok",
        AlreadySignedIn => "already_signed_in",
        Rejected => "rejected",
        NoCredentials => "no_credentials",
        UpstreamError => "upstream_error",
        AtCapacity => "at_capacity",
        FileLimit => "file_limit",
        QueueFull => "queue_full",
    }
}

label_enum! {
    /// What asked for a sign-out; the `trigger` label of `ccgate_signout_failures_total`.
    SignoutTrigger {
        App => "app",
        Idle => "idle",
        Shutdown => "shutdown",
    }
}

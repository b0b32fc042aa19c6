//! The webhooks' vocabularies: what an attempt came to, and why an event was not queued.

use super::label_enum;

label_enum! {
    /// What one delivery attempt came to; the `outcome` label of
    /// `ccgate_webhook_attempts_total`: `delivered` (2xx), `redirect` (3xx, never followed),
    /// `rejected` (4xx but 410 and 429), `gone` (410: the endpoint is disabled), `throttled`
    /// (429 or 503: `Retry-After` honoured), `server_error` (5xx), `timeout` (no answer within
    /// `timeout_ms`), `connect` (DNS, TCP or TLS failed), `forbidden_address` (the name
    /// resolved only to addresses the endpoint may not reach).
    WebhookOutcome {
        Delivered => "delivered",
        Redirect => "redirect",
        Rejected => "rejected",
        Gone => "gone",
        Throttled => "throttled",
        ServerError => "server_error",
        Timeout => "timeout",
        Connect => "connect",
        ForbiddenAddress => "forbidden_address",
    }
}

label_enum! {
    /// Why an event was not queued for an endpoint; the `reason` label of
    /// `ccgate_webhook_dropped_total`: `queue_full` (the endpoint's `max_pending` reached),
    /// `too_large` (the body would pass 64 KiB, or the event is not JSON), `failed_evicted`
    /// (a given-up event pushed out of the full failed list, so no longer replayable).
    WebhookDrop {
        QueueFull => "queue_full",
        TooLarge => "too_large",
        FailedEvicted => "failed_evicted",
    }
}

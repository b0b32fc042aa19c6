//! What the gateway calls made for the request being served need from it, and what they
//! give back: its trace context (passed on as `traceparent`), and the time spent waiting on
//! the gateway, for the access log's `upstream_ms`. The edge opens the scope around a
//! request; whatever calls the gateway on its behalf reads and adds to it. Outside a scope
//! (the poller) there is no trace and adding is a no-op.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use super::trace::TraceContext;

struct RequestScope {
    upstream: Cell<Duration>,
    trace: TraceContext,
}

tokio::task_local! {
    static SCOPE: RequestScope;
}

/// Runs the future `start` makes in a request's scope, returning its output and the gateway
/// time it recorded. Takes a constructor rather than a future: a request's future is several
/// KiB, and made here it is built in place instead of being copied into the scope.
pub async fn measure<F, Fut>(trace: TraceContext, start: F) -> (Fut::Output, Duration)
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    SCOPE
        .scope(RequestScope { upstream: Cell::new(Duration::ZERO), trace }, async move {
            let out = start().await;
            (out, SCOPE.with(|s| s.upstream.get()))
        })
        .await
}

/// Adds `d` to the current request's gateway time, if one is being measured.
pub fn add(d: Duration) {
    let _ = SCOPE.try_with(|s| s.upstream.set(s.upstream.get() + d));
}

/// Runs `f` with the current request's trace context, if there is a request.
pub fn with_trace<R>(f: impl FnOnce(&TraceContext) -> R) -> Option<R> {
    SCOPE.try_with(|s| f(&s.trace)).ok()
}

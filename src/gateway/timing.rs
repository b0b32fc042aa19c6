//! Time spent waiting on the gateway for the request being served, for the access log's
//! `upstream_ms`. The edge opens the measurement around a request; whatever waits on the
//! gateway on its behalf adds to it. Outside a measurement (the poller) adding is a no-op.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static UPSTREAM_TIME: Cell<Duration>;
}

/// Runs the future `start` makes, returning its output and the gateway time it recorded.
/// Takes a constructor rather than a future: a request's future is several KiB, and made
/// here it is built in place instead of being copied into the measurement.
pub async fn measure<F, Fut>(start: F) -> (Fut::Output, Duration)
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    UPSTREAM_TIME
        .scope(Cell::new(Duration::ZERO), async move {
            let out = start().await;
            (out, UPSTREAM_TIME.with(Cell::get))
        })
        .await
}

/// Adds `d` to the current request's gateway time, if one is being measured.
pub fn add(d: Duration) {
    let _ = UPSTREAM_TIME.try_with(|t| t.set(t.get() + d));
}

//! The facts of the chairperson check a request met, for its audit line (the edge writes it:
//! `ccgate::audit`, README "Audit log"). The check records its verdict in the request's
//! scope, so the verdict that counted (the last: the one before the gateway call) reaches the
//! line without threading through every phase of `Core::run`.

use std::cell::Cell;
use std::future::Future;

use crate::labels::ChairVerdict;

tokio::task_local! {
    static VERDICT: Cell<Option<ChairCheck>>;
}

/// What the chairperson check saw and decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChairCheck {
    /// The conference the agent's state names, when it names one.
    pub conference: Option<u64>,
    pub verdict: ChairVerdict,
}

/// Runs `f`, returning what the last chairperson check inside it decided (`None`: none ran,
/// e.g. a request refused by its rate limit first).
pub async fn capture<F: Future>(f: F) -> (F::Output, Option<ChairCheck>) {
    VERDICT
        .scope(Cell::new(None), async move {
            let out = f.await;
            (out, VERDICT.with(Cell::get))
        })
        .await
}

/// Records a verdict in the current request's scope; nothing outside one.
pub(super) fn record(check: ChairCheck) {
    let _ = VERDICT.try_with(|v| v.set(Some(check)));
}

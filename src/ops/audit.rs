//! What the chairperson check of a request saw and whether the call went to the gateway, for
//! its audit line (the edge writes it: `ccgate::audit`, README "Audit log"). The core records
//! both in the request's [`Trail`] as they happen, so the line knows them without threading
//! them through every phase of `Core::run`, and still knows them if the request is dropped
//! half-way (the client hung up after the call was sent).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::labels::ChairVerdict;
use crate::sync::lock;

tokio::task_local! {
    static TRAIL: Arc<Trail>;
}

/// What the chairperson check saw and decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChairCheck {
    /// The conference the agent's state names, when it names one.
    pub conference: Option<u64>,
    pub verdict: ChairVerdict,
}

/// One request's record: the last check's verdict (the one that counted: the last before
/// the gateway call), and whether the call was sent.
#[derive(Debug, Default)]
pub struct Trail {
    check: Mutex<Option<ChairCheck>>,
    forwarded: AtomicBool,
}

impl Trail {
    pub fn check(&self) -> Option<ChairCheck> {
        *lock(&self.check)
    }

    /// The call went to the gateway (whatever it answered).
    pub fn forwarded(&self) -> bool {
        self.forwarded.load(Ordering::Acquire)
    }

    /// Runs `f` with this trail as the request's.
    pub async fn follow<F: Future>(self: &Arc<Self>, f: F) -> F::Output {
        TRAIL.scope(self.clone(), f).await
    }
}

/// Records a verdict in the current request's trail; nothing outside one.
pub(super) fn record(check: ChairCheck) {
    let _ = TRAIL.try_with(|t| *lock(&t.check) = Some(check));
}

/// Records that the chair-only call is being sent to the gateway.
pub(super) fn forwarding() {
    let _ = TRAIL.try_with(|t| t.forwarded.store(true, Ordering::Release));
}

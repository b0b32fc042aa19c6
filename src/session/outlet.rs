//! Where a gateway's events go besides its agents' buffers: the webhooks, which sit above
//! this layer and plug in once at start (`Gateways::connect_outlet`). Offering an event is a
//! bounded, non-blocking hand-over on the poller's task; with no webhooks configured it is
//! one atomic load.

use std::sync::{Arc, OnceLock};

/// What takes a gateway's events.
pub trait EventSink: Send + Sync {
    /// Agent `agent`'s event `kind` with its JSON (as `/v1/events` carries it); `tenant`: the
    /// one its session was signed in for. Called in the agent's order, from the replica that
    /// polls it.
    fn offer(&self, agent: &str, tenant: Option<&str>, kind: &str, data: &bytes::Bytes);
}

/// The sink of one gateway's sessions, set at most once.
#[derive(Default)]
pub struct Outlet(OnceLock<Arc<dyn EventSink>>);

impl Outlet {
    pub fn connect(&self, sink: Arc<dyn EventSink>) {
        let _ = self.0.set(sink);
    }

    pub fn offer(&self, agent: &str, tenant: Option<&str>, kind: &str, data: &bytes::Bytes) {
        if let Some(sink) = self.0.get() {
            sink.offer(agent, tenant, kind, data);
        }
    }
}

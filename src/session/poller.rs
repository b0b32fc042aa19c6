//! One task per signed-in agent: long-polls the gateway's event queue. Polling is the
//! gateway's heartbeat, the carrier of rotated Guids (`Set-GUID`), and the only source of
//! conference state, so ccgate must be the agent's only poller.

use std::sync::Arc;
use std::time::Duration;

use super::conference::{apply_event, EventEffect};
use super::Session;
use crate::gateway::{retcode, GatewayClient, GatewayMethod, GatewayRequest};
use crate::metrics::LossReason;

#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// Read timeout of one poll; above the gateway's own long-poll wait.
    pub timeout: Duration,
    /// Pause between polls, as Huawei's clients do.
    pub pause: Duration,
    /// First back-off after a failure, doubled up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

pub(super) async fn run(session: Arc<Session>, client: GatewayClient, s: Settings) {
    let agent = session.agent_id.clone();
    let mut backoff = s.backoff;
    loop {
        let auth = session.auth();
        let result = client
            .call(GatewayRequest {
                method: GatewayMethod::GetAgentEvent,
                agent: &agent,
                auth: Some(&auth),
                body: None,
                timeout: Some(s.timeout),
            })
            .await;
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(agent = %agent, error = %e, backoff_ms = backoff.as_millis() as u64, "event poll failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(s.backoff_max);
                continue;
            }
        };
        session.absorb(&reply);
        let env = &reply.envelope;
        if retcode::session_gone(&env.retcode) {
            session.mark_lost(LossReason::GuidRefused);
            return;
        }
        if !env.is_success() {
            tracing::warn!(agent = %agent, retcode = %retcode::label(&env.retcode), "event poll refused");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(s.backoff_max);
            continue;
        }
        backoff = s.backoff;
        if let Some(event) = env.event.as_ref().filter(|e| !e.is_null()) {
            let kind = event.get("eventType").and_then(|v| v.as_str()).unwrap_or("?");
            tracing::debug!(agent = %agent, event = kind, "gateway event");
            let (next, effect) = apply_event(session.conf(), &agent, event);
            session.set_conf(next);
            if effect == EventEffect::SessionEnded {
                session.mark_lost(LossReason::ShutdownEvent);
                return;
            }
            // More events may be queued: fetch the next at once.
            continue;
        }
        tokio::time::sleep(s.pause).await;
    }
}

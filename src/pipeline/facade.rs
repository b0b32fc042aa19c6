//! The app-facing façade (DESIGN section 4): each route is the `session → forward →
//! translate` phases for one gateway operation.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Principal;
use super::policy::check_chair;
use super::Proxy;
use crate::config::ms;
use crate::error::ProxyError;
use crate::gateway::GatewayMethod;
use crate::server::body::{self, Body};
use crate::session::{ConfState, Session, SignInOptions};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    phonenum: Option<String>,
    status: Option<u8>,
    #[serde(default)]
    force: bool,
}

/// Parses an optional JSON object body; an empty body is the default.
fn parse_body<T: for<'de> Deserialize<'de> + Default>(b: &Bytes) -> Result<T, ProxyError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ProxyError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Runs `op` with the agent's session, counting it as app activity. With `sessions.resume`,
/// a session the gateway ended is replaced by one fresh sign-in, and `op` is retried once with
/// the new Guid; a Guid the gateway refused is never presented again.
pub async fn with_session<T, F, Fut>(p: &Proxy, agent: &str, mut op: F) -> Result<T, ProxyError>
where
    F: FnMut(Arc<Session>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProxyError>>,
{
    let mut resumed = false;
    let session = match p.sessions.active(agent) {
        Err(ProxyError::SessionLost) if p.resume => {
            resumed = true;
            resume(p, agent).await?
        }
        other => other?,
    };
    session.touch();
    match op(session).await {
        Err(ProxyError::SessionLost) if p.resume && !resumed => {
            let session = resume(p, agent).await?;
            session.touch();
            op(session).await
        }
        other => other,
    }
}

async fn resume(p: &Proxy, agent: &str) -> Result<Arc<Session>, ProxyError> {
    tracing::info!(agent, "gateway session lost; signing in again (sessions.resume)");
    Ok(p.sessions.sign_in(agent, SignInOptions::default()).await?.0)
}

pub async fn sign_in(p: &Proxy, who: &Principal, b: Bytes) -> Result<Response<Body>, ProxyError> {
    let req: SignInBody = parse_body(&b)?;
    if let Some(n) = &req.phonenum {
        // API-NOTES: phonenum is at most 24 characters.
        if n.is_empty() || n.len() > 24 || !n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'*' || c == b'#') {
            return Err(ProxyError::BadRequest("phonenum must be 1-24 digits".into()));
        }
    }
    if let Some(s) = req.status {
        if !(3..=5).contains(&s) {
            return Err(ProxyError::BadRequest("status must be 3 (busy), 4 (idle) or 5 (wrap-up)".into()));
        }
    }
    let opts = SignInOptions { force: req.force, phonenum: req.phonenum, status: req.status, body: None };
    let (session, created) = p.sessions.sign_in(&who.agent_id, opts).await?;
    session.touch();
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(body::json(status, &session.view()))
}

pub async fn get_session(p: &Proxy, who: &Principal) -> Result<Response<Body>, ProxyError> {
    let session = p.sessions.active(&who.agent_id)?;
    session.touch();
    Ok(body::json(StatusCode::OK, &session.view()))
}

pub async fn events(p: &Proxy, who: &Principal, headers: &http::HeaderMap) -> Result<Response<Body>, ProxyError> {
    let session = p.sessions.active(&who.agent_id)?;
    session.touch();
    super::events::subscribe(session, headers, p.shutdown.clone())
}

pub async fn sign_out(p: &Proxy, who: &Principal) -> Result<Response<Body>, ProxyError> {
    p.sessions.sign_out(&who.agent_id).await?;
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// `requestagentconf`, then wait for the gateway's RequestSuccess/RequestFailed event so the
/// app learns the conference id (and that it is chair) in one call.
pub async fn create_conference(p: &Proxy, who: &Principal, b: Bytes) -> Result<Response<Body>, ProxyError> {
    let v: Value = if b.iter().all(u8::is_ascii_whitespace) {
        return Err(ProxyError::BadRequest("body required: {\"memberNum\": 1..120}".into()));
    } else {
        serde_json::from_slice(&b).map_err(|e| ProxyError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let Some(obj) = v.as_object() else {
        return Err(ProxyError::BadRequest("body must be a JSON object".into()));
    };
    match obj.get("memberNum").and_then(Value::as_u64) {
        Some(1..=120) => {}
        _ => return Err(ProxyError::BadRequest("memberNum must be an integer in 1..120".into())),
    }
    with_session(p, &who.agent_id, |session| request_conference(p, session, b.clone())).await
}

async fn request_conference(p: &Proxy, session: Arc<Session>, b: Bytes) -> Result<Response<Body>, ProxyError> {
    let before = session.conf();
    let mut changes = session.watch_conf();
    session.set_conf(ConfState::Requested);
    let sent = session.call(&p.client, GatewayMethod::RequestAgentConf, Some(b)).await;
    let checked = match sent {
        Ok(reply) => session.check(&reply),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = checked {
        // The request did not happen; unless an event moved the state meanwhile, go back.
        if session.conf() == ConfState::Requested {
            session.set_conf(before);
        }
        return Err(e);
    }
    let wait = ms(p.sessions.settings().conference_wait_ms);
    let settled = tokio::time::timeout(wait, changes.wait_for(|s| *s != ConfState::Requested)).await;
    match settled.ok().and_then(Result::ok).map(|s| *s) {
        Some(ConfState::RequestFailed { cause }) => Err(ProxyError::GatewayRefused(crate::error::GatewayRefusal {
            retcode: "0".into(),
            message: "conference request failed (AgentConf_RequestFailed)".into(),
            error_reason: cause,
        })),
        Some(state) => Ok(body::json(
            StatusCode::CREATED,
            &json!({"confId": state.conf_id(), "chairperson": matches!(state, ConfState::Chair { .. }), "conference": state}),
        )),
        None => Ok(body::json(
            StatusCode::ACCEPTED,
            &json!({"confId": null, "chairperson": false, "conference": ConfState::Requested, "pending": true}),
        )),
    }
}

/// `stopVoiceToConf`: chair only, checked locally first.
pub async fn stop_announcement(p: &Proxy, who: &Principal) -> Result<Response<Body>, ProxyError> {
    with_session(p, &who.agent_id, |session| async move {
        check_chair(session.conf(), p.on_unknown_chair)?;
        let reply = session.call(&p.client, GatewayMethod::StopVoiceToConf, None).await?;
        session.check(&reply)?;
        Ok(body::json(StatusCode::OK, &json!({"stopped": true})))
    })
    .await
}

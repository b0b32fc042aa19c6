//! The reverse-proxy face: the CC-Gateway's own API under `/agentgateway/resource/...`, with
//! `Authorization: Bearer <jwt>` instead of a `Guid` (DESIGN section 5).
//!
//! Matching is exact per segment on the raw path: an empty segment (duplicate slash), a dot
//! segment, a percent-encoded byte or anything but letters and digits means "no such method"
//! (404), so no spelling of a path can select another method or agent than it appears to.
//! The query string is ignored and never forwarded. The forwarded request is built from the
//! registry (method, canonical path) with only the session's Guid and cookies: no client
//! header reaches the gateway. Gateway answers pass through byte for byte, minus `Set-GUID`
//! and `Set-Cookie`, which ccgate keeps.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response};
use serde_json::Value;

use super::auth::Principal;
use super::policy::check_chair;
use super::Proxy;
use crate::config::ms;
use crate::error::ProxyError;
use crate::gateway::client::JSON_UTF8;
use crate::gateway::{retcode, Envelope, GatewayMethod, BASE_PATH};
use crate::metrics::Outcome;
use crate::server::body::{self, Body};
use crate::session::conference::apply_success;
use crate::session::{ConfState, Session, SignInOptions};

/// Sign-in fields that would switch the gateway to push mode. ccgate must be the agent's
/// only event poller, so it refuses them rather than silently breaking event delivery.
const PUSH_MODE_FIELDS: &[&str] = &["callBackUri", "serviceToken"];

/// Which gateway method and agent a raw path names.
pub fn match_path<'p>(method: &Method, path: &'p str) -> Result<(GatewayMethod, &'p str), ProxyError> {
    let rest = path.strip_prefix(BASE_PATH).ok_or(ProxyError::NotFound)?;
    let mut segments = rest.split('/');
    let (Some(tree), Some(agent)) = (segments.next(), segments.next()) else {
        return Err(ProxyError::NotFound);
    };
    let action = segments.next();
    if segments.next().is_some() {
        return Err(ProxyError::NotFound);
    }
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain(tree) || !plain(agent) || !action.is_none_or(plain) {
        return Err(ProxyError::NotFound);
    }
    let m = GatewayMethod::lookup(tree, action).ok_or(ProxyError::NotFound)?;
    if *method != m.http_method() {
        return Err(ProxyError::MethodNotAllowed(allow(m)));
    }
    Ok((m, agent))
}

fn allow(m: GatewayMethod) -> &'static str {
    match m.http_method() {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "POST",
    }
}

/// A gateway-shaped 200 answer with `body`.
fn envelope_response(body: Bytes) -> Response<Body> {
    let mut r = Response::new(body::full(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    r
}

/// The metric outcome of a gateway answer passed through.
fn outcome_of(env: &Envelope) -> Outcome {
    match env.retcode.as_str() {
        retcode::SUCCESS => Outcome::Ok,
        retcode::NOT_CHAIRPERSON => Outcome::NotChairperson,
        retcode::NO_CONFERENCE => Outcome::NoConference,
        c if retcode::session_gone(c) => Outcome::SessionLost,
        _ => Outcome::GatewayError,
    }
}

pub async fn handle(
    p: &Proxy,
    who: &Principal,
    m: GatewayMethod,
    agent: &str,
    body: Bytes,
) -> Result<(Response<Body>, Outcome), ProxyError> {
    if agent != who.agent_id {
        return Err(ProxyError::Forbidden("the {agentid} in the path is not the agent the token names"));
    }
    match m {
        GatewayMethod::Login | GatewayMethod::ForceLogin => sign_in(p, who, m, body).await,
        GatewayMethod::Logout | GatewayMethod::ForceLogout => {
            let reply = p.sessions.sign_out_with(agent, m).await?;
            Ok((envelope_response(reply), Outcome::Ok))
        }
        GatewayMethod::GetAgentEvent => {
            let session = p.sessions.active(agent)?;
            session.touch();
            Ok((next_event(p, &session).await, Outcome::Ok))
        }
        _ => {
            let session = p.sessions.active(agent)?;
            session.touch();
            forward(p, &session, m, body).await
        }
    }
}

async fn sign_in(
    p: &Proxy,
    who: &Principal,
    m: GatewayMethod,
    body: Bytes,
) -> Result<(Response<Body>, Outcome), ProxyError> {
    let fields: serde_json::Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
        ProxyError::BadRequest("the sign-in body must be a JSON object with password and phonenum".into())
    })?;
    if let Some(f) = PUSH_MODE_FIELDS.iter().find(|f| fields.contains_key(**f)) {
        return Err(ProxyError::BadRequest(format!(
            "{f}: push mode is not available through ccgate; it polls the agent's events and serves them at agentevent"
        )));
    }
    let force = m == GatewayMethod::ForceLogin;
    if !force && p.sessions.active(&who.agent_id).is_ok() {
        return Err(ProxyError::AlreadySignedIn);
    }
    let opts = SignInOptions { force, body: Some(body), ..SignInOptions::default() };
    let (session, _) = p.sessions.sign_in(&who.agent_id, opts).await?;
    session.touch();
    Ok((envelope_response(session.signin_reply.clone()), Outcome::Ok))
}

/// Forwards any other method with the session's credentials and passes the answer through.
async fn forward(
    p: &Proxy,
    session: &Arc<Session>,
    m: GatewayMethod,
    body: Bytes,
) -> Result<(Response<Body>, Outcome), ProxyError> {
    if m.chair_only() {
        check_chair(session.conf(), p.on_unknown_chair)?;
    }
    let before = session.conf();
    if m == GatewayMethod::RequestAgentConf {
        session.set_conf(ConfState::Requested);
    }
    let body = (!body.is_empty()).then_some(body);
    let sent = session.call(&p.client, m, body).await;
    let reply = match sent {
        Ok(r) => r,
        Err(e) => {
            if m == GatewayMethod::RequestAgentConf && session.conf() == ConfState::Requested {
                session.set_conf(before);
            }
            return Err(e.into());
        }
    };
    session.absorb(&reply);
    let env = &reply.envelope;
    if env.is_success() {
        session.set_conf(apply_success(session.conf(), m));
    } else {
        if m == GatewayMethod::RequestAgentConf && session.conf() == ConfState::Requested {
            session.set_conf(before);
        }
        if retcode::session_gone(&env.retcode) {
            session.mark_lost(crate::metrics::LossReason::GuidRefused);
        }
    }
    let outcome = outcome_of(env);
    if m == GatewayMethod::UpdateGuid {
        // The new Guid is in the body: keep it, and answer without it.
        if let Some(g) = env.result.as_ref().and_then(|r| r.get("guid")).and_then(Value::as_str) {
            session.set_guid(g);
        }
        let stripped = serde_json::json!({"message": env.message, "retcode": env.retcode, "result": {}});
        return Ok((envelope_response(Bytes::from(stripped.to_string())), outcome));
    }
    Ok((envelope_response(reply.body), outcome))
}

/// `agentevent`: the next event after the face's cursor, or an empty answer after the
/// gateway's usual wait, one event per answer.
async fn next_event(p: &Proxy, session: &Arc<Session>) -> Response<Body> {
    let wait = ms(p.sessions.settings().face_event_wait_ms);
    let deadline = tokio::time::Instant::now() + wait;
    let mut latest = session.events.subscribe();
    loop {
        let cursor = session.face_cursor.load(Ordering::Acquire);
        if let Some(e) = session.events.since(cursor).events.into_iter().next() {
            // Another poller may have taken it: only the one that moves the cursor sends it.
            if session.face_cursor.compare_exchange(cursor, e.id, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                let mut b = BytesMut::with_capacity(e.data.len() + 40);
                b.put_slice(br#"{"message":"","retcode":"0","event":"#);
                b.put_slice(&e.data);
                b.put_slice(b"}");
                return envelope_response(b.freeze());
            }
            continue;
        }
        let woke = tokio::select! {
            r = tokio::time::timeout_at(deadline, latest.changed()) => matches!(r, Ok(Ok(()))),
            _ = session.wait_ended() => false,
        };
        if !woke {
            return envelope_response(Bytes::from_static(br#"{"message":"","retcode":"0","event":null}"#));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn exact_segment_matching() {
        let ok = |m: Method, p: &str| match_path(&m, p).map(|(g, a)| (g.log_name(), a.to_owned()));
        assert_eq!(
            ok(Method::POST, "/agentgateway/resource/agentconf/153/stopvoicetoconf").unwrap(),
            ("stopVoiceToConf", "153".into())
        );
        assert_eq!(ok(Method::PUT, "/agentgateway/resource/onlineagent/153").unwrap(), ("login", "153".into()));
        assert_eq!(ok(Method::GET, "/agentgateway/resource/agentevent/153").unwrap(), ("getAgentEvent", "153".into()));
        for bad in [
            "/agentgateway/resource/agentconf/153%2Fstopvoicetoconf",
            "/agentgateway/resource/agentconf/153/stopvoicetoconf/",
            "/agentgateway/resource/agentconf//153/stopvoicetoconf",
            "/agentgateway/resource//agentconf/153/stopvoicetoconf",
            "/agentgateway/resource/agentconf/154/../153/stopvoicetoconf",
            "/agentgateway/resource/agentconf/./153/stopvoicetoconf",
            "/agentgateway/resource/agentconf/153/./stopvoicetoconf",
            "/agentgateway/resource/agentconf/153/stopVoiceToConf",
            "/agentgateway/resource/agentconf/15%33/stopvoicetoconf",
            "/agentgateway/resource/agentconf/153/nope",
            "/agentgateway/resource/agentconf",
            "/agentgateway/resource/",
        ] {
            assert_eq!(match_path(&Method::POST, bad).unwrap_err().status(), StatusCode::NOT_FOUND, "{bad}");
        }
        let e = match_path(&Method::GET, "/agentgateway/resource/agentconf/153/stopvoicetoconf").unwrap_err();
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}

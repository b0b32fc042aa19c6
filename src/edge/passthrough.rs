//! The pass-through face: the CC-Gateway's own API under `/agentgateway/resource/...`, with
//! `Authorization: Bearer <jwt>` instead of a `Guid`. Parses a request into an [`Operation`]
//! and renders its [`Done`] in the gateway's envelope.
//!
//! Matching is exact per segment on the raw path: an empty segment (duplicate slash), a dot
//! segment, a percent-encoded byte or anything but letters and digits means "no such method"
//! (404), so no spelling of a path can select another method or agent than it appears to.
//! The query string is ignored and never forwarded. The forwarded request is built from the
//! registry (method, canonical path) with only the session's Guid and cookies: no client
//! header reaches the gateway. Gateway answers pass through byte for byte, minus `Set-GUID`
//! and `Set-Cookie`, which ccgate keeps.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response};
use serde_json::Value;

use crate::gateway::wire::JSON_UTF8;
use crate::gateway::{Envelope, GatewayMethod, BASE_PATH};
use crate::labels::Outcome;
use crate::ops::{Done, Failure, Operation, Principal};
use crate::server::body::{self, Body};
use crate::session::SignInOptions;

/// Sign-in fields that would switch the gateway to push mode. ccgate must be the agent's
/// only event poller, so it refuses them rather than silently breaking event delivery.
const PUSH_MODE_FIELDS: &[&str] = &["callBackUri", "serviceToken"];

/// Which gateway method and agent a raw path names.
pub fn match_path<'p>(method: &Method, path: &'p str) -> Result<(GatewayMethod, &'p str), Failure> {
    let rest = path.strip_prefix(BASE_PATH).ok_or(Failure::NotFound)?;
    let mut segments = rest.split('/');
    let (Some(tree), Some(agent)) = (segments.next(), segments.next()) else {
        return Err(Failure::NotFound);
    };
    let action = segments.next();
    if segments.next().is_some() {
        return Err(Failure::NotFound);
    }
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain(tree) || !plain(agent) || !action.is_none_or(plain) {
        return Err(Failure::NotFound);
    }
    let m = GatewayMethod::lookup(tree, action).ok_or(Failure::NotFound)?;
    if *method != m.http_method() {
        return Err(Failure::MethodNotAllowed(allow(m)));
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

/// The operation a gateway method asks for, for the token's agent only.
pub fn parse(who: &Principal, m: GatewayMethod, agent: &str, body: Bytes) -> Result<Operation, Failure> {
    if agent != who.agent_id {
        return Err(Failure::Forbidden("the {agentid} in the path is not the agent the token names"));
    }
    Ok(match m {
        GatewayMethod::Login | GatewayMethod::ForceLogin => {
            let fields: serde_json::Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
                Failure::BadRequest("the sign-in body must be a JSON object with password and phonenum".into())
            })?;
            if let Some(f) = PUSH_MODE_FIELDS.iter().find(|f| fields.contains_key(**f)) {
                return Err(Failure::BadRequest(format!(
                    "{f}: push mode is not available through ccgate; it polls the agent's events and serves them at agentevent"
                )));
            }
            let force = m == GatewayMethod::ForceLogin;
            let opts = SignInOptions { force, body: Some(body), ..SignInOptions::default() };
            Operation::SignIn { opts, refuse_if_signed_in: !force }
        }
        GatewayMethod::Logout | GatewayMethod::ForceLogout => Operation::SignOut(m),
        GatewayMethod::GetAgentEvent => Operation::NextEvent,
        _ => Operation::Call { method: m, body: (!body.is_empty()).then_some(body) },
    })
}

/// The gateway's answer for a finished operation: what the gateway said, or what it would
/// have said. Refusals are rendered in `render.rs`.
pub fn render(done: Done) -> (Response<Body>, Outcome) {
    let body = match done {
        Done::SignedIn { session, .. } => session.login_answer,
        Done::SignedOut(answer) => answer,
        Done::Replied { method: GatewayMethod::UpdateGuid, reply } => {
            // The new Guid is in the body: the session keeps it, the client never sees it.
            let e = &reply.envelope;
            Envelope { result: Some(serde_json::json!({})), event: None, ..e.clone() }.to_bytes()
        }
        Done::Replied { reply, .. } => reply.body,
        Done::Event(Some(e)) => {
            // The buffered event is the gateway's JSON already: splice it, do not re-encode.
            let mut b = BytesMut::with_capacity(e.data.len() + 40);
            b.put_slice(br#"{"message":"","retcode":"0","event":"#);
            b.put_slice(&e.data);
            b.put_slice(b"}");
            b.freeze()
        }
        Done::Event(None) => Envelope::event(None).to_bytes(),
        // Not operations this face asks for; answered as a plain success.
        Done::Session(_) | Done::Subscribed(_) | Done::Conference(_) | Done::ConferencePending => {
            Envelope::ok("success", serde_json::json!({})).to_bytes()
        }
    };
    (envelope_response(body), Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(matches!(match_path(&Method::POST, bad), Err(Failure::NotFound)), "{bad}");
        }
        let e = match_path(&Method::GET, "/agentgateway/resource/agentconf/153/stopvoicetoconf");
        assert!(matches!(e, Err(Failure::MethodNotAllowed("POST"))));
    }
}

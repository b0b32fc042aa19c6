//! The wire format of gateway requests (a pooled connection for app requests and sign-ins,
//! the poller's own for event polls, one writer for both): the request target, the session
//! and trace headers in the order they are sent, the one [`Answer`] type either path reads,
//! and the parsing and bounds of what an answer says about the session (`Set-GUID`,
//! `Set-Cookie`). One writer of each fact, so the two paths cannot drift apart.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, COOKIE};
use http::StatusCode;

use super::methods::GatewayMethod;
use super::timing;
use super::trace::{TRACEPARENT, TRACESTATE};

/// The header carrying the session's Guid on requests.
pub const GUID_HEADER: &str = "guid";
static GUID: HeaderName = HeaderName::from_static(GUID_HEADER);
/// The response header carrying a new Guid (`JSESSIONID=<uuid>.AgentGateway<n>`).
pub const SET_GUID_HEADER: &str = "set-guid";
/// Largest gateway response body accepted; envelopes are a few hundred bytes, conference
/// queries a few KiB.
pub const MAX_UPSTREAM_BODY: usize = 1024 * 1024;
pub const JSON_UTF8: &str = "application/json; charset=UTF-8";

/// The credentials a session presents: Guid and the cookies captured at sign-in. Both are
/// kept as ready `HeaderValue`s (marked sensitive so they never appear in debug output) so the
/// hot path copies no strings.
#[derive(Clone)]
pub struct SessionAuth {
    pub guid: HeaderValue,
    pub cookie: Option<HeaderValue>,
}

impl std::fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionAuth(***)")
    }
}

/// Why a gateway round trip failed. Each maps to one HTTP status at the edge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, TLS handshake failed): 503.
    #[error("gateway unreachable: {0}")]
    Unavailable(String),
    /// No complete answer within the timeout: 504.
    #[error("gateway timed out")]
    Timeout,
    /// The gateway answered with a non-200 status: 502.
    #[error("gateway answered HTTP {0}")]
    BadStatus(StatusCode),
    /// The gateway's body was not a valid envelope, or the connection broke mid-answer: 502.
    #[error("gateway answered garbage: {0}")]
    Malformed(String),
}

/// An answer read whole: the status, what it says about the session, and the body.
pub struct Answer {
    pub status: StatusCode,
    /// The new Guid from `Set-GUID`, `JSESSIONID=` removed.
    pub set_guid: Option<String>,
    /// `name=value` of each `Set-Cookie`.
    pub cookies: Vec<String>,
    pub body: Bytes,
}

impl std::fmt::Debug for Answer {
    /// The status only: the Guid and cookies are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").field("status", &self.status).finish_non_exhaustive()
    }
}

/// `n` in decimal, without the formatting machinery (on the path of every request).
pub(crate) fn push_decimal(v: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    v.extend_from_slice(&digits[i..]);
}

/// How many digits [`push_decimal`] writes for `n`.
pub(crate) fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The request target of a call: from a work number checked again here, whoever supplied it
/// (a token, the shared store), so nothing but digits reaches the request line.
pub(super) fn request_target(method: GatewayMethod, agent: &str) -> Result<String, UpstreamError> {
    match super::parse_agent_id(agent) {
        Some(_) => Ok(method.path(agent)),
        None => Err(UpstreamError::Malformed("agent id is not a work number; request not sent".into())),
    }
}

/// The headers that carry the session and the trace, in the order they are sent:
/// `traceparent`, `tracestate`, `guid`, `cookie` (each a `HeaderValue`, so valid by type).
pub(super) fn session_headers(auth: Option<&SessionAuth>, mut field: impl FnMut(&HeaderName, &HeaderValue)) {
    // The app's trace continues at the gateway, with ccgate's span as the parent.
    timing::with_trace(|t| {
        field(&TRACEPARENT, &t.traceparent());
        if let Some(state) = t.tracestate() {
            field(&TRACESTATE, state);
        }
    });
    if let Some(auth) = auth {
        field(&GUID, &auth.guid);
        if let Some(c) = &auth.cookie {
            field(&COOKIE, c);
        }
    }
}

/// `JSESSIONID=<uuid>.AgentGateway0` → `<uuid>.AgentGateway0`. Attributes after `;` are
/// dropped; the node suffix is kept because it routes the session to its node.
pub fn parse_set_guid(v: &str) -> Option<String> {
    let v = v.split(';').next()?.trim();
    let guid = v.strip_prefix("JSESSIONID=").unwrap_or(v).trim();
    if !valid_guid(guid) {
        return None;
    }
    Some(guid.to_owned())
}

/// `name=value; Path=/; Secure` → `name=value`.
pub fn cookie_pair(v: &str) -> Option<String> {
    let pair = v.split(';').next()?.trim();
    let (name, _) = pair.split_once('=')?;
    if name.is_empty() {
        return None;
    }
    Some(pair.to_owned())
}

/// Cookies one session keeps at most, and their total size in `name=value` bytes. The NSLB
/// sets one sticky cookie; 16 and 4 KiB leave room for a balancer or WAF in front of it, while
/// a gateway that sets a new cookie on every answer can grow neither the request head nor the
/// shared store's record. Cookies past either bound are dropped (and counted).
pub const MAX_COOKIES: usize = 16;
pub const MAX_COOKIE_BYTES: usize = 4096;

/// Merges new `name=value` pairs into the jar, replacing same-named cookies, within
/// [`MAX_COOKIES`] and [`MAX_COOKIE_BYTES`]. Returns the jar and how many were dropped.
pub fn merge_cookies(existing: &[String], new: &[String]) -> (Vec<String>, usize) {
    let name = |c: &str| c.split('=').next().unwrap_or_default().to_owned();
    let mut out: Vec<String> = existing.to_vec();
    let mut dropped = 0;
    for n in new {
        let same = out.iter().position(|c| name(c) == name(n));
        let others: usize = out.iter().enumerate().filter(|(i, _)| Some(*i) != same).map(|(_, c)| c.len()).sum();
        if (same.is_none() && out.len() >= MAX_COOKIES) || others + n.len() > MAX_COOKIE_BYTES {
            dropped += 1;
            continue;
        }
        if let Some(i) = same {
            out.remove(i);
        }
        out.push(n.clone());
    }
    (out, dropped)
}

/// Whether a jar read from outside this process (the shared store) is one ccgate could have
/// made: within the bounds, every entry a `name=value` pair fit for a header.
pub fn valid_cookie_jar(jar: &[String]) -> bool {
    jar.len() <= MAX_COOKIES
        && jar.iter().map(String::len).sum::<usize>() <= MAX_COOKIE_BYTES
        && jar.iter().all(|c| cookie_pair(c).as_deref() == Some(c.as_str()) && HeaderValue::from_str(c).is_ok())
}

/// Whether a Guid read from outside this process is one [`parse_set_guid`] could have given,
/// and of a sane length.
pub fn valid_guid(g: &str) -> bool {
    !g.is_empty() && g.len() <= MAX_GUID_LEN && g.bytes().all(|b| b.is_ascii_graphic())
}

/// Longest Guid kept: the gateway's are a UUID and a node suffix (~50 bytes).
pub const MAX_GUID_LEN: usize = 256;

/// Builds a `SessionAuth` from a Guid and cookie pairs; `None` if the Guid is not a valid
/// header value (a gateway sending control characters).
pub fn session_auth(guid: &str, cookies: &[String]) -> Option<SessionAuth> {
    let mut guid = HeaderValue::from_str(guid).ok()?;
    guid.set_sensitive(true);
    let cookie = if cookies.is_empty() {
        None
    } else {
        let mut c = HeaderValue::from_str(&cookies.join("; ")).ok()?;
        c.set_sensitive(true);
        Some(c)
    };
    Some(SessionAuth { guid, cookie })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_and_measured_alike() {
        for n in [0, 7, 9, 10, 99, 100, 12_345, 999_999, 1_000_000, u64::MAX] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
            assert_eq!(decimal_len(n), v.len(), "{n}");
        }
    }

    #[test]
    fn set_guid_keeps_node_suffix() {
        assert_eq!(parse_set_guid("JSESSIONID=1f0e-22.AgentGateway1").as_deref(), Some("1f0e-22.AgentGateway1"));
        assert_eq!(parse_set_guid("JSESSIONID=abc.AgentGateway0; Path=/").as_deref(), Some("abc.AgentGateway0"));
        assert_eq!(parse_set_guid("abc.AgentGateway0").as_deref(), Some("abc.AgentGateway0"));
        assert_eq!(parse_set_guid("JSESSIONID="), None);
        assert_eq!(parse_set_guid("JSESSIONID=a b"), None);
    }

    #[test]
    fn cookies_merge_by_name() {
        let a = vec![cookie_pair("huaweielbsession=1; Path=/; Secure").unwrap()];
        let b = vec!["huaweielbsession=2".to_owned(), "other=x".to_owned()];
        assert_eq!(merge_cookies(&a, &b), (vec!["huaweielbsession=2".to_owned(), "other=x".to_owned()], 0));
        assert_eq!(cookie_pair("=x"), None);
        assert_eq!(cookie_pair("novalue"), None);
    }

    #[test]
    fn the_cookie_jar_is_bounded_in_count_and_bytes() {
        let flood: Vec<String> = (0..60).map(|i| format!("c{i}=v")).collect();
        let (jar, dropped) = merge_cookies(&[], &flood);
        assert_eq!((jar.len(), dropped), (MAX_COOKIES, 60 - MAX_COOKIES));
        assert!(valid_cookie_jar(&jar));
        // A cookie already kept can still be replaced when the jar is full.
        let (jar, dropped) = merge_cookies(&jar, &["c0=new".to_owned()]);
        assert_eq!(dropped, 0);
        assert!(jar.contains(&"c0=new".to_owned()));
        let big = format!("big={}", "x".repeat(MAX_COOKIE_BYTES));
        assert_eq!(merge_cookies(&[], std::slice::from_ref(&big)).1, 1);
        assert!(!valid_cookie_jar(&[big]));
        assert!(!valid_cookie_jar(&["a=1\r\nX: y".to_owned()]));
        assert!(!valid_cookie_jar(&["novalue".to_owned()]));
    }

    #[test]
    fn session_auth_is_sensitive() {
        let a = session_auth("g.AgentGateway0", &["c=1".into()]).unwrap();
        assert!(a.guid.is_sensitive());
        assert_eq!(format!("{a:?}"), "SessionAuth(***)");
        assert!(session_auth("bad\nguid", &[]).is_none());
    }
}

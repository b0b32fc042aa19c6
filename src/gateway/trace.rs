//! W3C Trace Context (`traceparent`, `tracestate`) for one request: taken from the app's
//! request when valid, started here otherwise; named in the access line and the request's
//! span, and passed on to every gateway call made for the request, with ccgate's own span as
//! the parent. The poller's calls belong to no request and carry none.
//!
//! <https://www.w3.org/TR/trace-context/>: `traceparent` is
//! `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower case, ids not all zero;
//! version `ff` is invalid, and a later version is read by its first four fields.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The spec's limit for `tracestate` (32 members of at most 256 characters is more, but a
/// vendor list past 512 characters may be cut by any hop); longer ones are dropped, not cut.
const MAX_TRACESTATE: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// ccgate's span for this request: the parent id of its gateway calls.
    pub span_id: [u8; 8],
    pub flags: u8,
    /// The app's span (its `traceparent`'s parent id), when it sent one.
    pub parent: Option<[u8; 8]>,
    /// The app's `tracestate`, passed on unchanged (only with a valid `traceparent`).
    state: Option<HeaderValue>,
}

impl TraceContext {
    /// The request's context: the app's trace if its `traceparent` is valid, else a new one
    /// (not sampled: ccgate exports no spans to decide on).
    pub fn from_headers(h: &HeaderMap) -> Self {
        let span_id = random_span_id();
        match h.get(&TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes())) {
            Some((trace_id, parent, flags)) => {
                let state = h
                    .get(&TRACESTATE)
                    .filter(|v| v.len() <= MAX_TRACESTATE && v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)))
                    .cloned();
                Self { trace_id, span_id, flags, parent: Some(parent), state }
            }
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&random_u64().to_be_bytes());
                trace_id[8..].copy_from_slice(&random_u64().to_be_bytes());
                Self { trace_id, span_id, flags: 0, parent: None, state: None }
            }
        }
    }

    /// The trace id as the access line shows it (32 lower-case hex digits), formatted only
    /// when a line is written.
    pub fn trace_id(&self) -> TraceId<'_> {
        TraceId(&self.trace_id)
    }

    /// `traceparent` for a call made on this request's behalf.
    pub fn traceparent(&self) -> HeaderValue {
        let mut v = [0u8; 55];
        v[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut v[3..35]);
        v[35] = b'-';
        hex_into(&self.span_id, &mut v[36..52]);
        v[52] = b'-';
        hex_into(&[self.flags], &mut v[53..55]);
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_bytes(&v)
            .unwrap_or_else(|_| HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-00"))
    }

    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.state.as_ref()
    }
}

/// A trace id for `Display` (the access line, the request's span).
pub struct TraceId<'a>(&'a [u8; 16]);

impl<'a> TraceId<'a> {
    pub fn new(id: &'a [u8; 16]) -> Self {
        Self(id)
    }
}

impl std::fmt::Display for TraceId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 32];
        hex_into(self.0, &mut buf);
        f.write_str(std::str::from_utf8(&buf).map_err(|_| std::fmt::Error)?)
    }
}

/// Unique enough for span and trace ids, without a system call per request (a `uuid` v4
/// reads the OS's randomness each time): SipHash, keyed per thread by std from the OS once,
/// over a process-wide counter.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    // Never all zeros (an invalid id).
    h.finish().max(1)
}

fn random_span_id() -> [u8; 8] {
    random_u64().to_be_bytes()
}

pub(crate) fn hex_into(b: &[u8], out: &mut [u8]) {
    const D: &[u8; 16] = b"0123456789abcdef";
    for (x, o) in b.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = D[(x >> 4) as usize];
        o[1] = D[(x & 15) as usize];
    }
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The trace id, parent id and flags of a valid `traceparent`.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = v.split(|b| *b == b'-');
    let version = unhex::<1>(parts.next()?)?[0];
    let trace_id = unhex::<16>(parts.next()?)?;
    let parent = unhex::<8>(parts.next()?)?;
    let flags = unhex::<1>(parts.next()?)?[0];
    let rest = parts.next();
    // Version 00 has exactly four fields; a later version may add some after a dash.
    if version == 0xff || (version == 0 && rest.is_some()) || trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(tp: &str, ts: Option<&str>) -> TraceContext {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT.clone(), HeaderValue::from_str(tp).unwrap());
        if let Some(ts) = ts {
            h.insert(TRACESTATE.clone(), HeaderValue::from_str(ts).unwrap());
        }
        TraceContext::from_headers(&h)
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_span_of_our_own() {
        let c = ctx("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("congo=t61rcWkgMzE"));
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = c.traceparent().to_str().unwrap().to_owned();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && out.ends_with("-01"), "{out}");
        assert_ne!(&out[36..52], "00f067aa0ba902b7", "ccgate's span is the parent of its calls");
        assert_eq!(c.tracestate().unwrap(), "congo=t61rcWkgMzE");
        // A later version with an extra field is read by its first four.
        assert_eq!(ctx("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what", None).flags, 0);
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            let c = ctx(bad, Some("congo=t61rcWkgMzE"));
            assert_ne!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            assert_eq!(c.flags, 0);
            assert!(c.tracestate().is_none(), "{bad:?}");
            assert_ne!(c.trace_id, [0; 16]);
        }
    }
}

//! One event as the webhooks carry it: its id (the `webhook-id`, the same on every attempt),
//! where it comes from, its place in the agent's sequence, and the body every attempt sends
//! byte for byte (the signature covers it).

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

/// A body above this is not built: gateway events are a few hundred bytes (a conference's
/// with its participants a few KiB). What is refused is counted as dropped (`too_large`).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// An event on its way to one endpoint.
#[derive(Debug, Clone)]
pub struct Message {
    /// `msg_` and 32 hex digits of randomness: unique without coordination between replicas
    /// or across restarts, so a receiver may deduplicate on it.
    pub id: Arc<str>,
    pub gateway: Arc<str>,
    pub agent: Arc<str>,
    /// The agent's sequence number (per gateway and agent, one more per event).
    pub seq: u64,
    pub kind: Arc<str>,
    /// When ccgate took the event (Unix ms): the body's `timestamp`, and what `replay`'s
    /// `since` compares.
    pub at_ms: u64,
    pub body: Bytes,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    gateway: &'a str,
    agent: &'a str,
    seq: u64,
    /// The event as `/v1/events` carries it (the gateway's event object, or ccgate's own).
    event: &'a serde_json::Value,
}

/// A new message id.
pub fn new_id() -> Arc<str> {
    let mut b = [0u8; 16];
    // A failed draw (no entropy source) falls back to a v4 UUID's generator, which panics
    // only where the process could not have started.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        b = *uuid::Uuid::new_v4().as_bytes();
    }
    let mut id = String::with_capacity(36);
    id.push_str("msg_");
    for byte in b {
        id.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        id.push(char::from_digit(u32::from(byte & 15), 16).unwrap_or('0'));
    }
    Arc::from(id)
}

impl Message {
    /// The message of an event: `event` is its JSON as `/v1/events` sends it. `None` when that
    /// is not JSON or the body would pass [`MAX_BODY_BYTES`].
    pub fn build(gateway: Arc<str>, agent: Arc<str>, seq: u64, kind: &str, event: &[u8], at_ms: u64) -> Option<Self> {
        let raw: serde_json::Value = serde_json::from_slice(event).ok()?;
        let body = Body {
            kind,
            timestamp: crate::session::view::rfc3339(at_ms),
            data: Data { gateway: &gateway, agent: &agent, seq, event: &raw },
        };
        let body = serde_json::to_vec(&body).ok().filter(|b| b.len() <= MAX_BODY_BYTES)?;
        Some(Self { id: new_id(), gateway, agent, seq, kind: Arc::from(kind), at_ms, body: Bytes::from(body) })
    }
}

/// Whether `id` is a message id as [`new_id`] makes them.
fn valid_id(id: &str) -> bool {
    id.len() == 36 && id.starts_with("msg_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Message {
    /// The message as the shared store keeps it: `ID AT_MS SEQ GATEWAY AGENT KIND BODY`
    /// (`shared::deliveries`: its scripts read the first two fields).
    pub fn encode(&self) -> Vec<u8> {
        let head = format!("{} {} {} {} {} {} ", self.id, self.at_ms, self.seq, self.gateway, self.agent, self.kind);
        let mut out = Vec::with_capacity(head.len() + self.body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// A message read back from the shared store, validated like network input (anyone who
    /// can write to Redis could have put it there, and ccgate signs what it sends): an id
    /// ccgate makes, names of the characters ccgate's have, a JSON body within bounds.
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let mut parts = raw.splitn(7, |b| *b == b' ');
        let mut text = || std::str::from_utf8(parts.next()?).ok();
        let id = text().filter(|i| valid_id(i))?;
        let at_ms = text()?.parse().ok()?;
        let seq = text()?.parse().ok()?;
        let gateway = text()?;
        let agent = text()?;
        let kind = text().filter(|k| crate::shared::valid_event_kind(k))?;
        if !crate::shared::deliveries::valid_lane(&crate::shared::deliveries::lane_name(gateway, agent)) {
            return None;
        }
        let body = parts.next()?;
        if body.len() > MAX_BODY_BYTES || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
            return None;
        }
        Some(Self {
            id: Arc::from(id),
            gateway: Arc::from(gateway),
            agent: Arc::from(agent),
            seq,
            kind: Arc::from(kind),
            at_ms,
            body: Bytes::copy_from_slice(body),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stored_message_reads_back_the_same_and_garbage_does_not() {
        let ev = br#"{"eventType":"E","workNo":"153"}"#;
        let m = Message::build("acme".into(), "153".into(), 9, "AgentEvent_X", ev, 1_796_630_400_000).unwrap();
        let raw = m.encode();
        assert_eq!(crate::shared::deliveries::message_head(&raw), Some((&*m.id, m.at_ms)));
        let back = Message::decode(&raw).unwrap();
        assert_eq!(
            (&back.id, &back.gateway, &back.agent, back.seq, &back.kind, back.at_ms),
            (&m.id, &m.gateway, &m.agent, 9, &m.kind, m.at_ms)
        );
        assert_eq!(back.body, m.body);
        let good = String::from_utf8(raw).unwrap();
        for bad in [
            good.replacen("msg_", "msx_", 1),
            good.replacen(" acme ", " Acme ", 1),
            good.replacen(" 153 ", " 1 53 ", 1),
            good.replacen("AgentEvent_X", "Agent\u{1b}X", 1),
            good.replacen("{\"type\"", "not json {", 1),
            format!("{good}{}", " ".repeat(MAX_BODY_BYTES)),
            String::new(),
        ] {
            assert!(Message::decode(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn the_body_is_type_timestamp_and_data() {
        let ev = br#"{"eventType":"AgentConf_Created","workNo":"1001","content":{"confId":7}}"#;
        let m = Message::build("acme".into(), "1001".into(), 3, "AgentConf_Created", ev, 1_700_000_000_123).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(v["type"], "AgentConf_Created");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["data"]["gateway"], "acme");
        assert_eq!(v["data"]["agent"], "1001");
        assert_eq!(v["data"]["seq"], 3);
        assert_eq!(v["data"]["event"]["content"]["confId"], 7);
        assert!(m.id.starts_with("msg_") && m.id.len() == 36, "{}", m.id);
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn what_is_not_json_or_too_big_is_not_built() {
        assert!(Message::build("a".into(), "1".into(), 1, "x", b"{not json", 0).is_none());
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_BODY_BYTES));
        assert!(Message::build("a".into(), "1".into(), 1, "x", big.as_bytes(), 0).is_none());
    }
}

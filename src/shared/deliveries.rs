//! The webhooks' delivery state in the shared store (issue 36): for each endpoint, a lane
//! per agent (its pending events, in order), the lanes ordered by when each may be tried
//! next, the head's attempt count, and the given-up events. A replica *claims* a due lane for
//! a while ([`Deliveries::claim`]): the lane's next-try time moves to the end of the claim,
//! so no other replica takes it while the claimer is alive; the claimer extends its claims
//! while attempts run ([`Deliveries::hold`]) and settles each ([`Deliveries::settle`]). A
//! replica that dies leaves its claims to run out, and the lanes are due again for any other
//! replica: a delivery is resumed within a claim, and sent twice only when the dead replica's
//! attempt had reached the receiver (the same `webhook-id` both times).
//!
//! What is stored is opaque here, in two shapes that the Lua scripts read a few fields of:
//! a message (`ID AT_MS ...`: the event's id and when it was taken, then what the webhooks
//! layer needs, which it validates when it reads it back) and a given-up entry
//! (`AT_MS LANE ...\n` then the message, so a replay can put it back in its lane).

use std::time::Duration;

use super::StoreError;

/// A lane's name: `GATEWAY/AGENT`.
pub fn lane_name(gateway: &str, agent: &str) -> String {
    format!("{gateway}/{agent}")
}

/// Whether `lane` is a lane name as ccgate makes them: a gateway name (`[a-z0-9-]`), `/`, a
/// work number; bounded. A lane read back from the store that is not is skipped.
pub fn valid_lane(lane: &str) -> bool {
    let Some((gateway, agent)) = lane.split_once('/') else { return false };
    lane.len() <= 96
        && !gateway.is_empty()
        && gateway.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !agent.is_empty()
        && agent.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The most a stored message may be: a webhook body's bound and its header fields.
pub const MAX_STORED_MESSAGE: usize = 18 * 1024;

/// How much one endpoint's pending events may hold, all lanes together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub events: usize,
    /// The stored messages' bytes.
    pub bytes: usize,
}

/// A lane's head, claimed for an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub lane: String,
    pub message: Vec<u8>,
    /// Attempts the head has had before this one.
    pub attempts: u32,
}

/// How an attempt at a lane's head ended.
#[derive(Debug, Clone, Copy)]
pub enum Settlement<'a> {
    /// A 2xx: the head leaves the lane; the next is due at once.
    Delivered,
    /// Try the head again after this wait; `counted`: the attempt counts against the
    /// schedule (a disabled endpoint's held head does not).
    Retry { after: Duration, counted: bool },
    /// Every attempt used: the head leaves the lane as `entry` in the given-up list, which
    /// keeps its newest `max_failed`.
    GiveUp { entry: &'a [u8], max_failed: usize },
}

/// What [`Deliveries::settle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Done,
    /// Done, and the given-up list's oldest entry made room (no longer replayable).
    Evicted,
    /// The lane's head is no longer that event: another replica settled it (this replica's
    /// claim had run out), so nothing was done.
    NotHead,
}

/// An endpoint's delivery state at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events waiting, in flight included.
    pub pending: u64,
    /// When the oldest lane head was taken (Unix ms).
    pub oldest_ms: Option<u64>,
    /// When the next lane is due (Unix ms; the store's clock).
    pub next_due_ms: Option<u64>,
    pub failed: u64,
    /// The newest given-up entries, newest first.
    pub recent_failed: Vec<Vec<u8>>,
    /// Why the endpoint is disabled (the webhooks layer's text), if it is.
    pub disabled: Option<Vec<u8>>,
}

/// The webhooks' delivery state, shared by the replicas (see the module's comment). Every
/// operation is on one endpoint's keys, atomic (a Lua script on Redis, one critical section
/// in memory), on the store's clock.
#[async_trait::async_trait]
pub trait Deliveries: Send + Sync {
    /// The agent's next sequence number (one more than its last event's, every endpoint
    /// together; kept for [`SEQ_AGE`] after the agent's last event).
    async fn next_seq(&self, lane: &str) -> Result<u64, StoreError>;
    /// Appends `message` (taken at `at_ms`) to `lane`; `false` when it would pass `bound`. A
    /// message whose id is already the lane's last is not appended again (a push retried
    /// after its answer was lost): `true`.
    async fn push(
        &self,
        endpoint: &str,
        lane: &str,
        at_ms: u64,
        message: &[u8],
        bound: Bound,
    ) -> Result<bool, StoreError>;
    /// Claims up to `max` lanes due now for this replica, for `hold`: their heads, oldest due first.
    async fn claim(&self, endpoint: &str, max: usize, hold: Duration) -> Result<Vec<Claimed>, StoreError>;
    /// Extends this replica's claims on `lanes` to `hold` from now (attempts still running).
    async fn hold(&self, endpoint: &str, lanes: &[&str], hold: Duration) -> Result<(), StoreError>;
    /// Settles the attempt at `lane`'s head, which must still be event `id`.
    async fn settle(&self, endpoint: &str, lane: &str, id: &str, how: Settlement<'_>) -> Result<Settled, StoreError>;
    /// Puts the given-up events taken at or after `since_ms` back at the ends of their lanes,
    /// oldest first; how many.
    async fn replay(&self, endpoint: &str, since_ms: u64) -> Result<usize, StoreError>;
    async fn summary(&self, endpoint: &str, recent: usize) -> Result<Summary, StoreError>;
    /// Disables the endpoint for every replica (`Some(why)`), or enables it.
    async fn set_disabled(&self, endpoint: &str, why: Option<&[u8]>) -> Result<(), StoreError>;
}

/// How long an agent's sequence number is kept after its last event: a week, so an agent's
/// numbers go on across shifts and restarts; one that is silent longer starts again at 1.
pub const SEQ_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The event id and time at the start of a stored message, as the scripts read them
/// (`^(%S+) (%d+) `).
pub fn message_head(m: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(m.get(..m.len().min(64))?).ok().or_else(|| {
        // A cut through a multi-byte character: the head fields are ASCII, before it.
        let upto = m.iter().take(64).position(|b| *b >= 0x80).unwrap_or(0);
        std::str::from_utf8(&m[..upto]).ok()
    })?;
    let mut parts = text.splitn(3, ' ');
    let id = parts.next().filter(|s| !s.is_empty())?;
    let at = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((id, at))
}

/// The given-up entry of `message` (`AT_MS LANE GIVEN_UP_MS ATTEMPTS WHY\nMESSAGE`); `why`
/// loses any line break.
pub fn failed_entry(lane: &str, message: &[u8], given_up_ms: u64, attempts: u32, why: &str) -> Option<Vec<u8>> {
    let (_, at_ms) = message_head(message)?;
    let why: String = why.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect();
    let mut e = format!("{at_ms} {lane} {given_up_ms} {attempts} {why}\n").into_bytes();
    e.extend_from_slice(message);
    Some(e)
}

/// A given-up entry's parts: (lane, given up at, attempts, why, message).
pub fn parse_failed_entry(e: &[u8]) -> Option<(&str, u64, u32, &str, &[u8])> {
    let nl = e.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&e[..nl]).ok()?;
    let mut parts = head.splitn(5, ' ');
    let _at: u64 = parts.next()?.parse().ok()?;
    let lane = parts.next().filter(|l| valid_lane(l))?;
    let given_up = parts.next()?.parse().ok()?;
    let attempts = parts.next()?.parse().ok()?;
    let why = parts.next().unwrap_or("");
    Some((lane, given_up, attempts, why, &e[nl + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_heads_and_given_up_entries_read_back() {
        assert!(valid_lane("default/153") && valid_lane("acme-eu/1001"));
        for bad in ["", "153", "/153", "default/", "Default/153", "a b/1", "a/1 2", &format!("a/{}", "1".repeat(100))] {
            assert!(!valid_lane(bad), "{bad:?}");
        }
        let m = b"msg_00ff 1796630400000 rest of it";
        assert_eq!(message_head(m), Some(("msg_00ff", 1_796_630_400_000)));
        for bad in [&b""[..], b"msg_1", b"msg_1 x y", b"msg_1 12"] {
            assert_eq!(message_head(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let e = failed_entry("default/153", m, 9, 8, "HTTP 500\r\nInjected: 1").unwrap();
        let (lane, given_up, attempts, why, message) = parse_failed_entry(&e).unwrap();
        assert_eq!((lane, given_up, attempts, why, message), ("default/153", 9, 8, "HTTP 500  Injected: 1", &m[..]));
    }
}

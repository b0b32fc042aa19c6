//! `[sessions]`: how ccgate holds agents' gateway sessions (polling, back-off, event buffer,
//! idle sign-out, sign-in queue) and how many it holds.

use serde::{Deserialize, Serialize};

/// Open event streams (`GET /v1/events`) per agent on one replica: a desktop client, a
/// supervisor view and a backend or two, with room for a reconnect racing its predecessor.
/// Each costs ~10 KiB; the newest past it is refused (429 `too-many-streams`).
pub const DEFAULT_MAX_STREAMS_PER_AGENT: usize = 8;
/// The gateway's long poll answers after about 10 s when idle; the read timeout must be above
/// that or every idle poll would look like a failure.
pub const DEFAULT_POLL_TIMEOUT_MS: u64 = 15_000;
/// Huawei's clients pause 200-500 ms between polls; 300 ms is in that band.
pub const DEFAULT_POLL_PAUSE_MS: u64 = 300;
/// First back-off after a failed poll; doubled up to the maximum.
pub const DEFAULT_POLL_BACKOFF_MS: u64 = 500;
/// Cap of the poll back-off: well inside MAXTIME (120 s) so a recovering gateway does not sign
/// the agent out for silence.
pub const DEFAULT_POLL_BACKOFF_MAX_MS: u64 = 10_000;
/// How long `POST /v1/conference` waits for the gateway's RequestSuccess/RequestFailed event
/// before answering 202 (pending). Conference set-up normally completes in under a second.
pub const DEFAULT_CONFERENCE_WAIT_MS: u64 = 5_000;
/// How long `agentevent` on the pass-through face waits for an event before answering
/// empty: the gateway's own long-poll wait, so integrators' pacing stays right.
pub const DEFAULT_FACE_EVENT_WAIT_MS: u64 = 10_000;
/// Events kept per agent for the app; an app that reconnects within a few minutes of normal
/// call-center traffic (a few events a minute) can resume without a gap.
pub const DEFAULT_EVENT_BUFFER: usize = 256;
/// An agent whose app has sent nothing this long is signed out at the gateway: 120 s is the
/// gateway's own MAXTIME, so ccgate's polling never keeps alive an agent nobody uses.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Agents one replica holds at most: memory is bounded by configuration, not by traffic.
/// 10,000 is the scale the benchmark measures (bench/RESULTS.md, scenario d); raise it with
/// the memory the README's sizing table gives.
pub const DEFAULT_MAX_AGENTS: usize = 10_000;
/// Gateway sign-ins in flight at once. A sign-in is one round trip of a few milliseconds, so
/// 32 at once sign 10,000 agents in within seconds while never opening thousands of
/// connections and sign-ins at the gateway in the same instant.
pub const DEFAULT_SIGNIN_CONCURRENCY: usize = 32;
/// Sign-ins queued behind those: a whole 10,000-agent storm waits its turn instead of failing.
pub const DEFAULT_SIGNIN_QUEUE: usize = 10_000;
/// Re-polls after a failure start at most 200 a second: 10,000 agents are all polling again
/// within 50 s of a gateway's return, well inside its 120 s MAXTIME, and it never gets more
/// than 20 of them in any 100 ms.
pub const DEFAULT_REPOLL_RATE: u32 = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    pub poll_timeout_ms: u64,
    pub poll_pause_ms: u64,
    pub poll_backoff_ms: u64,
    pub poll_backoff_max_ms: u64,
    pub conference_wait_ms: u64,
    pub event_buffer: usize,
    /// Sign the agent out after this much silence from its app; 0 never does.
    pub idle_timeout_ms: u64,
    /// When the gateway ends a session, sign in again (once) and retry the request (once).
    /// Off by default: an agent forced out by a supervisor should stay out.
    pub resume: bool,
    /// Sign every agent out at the gateway when ccgate shuts down.
    pub sign_out_on_shutdown: bool,
    /// `agentevent` on the pass-through face waits this long for an event.
    pub face_event_wait_ms: u64,
    /// Agents this replica holds at most; a sign-in past it gets 503 `too-many-agents`.
    pub max_agents: usize,
    /// Open event streams per agent on this replica; the newest past it gets 429
    /// `too-many-streams`.
    pub max_streams_per_agent: usize,
    /// Gateway sign-ins in flight at once; more wait in a queue.
    pub signin_concurrency: usize,
    /// Sign-ins waiting for a turn at most; past it 503 `sign-in-busy`.
    pub signin_queue: usize,
    /// Polls after a failure start at most this many per second (all agents together); 0
    /// does not pace.
    pub repoll_rate: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            poll_timeout_ms: DEFAULT_POLL_TIMEOUT_MS,
            poll_pause_ms: DEFAULT_POLL_PAUSE_MS,
            poll_backoff_ms: DEFAULT_POLL_BACKOFF_MS,
            poll_backoff_max_ms: DEFAULT_POLL_BACKOFF_MAX_MS,
            conference_wait_ms: DEFAULT_CONFERENCE_WAIT_MS,
            event_buffer: DEFAULT_EVENT_BUFFER,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            resume: false,
            sign_out_on_shutdown: true,
            face_event_wait_ms: DEFAULT_FACE_EVENT_WAIT_MS,
            max_agents: DEFAULT_MAX_AGENTS,
            max_streams_per_agent: DEFAULT_MAX_STREAMS_PER_AGENT,
            signin_concurrency: DEFAULT_SIGNIN_CONCURRENCY,
            signin_queue: DEFAULT_SIGNIN_QUEUE,
            repoll_rate: DEFAULT_REPOLL_RATE,
        }
    }
}

//! The Lua scripts ccgate runs in Redis, each with its arguments as one Rust type: the order
//! of `KEYS` and `ARGV` is written once, in the type's `prepare`, and the script names each
//! argument in its first line (`local sid, ... = unpack(ARGV)`), so the two read side by side.
//! Each script touches the keys of one agent only (they share a hash tag), so each runs
//! atomically on one Redis Cluster shard as on one node. Time, where a script needs it, is
//! Redis's own (`TIME`), never a replica's clock. `shared::memory` implements the same
//! semantics in process; `tests/it/store_contract.rs` holds the two to each other.
//!
//! Session hash fields: `sid` (which sign-in), `epoch` (the fencing token, raised at every
//! takeover), `guid`, `cookies` (JSON array), `answer` (the gateway's sign-in answer),
//! `resumable`, `conf` (JSON), `confv` (its version), `activity` (ms, Redis time), `qcursor`
//! (the pass-through queue's position in the event stream), `since` (when the agent was
//! signed in, Unix ms), `tenant` (the signing-in token's; empty for none), `authepoch`/`authseq` (the lease
//! holder's last Guid write), `evtok`/`evid` (the last append) and `state` (`active`, `out`
//! or `lost:REASON`).

use redis::{Script, ScriptInvocation};

use super::RecordState;

/// The keys of one agent.
pub(super) struct AgentKeys {
    pub session: String,
    pub lease: String,
    pub events: String,
    pub op: String,
}

/// Where a script announces its change: the channel and the message.
pub(super) struct Announce<'a> {
    pub channel: &'a str,
    pub message: &'a str,
}

pub(super) struct Scripts {
    pub health: Script,
    pub seen: Script,
    pub aged: Script,
    pub leave: Script,
    pub create: Script,
    pub acquire: Script,
    pub release: Script,
    pub write_auth: Script,
    pub write_conf: Script,
    pub append: Script,
    pub take_next: Script,
    pub end: Script,
    pub touch: Script,
    pub idle: Script,
    pub gcra: Script,
    pub wh_seq: Script,
    pub wh_push: Script,
    pub wh_claim: Script,
    pub wh_hold: Script,
    pub wh_settle: Script,
    pub wh_replay: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            health: Script::new(HEALTH),
            seen: Script::new(SEEN),
            aged: Script::new(AGED),
            leave: Script::new(LEAVE),
            create: Script::new(CREATE),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            write_auth: Script::new(WRITE_AUTH),
            write_conf: Script::new(WRITE_CONF),
            append: Script::new(APPEND),
            take_next: Script::new(TAKE_NEXT),
            end: Script::new(END),
            touch: Script::new(TOUCH),
            idle: Script::new(IDLE),
            gcra: Script::new(GCRA),
            wh_seq: Script::new(WH_SEQ),
            wh_push: Script::new(WH_PUSH),
            wh_claim: Script::new(WH_CLAIM),
            wh_hold: Script::new(WH_HOLD),
            wh_settle: Script::new(WH_SETTLE),
            wh_replay: Script::new(WH_REPLAY),
        }
    }
}

/// A new session record (a sign-in) or one put back (`restore`: only if absent). Returns the
/// epoch, or 0 when `restore` found a session already there.
///
/// Epochs (the fencing tokens) are drawn from Redis's clock: the record's epoch + 1, or the
/// time in ms if that is higher. Milliseconds: 13 digits, which Redis's Lua prints exactly
/// (`%.14g`), so ccgate 0.1's scripts still read and write them during a rolling upgrade. A failover can lose the last epoch written on the
/// old primary (replication is asynchronous); a counter would then hand the same epoch to a
/// second owner, but the clock has moved on by the failover's seconds, so the new primary's
/// next epoch is above any the old one issued (docs/redis.md, "Leases across a failover").
pub(super) struct Create<'a> {
    pub replica: &'a str,
    pub sid: &'a str,
    pub guid: &'a str,
    pub cookies: &'a str,
    pub answer: &'a [u8],
    pub resumable: bool,
    pub conf: &'a str,
    pub since: u64,
    pub restore: bool,
    /// Empty for none.
    pub tenant: &'a str,
}

const CREATE: &str = r#"
local function last_epoch(key)
  -- A planted value (nan, inf, negative, past 2^53) counts as none: it must not stop the agent.
  local e = tonumber(redis.call('HGET', key, 'epoch')) or 0
  if e ~= e or e < 0 or e >= 9007199254740992 then return 0 end
  return e
end
local replica, sid, guid, cookies, answer, resumable, conf, since, mode, tenant = unpack(ARGV)
if mode == 'restore' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local epoch = string.format('%.0f', math.max(last_epoch(KEYS[1]) + 1, t[1] * 1000 + math.floor(t[2] / 1000)))
redis.call('DEL', KEYS[1])
if mode == 'create' then redis.call('DEL', KEYS[3]) end
redis.call('HSET', KEYS[1], 'sid', sid, 'epoch', epoch, 'guid', guid, 'cookies', cookies,
  'answer', answer, 'resumable', resumable, 'conf', conf, 'confv', 1, 'activity', now,
  'qcursor', '0-0', 'state', 'active', 'since', since, 'tenant', tenant)
redis.call('SET', KEYS[2], replica .. ' ' .. epoch)
return tonumber(epoch)
"#;

impl Create<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.session).key(&k.lease).key(&k.events);
        inv.arg(self.replica).arg(self.sid).arg(self.guid).arg(self.cookies);
        inv.arg(self.answer).arg(if self.resumable { "1" } else { "0" }).arg(self.conf).arg(self.since);
        inv.arg(if self.restore { "restore" } else { "create" }).arg(self.tenant);
        inv
    }
}

/// Takes the lease of an active session and raises the epoch (see [`Create`] for how epochs
/// are drawn), if nobody holds it, if this replica holds it under an older epoch (a failover
/// lost this replica's last lease write), or if `expected` (`replica epoch`, read by the
/// caller: a holder whose index entry went stale) still holds it and took it more than a lease
/// ago: a lease taken within the last lease is its holder's, whatever an older read of the
/// index said, so two survivors working from the same stale list never take it from each
/// other. Leases have no expiry: they change hands here, at release, or when the session ends.
/// Returns {1, epoch}, {-1, holder} or {0, ''} (no active session; a lease left behind is
/// removed).
pub(super) struct Acquire<'a> {
    pub replica: &'a str,
    /// Empty: only a free lease (or this replica's own) is taken.
    pub expected: &'a str,
    pub lease_ms: u64,
}

const ACQUIRE: &str = r#"
local function last_epoch(key)
  -- A planted value (nan, inf, negative, past 2^53) counts as none: it must not stop the agent.
  local e = tonumber(redis.call('HGET', key, 'epoch')) or 0
  if e ~= e or e < 0 or e >= 9007199254740992 then return 0 end
  return e
end
local replica, expected, lease_ms = unpack(ARGV)
local cur = redis.call('GET', KEYS[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if cur then
  local holder, held = string.match(cur, '^(%S+) (%d+)$')
  if holder ~= replica then
    if cur ~= expected then return {-1, cur} end
    -- Fresh: taken within the last lease. An epoch ahead of the clock (planted, or drawn
    -- before a failover to a node whose clock is behind) says nothing of when: not fresh.
    local at = tonumber(held)
    if at and at > now - tonumber(lease_ms) and at <= now then return {-1, cur} end
  end
end
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then
  if cur then redis.call('DEL', KEYS[2]) end
  return {0, ''}
end
local epoch = string.format('%.0f', math.max(last_epoch(KEYS[1]) + 1, now))
redis.call('HSET', KEYS[1], 'epoch', epoch)
redis.call('SET', KEYS[2], replica .. ' ' .. epoch)
return {1, epoch}
"#;

impl Acquire<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.session).key(&k.lease).arg(self.replica).arg(self.expected).arg(self.lease_ms);
        inv
    }
}

/// Deletes a lock or lease only if it still holds `token`.
pub(super) struct Release<'a> {
    pub token: &'a str,
}

const RELEASE: &str = r#"
local token = unpack(ARGV)
if redis.call('GET', KEYS[1]) == token then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl Release<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, key: &str) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(key).arg(self.token);
        inv
    }
}

/// A new Guid and cookies. 1 written, 0 gone, -1 stale.
/// - Another replica's write must find the Guid its call used (so two rotations never go
///   backwards).
/// - The poller's write must carry the record's epoch (an owner that lost its lease writes
///   nothing) and a write number above the last one of that epoch: the poller takes every
///   new Guid first, so its newest write is the newest Guid, and a write of its that Redis
///   runs late (sent while Redis was paused, given up on, run when it woke) cannot put an
///   older Guid back over a newer one.
pub(super) struct WriteAuth<'a> {
    pub sid: &'a str,
    pub replied_to: &'a str,
    pub guid: &'a str,
    pub cookies: &'a str,
    /// The poller's epoch and write number; `None` from other replicas.
    pub poller: Option<(u64, u64)>,
    pub announce: Announce<'a>,
}

const WRITE_AUTH: &str = r#"
local sid, replied_to, guid, cookies, epoch, seq, channel, message = unpack(ARGV)
-- One read of every field it compares: a rotation is the idle fleet's most frequent write
-- (each agent once a minute), so its commands count (issue 39).
local cur = redis.call('HMGET', KEYS[1], 'sid', 'state', 'epoch', 'authepoch', 'authseq', 'guid')
if cur[1] ~= sid then return 0 end
if cur[2] ~= 'active' then return 0 end
if epoch ~= '' then
  if cur[3] ~= epoch then return -1 end
  if cur[4] == epoch and tonumber(seq) <= (tonumber(cur[5]) or 0) then return -1 end
  redis.call('HSET', KEYS[1], 'guid', guid, 'cookies', cookies, 'authepoch', epoch, 'authseq', seq)
else
  if cur[6] ~= replied_to then return -1 end
  redis.call('HSET', KEYS[1], 'guid', guid, 'cookies', cookies)
end
redis.call('PUBLISH', channel, message)
return 1
"#;

impl WriteAuth<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        let (epoch, seq) = self.poller.map_or((String::new(), 0), |(e, n)| (e.to_string(), n));
        inv.key(&k.session).arg(self.sid).arg(self.replied_to).arg(self.guid).arg(self.cookies);
        inv.arg(epoch).arg(seq).arg(self.announce.channel).arg(self.announce.message);
        inv
    }
}

/// Compare-and-set of the conference state on its version: {1, version} written;
/// {-1, version, conf} someone changed it first; {0} gone.
pub(super) struct WriteConf<'a> {
    pub sid: &'a str,
    pub version: u64,
    pub conf: &'a str,
    pub announce: Announce<'a>,
}

const WRITE_CONF: &str = r#"
local sid, version, conf, channel, message = unpack(ARGV)
if redis.call('HGET', KEYS[1], 'sid') ~= sid then return {0} end
local v = redis.call('HGET', KEYS[1], 'confv')
if v ~= version then return {-1, v, redis.call('HGET', KEYS[1], 'conf')} end
local nv = redis.call('HINCRBY', KEYS[1], 'confv', 1)
redis.call('HSET', KEYS[1], 'conf', conf)
redis.call('PUBLISH', channel, message)
return {1, tostring(nv)}
"#;

impl WriteConf<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.session).arg(self.sid).arg(self.version).arg(self.conf);
        inv.arg(self.announce.channel).arg(self.announce.message);
        inv
    }
}

/// Appends one event; returns its id (the given one, or Redis's own when the stream is
/// already past it), or nil when the session is gone or signed out (the sign-out emptied the
/// stream, and a stream begun again would outlive the tombstone: it has no expiry). Idempotent: the session remembers the
/// last given id (`evtok`) and what it became (`evid`), so an append sent again because its
/// answer timed out (Redis may still run a command whose client gave up, as a paused Redis
/// does when it wakes) is not recorded twice. Not fenced by epoch: an event the gateway
/// handed to a poll exists once, so an owner that lost its lease while that poll was out
/// still records it.
pub(super) struct Append<'a> {
    pub sid: &'a str,
    pub cap: usize,
    /// `ms-seq`, the stream id the replica gave the event.
    pub id: &'a str,
    pub kind: &'a str,
    pub data: &'a [u8],
    pub announce: Announce<'a>,
}

const APPEND: &str = r#"
local sid, cap, id, kind, data, channel, message = unpack(ARGV)
local h = redis.call('HMGET', KEYS[1], 'sid', 'state', 'evtok', 'evid')
if h[1] ~= sid or h[2] == 'out' then return false end
if h[3] == id then return h[4] end
local r = redis.pcall('XADD', KEYS[2], 'MAXLEN', cap, id, 'k', kind, 'd', data)
local got = r
if type(r) == 'table' and r.err then
  got = redis.call('XADD', KEYS[2], 'MAXLEN', cap, '*', 'k', kind, 'd', data)
end
redis.call('HSET', KEYS[1], 'evtok', id, 'evid', got)
redis.call('PUBLISH', channel, message)
return got
"#;

impl Append<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.session).key(&k.events).arg(self.sid).arg(self.cap).arg(self.id);
        inv.arg(self.kind).arg(self.data).arg(self.announce.channel).arg(self.announce.message);
        inv
    }
}

/// The pass-through queue: the next event after the shared cursor, and the cursor moved past
/// it, so each event goes to one poll whichever replica answers it. {id, fields} or nil.
pub(super) struct TakeNext<'a> {
    pub sid: &'a str,
}

const TAKE_NEXT: &str = r#"
local sid = unpack(ARGV)
if redis.call('HGET', KEYS[1], 'sid') ~= sid then return false end
local c = redis.call('HGET', KEYS[1], 'qcursor') or '0-0'
local r = redis.call('XRANGE', KEYS[2], '(' .. c, '+', 'COUNT', 1)
if #r == 0 then return false end
redis.call('HSET', KEYS[1], 'qcursor', r[1][1])
return r[1]
"#;

impl TakeNext<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.session).key(&k.events).arg(self.sid);
        inv
    }
}

/// Ends a session. `out` (signed out) leaves a tombstone for a while, so a replica that finds
/// no record knows Redis lost it rather than that the agent signed out; it wins over
/// `lost:REASON`, which keeps the record (every replica answers "sign in again") and applies
/// only to an active session, and only if the record still holds `refused` (when given).
/// 1 ended, 0 gone or already ended, -1 that Guid was already replaced.
pub(super) struct End<'a> {
    pub sid: &'a str,
    pub state: RecordState,
    pub refused: &'a str,
    pub tombstone_ms: u64,
    pub announce: Announce<'a>,
}

const END: &str = r#"
local sid, state, refused, channel, message, tombstone_ms = unpack(ARGV)
if redis.call('HGET', KEYS[1], 'sid') ~= sid then return 0 end
if state == 'out' then
  redis.call('HSET', KEYS[1], 'state', 'out', 'guid', '-', 'cookies', '[]')
  redis.call('PEXPIRE', KEYS[1], tombstone_ms)
  redis.call('DEL', KEYS[2], KEYS[3])
else
  if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
  if refused ~= '' and redis.call('HGET', KEYS[1], 'guid') ~= refused then return -1 end
  redis.call('HSET', KEYS[1], 'state', state)
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', channel, message)
return 1
"#;

impl End<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.session).key(&k.lease).key(&k.events);
        inv.arg(self.sid).arg(self.state.as_field()).arg(self.refused);
        inv.arg(self.announce.channel).arg(self.announce.message).arg(self.tombstone_ms);
        inv
    }
}

/// Records app activity now (Redis time).
pub(super) struct Touch<'a> {
    pub sid: &'a str,
}

const TOUCH: &str = r#"
local sid = unpack(ARGV)
if redis.call('HGET', KEYS[1], 'sid') ~= sid then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'activity', t[1] * 1000 + math.floor(t[2] / 1000))
return 1
"#;

/// Milliseconds since the last activity on any replica, or -1.
pub(super) struct Idle<'a> {
    pub sid: &'a str,
}

const IDLE: &str = r#"
local sid = unpack(ARGV)
if redis.call('HGET', KEYS[1], 'sid') ~= sid then return -1 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return now - (tonumber(redis.call('HGET', KEYS[1], 'activity')) or now)
"#;

impl Touch<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.session).arg(self.sid);
        inv
    }
}

impl Idle<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &AgentKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.session).arg(self.sid);
        inv
    }
}

/// GCRA (the algorithm governor implements) on Redis's clock: the key holds the theoretical
/// arrival time. Takes up to `want` tokens, as many as the bucket holds (at least one).
/// Returns {taken, remaining} or {0, µs to wait}.
pub(super) struct GcraCheck {
    pub interval_us: u64,
    pub burst: u32,
    pub want: u32,
}

const GCRA: &str = r#"
local interval_us, burst, want = unpack(ARGV)
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local interval = tonumber(interval_us)
local tolerance = interval * tonumber(burst)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local available = math.floor((now + tolerance - tat) / interval)
if available < 1 then return {0, tat + interval - tolerance - now} end
local taken = math.min(tonumber(want), available)
local new_tat = tat + taken * interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(tolerance / 1000) + 1000)
return {taken, available - taken}
"#;

impl GcraCheck {
    pub fn prepare<'s>(&self, s: &'s Script, key: &str) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(key).arg(self.interval_us).arg(self.burst).arg(self.want.max(1));
        inv
    }
}

/// The readiness probe's check: a script that writes (a node that is up but no longer the
/// primary answers `READONLY` here, where a `PING` would pass). The key is this replica's
/// and expires by itself.
pub(super) struct Health<'a> {
    pub replica: &'a str,
}

const HEALTH: &str = r#"
local replica = unpack(ARGV)
local t = redis.call('TIME')
redis.call('SET', KEYS[1], replica, 'PX', 60000)
return tonumber(t[1])
"#;

impl Health<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, key: &str) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(key).arg(self.replica);
        inv
    }
}

/// Marks `members` of a sorted set as seen now, on Redis's clock: agents in the agents index
/// (a holder's whole round in one `ZADD`), a replica in the replica set. Replicas' own clocks
/// never meet in a comparison.
pub(super) struct Seen<'a, M: AsRef<str>> {
    pub members: &'a [M],
    /// Scored this long before now: a released lease's agent is stale at once, without
    /// looking stale for longer than the others ([`Stale`]).
    pub back_ms: u64,
}

/// Members per [`Seen`] call (and leases per check): one `ZADD` of 512 members is well under a millisecond of
/// Redis's time, so a round of 10,000 agents never blocks Redis for long at once.
pub(super) const SEEN_BATCH: usize = 512;

const SEEN: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[1])
local args = {}
for i = 2, #ARGV do
  args[2 * i - 3] = now
  args[2 * i - 2] = ARGV[i]
end
return redis.call('ZADD', KEYS[1], unpack(args))
"#;

impl<M: AsRef<str>> Seen<'_, M> {
    pub fn prepare<'s>(&self, s: &'s Script, key: &str) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(key).arg(self.back_ms);
        for m in self.members {
            inv.arg(m.as_ref());
        }
        inv
    }
}

/// Members of a sorted set by how long ago they were seen, on Redis's clock, at most `max`:
/// seen longer ago than `age_ms` (`stale`: agents whose holder stopped refreshing them) or
/// within it (live replicas).
pub(super) struct Aged {
    pub age_ms: u64,
    pub max: usize,
    pub stale: bool,
}

const AGED: &str = r#"
local age_ms, max, stale = unpack(ARGV)
local t = redis.call('TIME')
local cut = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(age_ms)
if stale == '1' then return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cut, 'LIMIT', 0, max) end
return redis.call('ZRANGEBYSCORE', KEYS[1], cut, '+inf', 'LIMIT', 0, max)
"#;

impl Aged {
    pub fn prepare<'s>(&self, s: &'s Script, key: &str) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(key).arg(self.age_ms).arg(self.max).arg(if self.stale { "1" } else { "0" });
        inv
    }
}

/// Leaves the replica set and drops replicas silent for `silent_ms` (Redis's clock); returns
/// how many remain.
pub(super) struct Leave<'a> {
    pub replica: &'a str,
    pub silent_ms: u64,
}

const LEAVE: &str = r#"
local replica, silent_ms = unpack(ARGV)
redis.call('ZREM', KEYS[1], replica)
local t = redis.call('TIME')
local before = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(silent_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', before)
return redis.call('ZCARD', KEYS[1])
"#;

impl Leave<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, key: &str) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(key).arg(self.replica).arg(self.silent_ms);
        inv
    }
}

// --- webhooks' deliveries (`shared::deliveries`) ----------------------------------------------
//
// One endpoint's keys share the hash tag `{wh:NAME}`: `due` (zset: lane -> ms it may be taken;
// a claim moves it to the claim's end), `claim` (hash: lane -> the claiming replica), `tries`
// (hash: lane -> the head's attempts), `heads` (zset: lane -> when its head was taken, for the
// oldest pending age), `pending` and `bytes` (the count and size of the events waiting), `failed` (list of given-up
// entries, oldest first), `disabled`, and `lane:LANE` (list: the lane's messages, oldest
// first). A lane's list key is built in the script from the prefix and the lane read from
// `due`: it shares the tag, so it is on the same shard. Time is Redis's.

/// The keys of one endpoint's deliveries.
pub(super) struct EndpointKeys {
    pub due: String,
    pub claim: String,
    pub tries: String,
    pub heads: String,
    pub pending: String,
    /// The pending messages' bytes.
    pub bytes: String,
    pub failed: String,
    pub disabled: String,
    /// A lane's list key is this and the lane.
    pub lane_prefix: String,
}

impl EndpointKeys {
    pub fn lane(&self, lane: &str) -> String {
        format!("{}{lane}", self.lane_prefix)
    }
}

/// The agent's next sequence number; its key lives [`super::deliveries::SEQ_AGE`] after the
/// last.
pub(super) struct WhSeq {
    pub ttl_ms: u64,
}

const WH_SEQ: &str = r#"
local ttl_ms = unpack(ARGV)
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return n
"#;

impl WhSeq {
    pub fn prepare<'s>(&self, s: &'s Script, key: &str) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(key).arg(self.ttl_ms);
        inv
    }
}

/// Appends a message to its lane unless `max` events or `max_bytes` would pass; a lane that
/// was empty is due now. A message whose id is already the lane's last is not appended again
/// (a push retried after its answer was lost). Returns 1, or 0 when full.
pub(super) struct WhPush<'a> {
    pub lane: &'a str,
    pub at_ms: u64,
    pub message: &'a [u8],
    pub max: usize,
    pub max_bytes: usize,
}

const WH_PUSH: &str = r#"
local lane, at_ms, message, max, max_bytes = unpack(ARGV)
local id = string.match(message, '^(%S+) ')
local last = redis.call('LINDEX', KEYS[4], -1)
if id and last and string.sub(last, 1, #id + 1) == id .. ' ' then return 1 end
if (tonumber(redis.call('GET', KEYS[1])) or 0) >= tonumber(max) then return 0 end
if (tonumber(redis.call('GET', KEYS[5])) or 0) + #message > tonumber(max_bytes) then return 0 end
redis.call('RPUSH', KEYS[4], message)
redis.call('INCR', KEYS[1])
redis.call('INCRBY', KEYS[5], #message)
if redis.call('LLEN', KEYS[4]) == 1 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], 'NX', t[1] * 1000 + math.floor(t[2] / 1000), lane)
  redis.call('ZADD', KEYS[3], at_ms, lane)
end
return 1
"#;

impl WhPush<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &EndpointKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.pending).key(&k.due).key(&k.heads).key(k.lane(self.lane)).key(&k.bytes);
        inv.arg(self.lane).arg(self.at_ms).arg(self.message).arg(self.max).arg(self.max_bytes);
        inv
    }
}

/// Claims up to `max` lanes due now for `hold_ms`: {lane, head, attempts, ...}. A lane found
/// empty is forgotten.
pub(super) struct WhClaim<'a> {
    pub replica: &'a str,
    pub hold_ms: u64,
    pub max: usize,
}

const WH_CLAIM: &str = r#"
local replica, hold_ms, max, prefix = unpack(ARGV)
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local lanes = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(max))
local out = {}
for _, lane in ipairs(lanes) do
  local head = redis.call('LINDEX', prefix .. lane, 0)
  if head then
    redis.call('ZADD', KEYS[1], now + tonumber(hold_ms), lane)
    redis.call('HSET', KEYS[2], lane, replica)
    out[#out + 1] = lane
    out[#out + 1] = head
    out[#out + 1] = redis.call('HGET', KEYS[3], lane) or '0'
  else
    redis.call('ZREM', KEYS[1], lane)
    redis.call('ZREM', KEYS[4], lane)
    redis.call('HDEL', KEYS[2], lane)
    redis.call('HDEL', KEYS[3], lane)
  end
end
return out
"#;

impl WhClaim<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &EndpointKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.due).key(&k.claim).key(&k.tries).key(&k.heads);
        inv.arg(self.replica).arg(self.hold_ms).arg(self.max).arg(&k.lane_prefix);
        inv
    }
}

/// Extends `replica`'s claims on `lanes` to `hold_ms` from now (a lane another replica claimed
/// meanwhile is left alone).
pub(super) struct WhHold<'a> {
    pub replica: &'a str,
    pub hold_ms: u64,
    pub lanes: &'a [&'a str],
}

const WH_HOLD: &str = r#"
local replica, hold_ms = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == replica then
    redis.call('ZADD', KEYS[1], 'XX', now + hold_ms, ARGV[i])
  end
end
return 1
"#;

impl WhHold<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &EndpointKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.due).key(&k.claim).arg(self.replica).arg(self.hold_ms);
        for lane in self.lanes {
            inv.arg(*lane);
        }
        inv
    }
}

/// Settles the attempt at a lane's head: `done` (delivered), `retry` (counted) or `hold` (not
/// counted) after `after_ms`, `fail` (to the given-up list, its newest `max_failed` kept).
/// Returns 0 done, 1 done and an old given-up entry evicted, 2 not the head any more (or a
/// retry by a replica whose claim was taken over: nothing done). A delivery is recorded even
/// from a replica whose claim ran out (the event reached the receiver); the lane's schedule is
/// then left to its claimer.
pub(super) struct WhSettle<'a> {
    pub replica: &'a str,
    pub lane: &'a str,
    pub id: &'a str,
    pub how: &'a str,
    pub after_ms: u64,
    pub entry: &'a [u8],
    pub max_failed: usize,
}

const WH_SETTLE: &str = r#"
local replica, lane, id, how, after_ms, entry, max_failed = unpack(ARGV)
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local list = KEYS[7]
local mine = redis.call('HGET', KEYS[2], lane) == replica
local function next_head()
  local head = redis.call('LINDEX', list, 0)
  if head then
    redis.call('ZADD', KEYS[1], now, lane)
    redis.call('ZADD', KEYS[6], tonumber(string.match(head, '^%S+ (%d+) ')) or now, lane)
  else
    redis.call('ZREM', KEYS[1], lane)
    redis.call('ZREM', KEYS[6], lane)
  end
end
local head = redis.call('LINDEX', list, 0)
if not head or (head ~= id and string.sub(head, 1, #id + 1) ~= id .. ' ') then
  if mine then
    redis.call('HDEL', KEYS[2], lane)
    next_head()
  end
  return 2
end
if how == 'retry' or how == 'hold' then
  if not mine then return 2 end
  if how == 'retry' then redis.call('HINCRBY', KEYS[3], lane, 1) end
  redis.call('HDEL', KEYS[2], lane)
  redis.call('ZADD', KEYS[1], now + tonumber(after_ms), lane)
  return 0
end
if how == 'fail' and not mine then return 2 end
redis.call('LPOP', list)
if redis.call('DECR', KEYS[4]) < 0 then redis.call('SET', KEYS[4], 0) end
if redis.call('DECRBY', KEYS[8], #head) < 0 then redis.call('SET', KEYS[8], 0) end
redis.call('HDEL', KEYS[3], lane)
local evicted = 0
local keep = tonumber(max_failed)
if how == 'fail' and keep > 0 then
  if redis.call('LLEN', KEYS[5]) >= keep then evicted = 1 end
  redis.call('RPUSH', KEYS[5], entry)
  redis.call('LTRIM', KEYS[5], -keep, -1)
end
if mine then
  redis.call('HDEL', KEYS[2], lane)
  next_head()
elseif not redis.call('LINDEX', list, 0) then
  redis.call('ZREM', KEYS[6], lane)
end
return evicted
"#;

impl WhSettle<'_> {
    pub fn prepare<'s>(&self, s: &'s Script, k: &EndpointKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.due).key(&k.claim).key(&k.tries).key(&k.pending).key(&k.failed).key(&k.heads).key(k.lane(self.lane));
        inv.key(&k.bytes);
        inv.arg(self.replica).arg(self.lane).arg(self.id).arg(self.how).arg(self.after_ms).arg(self.entry);
        inv.arg(self.max_failed);
        inv
    }
}

/// Goes through the given-up list's oldest `count` entries: those of events taken at or
/// after `since_ms` go back at the ends of their lanes, the others to the list's end (so a
/// replay of the whole list, `count` at a time, leaves what stays in its order, and no one
/// call holds Redis long); entries that do not parse are dropped. Returns {replayed, gone
/// through, the list's length before}.
pub(super) struct WhReplay {
    pub since_ms: u64,
    pub count: usize,
}

const WH_REPLAY: &str = r#"
local since_ms, prefix, count = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local len = redis.call('LLEN', KEYS[1])
local n, seen = 0, math.min(count, len)
for _ = 1, seen do
  local e = redis.call('LPOP', KEYS[1])
  local at, lane, message = string.match(e, '^(%d+) (%S+) [^\n]*\n(.*)$')
  if at and tonumber(at) >= since_ms then
    local key = prefix .. lane
    redis.call('RPUSH', key, message)
    redis.call('INCR', KEYS[2])
    redis.call('INCRBY', KEYS[5], #message)
    if redis.call('LLEN', key) == 1 then
      redis.call('ZADD', KEYS[3], 'NX', now, lane)
      redis.call('ZADD', KEYS[4], at, lane)
    end
    n = n + 1
  elseif at then
    redis.call('RPUSH', KEYS[1], e)
  end
end
return {n, seen, len}
"#;

impl WhReplay {
    pub fn prepare<'s>(&self, s: &'s Script, k: &EndpointKeys) -> ScriptInvocation<'s> {
        let mut inv = s.prepare_invoke();
        inv.key(&k.failed).key(&k.pending).key(&k.due).key(&k.heads).key(&k.bytes);
        inv.arg(self.since_ms).arg(&k.lane_prefix).arg(self.count);
        inv
    }
}

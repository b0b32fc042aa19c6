//! The Lua scripts ccgate runs in Redis. Each touches the keys of one agent only (they share
//! a hash tag), so each runs atomically on one Redis Cluster shard as on one node. Time, where
//! a script needs it, is Redis's own (`TIME`), never a replica's clock.
//!
//! Session hash fields: `sid` (which sign-in), `epoch` (the fencing token, raised at every
//! takeover), `guid`, `cookies` (JSON array), `answer` (the gateway's sign-in answer),
//! `resumable`, `conf` (JSON), `confv` (its version), `activity` (ms, Redis time), `qcursor`
//! (the pass-through queue's position in the event stream) and `state` (`active` or
//! `lost:REASON`).

/// KEYS: session, lease, events. ARGV: replica, lease ttl ms, sid, guid, cookies, answer,
/// resumable, conf, mode (`create`: a new sign-in replaces whatever was there; `restore`:
/// put back a session Redis lost, only if it is absent). Returns the epoch, or 0 when
/// `restore` found a session already there.
pub const CREATE: &str = r#"
if ARGV[9] == 'restore' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = (tonumber(redis.call('HGET', KEYS[1], 'epoch')) or 0) + 1
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('DEL', KEYS[1])
if ARGV[9] == 'create' then redis.call('DEL', KEYS[3]) end
redis.call('HSET', KEYS[1], 'sid', ARGV[3], 'epoch', epoch, 'guid', ARGV[4], 'cookies', ARGV[5],
  'answer', ARGV[6], 'resumable', ARGV[7], 'conf', ARGV[8], 'confv', 1, 'activity', now,
  'qcursor', '0-0', 'state', 'active')
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return epoch
"#;

/// KEYS: session, lease. ARGV: replica, lease ttl ms. Takes the lease of an active session
/// nobody holds and raises the epoch. Returns {1, epoch}, {-1, holder} or {0, ''} (no active
/// session).
pub const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[2])
if cur then return {-1, cur} end
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return {0, ''} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return {1, tostring(epoch)}
"#;

/// KEYS: lease. ARGV: token (`replica epoch`), ttl ms. 1 renewed, 0 absent, -1 held by another.
pub const RENEW: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return -1 end
return 0
"#;

/// KEYS: lock or lease. ARGV: token. Deletes the key only if it still holds the token.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// KEYS: session. ARGV: sid, the Guid the answer replied to, new Guid, cookies, epoch (''
/// when not the poller), the poller's write number, channel, message. 1 written, 0 gone,
/// -1 stale.
/// - Another replica's write must find the Guid its call used (so two rotations never go
///   backwards).
/// - The poller's write must carry the record's epoch (an owner that lost its lease writes
///   nothing) and a write number above the last one of that epoch: the poller takes every
///   new Guid first, so its newest write is the newest Guid, and a write of its that Redis
///   runs late (sent while Redis was paused, given up on, run when it woke) cannot put an
///   older Guid back over a newer one.
pub const WRITE_AUTH: &str = r#"
if redis.call('HGET', KEYS[1], 'sid') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
if ARGV[5] ~= '' then
  if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[5] then return -1 end
  if redis.call('HGET', KEYS[1], 'authepoch') == ARGV[5]
     and tonumber(ARGV[6]) <= (tonumber(redis.call('HGET', KEYS[1], 'authseq')) or 0) then return -1 end
  redis.call('HSET', KEYS[1], 'guid', ARGV[3], 'cookies', ARGV[4], 'authepoch', ARGV[5], 'authseq', ARGV[6])
else
  if redis.call('HGET', KEYS[1], 'guid') ~= ARGV[2] then return -1 end
  redis.call('HSET', KEYS[1], 'guid', ARGV[3], 'cookies', ARGV[4])
end
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
"#;

/// KEYS: session. ARGV: sid, expected conf version, new conf, channel, message.
/// {1, version} written; {-1, version, conf} someone changed it first; {0} gone.
pub const WRITE_CONF: &str = r#"
if redis.call('HGET', KEYS[1], 'sid') ~= ARGV[1] then return {0} end
local v = redis.call('HGET', KEYS[1], 'confv')
if v ~= ARGV[2] then return {-1, v, redis.call('HGET', KEYS[1], 'conf')} end
local nv = redis.call('HINCRBY', KEYS[1], 'confv', 1)
redis.call('HSET', KEYS[1], 'conf', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {1, tostring(nv)}
"#;

/// KEYS: session, events. ARGV: sid, max length, id (the one the replica gave the event: its
/// clock, after the newest it knows), type, data, channel, message. Appends one event; returns
/// its id (the given one, or Redis's own when the stream is already past it), or nil when
/// the session is gone. Idempotent: the session remembers the last given id (`evtok`) and
/// what it became (`evid`), so an append sent again because its answer timed out (Redis may
/// still run a command whose client gave up, as a paused Redis does when it wakes) is not
/// recorded twice. Not fenced by epoch: an event the gateway handed to a poll exists once,
/// so an owner that lost its lease while that poll was out still records it.
pub const APPEND: &str = r#"
if redis.call('HGET', KEYS[1], 'sid') ~= ARGV[1] then return false end
if redis.call('HGET', KEYS[1], 'evtok') == ARGV[3] then return redis.call('HGET', KEYS[1], 'evid') end
local r = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[2], ARGV[3], 'k', ARGV[4], 'd', ARGV[5])
local id = r
if type(r) == 'table' and r.err then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'k', ARGV[4], 'd', ARGV[5])
end
redis.call('HSET', KEYS[1], 'evtok', ARGV[3], 'evid', id)
redis.call('PUBLISH', ARGV[6], ARGV[7])
return id
"#;

/// KEYS: session, events. ARGV: sid. The pass-through queue: the next event after the shared
/// cursor, and the cursor moved past it, so each event goes to one poll whichever replica
/// answers it. Returns {id, fields} or nil.
pub const TAKE_NEXT: &str = r#"
if redis.call('HGET', KEYS[1], 'sid') ~= ARGV[1] then return false end
local c = redis.call('HGET', KEYS[1], 'qcursor') or '0-0'
local r = redis.call('XRANGE', KEYS[2], '(' .. c, '+', 'COUNT', 1)
if #r == 0 then return false end
redis.call('HSET', KEYS[1], 'qcursor', r[1][1])
return r[1]
"#;

/// KEYS: session, lease, events. ARGV: sid, new state, the Guid the gateway refused (''
/// when the end is certain), channel, message, tombstone ms. `out` (signed out) leaves a
/// tombstone for a while, so a replica that finds no record knows Redis lost it rather than
/// that the agent signed out; it wins over `lost:REASON`, which keeps the record (every
/// replica answers "sign in again") and applies only to an active session. 1 ended, 0 gone
/// or already ended, -1 that Guid was already replaced (the refusal said nothing about the
/// current one).
pub const END: &str = r#"
if redis.call('HGET', KEYS[1], 'sid') ~= ARGV[1] then return 0 end
if ARGV[2] == 'out' then
  redis.call('HSET', KEYS[1], 'state', 'out', 'guid', '-', 'cookies', '[]')
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('DEL', KEYS[2], KEYS[3])
else
  if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
  if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'guid') ~= ARGV[3] then return -1 end
  redis.call('HSET', KEYS[1], 'state', ARGV[2])
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// KEYS: session. ARGV: sid. Records app activity now (Redis time).
pub const TOUCH: &str = r#"
if redis.call('HGET', KEYS[1], 'sid') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'activity', t[1] * 1000 + math.floor(t[2] / 1000))
return 1
"#;

/// KEYS: session. ARGV: sid. Milliseconds since the last activity on any replica, or -1.
pub const IDLE: &str = r#"
if redis.call('HGET', KEYS[1], 'sid') ~= ARGV[1] then return -1 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return now - (tonumber(redis.call('HGET', KEYS[1], 'activity')) or now)
"#;

/// KEYS: the limit's key. ARGV: emission interval µs, burst. GCRA (the algorithm governor
/// implements) on Redis's clock: the key holds the theoretical arrival time. Returns
/// {1, remaining} or {0, µs to wait}.
pub const GCRA: &str = r#"
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then return {0, allow_at - now} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(tolerance / 1000) + 1000)
return {1, math.floor((now - allow_at) / interval)}
"#;

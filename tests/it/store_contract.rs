//! The shared store's contract: every case runs twice, against the in-memory store the
//! session layer's unit tests use (`shared::memory`) and against a real redis-server running
//! the Lua scripts, through the same `SharedStore` trait. A change to a script that the
//! in-memory store does not mirror (or the other way round) fails here. Each case sees two
//! replicas (`a`, `b`) of one store, and may let time pass ([`Pair::pass`]), each store on its
//! own clock: the in-memory one on tokio's, paused (its tests jump it), Redis on real time
//! (its tests sleep, with lifetimes long enough to spare any machine's latency).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use ccgate::config::{Scope, StoreBackend, StoreConfig};
use ccgate::labels::LossReason;
use ccgate::metrics::Metrics;
use ccgate::shared::deliveries::{failed_entry, Bound, Settled, Settlement};
use ccgate::shared::memory::MemoryHub;
use ccgate::shared::redis::RedisStore;
use ccgate::shared::{
    AuthWrite, AuthWritten, Backend, Bucket, Change, ConfWrite, CreateMode, EndAs, EndOutcome, Grant, JournalList,
    Lease, NewEvent, NewRecord, RecordState, ReplicaIdentity, SharedStore, JOURNAL_ENTRY_MAX_BYTES, JOURNAL_MAX,
    REPLICA_SILENT_LEASES,
};
use common::redis::RedisServer;
use tokio::sync::mpsc;

const AGENT: &str = "153";

/// How long a pair's leases and sign-outs' tombstones live.
struct Lifetimes {
    lease: Duration,
    tombstone: Duration,
}

/// For the cases that let no time pass: nothing expires while they run.
const LASTING: Lifetimes = Lifetimes { lease: Duration::from_secs(30), tombstone: Duration::from_secs(600) };

/// For the cases that let time pass: short enough to wait out on Redis's real clock, long
/// enough that a loaded machine's latency (hundreds of ms between two commands, with the
/// whole suite running beside it in one process on two cores) cannot expire a lease, lock or
/// tombstone before a case has looked at it.
const SHORT: Lifetimes = Lifetimes { lease: Duration::from_secs(2), tombstone: Duration::from_secs(2) };

/// What Redis's expiry may lag behind a test's sleep: its clock counts whole ms, and a key
/// expires once that clock is past its time.
const MARGIN: Duration = Duration::from_millis(20);

struct Pair {
    a: Arc<dyn SharedStore>,
    b: Arc<dyn SharedStore>,
    store: Store,
}

/// The store behind a pair, for what a case does to it from outside.
enum Store {
    Memory(MemoryHub),
    Redis(RedisServer),
}

impl Pair {
    /// Lets `d` pass on the store's clock: the twin's (tokio's, paused) jumps by `d`; Redis's
    /// is real time, so this sleeps `d` and [`MARGIN`]. Anything that expires within `d`
    /// has expired afterwards; a case that checks something has not yet expired leaves it
    /// hundreds of ms to spare (see [`SHORT`]).
    async fn pass(&self, d: Duration) {
        match &self.store {
            Store::Memory(_) => tokio::time::advance(d).await,
            Store::Redis(_) => tokio::time::sleep(d + MARGIN).await,
        }
    }

    /// The store loses everything (Redis restarted empty).
    async fn lose_everything(&self) {
        match &self.store {
            Store::Memory(hub) => hub.flush_all(),
            Store::Redis(server) => redis::cmd("FLUSHALL").query_async::<()>(&mut server.conn().await).await.unwrap(),
        }
    }

    /// The store loses `agent`'s session record, and only that (its lease and events stay).
    async fn lose_record(&self, agent: &str) {
        match &self.store {
            Store::Memory(hub) => hub.lose_record(agent),
            Store::Redis(server) => {
                let key = format!("{}{{a:{agent}}}:session", StoreConfig::default().key_prefix);
                let deleted: i64 = redis::cmd("DEL").arg(&key).query_async(&mut server.conn().await).await.unwrap();
                assert_eq!(deleted, 1, "{key}");
            }
        }
    }

    /// The agent's lease holds `value` (a failover that lost the last lease write, or a
    /// planted value).
    async fn set_lease(&self, agent: &str, value: &str) {
        match &self.store {
            Store::Memory(hub) => hub.set_lease(agent, value),
            Store::Redis(server) => {
                let key = format!("{}{{a:{agent}}}:lease", StoreConfig::default().key_prefix);
                redis::cmd("SET").arg(&key).arg(value).query_async::<()>(&mut server.conn().await).await.unwrap();
            }
        }
    }

    /// Every follower's subscription drops and comes back: the twin goes down and up; Redis
    /// kills its pub/sub clients (`CLIENT KILL TYPE pubsub`: `b`'s follower only).
    async fn drop_subscriptions(&self) {
        match &self.store {
            Store::Memory(hub) => {
                hub.set_down(true);
                hub.set_down(false);
            }
            Store::Redis(server) => {
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut server.conn().await)
                    .await
                    .unwrap();
                assert_eq!(killed, 1, "one follower");
            }
        }
    }
}

fn memory(t: &Lifetimes) -> Pair {
    let hub = MemoryHub::new(t.lease, t.tombstone);
    Pair { a: hub.join(), b: hub.join(), store: Store::Memory(hub) }
}

async fn redis(t: &Lifetimes) -> Pair {
    let server = RedisServer::start().await;
    let cfg = StoreConfig {
        backend: StoreBackend::Redis,
        url: Some(ccgate::config::Secret::new(server.url())),
        lease_ttl_ms: t.lease.as_millis() as u64,
        ..StoreConfig::default()
    };
    let store = || async {
        let s = RedisStore::new(&cfg, Metrics::default(), t.tombstone).expect("redis store");
        s.connect().await.expect("connect");
        s as Arc<dyn SharedStore>
    };
    Pair { a: store().await, b: store().await, store: Store::Redis(server) }
}

/// Each case as two tests, its pair's leases and tombstones living `$lifetimes`:
/// `<case>::memory` on tokio's paused clock (which [`Pair::pass`] moves), and
/// `<case>::redis` on real time (a paused clock would jump ahead while Redis answers).
macro_rules! contract {
    ($lifetimes:ident: $($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(start_paused = true)]
            async fn memory() {
                super::$case(super::memory(&super::$lifetimes)).await;
            }
            #[tokio::test]
            async fn redis() {
                super::$case(super::redis(&super::$lifetimes).await).await;
            }
        }
    )*};
}

contract!(LASTING:
    records_round_trip_and_restore_only_fills_a_gap,
    leases_are_exclusive_and_every_acquire_raises_the_epoch,
    guid_writes_are_compare_and_set_and_fenced_by_epoch_and_number,
    conference_writes_are_compare_and_set_on_the_version,
    ends_are_conditional_and_sign_out_leaves_a_tombstone,
    appends_are_idempotent_bounded_and_read_alike_everywhere,
    activity_and_idle_time_are_the_stores,
    the_sign_in_lock_is_exclusive_until_released,
    the_index_finds_released_and_stale_agents,
    a_lease_put_back_under_an_older_epoch_is_its_holders_again,
    the_index_lists_agents_and_the_lease_names_its_holder,
    replicas_count_who_is_alive,
    gcra_allows_the_burst_then_says_how_long_to_wait,
    gcra_grants_a_slice_up_to_what_the_bucket_holds,
    two_gateways_agents_of_one_number_share_nothing,
    the_journal_keeps_the_newest_endings_per_gateway_for_every_replica,
    webhook_lanes_are_claimed_by_one_replica_and_settle_in_order,
    webhook_deliveries_are_bounded_and_given_up_events_replay,
    a_long_given_up_list_replays_in_batches_and_keeps_the_rest_in_order,
);

// The cases that let time pass.
contract!(SHORT:
    a_lease_whose_holder_stops_refreshing_is_taken_from_it,
    the_live_replicas_are_those_heard_from_within_two_rounds,
    the_sign_in_lock_expires_after_its_ttl,
    a_tombstone_stays_its_time_then_goes,
    a_restore_puts_back_what_a_store_that_lost_everything_forgot,
    a_restore_keeps_the_events_it_finds,
    after_a_loss_only_the_guid_is_refused_and_after_a_sign_out_events_too,
    the_change_feed_tells_of_other_replicas_writes_and_resyncs_after_a_reconnect,
    a_replica_is_named_by_its_heartbeat_until_it_falls_silent,
    a_webhook_claim_that_runs_out_is_anyones_and_holding_keeps_it,
);

/// Epochs are drawn from the store's clock (ms) so that one a failover lost is never drawn
/// again: within a day of now.
fn drawn_from_the_clock(epoch: u64) -> bool {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    epoch.abs_diff(now_ms) < 86_400_000
}

fn record<'a>(sid: &'a str, guid: &'a str, cookies: &'a [String]) -> NewRecord<'a> {
    NewRecord {
        sid,
        guid,
        cookies,
        answer: b"{\"retcode\":\"0\"}",
        resumable: true,
        conf: "\"None\"",
        since: 0,
        tenant: Some("acme-eu"),
    }
}

async fn records_round_trip_and_restore_only_fills_a_gap(p: Pair) {
    assert!(p.a.load(AGENT).await.unwrap().is_none());
    let cookies = vec!["lb=node0".to_owned()];
    let first = p.a.create(AGENT, &record("sid1", "g-1.AgentGateway0", &cookies), CreateMode::SignIn).await.unwrap();
    assert!(drawn_from_the_clock(first), "{first}");
    let r = p.b.load(AGENT).await.unwrap().unwrap();
    assert_eq!((r.sid.as_str(), r.epoch, r.guid.as_str()), ("sid1", first, "g-1.AgentGateway0"));
    assert_eq!((r.cookies, &r.answer[..], r.resumable), (cookies.clone(), &b"{\"retcode\":\"0\"}"[..], true));
    assert_eq!((r.conf.as_str(), r.confv, r.state), ("\"None\"", 1, RecordState::Active));
    assert_eq!(r.tenant.as_deref(), Some("acme-eu"), "the signing-in token's tenant");
    // A restore never overwrites a record that is there.
    let restored = p.b.create(AGENT, &record("sid2", "g-9.AgentGateway0", &[]), CreateMode::Restore).await.unwrap();
    assert_eq!(restored, 0);
    assert_eq!(p.a.load(AGENT).await.unwrap().unwrap().sid, "sid1");
    // A new sign-in replaces the record (and its events), with a higher epoch.
    let event = NewEvent { sid: "sid1", cap: 10, id: 5 << 20, kind: "AgentState_Busy", data: b"{}" };
    assert!(p.a.append(AGENT, &event).await.unwrap().is_some());
    let untenanted = NewRecord { tenant: None, ..record("sid2", "g-2.AgentGateway0", &[]) };
    let epoch = p.b.create(AGENT, &untenanted, CreateMode::SignIn).await.unwrap();
    assert!(epoch > first);
    let r = p.a.load(AGENT).await.unwrap().unwrap();
    assert_eq!((r.sid.as_str(), r.epoch, r.tenant), ("sid2", epoch, None));
    assert!(p.a.latest_events(AGENT, 10).await.unwrap().is_empty());
}

async fn leases_are_exclusive_and_every_acquire_raises_the_epoch(p: Pair) {
    assert_eq!(p.a.acquire(AGENT).await.unwrap(), Lease::Absent, "no session, nothing to poll");
    let e1 = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    assert_eq!(p.b.acquire(AGENT).await.unwrap(), Lease::Taken, "the sign-in's replica holds it");
    assert_eq!(p.a.check_lease(AGENT, e1).await.unwrap(), Lease::Held(e1));
    assert_eq!(p.b.check_lease(AGENT, e1).await.unwrap(), Lease::Taken, "a lease is the replica's, not the epoch's");
    p.b.release(AGENT, e1).await.unwrap();
    assert_eq!(p.a.check_lease(AGENT, e1).await.unwrap(), Lease::Held(e1), "only the holder releases");
    p.a.release(AGENT, e1).await.unwrap();
    assert_eq!(p.a.check_lease(AGENT, e1).await.unwrap(), Lease::Absent);
    let Lease::Held(e2) = p.b.acquire(AGENT).await.unwrap() else { panic!("b takes the free lease") };
    assert!(e2 > e1 && drawn_from_the_clock(e2), "{e1} -> {e2}");
    assert_eq!(p.a.load(AGENT).await.unwrap().unwrap().epoch, e2, "the record carries the fencing token");
    assert_eq!(p.a.check_lease(AGENT, e1).await.unwrap(), Lease::Taken);
    let lost = EndAs::Lost { reason: LossReason::GuidRefused, refused: None };
    assert_eq!(p.b.end(AGENT, "s", lost).await.unwrap(), EndOutcome::Ended);
    assert_eq!(p.a.acquire(AGENT).await.unwrap(), Lease::Absent, "an ended session has no lease");
}

async fn guid_writes_are_compare_and_set_and_fenced_by_epoch_and_number(p: Pair) {
    let e1 = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    let w = |replied_to, guid, poller| AuthWrite { sid: "s", replied_to, guid, cookies: &[], poller };
    let guid = |p: &Pair| {
        let b = p.b.clone();
        async move { b.load(AGENT).await.unwrap().unwrap().guid }
    };
    // Another replica's write must find the Guid its call used.
    assert_eq!(
        p.b.write_auth(AGENT, &w("g-0.AgentGateway0", "x.AgentGateway0", None)).await.unwrap(),
        AuthWritten::Stale
    );
    assert_eq!(
        p.b.write_auth(AGENT, &w("g-1.AgentGateway0", "g-2.AgentGateway0", None)).await.unwrap(),
        AuthWritten::Written
    );
    assert_eq!(guid(&p).await, "g-2.AgentGateway0");
    // The lease holder's writes carry its epoch and a rising number, whatever they replied to.
    assert_eq!(
        p.a.write_auth(AGENT, &w("any", "g-3.AgentGateway0", Some((e1, 1)))).await.unwrap(),
        AuthWritten::Written
    );
    assert_eq!(
        p.a.write_auth(AGENT, &w("any", "g-old.AgentGateway0", Some((e1, 1)))).await.unwrap(),
        AuthWritten::Stale
    );
    assert_eq!(
        p.a.write_auth(AGENT, &w("any", "g-4.AgentGateway0", Some((e1, 3)))).await.unwrap(),
        AuthWritten::Written
    );
    assert_eq!(
        p.a.write_auth(AGENT, &w("any", "g-late.AgentGateway0", Some((e1, 2)))).await.unwrap(),
        AuthWritten::Stale
    );
    assert_eq!(guid(&p).await, "g-4.AgentGateway0");
    // A successor's epoch fences the old owner off; its own numbering starts afresh.
    p.a.release(AGENT, e1).await.unwrap();
    let Lease::Held(e2) = p.b.acquire(AGENT).await.unwrap() else { panic!("b takes the free lease") };
    assert_eq!(p.a.write_auth(AGENT, &w("any", "g-a.AgentGateway0", Some((e1, 9)))).await.unwrap(), AuthWritten::Stale);
    assert_eq!(
        p.b.write_auth(AGENT, &w("any", "g-b.AgentGateway0", Some((e2, 1)))).await.unwrap(),
        AuthWritten::Written
    );
    assert_eq!(guid(&p).await, "g-b.AgentGateway0");
    let other = AuthWrite {
        sid: "other",
        replied_to: "g-b.AgentGateway0",
        guid: "x.AgentGateway0",
        cookies: &[],
        poller: None,
    };
    assert_eq!(p.b.write_auth(AGENT, &other).await.unwrap(), AuthWritten::Gone, "another sign-in's write");
}

async fn conference_writes_are_compare_and_set_on_the_version(p: Pair) {
    p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    let chair = r#"{"Chair":{"conf_id":7}}"#;
    assert_eq!(p.a.write_conf(AGENT, "s", 1, chair).await.unwrap(), ConfWrite::Written(2));
    assert_eq!(
        p.b.write_conf(AGENT, "s", 1, "\"Unknown\"").await.unwrap(),
        ConfWrite::Conflict { version: 2, conf: chair.to_owned() },
        "a write on an old version gets the current state back"
    );
    assert_eq!(p.b.write_conf(AGENT, "s", 2, "\"None\"").await.unwrap(), ConfWrite::Written(3));
    assert_eq!(p.a.write_conf(AGENT, "other", 3, chair).await.unwrap(), ConfWrite::Gone);
    let r = p.a.load(AGENT).await.unwrap().unwrap();
    assert_eq!((r.conf.as_str(), r.confv), ("\"None\"", 3));
}

async fn ends_are_conditional_and_sign_out_leaves_a_tombstone(p: Pair) {
    p.a.create(AGENT, &record("s", "g-2.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    let lost = |refused| EndAs::Lost { reason: LossReason::GuidRefused, refused };
    assert_eq!(p.b.end(AGENT, "s", lost(Some("g-1.AgentGateway0"))).await.unwrap(), EndOutcome::GuidReplaced);
    assert_eq!(p.b.end(AGENT, "other", lost(None)).await.unwrap(), EndOutcome::Gone);
    assert_eq!(p.b.end(AGENT, "s", lost(Some("g-2.AgentGateway0"))).await.unwrap(), EndOutcome::Ended);
    assert_eq!(p.a.load(AGENT).await.unwrap().unwrap().state, RecordState::Lost(LossReason::GuidRefused));
    assert_eq!(p.a.end(AGENT, "s", lost(None)).await.unwrap(), EndOutcome::Gone, "ended once");
    // Signing out wins over a loss, drops the secrets and the events, and leaves a tombstone.
    let event = NewEvent { sid: "s", cap: 10, id: 7 << 20, kind: "AgentState_Busy", data: b"{}" };
    assert!(p.a.append(AGENT, &event).await.unwrap().is_some());
    assert_eq!(p.a.end(AGENT, "s", EndAs::SignedOut).await.unwrap(), EndOutcome::Ended);
    let r = p.b.load(AGENT).await.unwrap().unwrap();
    assert_eq!((r.state, r.guid.as_str(), r.cookies.len()), (RecordState::Out, "-", 0));
    assert!(p.b.latest_events(AGENT, 10).await.unwrap().is_empty());
}

async fn appends_are_idempotent_bounded_and_read_alike_everywhere(p: Pair) {
    p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    let ms = 1_700_000_000_000u64;
    let ev = |id: u64, kind| NewEvent { sid: "s", cap: 3, id, kind, data: b"{\"n\":1}" };
    let first = ms << 20;
    assert_eq!(p.a.append(AGENT, &ev(first, "E1")).await.unwrap(), Some(first), "the given id is kept");
    assert_eq!(p.a.append(AGENT, &ev(first, "E1")).await.unwrap(), Some(first), "sent again: not recorded twice");
    // An id below the stream's newest gets the store's own, above it.
    let second = p.b.append(AGENT, &ev(first - 1, "E2")).await.unwrap().unwrap();
    assert!(second > first);
    for (id, kind) in [(1, "E3"), (2, "E4")] {
        p.a.append(AGENT, &ev(id, kind)).await.unwrap().unwrap();
    }
    let kinds = |v: Vec<(u64, String, bytes::Bytes)>| v.into_iter().map(|e| e.1).collect::<Vec<_>>();
    assert_eq!(kinds(p.b.latest_events(AGENT, 10).await.unwrap()), ["E2", "E3", "E4"], "bounded at cap");
    assert_eq!(kinds(p.b.latest_events(AGENT, 2).await.unwrap()), ["E3", "E4"], "the newest, oldest first");
    assert_eq!(kinds(p.a.events_after(AGENT, second, 10).await.unwrap()), ["E3", "E4"]);
    assert_eq!(kinds(p.a.events_after(AGENT, 0, 1).await.unwrap()), ["E2"]);
    // One queue cursor for every replica: each event goes to one reader.
    let next = |s: &Arc<dyn SharedStore>| {
        let s = s.clone();
        async move { s.take_next(AGENT, "s").await.unwrap().map(|e| e.1) }
    };
    assert_eq!(next(&p.a).await.as_deref(), Some("E2"));
    assert_eq!(next(&p.b).await.as_deref(), Some("E3"));
    assert_eq!(next(&p.a).await.as_deref(), Some("E4"));
    assert_eq!(next(&p.b).await, None);
    let gone = NewEvent { sid: "other", cap: 3, id: 0, kind: "E5", data: b"{}" };
    assert_eq!(p.a.append(AGENT, &gone).await.unwrap(), None, "another sign-in's stream");
    assert_eq!(p.a.take_next(AGENT, "other").await.unwrap(), None);
}

async fn activity_and_idle_time_are_the_stores(p: Pair) {
    p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    p.b.touch(AGENT, "s").await.unwrap();
    let idle = p.a.idle_for(AGENT, "s").await.unwrap().unwrap();
    assert!(idle < Duration::from_secs(5), "just touched: {idle:?}");
    assert_eq!(p.a.idle_for(AGENT, "other").await.unwrap(), None);
}

async fn the_sign_in_lock_is_exclusive_until_released(p: Pair) {
    let lock = p.a.lock_op(AGENT, Duration::from_secs(10)).await.unwrap().unwrap();
    assert!(p.b.lock_op(AGENT, Duration::from_secs(10)).await.unwrap().is_none());
    let theirs = p.b.lock_op("154", Duration::from_secs(10)).await.unwrap();
    assert!(theirs.is_some(), "one lock per agent");
    p.b.unlock_op(AGENT, &theirs.unwrap()).await;
    assert!(p.b.lock_op(AGENT, Duration::from_secs(10)).await.unwrap().is_none(), "only the holder unlocks");
    p.a.unlock_op(AGENT, &lock).await;
    assert!(p.b.lock_op(AGENT, Duration::from_secs(10)).await.unwrap().is_some());
}

/// A store that put back an older value of a lease (a failover that lost the holder's last
/// write): the holder's check says `Absent` and it takes the lease again at once, with a new
/// epoch, instead of standing down for a lease; a value naming another replica is theirs.
async fn a_lease_put_back_under_an_older_epoch_is_its_holders_again(p: Pair) {
    let e1 = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    p.set_lease(AGENT, &format!("{} {}", p.a.replica(), e1 - 1)).await;
    assert_eq!(p.a.check_lease(AGENT, e1).await.unwrap(), Lease::Absent);
    assert_eq!(p.b.acquire(AGENT).await.unwrap(), Lease::Taken, "a's, whatever its epoch");
    let Lease::Held(e2) = p.a.acquire(AGENT).await.unwrap() else { panic!("a takes its own lease again") };
    assert!(e2 > e1, "{e1} -> {e2}");
    assert_eq!(p.a.check_lease(AGENT, e2).await.unwrap(), Lease::Held(e2));
    p.set_lease(AGENT, &format!("{} {e2}", p.b.replica())).await;
    assert_eq!(p.a.check_lease(AGENT, e2).await.unwrap(), Lease::Taken);
    assert_eq!(p.a.acquire(AGENT).await.unwrap(), Lease::Taken);
    // Planted values. One naming a, but not `REPLICA EPOCH`: nobody's own, so a stands down
    // and anyone may take it once stale (it was never taken within a lease).
    p.set_lease(AGENT, &format!("{} abc", p.a.replica())).await;
    assert_eq!(p.a.check_lease(AGENT, e2).await.unwrap(), Lease::Taken);
    assert_eq!(p.a.acquire(AGENT).await.unwrap(), Lease::Taken);
    assert!(matches!(p.b.take_stale(AGENT).await.unwrap(), Lease::Held(_)));
    // An epoch far in the future says nothing of when the lease was taken: it does not keep
    // a stale agent from being taken over, for ever or at all.
    p.set_lease(AGENT, &format!("{} 9000000000000000", p.b.replica())).await;
    assert!(matches!(p.a.take_stale(AGENT).await.unwrap(), Lease::Held(_)));
    p.set_lease(AGENT, &format!("{} 900000000000000000000000", p.a.replica())).await;
    assert!(matches!(p.b.take_stale(AGENT).await.unwrap(), Lease::Held(_)), "past u64");
}

async fn the_index_finds_released_and_stale_agents(p: Pair) {
    let epoch = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    assert!(p.b.stale_agents(10).await.unwrap().is_empty(), "indexed now: not stale");
    p.a.release(AGENT, epoch).await.unwrap();
    assert_eq!(p.b.stale_agents(10).await.unwrap(), [AGENT], "a released lease is looked at at once");
    p.b.index_agent(AGENT).await;
    assert!(p.b.stale_agents(10).await.unwrap().is_empty());
    p.b.unindex_agent(AGENT).await;
    assert!(p.b.stale_agents(10).await.unwrap().is_empty());
}

async fn the_index_lists_agents_and_the_lease_names_its_holder(p: Pair) {
    assert!(p.a.indexed_agents(10).await.unwrap().is_empty());
    assert_eq!(p.a.lease_holder(AGENT).await.unwrap(), None);
    let r = |since| NewRecord { since, ..record("s", "g-1.AgentGateway0", &[]) };
    p.a.create(AGENT, &r(1_700_000_000_000), CreateMode::SignIn).await.unwrap();
    p.b.create("154", &r(0), CreateMode::SignIn).await.unwrap();
    let mut agents = p.b.indexed_agents(10).await.unwrap();
    agents.sort();
    assert_eq!(agents, [AGENT, "154"]);
    assert_eq!(p.b.indexed_agents(1).await.unwrap().len(), 1, "at most max");
    assert_eq!(p.b.lease_holder(AGENT).await.unwrap().as_deref(), Some(p.a.replica()));
    assert_eq!(p.a.lease_holder("154").await.unwrap().as_deref(), Some(p.b.replica()));
    assert_eq!(p.b.load(AGENT).await.unwrap().unwrap().since, 1_700_000_000_000, "when it signed in");
}

async fn replicas_count_who_is_alive(p: Pair) {
    p.a.heartbeat().await.unwrap();
    p.b.heartbeat().await.unwrap();
    assert_eq!(p.a.leave().await.unwrap(), 1);
    assert_eq!(p.b.leave().await.unwrap(), 0, "the last one out");
}

async fn gcra_allows_the_burst_then_says_how_long_to_wait(p: Pair) {
    let bucket = |scope, key| Bucket { limit: "stop", scope, key, namespace: "" };
    let second = Duration::from_secs(1);
    let one = |remaining| Ok(Grant { taken: 1, remaining });
    for remaining in [2, 1, 0] {
        assert_eq!(p.a.gcra(bucket(Scope::Agent, AGENT), second, 3, 1).await.unwrap(), one(remaining));
    }
    let wait = p.b.gcra(bucket(Scope::Agent, AGENT), second, 3, 1).await.unwrap().unwrap_err();
    assert!(wait > Duration::from_millis(900) && wait <= second, "about one interval: {wait:?}");
    // Other agents, tenants and the global bucket are other buckets.
    assert_eq!(p.b.gcra(bucket(Scope::Agent, "154"), second, 3, 1).await.unwrap(), one(2));
    assert_eq!(p.b.gcra(bucket(Scope::Tenant, AGENT), second, 3, 1).await.unwrap(), one(2));
    assert_eq!(p.b.gcra(bucket(Scope::Global, ""), second, 3, 1).await.unwrap(), one(2));
    // The same agent of another gateway, and a gateway's own bucket, are other buckets.
    let of = |namespace| Bucket { limit: "stop", scope: Scope::Agent, key: AGENT, namespace };
    assert_eq!(p.b.gcra(of("acme"), second, 3, 1).await.unwrap(), one(2));
    assert_eq!(p.b.gcra(bucket(Scope::Gateway, "acme"), second, 3, 1).await.unwrap(), one(2));
}

/// A slice: as many tokens as asked for while the bucket holds them, then what is left, then
/// a wait; what one replica took, the other cannot.
async fn gcra_grants_a_slice_up_to_what_the_bucket_holds(p: Pair) {
    let bucket = Bucket { limit: "stop", scope: Scope::Global, key: "", namespace: "" };
    let second = Duration::from_secs(1);
    assert_eq!(p.a.gcra(bucket, second, 10, 4).await.unwrap(), Ok(Grant { taken: 4, remaining: 6 }));
    assert_eq!(p.b.gcra(bucket, second, 10, 8).await.unwrap(), Ok(Grant { taken: 6, remaining: 0 }));
    let wait = p.a.gcra(bucket, second, 10, 4).await.unwrap().unwrap_err();
    assert!(wait > Duration::from_millis(900) && wait <= second, "about one interval: {wait:?}");
}

/// Agent 153 of the default gateway and of gateway `acme` (`for_gateway`): two records, two
/// leases, two indexes, two change channels, two event streams; the replica set is shared.
async fn two_gateways_agents_of_one_number_share_nothing(p: Pair) {
    let acme_a = p.a.clone().for_gateway("acme");
    let acme_b = p.b.clone().for_gateway("acme");
    assert_eq!(acme_a.replica(), p.a.replica(), "one replica, whatever the gateway");
    let (changes, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(acme_b.clone().follow(Box::new(move |c| {
        let _ = changes.send(c);
    })));
    assert_eq!(seen.recv().await, Some(Change::Resync));
    p.b.create("154", &record("s", "g-2.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    p.a.create(AGENT, &record("default-sid", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    assert!(acme_b.load(AGENT).await.unwrap().is_none(), "acme's 153 is not the default gateway's");
    assert_eq!(acme_a.acquire(AGENT).await.unwrap(), Lease::Absent);
    acme_a.create(AGENT, &record("acme-sid", "g-7.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    // acme's follower hears of acme's 153 only (the default gateway's 154 came first).
    assert_eq!(seen.recv().await, Some(Change::Session(AGENT.into())));
    assert_eq!(p.b.load(AGENT).await.unwrap().unwrap().sid, "default-sid");
    assert_eq!(acme_b.load(AGENT).await.unwrap().unwrap().sid, "acme-sid");
    let event = NewEvent { sid: "acme-sid", cap: 10, id: 5 << 20, kind: "AgentState_Busy", data: b"{}" };
    assert!(acme_a.append(AGENT, &event).await.unwrap().is_some());
    assert!(p.b.latest_events(AGENT, 10).await.unwrap().is_empty(), "events stay with their gateway");
    assert_eq!(acme_b.latest_events(AGENT, 10).await.unwrap().len(), 1);
    let mut default_agents = p.b.indexed_agents(10).await.unwrap();
    default_agents.sort();
    assert_eq!(default_agents, [AGENT, "154"]);
    assert_eq!(acme_b.indexed_agents(10).await.unwrap(), [AGENT]);
    p.a.end(AGENT, "default-sid", EndAs::SignedOut).await.unwrap();
    assert_eq!(acme_b.load(AGENT).await.unwrap().unwrap().state, RecordState::Active, "acme's 153 lives on");
}

/// The agents' journal (issue 40): newest first, read alike by every replica, bounded by
/// count and entry size, one per gateway.
async fn the_journal_keeps_the_newest_endings_per_gateway_for_every_replica(p: Pair) {
    assert!(p.b.journal_entries(JournalList::Ended, 10).await.unwrap().is_empty());
    for i in 0..JOURNAL_MAX + 5 {
        p.a.journal(JournalList::Ended, format!("entry {i}").as_bytes(), None).await.unwrap();
    }
    let all = p.b.journal_entries(JournalList::Ended, JOURNAL_MAX + 100).await.unwrap();
    assert_eq!(all.len(), JOURNAL_MAX, "the newest {JOURNAL_MAX} only");
    assert_eq!(all[0], format!("entry {}", JOURNAL_MAX + 4).as_bytes(), "newest first");
    assert_eq!(all[JOURNAL_MAX - 1], b"entry 5");
    assert_eq!(p.a.journal_entries(JournalList::Ended, 2).await.unwrap(), all[..2].to_vec(), "at most what is asked");
    assert!(
        p.a.journal(JournalList::Ended, &vec![b'x'; JOURNAL_ENTRY_MAX_BYTES + 1], None).await.is_err(),
        "an oversized entry is refused"
    );
    let acme = p.b.clone().for_gateway("acme");
    assert!(
        acme.journal_entries(JournalList::Ended, 10).await.unwrap().is_empty(),
        "another gateway's journal is its own"
    );
    acme.journal(JournalList::Ended, b"acme's", None).await.unwrap();
    assert_eq!(
        p.a.journal_entries(JournalList::Ended, 1).await.unwrap()[0],
        format!("entry {}", JOURNAL_MAX + 4).as_bytes()
    );
    // The failed sign-ins' list is another, with its own bound.
    assert!(p.a.journal_entries(JournalList::FailedSignIns, 10).await.unwrap().is_empty());
    p.b.journal(JournalList::FailedSignIns, b"failed", None).await.unwrap();
    assert_eq!(p.a.journal_entries(JournalList::FailedSignIns, 10).await.unwrap(), [b"failed".to_vec()]);
    // An entry written in place of an earlier one: the earlier one is gone, in one step.
    p.b.journal(JournalList::FailedSignIns, b"other", None).await.unwrap();
    p.b.journal(JournalList::FailedSignIns, b"failed again", Some(b"failed")).await.unwrap();
    let failed = p.a.journal_entries(JournalList::FailedSignIns, 10).await.unwrap();
    assert_eq!(failed, [b"failed again".to_vec(), b"other".to_vec()]);
    assert_eq!(p.a.journal_entries(JournalList::Ended, JOURNAL_MAX).await.unwrap().len(), JOURNAL_MAX);
}

// --- the cases that let time pass -------------------------------------------------------------

/// A lease has no expiry of its own: its holder keeps the agent's index entry fresh (all its
/// agents at once), and while it does the lease stays its, however long. An entry left alone
/// for a lease is stale, and another replica takes the lease from the holder it names, with a
/// higher epoch that fences the old holder off; the holder's check then says `Taken`.
async fn a_lease_whose_holder_stops_refreshing_is_taken_from_it(p: Pair) {
    let ttl = SHORT.lease;
    let e1 = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    let other = p.a.create("154", &record("s", "g-2.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    assert_eq!(p.b.acquire(AGENT).await.unwrap(), Lease::Taken);
    assert!(p.b.stale_agents(10).await.unwrap().is_empty(), "indexed now: not stale");
    // Refreshed a little after half a lease, twice: over 800 ms to spare on either side (on
    // Redis, with `SHORT.lease`), and past the first lease's end.
    for _ in 0..2 {
        p.pass(ttl * 55 / 100).await;
        p.a.index_agents(&[AGENT, "154"]).await;
        assert!(p.b.stale_agents(10).await.unwrap().is_empty(), "refreshed: not stale");
    }
    assert_eq!(p.a.check(&[(AGENT, e1), ("154", other)]).await.unwrap(), [Lease::Held(e1), Lease::Held(other)]);
    assert_eq!(p.b.acquire(AGENT).await.unwrap(), Lease::Taken, "a held lease is not free");
    assert_eq!(p.b.lease_holder(AGENT).await.unwrap().as_deref(), Some(p.a.replica()));
    // Not refreshed again: the lease is still a's, but the index calls the agent stale.
    p.pass(ttl + ttl / 2).await;
    assert_eq!(p.b.lease_holder(AGENT).await.unwrap().as_deref(), Some(p.a.replica()), "no expiry");
    let mut stale = p.b.stale_agents(10).await.unwrap();
    stale.sort();
    assert_eq!(stale, [AGENT, "154"], "their index entries are a lease old");
    let Lease::Held(e2) = p.b.take_stale(AGENT).await.unwrap() else { panic!("b takes the stale lease") };
    assert!(e2 > e1 && drawn_from_the_clock(e2), "{e1} -> {e2}");
    assert_eq!(p.a.load(AGENT).await.unwrap().unwrap().epoch, e2);
    assert_eq!(p.a.check(&[(AGENT, e1), ("154", other)]).await.unwrap(), [Lease::Taken, Lease::Held(other)]);
    assert_eq!(p.a.lease_holder(AGENT).await.unwrap().as_deref(), Some(p.b.replica()));
    // Taken within the last lease: b's, though a's list of stale agents still names it (two
    // survivors working from one read of the index never take it from each other).
    assert_eq!(p.a.take_stale(AGENT).await.unwrap(), Lease::Taken);
    assert_eq!(p.a.load(AGENT).await.unwrap().unwrap().epoch, e2, "no epoch raised");
    // An ended session's lease is nobody's to take.
    p.a.end("154", "s", EndAs::SignedOut).await.unwrap();
    assert_eq!(p.b.take_stale("154").await.unwrap(), Lease::Absent);
    assert_eq!(p.b.lease_holder("154").await.unwrap(), None);
    assert_eq!(p.a.check_lease("154", other).await.unwrap(), Lease::Absent);
}

/// The replicas that share out orphans are those whose heartbeat is younger than two rounds
/// (two thirds of a lease): a replica silent for a lease is not one of them.
async fn the_live_replicas_are_those_heard_from_within_two_rounds(p: Pair) {
    p.a.heartbeat().await.unwrap();
    p.b.heartbeat().await.unwrap();
    let mut live = p.a.live_replicas(10).await.unwrap();
    live.sort();
    let mut both = vec![p.a.replica().to_owned(), p.b.replica().to_owned()];
    both.sort();
    assert_eq!(live, both);
    assert_eq!(p.a.live_replicas(1).await.unwrap().len(), 1, "bounded");
    // Five sixths of a lease: past two rounds, short of a lease (over 300 ms to spare).
    p.pass(SHORT.lease * 5 / 6).await;
    p.a.heartbeat().await.unwrap();
    assert_eq!(p.b.live_replicas(10).await.unwrap(), [p.a.replica()], "b silent for two rounds");
}

/// A replica's identity (host, admin address) is there for every replica and every gateway's
/// store from its first heartbeat after registering, renewed by each, and gone once it has
/// been silent for the replica set's silence window.
async fn a_replica_is_named_by_its_heartbeat_until_it_falls_silent(p: Pair) {
    let ttl = SHORT.lease;
    let me = ReplicaIdentity { id: p.a.replica().to_owned(), host: "ccgate-a".into(), admin: "10.0.0.7:9464".into() };
    p.a.heartbeat().await.unwrap();
    assert_eq!(p.b.replica_identity(p.a.replica()).await.unwrap(), None, "not registered yet");
    p.a.register(me.clone());
    p.a.heartbeat().await.unwrap();
    assert_eq!(p.b.replica_identity(p.a.replica()).await.unwrap().as_ref(), Some(&me));
    let other_gateway = p.b.clone().for_gateway("acme");
    assert_eq!(other_gateway.replica_identity(p.a.replica()).await.unwrap().as_ref(), Some(&me), "one replica set");
    assert_eq!(p.b.replica_identity("not-a-replica").await.unwrap(), None);
    // Renewed by each heartbeat: alive past the first window.
    let window = ttl * REPLICA_SILENT_LEASES;
    p.pass(window * 6 / 10).await;
    p.a.heartbeat().await.unwrap();
    p.pass(window * 6 / 10).await;
    assert_eq!(p.b.replica_identity(p.a.replica()).await.unwrap().as_ref(), Some(&me), "renewed");
    // Silent for the window: gone.
    p.pass(window * 5 / 10).await;
    assert_eq!(p.b.replica_identity(p.a.replica()).await.unwrap(), None, "expired");
}

/// The sign-in lock lives the ttl its taker gave, each lock its own; an expired lock's old
/// holder cannot release the next holder's.
async fn the_sign_in_lock_expires_after_its_ttl(p: Pair) {
    let (short, long) = (Duration::from_secs(1), Duration::from_secs(30));
    let first = p.a.lock_op(AGENT, short).await.unwrap().expect("free");
    assert!(p.a.lock_op("154", long).await.unwrap().is_some());
    assert!(p.b.lock_op(AGENT, long).await.unwrap().is_none(), "held");
    assert!(p.b.lock_op("154", long).await.unwrap().is_none(), "held");
    p.pass(short).await;
    let second = p.b.lock_op(AGENT, long).await.unwrap().expect("expired: free again");
    assert!(p.b.lock_op("154", long).await.unwrap().is_none(), "a lock lives its own ttl");
    p.a.unlock_op(AGENT, &first).await;
    assert!(p.a.lock_op(AGENT, long).await.unwrap().is_none(), "the expired lock's holder released nothing");
    p.b.unlock_op(AGENT, &second).await;
    assert!(p.a.lock_op(AGENT, long).await.unwrap().is_some());
}

/// What a sign-out leaves (state `out`, no Guid, no lease, no events) is a record for the
/// store's tombstone time (ten minutes in production, `SHORT.tombstone` here): a replica
/// that finds it knows the agent signed out, and a restore does not bring the session back.
/// Then it is gone, and nothing tells the agent from one the store never knew.
async fn a_tombstone_stays_its_time_then_goes(p: Pair) {
    p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    assert_eq!(p.a.end(AGENT, "s", EndAs::SignedOut).await.unwrap(), EndOutcome::Ended);
    let r = p.b.load(AGENT).await.unwrap().expect("a tombstone");
    assert_eq!((r.sid.as_str(), r.state, r.guid.as_str()), ("s", RecordState::Out, "-"));
    let restore = record("s", "g-1.AgentGateway0", &[]);
    assert_eq!(p.b.create(AGENT, &restore, CreateMode::Restore).await.unwrap(), 0, "a tombstone is a record");
    assert_eq!(p.b.acquire(AGENT).await.unwrap(), Lease::Absent);
    p.pass(SHORT.tombstone).await;
    assert!(p.b.load(AGENT).await.unwrap().is_none(), "the tombstone expired");
    assert_eq!(p.b.acquire(AGENT).await.unwrap(), Lease::Absent);
    assert!(p.b.create(AGENT, &restore, CreateMode::Restore).await.unwrap() > 0, "a gap now: a restore fills it");
}

/// The store lost everything (Redis restarted empty): a restore puts the session back as the
/// restoring replica knows it, that replica holding the lease, with an epoch above the lost
/// one (the store's clock moved on); the first restore wins.
async fn a_restore_puts_back_what_a_store_that_lost_everything_forgot(p: Pair) {
    let cookies = vec!["lb=node0".to_owned()];
    let first = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &cookies), CreateMode::SignIn).await.unwrap();
    let event = NewEvent { sid: "s", cap: 10, id: 5 << 20, kind: "AgentState_Busy", data: b"{}" };
    assert!(p.a.append(AGENT, &event).await.unwrap().is_some());
    assert!(p.b.load(AGENT).await.unwrap().is_some());
    assert_eq!(p.b.indexed_agents(10).await.unwrap(), [AGENT]);
    p.lose_everything().await;
    assert!(p.b.load(AGENT).await.unwrap().is_none());
    assert!(p.b.latest_events(AGENT, 10).await.unwrap().is_empty());
    assert!(p.b.indexed_agents(10).await.unwrap().is_empty());
    assert_eq!(p.b.lease_holder(AGENT).await.unwrap(), None);
    p.pass(Duration::from_millis(10)).await;
    let chair = r#"{"Chair":{"conf_id":7}}"#;
    let copy = NewRecord { conf: chair, since: 1_700_000_000_000, ..record("s", "g-2.AgentGateway0", &cookies) };
    let restored = p.b.create(AGENT, &copy, CreateMode::Restore).await.unwrap();
    assert!(restored > first && drawn_from_the_clock(restored), "{first} -> {restored}");
    let r = p.a.load(AGENT).await.unwrap().expect("restored");
    assert_eq!((r.sid.as_str(), r.epoch, r.guid.as_str()), ("s", restored, "g-2.AgentGateway0"));
    assert_eq!(r.cookies, cookies);
    assert_eq!((r.conf.as_str(), r.confv, r.state, r.since), (chair, 1, RecordState::Active, 1_700_000_000_000));
    assert_eq!((&r.answer[..], r.resumable), (&b"{\"retcode\":\"0\"}"[..], true));
    assert_eq!(p.a.lease_holder(AGENT).await.unwrap().as_deref(), Some(p.b.replica()));
    assert_eq!(p.a.acquire(AGENT).await.unwrap(), Lease::Taken);
    assert_eq!(p.a.indexed_agents(10).await.unwrap(), [AGENT]);
    let late = NewRecord { guid: "g-1.AgentGateway0", ..copy };
    assert_eq!(p.a.create(AGENT, &late, CreateMode::Restore).await.unwrap(), 0, "the first restore wins");
    assert_eq!(p.b.load(AGENT).await.unwrap().unwrap().guid, "g-2.AgentGateway0");
}

/// A restore never touches the event stream. Over a record that is there it does nothing
/// at all (events, queue cursor, epoch and Guid stay). Where the record alone was lost and
/// the stream survived, it writes the record and keeps the stream: its events stay readable,
/// the new record's queue starts at the stream's beginning, and appends go on after the
/// stream's newest id.
async fn a_restore_keeps_the_events_it_finds(p: Pair) {
    let e1 = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    let first = 1_700_000_000_000u64 << 20;
    let ev = |id: u64, kind| NewEvent { sid: "s", cap: 10, id, kind, data: b"{}" };
    assert_eq!(p.a.append(AGENT, &ev(first, "E1")).await.unwrap(), Some(first));
    assert_eq!(p.a.append(AGENT, &ev(first + 1, "E2")).await.unwrap(), Some(first + 1));
    let kinds = |v: Vec<(u64, String, bytes::Bytes)>| v.into_iter().map(|e| e.1).collect::<Vec<_>>();
    let taken = |s: &Arc<dyn SharedStore>| {
        let s = s.clone();
        async move { s.take_next(AGENT, "s").await.unwrap().map(|e| e.1) }
    };
    assert_eq!(taken(&p.b).await.as_deref(), Some("E1"));
    // Over the record that is there: nothing changes.
    let copy = record("s", "g-9.AgentGateway0", &[]);
    assert_eq!(p.b.create(AGENT, &copy, CreateMode::Restore).await.unwrap(), 0);
    let r = p.a.load(AGENT).await.unwrap().unwrap();
    assert_eq!((r.epoch, r.guid.as_str()), (e1, "g-1.AgentGateway0"));
    assert_eq!(kinds(p.b.latest_events(AGENT, 10).await.unwrap()), ["E1", "E2"]);
    assert_eq!(taken(&p.a).await.as_deref(), Some("E2"), "the queue's cursor stayed");
    // The record lost, the stream and the lease kept.
    p.lose_record(AGENT).await;
    assert!(p.a.load(AGENT).await.unwrap().is_none());
    assert_eq!(kinds(p.a.events_after(AGENT, 0, 10).await.unwrap()), ["E1", "E2"]);
    p.pass(Duration::from_millis(10)).await;
    let restored = p.b.create(AGENT, &copy, CreateMode::Restore).await.unwrap();
    assert!(restored > e1, "{e1} -> {restored}");
    assert_eq!(p.a.load(AGENT).await.unwrap().unwrap().guid, "g-9.AgentGateway0");
    assert_eq!(kinds(p.a.events_after(AGENT, 0, 10).await.unwrap()), ["E1", "E2"], "the events stayed");
    assert_eq!(taken(&p.a).await.as_deref(), Some("E1"), "a new record's queue starts afresh");
    let e3 = p.a.append(AGENT, &ev(first - 1, "E3")).await.unwrap().expect("appended");
    assert!(e3 > first + 1, "after the stream's newest");
    assert_eq!(kinds(p.b.events_after(AGENT, first, 10).await.unwrap()), ["E2", "E3"]);
    assert_eq!(p.a.check_lease(AGENT, e1).await.unwrap(), Lease::Taken, "the restorer holds the lease");
}

/// After a loss, only the Guid is refused (`write_auth` wants an active record): the other
/// writes name the sign-in (its sid), and a lost session's last events still matter to its
/// apps. After a sign-out, events are refused too: the sign-out emptied the stream, and a
/// stream begun again would outlive the tombstone. `write_conf` and `touch` still land on the
/// tombstone (fields of a hash that expires). Once it has expired, every write finds nothing.
async fn after_a_loss_only_the_guid_is_refused_and_after_a_sign_out_events_too(p: Pair) {
    let idle = Duration::from_millis(300);
    let e1 = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    let w = |replied_to, guid, poller| AuthWrite { sid: "s", replied_to, guid, cookies: &[], poller };
    let ev = |id: u64, kind| NewEvent { sid: "s", cap: 10, id, kind, data: b"{}" };
    let first = 1_700_000_000_000u64 << 20;
    // `touch` counts when the idle time it resets was past `idle` and is below it after.
    let touch_counts = |p: &Pair| {
        let (a, b) = (p.a.clone(), p.b.clone());
        async move {
            let before = b.idle_for(AGENT, "s").await.unwrap().expect("a record");
            a.touch(AGENT, "s").await.unwrap();
            let after = b.idle_for(AGENT, "s").await.unwrap().expect("a record");
            assert!(before >= idle && after < idle, "{before:?} -> {after:?}");
        }
    };
    // Active: every write lands.
    assert_eq!(
        p.b.write_auth(AGENT, &w("g-1.AgentGateway0", "g-2.AgentGateway0", None)).await.unwrap(),
        AuthWritten::Written
    );
    assert_eq!(p.a.write_conf(AGENT, "s", 1, "\"Unknown\"").await.unwrap(), ConfWrite::Written(2));
    assert_eq!(p.a.append(AGENT, &ev(first, "E1")).await.unwrap(), Some(first));
    p.pass(idle).await;
    touch_counts(&p).await;
    // Lost.
    let lost = EndAs::Lost { reason: LossReason::GuidRefused, refused: None };
    assert_eq!(p.b.end(AGENT, "s", lost).await.unwrap(), EndOutcome::Ended);
    assert_eq!(
        p.b.write_auth(AGENT, &w("g-2.AgentGateway0", "g-3.AgentGateway0", None)).await.unwrap(),
        AuthWritten::Gone
    );
    assert_eq!(p.a.write_auth(AGENT, &w("any", "g-3.AgentGateway0", Some((e1, 1)))).await.unwrap(), AuthWritten::Gone);
    assert_eq!(p.a.write_conf(AGENT, "s", 2, "\"None\"").await.unwrap(), ConfWrite::Written(3));
    assert_eq!(p.a.append(AGENT, &ev(first + 1, "E2")).await.unwrap(), Some(first + 1));
    p.pass(idle).await;
    touch_counts(&p).await;
    let r = p.b.load(AGENT).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.guid.as_str(), r.confv),
        (RecordState::Lost(LossReason::GuidRefused), "g-2.AgentGateway0", 3)
    );
    // Signed out: a tombstone.
    p.pass(idle).await;
    assert_eq!(p.b.end(AGENT, "s", EndAs::SignedOut).await.unwrap(), EndOutcome::Ended);
    touch_counts(&p).await;
    assert_eq!(p.a.write_auth(AGENT, &w("-", "g-4.AgentGateway0", None)).await.unwrap(), AuthWritten::Gone);
    assert_eq!(p.a.write_auth(AGENT, &w("any", "g-4.AgentGateway0", Some((e1, 2)))).await.unwrap(), AuthWritten::Gone);
    assert_eq!(p.a.write_conf(AGENT, "s", 3, "\"None\"").await.unwrap(), ConfWrite::Written(4));
    // No event after a sign-out: the sign-out emptied the stream, and one begun again would
    // outlive the tombstone (a stream has no expiry).
    assert_eq!(p.a.append(AGENT, &ev(first + 2, "E3")).await.unwrap(), None);
    let r = p.b.load(AGENT).await.unwrap().unwrap();
    assert_eq!((r.state, r.guid.as_str(), r.confv), (RecordState::Out, "-", 4));
    assert!(p.b.latest_events(AGENT, 10).await.unwrap().is_empty(), "the sign-out emptied the stream");
    // The tombstone expired: nothing to write to.
    p.pass(SHORT.tombstone).await;
    assert!(p.b.load(AGENT).await.unwrap().is_none());
    assert_eq!(p.a.write_auth(AGENT, &w("-", "g-5.AgentGateway0", None)).await.unwrap(), AuthWritten::Gone);
    assert_eq!(p.a.write_conf(AGENT, "s", 4, "\"None\"").await.unwrap(), ConfWrite::Gone);
    assert_eq!(p.a.append(AGENT, &ev(first + 3, "E4")).await.unwrap(), None);
    p.a.touch(AGENT, "s").await.unwrap();
    assert_eq!(p.b.idle_for(AGENT, "s").await.unwrap(), None);
    assert!(p.b.load(AGENT).await.unwrap().is_none(), "a touch writes no record");
    assert!(p.b.latest_events(AGENT, 10).await.unwrap().is_empty(), "no stream outlives the tombstone");
}

/// `b`'s change feed: what its `follow` hands over, as a channel.
fn follow(store: &Arc<dyn SharedStore>) -> mpsc::UnboundedReceiver<Change> {
    let (changes, feed) = mpsc::unbounded_channel();
    tokio::spawn(store.clone().follow(Box::new(move |c| {
        let _ = changes.send(c);
    })));
    feed
}

/// The feed's next change (the twin's paused clock gets there at once when nothing else can
/// run, so a missing change fails at once there, within seconds on Redis).
async fn next_change(feed: &mut mpsc::UnboundedReceiver<Change>) -> Change {
    let next = tokio::time::timeout(Duration::from_secs(5), feed.recv()).await;
    next.expect("a change within 5 s").expect("the follower runs")
}

/// `follow` hands over a change for every write another replica makes to a record
/// (`Session`) or a stream (`Events`), in order, and none for a write that changed nothing
/// (a refused one, an append sent again, a lease or a lock): the next change heard is
/// always the next one made. After its subscription dropped and came back, `Resync`.
async fn the_change_feed_tells_of_other_replicas_writes_and_resyncs_after_a_reconnect(p: Pair) {
    let mut feed = follow(&p.b);
    assert_eq!(next_change(&mut feed).await, Change::Resync);
    let session = || Change::Session(AGENT.into());
    let e1 = p.a.create(AGENT, &record("s", "g-1.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    assert_eq!(next_change(&mut feed).await, session(), "a sign-in");
    let w = |replied_to, guid| AuthWrite { sid: "s", replied_to, guid, cookies: &[], poller: None };
    assert_eq!(p.a.write_auth(AGENT, &w("g-0.AgentGateway0", "g-x.AgentGateway0")).await.unwrap(), AuthWritten::Stale);
    assert_eq!(
        p.a.write_auth(AGENT, &w("g-1.AgentGateway0", "g-2.AgentGateway0")).await.unwrap(),
        AuthWritten::Written
    );
    assert_eq!(next_change(&mut feed).await, session(), "a new Guid (not the stale write before it)");
    assert!(matches!(p.a.write_conf(AGENT, "s", 7, "\"None\"").await.unwrap(), ConfWrite::Conflict { .. }));
    assert_eq!(p.a.write_conf(AGENT, "s", 1, "\"None\"").await.unwrap(), ConfWrite::Written(2));
    assert_eq!(next_change(&mut feed).await, session(), "a conference write (not the conflict before it)");
    let event = NewEvent { sid: "s", cap: 10, id: 5 << 20, kind: "AgentState_Busy", data: b"{}" };
    assert!(p.a.append(AGENT, &event).await.unwrap().is_some());
    assert_eq!(next_change(&mut feed).await, Change::Events(AGENT.into()), "an event");
    assert!(p.a.append(AGENT, &event).await.unwrap().is_some(), "the same event again: recorded once");
    assert_eq!(p.a.check_lease(AGENT, e1).await.unwrap(), Lease::Held(e1));
    p.a.release(AGENT, e1).await.unwrap();
    assert!(matches!(p.a.acquire(AGENT).await.unwrap(), Lease::Held(_)));
    p.a.touch(AGENT, "s").await.unwrap();
    let lock = p.a.lock_op(AGENT, Duration::from_secs(10)).await.unwrap().unwrap();
    p.a.unlock_op(AGENT, &lock).await;
    assert_eq!(p.a.create(AGENT, &record("s2", "g-9.AgentGateway0", &[]), CreateMode::Restore).await.unwrap(), 0);
    assert_eq!(p.a.end(AGENT, "other", EndAs::SignedOut).await.unwrap(), EndOutcome::Gone);
    assert_eq!(p.a.end(AGENT, "s", EndAs::SignedOut).await.unwrap(), EndOutcome::Ended);
    assert_eq!(next_change(&mut feed).await, session(), "a sign-out (nothing since the event)");
    // The subscription drops and comes back.
    p.drop_subscriptions().await;
    assert_eq!(next_change(&mut feed).await, Change::Resync, "anything may have changed meanwhile");
    p.a.create(AGENT, &record("s3", "g-3.AgentGateway0", &[]), CreateMode::SignIn).await.unwrap();
    assert_eq!(next_change(&mut feed).await, session(), "followed again");
}

// --- webhook deliveries ---------------------------------------------------------------------

/// A stored message as the webhooks layer writes it: the id and time first.
fn wh_message(id: &str, at_ms: u64) -> Vec<u8> {
    format!("{id} {at_ms} 1 default 153 E {{}}").into_bytes()
}

const HOLD: Duration = Duration::from_secs(60);
const BOUND: Bound = Bound { events: 100, bytes: 1 << 20 };

async fn webhook_lanes_are_claimed_by_one_replica_and_settle_in_order(p: Pair) {
    let (a, b) = (&p.a, &p.b);
    assert_eq!(a.next_seq("default/153").await.unwrap(), 1);
    assert_eq!(b.next_seq("default/153").await.unwrap(), 2, "one sequence for every replica");
    assert_eq!(a.next_seq("default/154").await.unwrap(), 1);
    for (lane, id, at) in [("default/153", "m1", 10), ("default/153", "m2", 20), ("default/154", "n1", 15)] {
        assert!(a.push("crm", lane, at, &wh_message(id, at), BOUND).await.unwrap());
    }
    // A push retried after its answer was lost is not queued twice.
    assert!(b.push("crm", "default/154", 15, &wh_message("n1", 15), BOUND).await.unwrap());
    // b claims both lanes' heads; a finds nothing left to claim; one head per lane.
    let claimed = b.claim("crm", 10, HOLD).await.unwrap();
    let mut heads: Vec<(String, Vec<u8>, u32)> = claimed.into_iter().map(|c| (c.lane, c.message, c.attempts)).collect();
    heads.sort();
    assert_eq!(
        heads,
        [("default/153".to_owned(), wh_message("m1", 10), 0), ("default/154".to_owned(), wh_message("n1", 15), 0),]
    );
    assert!(a.claim("crm", 10, HOLD).await.unwrap().is_empty(), "claimed by b");
    // Only the claimer settles a retry; a counted one raises the attempts.
    let retry = Settlement::Retry { after: Duration::ZERO, counted: true };
    assert_eq!(a.settle("crm", "default/153", "m1", retry).await.unwrap(), Settled::NotHead);
    assert_eq!(b.settle("crm", "default/153", "m1", retry).await.unwrap(), Settled::Done);
    let again = a.claim("crm", 10, HOLD).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].lane.as_str(), again[0].attempts), ("default/153", 1));
    // Delivered: the next of the lane is due at once, with its attempts from 0.
    assert_eq!(a.settle("crm", "default/153", "m1", Settlement::Delivered).await.unwrap(), Settled::Done);
    assert_eq!(a.settle("crm", "default/153", "m1", Settlement::Delivered).await.unwrap(), Settled::NotHead, "once");
    let next = b.claim("crm", 10, HOLD).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].message.clone(), next[0].attempts), (wh_message("m2", 20), 0));
    let sum = a.summary("crm", 10).await.unwrap();
    assert_eq!((sum.pending, sum.oldest_ms, sum.failed), (2, Some(15), 0), "{sum:?}");
    // A disabled endpoint is disabled for every replica.
    a.set_disabled("crm", Some(b"410")).await.unwrap();
    assert_eq!(b.summary("crm", 1).await.unwrap().disabled.as_deref(), Some(&b"410"[..]));
    b.set_disabled("crm", None).await.unwrap();
    assert_eq!(a.summary("crm", 1).await.unwrap().disabled, None);
    // Other endpoints see nothing of it.
    assert_eq!(a.summary("other", 1).await.unwrap().pending, 0);
    assert!(a.claim("other", 10, HOLD).await.unwrap().is_empty());
}

async fn webhook_deliveries_are_bounded_and_given_up_events_replay(p: Pair) {
    let (a, b) = (&p.a, &p.b);
    let three = Bound { events: 3, bytes: 1 << 20 };
    for (i, at) in [100u64, 200, 300].iter().enumerate() {
        assert!(a.push("crm", "default/153", *at, &wh_message(&format!("m{i}"), *at), three).await.unwrap());
    }
    assert!(!b.push("crm", "default/154", 400, &wh_message("x", 400), three).await.unwrap(), "max_pending");
    // Bytes bound the pending events as well: this one would pass them.
    let small = Bound { events: 100, bytes: 3 * wh_message("m0", 100).len() + 10 };
    assert!(!b.push("crm", "default/154", 400, &wh_message("x", 400), small).await.unwrap(), "max_pending_bytes");
    // Each is given up in turn; the failed list keeps its newest two.
    let mut evicted = 0;
    for _ in 0..3 {
        let c = a.claim("crm", 1, HOLD).await.unwrap().pop().unwrap();
        let id = std::str::from_utf8(&c.message).unwrap().split(' ').next().unwrap().to_owned();
        let entry = failed_entry(&c.lane, &c.message, 999, 8, "HTTP 500").unwrap();
        let how = Settlement::GiveUp { entry: &entry, max_failed: 2 };
        // Another replica cannot give up what a holds.
        assert_eq!(b.settle("crm", &c.lane, &id, how).await.unwrap(), Settled::NotHead);
        if a.settle("crm", &c.lane, &id, how).await.unwrap() == Settled::Evicted {
            evicted += 1;
        }
    }
    assert_eq!(evicted, 1);
    let sum = b.summary("crm", 10).await.unwrap();
    assert_eq!((sum.pending, sum.failed, sum.oldest_ms, sum.next_due_ms), (0, 2, None, None), "{sum:?}");
    assert_eq!(sum.recent_failed.len(), 2);
    assert!(sum.recent_failed[0].ends_with(&wh_message("m2", 300)), "newest first");
    // A replay since 250 puts back only m2; one since 0 the rest; each once.
    assert_eq!(b.replay("crm", 250).await.unwrap(), 1);
    assert_eq!(b.replay("crm", 0).await.unwrap(), 1);
    assert_eq!(b.replay("crm", 0).await.unwrap(), 0);
    let sum = a.summary("crm", 10).await.unwrap();
    assert_eq!((sum.pending, sum.failed), (2, 0));
    let order: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        while let Some(c) = a.claim("crm", 1, HOLD).await.unwrap().pop() {
            let id = std::str::from_utf8(&c.message).unwrap().split(' ').next().unwrap().to_owned();
            a.settle("crm", &c.lane, &id, Settlement::Delivered).await.unwrap();
            v.push(c.message);
        }
        v
    };
    assert_eq!(order, [wh_message("m2", 300), wh_message("m1", 200)], "in the order they were replayed");
}

async fn a_webhook_claim_that_runs_out_is_anyones_and_holding_keeps_it(p: Pair) {
    let (a, b) = (&p.a, &p.b);
    let hold = p_lease(&p);
    a.push("crm", "default/153", 1, &wh_message("m1", 1), BOUND).await.unwrap();
    a.push("crm", "default/154", 1, &wh_message("n1", 1), BOUND).await.unwrap();
    assert_eq!(a.claim("crm", 10, hold).await.unwrap().len(), 2);
    // a holds 153's claim (its attempt still runs) but not 154's; a claim's time passes.
    p.pass(hold / 2).await;
    a.hold("crm", &["default/153"], hold).await.unwrap();
    p.pass(hold / 2 + hold / 4).await;
    let taken = b.claim("crm", 10, hold).await.unwrap();
    assert_eq!(taken.iter().map(|c| c.lane.as_str()).collect::<Vec<_>>(), ["default/154"], "a died with 154's");
    // a's attempt at 154 reached the receiver after all: the delivery counts once, and b's
    // own settling of the same event finds it gone.
    assert_eq!(a.settle("crm", "default/154", "n1", Settlement::Delivered).await.unwrap(), Settled::Done);
    assert_eq!(b.settle("crm", "default/154", "n1", Settlement::Delivered).await.unwrap(), Settled::NotHead);
    assert_eq!(a.summary("crm", 1).await.unwrap().pending, 1);
    // a's retry of a lane it no longer holds changes nothing.
    p.pass(hold).await;
    let c = b.claim("crm", 10, hold).await.unwrap();
    assert_eq!(c.len(), 1, "153's claim ran out too");
    let retry = Settlement::Retry { after: Duration::from_secs(3600), counted: true };
    assert_eq!(a.settle("crm", "default/153", "m1", retry).await.unwrap(), Settled::NotHead);
    assert_eq!(b.settle("crm", "default/153", "m1", Settlement::Delivered).await.unwrap(), Settled::Done);
    assert_eq!(b.summary("crm", 1).await.unwrap(), Default::default());
}

/// The pair's lease: what a case lets a claim last.
fn p_lease(p: &Pair) -> Duration {
    p.a.lease_ttl()
}

/// Redis goes through a replay 200 entries per script: the end is the same as all at once.
async fn a_long_given_up_list_replays_in_batches_and_keeps_the_rest_in_order(p: Pair) {
    let a = &p.a;
    let room = Bound { events: 1000, bytes: 1 << 20 };
    for i in 0..450u64 {
        assert!(a.push("crm", "default/153", i, &wh_message(&format!("m{i}"), i), room).await.unwrap());
    }
    for i in 0..450u64 {
        let c = a.claim("crm", 1, HOLD).await.unwrap().pop().unwrap();
        let entry = failed_entry(&c.lane, &c.message, 1, 8, "HTTP 500").unwrap();
        let how = Settlement::GiveUp { entry: &entry, max_failed: 1000 };
        assert_eq!(a.settle("crm", &c.lane, &format!("m{i}"), how).await.unwrap(), Settled::Done);
    }
    assert_eq!(p.b.replay("crm", 300).await.unwrap(), 150);
    let sum = a.summary("crm", 3).await.unwrap();
    assert_eq!((sum.pending, sum.failed), (150, 300));
    assert!(sum.recent_failed[0].ends_with(&wh_message("m299", 299)), "the kept ones in their order");
    assert!(sum.recent_failed[2].ends_with(&wh_message("m297", 297)));
    let first = a.claim("crm", 1, HOLD).await.unwrap().pop().unwrap();
    assert_eq!(first.message, wh_message("m300", 300), "the replayed ones oldest first");
}

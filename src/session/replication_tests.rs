//! Replication in process: several session stores share one in-memory shared store
//! (`shared::memory`, the Lua scripts' semantics) and one scripted gateway, under tokio's
//! paused clock. The tests drive maintenance rounds themselves, so every lease, takeover and
//! fencing step happens at a known instant. `tests/it/store_contract.rs` holds the in-memory
//! store to the real scripts; `tests/it/replicas.rs` keeps what needs processes (kill -9,
//! SIGSTOP, Redis restarted).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::{sleep, Instant};

use super::copy::LocalCopy;
use super::testing::{credentials, event, many_credentials, FakeGateway};
use super::*;
use crate::config::{SessionsConfig, ShutdownMode};
use crate::gateway::GatewayMethod;
use crate::metrics::Metrics;
use crate::shared::memory::MemoryHub;
use crate::shared::{Backend, Events, RecordState, Records, SharedStore};

const AGENT: &str = "153";
const LEASE: Duration = Duration::from_secs(3);

struct Replica {
    store: Arc<SessionStore>,
    name: String,
    metrics: Metrics,
}

/// A replica of ccgate on `hub`, without the maintenance timer (tests run rounds).
fn replica(hub: &MemoryHub, gw: &Arc<FakeGateway>, tune: impl FnOnce(&mut SessionsConfig)) -> Replica {
    replica_for(hub, gw, credentials(), tune)
}

/// [`replica`] with its own credentials (agents 1000.. for the fleet cases).
fn replica_for(
    hub: &MemoryHub,
    gw: &Arc<FakeGateway>,
    creds: crate::session::credentials::CredentialStore,
    tune: impl FnOnce(&mut SessionsConfig),
) -> Replica {
    let mut cfg = SessionsConfig::default();
    tune(&mut cfg);
    let shared = hub.join();
    let name = shared.replica().to_owned();
    let shared: Arc<dyn SharedStore> = shared;
    let metrics = Metrics::default();
    let store = SessionStore::new(
        Default::default(),
        gw.clone(),
        creds,
        cfg,
        metrics.clone(),
        Some(shared),
        ShutdownMode::Handover,
    );
    Replica { store, name, metrics }
}

fn cluster(n: usize) -> (MemoryHub, Arc<FakeGateway>, Vec<Replica>) {
    let hub = MemoryHub::new(LEASE, crate::shared::TOMBSTONE);
    let gw = FakeGateway::new();
    let replicas = (0..n).map(|_| replica(&hub, &gw, |_| {})).collect();
    (hub, gw, replicas)
}

impl Replica {
    async fn round(&self) {
        self.store.maintenance_round().await;
    }

    fn holds_lease(&self, hub: &MemoryHub) -> bool {
        hub.lease_holder(AGENT).is_some_and(|h| h.starts_with(&format!("{} ", self.name)))
    }
}

/// Lets every task that can run, run (the clock stays where it is).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn one_sign_in_cluster_wide_and_any_replica_serves_it_with_the_same_guid() {
    let (_hub, gw, r) = cluster(3);
    let tasks: Vec<_> = r
        .iter()
        .flat_map(|r| (0..10).map(move |_| r.store.clone()))
        .map(|s| tokio::spawn(async move { s.sign_in(AGENT, SignInOptions::default()).await.map(|(s, _)| s) }))
        .collect();
    let mut sids = Vec::new();
    for t in tasks {
        sids.push(t.await.unwrap().unwrap().shared_id().map(str::to_owned));
    }
    assert_eq!(gw.count(GatewayMethod::Login), 1, "one sign-in reached the gateway");
    assert!(sids.windows(2).all(|w| w[0] == w[1]), "every replica has the same session");
    for replica in &r {
        let s = replica.store.lookup(AGENT).await.unwrap();
        s.call(GatewayMethod::StopVoiceToConf, None).await.unwrap();
    }
    let guids = gw.guids(GatewayMethod::StopVoiceToConf);
    assert_eq!(guids, vec![Some("guid-1.AgentGateway0".to_owned()); 3]);
}

#[tokio::test(start_paused = true)]
async fn a_lease_is_renewed_while_its_owner_lives_and_taken_over_a_lease_after_it_dies() {
    let (hub, gw, r) = cluster(2);
    let (a, b) = (&r[0], &r[1]);
    let start = Instant::now();
    a.store.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    b.store.lookup(AGENT).await.unwrap();
    // Rounds every third of a lease: the owner renews, the other replica takes nothing.
    for _ in 0..6 {
        sleep(LEASE / 3).await;
        a.round().await;
        b.round().await;
    }
    assert!(a.holds_lease(&hub), "renewed across two lease lifetimes");
    assert_eq!(b.metrics.lease_takeovers(), 0);
    // A dies; B's rounds find the lease gone only once it expired.
    a.store.halt();
    let died = Instant::now();
    let polls_before = gw.count(GatewayMethod::GetAgentEvent);
    loop {
        sleep(LEASE / 3).await;
        b.round().await;
        if b.holds_lease(&hub) {
            break;
        }
        assert!(died.elapsed() < LEASE * 3, "taken over within a few rounds");
    }
    let after = died.elapsed();
    assert!(after >= LEASE, "not before the dead owner's lease ran out: {after:?}");
    assert_eq!(b.metrics.lease_takeovers(), 1);
    settle().await;
    assert!(b.store.current(AGENT).unwrap().polls_here());
    assert!(gw.count(GatewayMethod::GetAgentEvent) > polls_before, "B polls now");
    assert!(start.elapsed() < LEASE * 6);
}

#[tokio::test(start_paused = true)]
async fn a_paused_owners_late_guid_write_is_refused_and_it_stands_down() {
    let (hub, _gw, r) = cluster(2);
    let (a, b) = (&r[0], &r[1]);
    let sa = a.store.sign_in(AGENT, SignInOptions::default()).await.unwrap().0;
    b.store.lookup(AGENT).await.unwrap();
    // A is paused past its lease (no renewal); B takes over with a newer epoch.
    sleep(LEASE).await;
    b.round().await;
    assert!(b.holds_lease(&hub));
    let sb = b.store.current(AGENT).unwrap();
    sb.take_credentials(Some("b-rotated.AgentGateway0"), &[]).unwrap();
    sb.sharing.publish_auth(&*sb, "guid-1.AgentGateway0").await;
    // A wakes with a rotation of its own from a poll that was out: written under its old
    // epoch, which the record no longer has.
    assert!(sa.polls_here(), "A still believes it polls");
    let old = sa.take_credentials(Some("a-late.AgentGateway0"), &[]).unwrap();
    sa.sharing.publish_auth(&*sa, &old).await;
    let record = hub.join().load(AGENT).await.unwrap().unwrap();
    assert_eq!(record.guid, "b-rotated.AgentGateway0", "the successor's Guid stands");
    assert!(!sa.polls_here(), "A stood down");
    assert_eq!(sa.with_raw_auth(|g, _| g.to_owned()), "b-rotated.AgentGateway0", "and took the record's Guid");
    assert_eq!(a.metrics.lease_losses(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_stale_guid_retries_with_the_newer_one_and_never_ends_the_session() {
    let (_hub, gw, r) = cluster(2);
    let (a, b) = (&r[0], &r[1]);
    let sa = a.store.sign_in(AGENT, SignInOptions::default()).await.unwrap().0;
    let sb = b.store.lookup(AGENT).await.unwrap();
    // The owner rotates; B has not heard (no change channel followed here).
    let old = sa.take_credentials(Some("rotated.AgentGateway0"), &[]).unwrap();
    sa.sharing.publish_auth(&*sa, &old).await;
    gw.refuse(GatewayMethod::StopVoiceToConf, "100-006");
    let reply = sb.call(GatewayMethod::StopVoiceToConf, None).await.unwrap();
    assert!(reply.envelope.is_success(), "sent once more with the record's Guid");
    let guids: Vec<_> = gw.guids(GatewayMethod::StopVoiceToConf).into_iter().flatten().collect();
    assert_eq!(guids, ["guid-1.AgentGateway0", "rotated.AgentGateway0"]);
    assert!(sb.ended().is_none() && sa.ended().is_none());
}

#[tokio::test(start_paused = true)]
async fn conference_writes_are_compare_and_set_on_the_record() {
    let (hub, _gw, r) = cluster(2);
    let sa = r[0].store.sign_in(AGENT, SignInOptions::default()).await.unwrap().0;
    let sb = r[1].store.lookup(AGENT).await.unwrap();
    sa.update_conf(|_| ConfState::Chair { conf_id: 7 }).await;
    // B's copy still says no conference; its change is computed on the record's state.
    assert_eq!(sb.conf(), ConfState::None);
    let next = sb
        .update_conf(|c| {
            if let ConfState::Chair { conf_id } = c {
                ConfState::Chair { conf_id: conf_id + 1 }
            } else {
                ConfState::Unknown
            }
        })
        .await;
    assert_eq!(next, ConfState::Chair { conf_id: 8 });
    let record = hub.join().load(AGENT).await.unwrap().unwrap();
    assert_eq!(record.confv, 3, "two writes after the sign-in's");
    // A copy that says "not chair" is checked against the record before a chair check; one
    // that says chair is trusted (the gateway refuses a stale chair itself).
    sb.update_conf(|_| ConfState::None).await;
    sa.update_conf(|_| ConfState::Chair { conf_id: 9 }).await;
    assert_eq!(sb.conf(), ConfState::None);
    assert_eq!(sb.current_conf().await, ConfState::Chair { conf_id: 9 });
}

#[tokio::test(start_paused = true)]
async fn event_ids_are_the_same_on_every_replica_so_last_event_id_resumes_anywhere() {
    let (hub, gw, r) = cluster(2);
    let sa = r[0].store.sign_in(AGENT, SignInOptions::default()).await.unwrap().0;
    r[1].store.follow_changes();
    let sb = r[1].store.lookup(AGENT).await.unwrap();
    for n in 0..3 {
        gw.push_event(event(AGENT, "AgentState_Busy", json!({ "n": n })));
    }
    let mut seen = sa.events.subscribe();
    seen.wait_for(|_| sa.events.since(0).events.len() == 3).await.unwrap();
    let mut mirrored = sb.events.subscribe();
    mirrored.wait_for(|_| sb.events.since(0).events.len() == 3).await.unwrap();
    let ids = |s: &Session| s.events.since(0).events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&sa), ids(&sb));
    // Resuming on B after the first event A's stream delivered.
    let first = ids(&sa)[0];
    let rest = sb.events.since(first);
    assert_eq!(rest.events.len(), 2);
    assert!(!rest.missed);
    // A replica that adopts later starts with the stream's events and the same ids.
    let c = replica(&hub, &gw, |_| {});
    let sc = c.store.lookup(AGENT).await.unwrap();
    assert_eq!(ids(&sc), ids(&sa));
}

#[tokio::test(start_paused = true)]
async fn activity_on_another_replica_keeps_the_agent_and_silence_signs_it_out() {
    let hub = MemoryHub::new(LEASE, crate::shared::TOMBSTONE);
    let gw = FakeGateway::new();
    let idle = |c: &mut SessionsConfig| c.idle_timeout_ms = 120_000;
    let (a, b) = (replica(&hub, &gw, idle), replica(&hub, &gw, idle));
    // Both on their maintenance timers this time: the owner keeps its lease for 200 s.
    a.store.start_replication();
    b.store.start_replication();
    let start = Instant::now();
    let sa = a.store.sign_in(AGENT, SignInOptions::default()).await.unwrap().0;
    let sb = b.store.lookup(AGENT).await.unwrap();
    // The app talks to B only, at 90 s; B's next round writes it.
    sleep(Duration::from_secs(90)).await;
    sb.touch();
    sleep(Duration::from_secs(100)).await;
    assert_eq!(gw.count(GatewayMethod::Logout), 0, "B's activity at 90 s counts on A at 120 s");
    assert!(sa.ended().is_none());
    assert_eq!(sa.wait_ended().await, Ended::SignedOut);
    let at = start.elapsed();
    assert!(at >= Duration::from_secs(210) && at < Duration::from_secs(215), "90 + 120 s: {at:?}");
    assert_eq!(gw.count(GatewayMethod::Logout), 1);
    // B hears of it on the change channel.
    settle().await;
    assert!(matches!(b.store.lookup(AGENT).await, Err(SessionError::NoSession)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_the_agent_over_and_the_last_replica_signs_it_out() {
    let (hub, gw, r) = cluster(2);
    let (a, b) = (&r[0], &r[1]);
    a.store.sign_in(AGENT, SignInOptions::default()).await.unwrap();
    b.store.lookup(AGENT).await.unwrap();
    a.round().await;
    b.round().await;
    a.store.shutdown(Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(gw.count(GatewayMethod::Logout), 0, "a rollout signs nobody out");
    // B takes the agent at its next round, without waiting out a lease.
    b.round().await;
    assert!(b.holds_lease(&hub));
    settle().await;
    assert!(b.store.current(AGENT).unwrap().polls_here());
    b.store.shutdown(Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(gw.count(GatewayMethod::Logout), 1, "the last replica standing signs the agent out");
    assert!(hub.join().load(AGENT).await.unwrap().is_some_and(|r| r.state == RecordState::Out));
}

#[tokio::test(start_paused = true)]
async fn while_the_store_is_away_the_owner_keeps_polling_and_others_answer_retry() {
    let (hub, gw, r) = cluster(2);
    let (a, b) = (&r[0], &r[1]);
    let sa = a.store.sign_in(AGENT, SignInOptions::default()).await.unwrap().0;
    let sb = b.store.lookup(AGENT).await.unwrap();
    hub.set_down(true);
    let old = sa.take_credentials(Some("rotated.AgentGateway0"), &[]).unwrap();
    sa.sharing.publish_auth(&*sa, &old).await;
    // B's Guid is the older one: refused, and whether the session ended is not B's to say.
    gw.refuse(GatewayMethod::StopVoiceToConf, "100-006");
    let e = sb.call(GatewayMethod::StopVoiceToConf, None).await.unwrap_err();
    assert!(matches!(e, SessionError::Unconfirmed), "{e:?}");
    assert!(sb.ended().is_none(), "B keeps its copy");
    a.round().await;
    // Back: the owner's round writes the Guid it could not, and B's next call uses it.
    hub.set_down(false);
    sleep(LEASE / 3).await;
    a.round().await;
    b.round().await;
    gw.refuse(GatewayMethod::StopVoiceToConf, "100-006");
    let reply = sb.call(GatewayMethod::StopVoiceToConf, None).await.unwrap();
    assert!(reply.envelope.is_success(), "sent once more with the owner's Guid");
    assert_eq!(
        gw.guids(GatewayMethod::StopVoiceToConf).last().cloned().flatten().as_deref(),
        Some("rotated.AgentGateway0")
    );
    assert!(sa.polls_here(), "the owner took its own lease back");
}

/// Events recorded while the store was away reach the stream, in order, even when it came
/// back without the session's record (a Redis restarted empty): they wait in the queue until
/// the record is put back, rather than being taken as written by a store that had nothing
/// to write them into.
#[tokio::test(start_paused = true)]
async fn events_queued_while_the_store_was_away_wait_for_the_record_to_be_put_back() {
    let (hub, gw, r) = cluster(1);
    let a = &r[0];
    let sa = a.store.sign_in(AGENT, SignInOptions::default()).await.unwrap().0;
    let mut seen = sa.events.subscribe();
    hub.set_down(true);
    gw.push_event(event(AGENT, "AgentState_Busy", json!({ "n": 0 })));
    seen.wait_for(|_| sa.events.since(0).events.len() == 1).await.unwrap();
    // Back, empty; the next event comes before the owner's round puts the record back.
    hub.flush_all();
    hub.set_down(false);
    gw.push_event(event(AGENT, "AgentState_Idle", json!({ "n": 1 })));
    seen.wait_for(|_| sa.events.since(0).events.len() == 2).await.unwrap();
    for _ in 0..2 {
        sleep(LEASE / 3).await;
        a.round().await;
    }
    let store = hub.join();
    assert!(store.load(AGENT).await.unwrap().is_some(), "the owner put the record back");
    let stream: Vec<(u64, String)> =
        store.events_after(AGENT, 0, 10).await.unwrap().into_iter().map(|(id, kind, _)| (id, kind)).collect();
    let local: Vec<(u64, String)> = sa.events.since(0).events.iter().map(|e| (e.id, e.kind.to_string())).collect();
    assert_eq!(stream, local, "the stream holds what the apps here saw, with the same ids");
}

/// A change of conference state is the change one replica commits, applied to the record's
/// state: a replica whose copy is stale makes no second "no longer chair" after another
/// replica made it (so the audit line of a change is written once, by the one that made it).
#[tokio::test(start_paused = true)]
async fn a_change_another_replica_made_is_not_made_again() {
    let (_hub, _gw, r) = cluster(2);
    let sa = r[0].store.sign_in(AGENT, SignInOptions::default()).await.unwrap().0;
    let sb = r[1].store.lookup(AGENT).await.unwrap();
    sa.update_conf(|_| ConfState::Chair { conf_id: 7 }).await;
    let end_chair = |c: ConfState| if matches!(c, ConfState::Chair { .. }) { ConfState::None } else { c };
    // B's copy is stale (no conference); the change it commits is the record's chair ending.
    assert_eq!(sb.conf(), ConfState::None);
    let made = sb.sharing.update_conf(&*sb, &end_chair).await;
    assert_eq!(made, (ConfState::Chair { conf_id: 7 }, ConfState::None));
    // A's copy still says chair; the same change, applied to the record, changes nothing.
    assert_eq!(sa.conf(), ConfState::Chair { conf_id: 7 });
    let made = sa.sharing.update_conf(&*sa, &end_chair).await;
    assert_eq!(made, (ConfState::None, ConfState::None));
}

/// A dead replica's agents are shared out: each survivor takes its own share in the first
/// round after the dead one's index entries went stale, no agent is taken twice, and a
/// survivor's refresh keeps the others' fresh takeovers theirs (issue 39).
#[tokio::test(start_paused = true)]
async fn a_dead_replicas_agents_are_shared_out_among_the_survivors_in_one_round() {
    const N: usize = 60;
    let hub = MemoryHub::new(LEASE, crate::shared::TOMBSTONE);
    let gw = FakeGateway::new();
    let r: Vec<Replica> = (0..3).map(|_| replica_for(&hub, &gw, many_credentials(N), |_| {})).collect();
    let agents: Vec<String> = (1000..1000 + N).map(|a| a.to_string()).collect();
    for a in &agents {
        r[0].store.sign_in(a, SignInOptions::default()).await.unwrap();
    }
    for x in &r {
        x.round().await;
    }
    r[0].store.halt();
    // Rounds every third of a lease, the survivors only: nothing is stale before a lease.
    let died = Instant::now();
    while died.elapsed() < LEASE {
        sleep(LEASE / 3).await;
        for x in &r[1..] {
            x.round().await;
        }
        if died.elapsed() < LEASE {
            assert_eq!(r[1].metrics.lease_takeovers() + r[2].metrics.lease_takeovers(), 0);
        }
    }
    let (b, c) = (r[1].metrics.lease_takeovers(), r[2].metrics.lease_takeovers());
    assert_eq!(b + c, N as u64, "every agent taken over in the first round past the lease, once");
    assert!(b >= 15 && c >= 15, "shared out: {b} and {c}");
    // Later rounds take nothing from anyone.
    for _ in 0..6 {
        sleep(LEASE / 3).await;
        for x in &r[1..] {
            x.round().await;
        }
    }
    assert_eq!(r[1].metrics.lease_takeovers() + r[2].metrics.lease_takeovers(), N as u64);
    assert_eq!(r[1].metrics.lease_losses() + r[2].metrics.lease_losses(), 0);
    settle().await;
    for a in &agents {
        let holder = hub.lease_holder(a).expect("held");
        assert!(holder.starts_with(&format!("{} ", r[1].name)) || holder.starts_with(&format!("{} ", r[2].name)));
    }
}

//! Redis failing over under ccgate (issue 35), on real processes: (a) a managed-style endpoint
//! (a TCP forwarder that sends new connections to the current primary, the old primary
//! demoted with `REPLICAOF`), (b) Sentinel (one primary, one replica, three sentinels, the
//! primary killed), (c) Redis Cluster (three shards with a replica each, the agent's shard's
//! primary killed). In each, two ccgate replicas in front of the simulator rotating Guids every
//! 400 ms (1.2 s overlap): they serve stops again within 2 s of the new primary accepting
//! writes, a new agent signs in through one and is seen by the other, nobody is signed in again
//! or out, one replica polls each agent, and no replica is unready for 5 s. And (d): a replica
//! whose clock runs minutes ahead or behind (libfaketime) hands its agents over on a graceful
//! stop and removes no other replica.

use crate::common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccgate::config::{Secret, StoreBackend, StoreMode};
use ccgate::gateway::GatewayMethod;
use common::process::Process;
use common::redis::RedisServer;
use common::{eventually, test_sim_config, Harness, Options};
use http::{Method, StatusCode};
use serde_json::json;

const STOP: &str = "/v1/conference/announcement/stop";
const LEASE_TTL_MS: u64 = 1_500;
/// What the issue asks: stops served again this soon after the new primary takes writes.
const RECOVERY: Duration = Duration::from_secs(2);
/// And no replica unready for longer than this.
const UNREADY_AT_MOST: Duration = Duration::from_secs(5);

/// How the replicas reach Redis.
struct Topology {
    mode: StoreMode,
    url: String,
    nodes: Vec<String>,
    master: Option<String>,
}

async fn fleet(t: &Topology) -> Harness {
    let (mode, url, nodes, master) = (t.mode, t.url.clone(), t.nodes.clone(), t.master.clone());
    let mut sim = test_sim_config();
    sim.event_wait_ms = 500;
    sim.guid_interval_ms = 400;
    sim.guid_overlap_ms = 1_200;
    Harness::with(Options {
        sim,
        config: Box::new(move |c| {
            c.store.backend = StoreBackend::Redis;
            c.store.mode = mode;
            c.store.url = Some(Secret::new(url));
            c.store.nodes = nodes;
            c.store.sentinel_master = master;
            c.store.lease_ttl_ms = LEASE_TTL_MS;
            c.store.command_timeout_ms = 300;
            c.store.connect_timeout_ms = 500;
            // Unready while Redis is away, so the 5-second bound means something.
            c.admin.ready_requires_store = true;
            c.rate_limits.limit = Vec::new();
        }),
        ..Options::default()
    })
    .await
}

/// The longest stretch a replica's `/readyz` was not 200, watched every 50 ms until dropped.
struct Readiness {
    worst: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl Readiness {
    fn watch(h: &Harness, admin: String) -> Self {
        let worst = Arc::new(Mutex::new(Duration::ZERO));
        let (w, client) = (worst.clone(), h.client.clone());
        let task = tokio::spawn(async move {
            let mut since: Option<Instant> = None;
            loop {
                let req = http::Request::get(format!("{admin}/readyz"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let ok = matches!(
                    tokio::time::timeout(Duration::from_secs(1), client.request(req)).await,
                    Ok(Ok(r)) if r.status() == StatusCode::OK
                );
                match (ok, since) {
                    (true, _) => since = None,
                    (false, None) => since = Some(Instant::now()),
                    (false, Some(t)) => {
                        let mut w = w.lock().unwrap();
                        *w = (*w).max(t.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { worst, task }
    }

    fn worst(self) -> Duration {
        self.task.abort();
        *self.worst.lock().unwrap()
    }
}

/// The agent view of `agent` on an admin listener.
async fn agent_view(h: &Harness, admin: &str, agent: &str) -> serde_json::Value {
    h.send(Method::GET, &format!("{admin}/agents/{agent}"), &[], "").await.json()
}

/// What every scenario checks around its failover. `failover` returns when the new primary
/// accepts writes.
async fn survives(t: Topology, failover: impl AsyncFnOnce() -> Instant, reasons: &[&str]) {
    let h = fleet(&t).await;
    let (b, b_url) = h.replica(|_| {}).await;
    let b_admin = format!("http://127.0.0.1:{}", b.admin_addr.port());
    let urls = [h.base.clone(), b_url.clone()];
    let admins = [h.admin.clone(), b_admin.clone()];
    h.chair("153").await;
    let token = h.token("153");
    for url in &urls {
        let r = h.call_at(url, Method::POST, STOP, Some(&token), "{}").await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text);
    }
    let signins = || h.sim.count(GatewayMethod::Login) + h.sim.count(GatewayMethod::ForceLogin);
    let (before, logouts) = (signins(), h.sim.count(GatewayMethod::Logout));
    let watchers: Vec<Readiness> = admins.iter().map(|a| Readiness::watch(&h, a.clone())).collect();

    let writable = failover().await;
    // Both replicas serve the chair's stop again within RECOVERY of the new primary.
    let mut answers = Vec::new();
    loop {
        answers.clear();
        for url in &urls {
            let r = h.call_at(url, Method::POST, STOP, Some(&token), "{}").await;
            answers.push((r.status, r.text));
        }
        if answers.iter().all(|(s, _)| *s == StatusCode::OK) {
            break;
        }
        assert!(writable.elapsed() < RECOVERY * 3, "never served again: {answers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = writable.elapsed();
    eprintln!("{:?}: stops served on every replica {} ms after the new primary took writes", t.mode, took.as_millis());
    assert!(took <= RECOVERY, "{} ms", took.as_millis());

    // A new agent signs in through B (retrying a 503, as apps do) within the same bound, and
    // A sees it.
    loop {
        let r = h.call_at(&b_url, Method::POST, "/v1/session", Some(&h.token("154")), "").await;
        if r.status == StatusCode::CREATED {
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
        assert!(writable.elapsed() < RECOVERY, "no sign-in within {} ms: {}", RECOVERY.as_millis(), r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{:?}: a new agent signed in {} ms after the new primary took writes",
        t.mode,
        writable.elapsed().as_millis()
    );
    let r = h.call_at(&h.base, Method::GET, "/v1/session", Some(&h.token("154")), "").await;
    assert_eq!(r.status, StatusCode::OK, "A sees 154: {}", r.text);
    // No one signed in again (154's sign-in is the one more) or out.
    assert_eq!(signins(), before + 1, "no sign-in but 154's");
    assert_eq!(h.sim.count(GatewayMethod::Logout), logouts, "no sign-out");
    // One replica polls each agent, and both agree which.
    for agent in ["153", "154"] {
        eventually(&format!("one poller for {agent}"), || async {
            let (a, b) = (agent_view(&h, &admins[0], agent).await, agent_view(&h, &admins[1], agent).await);
            let polled = [&a, &b].iter().filter(|v| v["polled_here"] == true).count();
            polled == 1 && a["polled_by"] == b["polled_by"]
        })
        .await;
    }
    for w in watchers {
        let worst = w.worst();
        assert!(worst < UNREADY_AT_MOST, "a replica was unready for {} ms", worst.as_millis());
    }
    // Operators see it: the mode, and (where ccgate had to move) the failover and its reason.
    let mut seen = Vec::new();
    for admin in &admins {
        let ready = h.send(Method::GET, &format!("{admin}/readyz"), &[], "").await.json();
        let detail = &ready["store_detail"];
        assert_eq!(detail["mode"], t.mode.as_str(), "{ready}");
        assert_eq!(detail["connected"], true, "{ready}");
        if let Some(reason) = detail["last_failover"]["reason"].as_str() {
            seen.push(reason.to_owned());
        }
        // The same on the agents view (`ccgate agents` prints its summary) and the status page.
        let agents = h.send(Method::GET, &format!("{admin}/agents"), &[], "").await.json();
        let summary = agents["store"]["summary"].as_str().unwrap_or_default().to_owned();
        assert!(summary.starts_with(t.mode.as_str()), "{agents}");
        let page = h.send(Method::GET, &format!("{admin}/"), &[], "").await.text;
        assert!(page.contains(&format!("{}, ", t.mode.as_str())), "the status page names the mode");
        let metrics = h.send(Method::GET, &format!("{admin}/metrics"), &[], "").await.text;
        assert!(metrics.contains("ccgate_store_reconnects_total{reason=\"readonly\"}"), "zeroed series");
    }
    if !reasons.is_empty() {
        assert!(
            seen.iter().any(|r| reasons.contains(&r.as_str())),
            "failover reasons {seen:?}, want one of {reasons:?}"
        );
    }
    b.stop().await;
    h.stop().await;
}

/// A forwarder standing in for a managed Redis endpoint: new connections go to the current
/// primary; open ones stay where they are (as they do when a DNS name moves).
struct Endpoint {
    port: u16,
    target: Arc<AtomicU16>,
}

impl Endpoint {
    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target));
        let to = target.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let port = to.load(Ordering::Acquire);
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Self { port, target }
    }

    fn point_to(&self, port: u16) {
        self.target.store(port, Ordering::Release);
    }
}

/// Waits until `n` replicas acknowledged every write so far (nothing is lost by the failover
/// the test makes; what a lost write does is the epoch test's business).
async fn replicated(primary: &RedisServer, n: i64) {
    let mut c = primary.conn().await;
    eventually("the replica caught up", || {
        let mut c = c.clone();
        async move { redis::cmd("WAIT").arg(n).arg(100).query_async::<i64>(&mut c).await.unwrap() >= n }
    })
    .await;
    let _: () = redis::cmd("PING").query_async(&mut c).await.unwrap();
}

async fn is_primary(node: &RedisServer) -> bool {
    let Ok(client) = redis::Client::open(node.url()) else { return false };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else { return false };
    let role: Result<Vec<redis::Value>, _> = redis::cmd("ROLE").query_async(&mut c).await;
    matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_endpoint_that_moves_to_the_promoted_replica_costs_seconds() {
    let primary = RedisServer::start().await;
    let replica = RedisServer::replica_of(&primary).await;
    let endpoint = Endpoint::start(primary.port).await;
    let t = Topology {
        mode: StoreMode::Standalone,
        url: format!("redis://127.0.0.1:{}/0", endpoint.port),
        nodes: Vec::new(),
        master: None,
    };
    survives(
        t,
        async || {
            replicated(&primary, 1).await;
            // As a managed failover does: promote the replica, move the name, demote the old
            // primary (which stays up, answering READONLY to the connections ccgate holds).
            let mut r = replica.conn().await;
            let _: () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async(&mut r).await.unwrap();
            let writable = Instant::now();
            endpoint.point_to(replica.port);
            let mut p = primary.conn().await;
            let _: () = redis::cmd("REPLICAOF").arg("127.0.0.1").arg(replica.port).query_async(&mut p).await.unwrap();
            writable
        },
        &["readonly"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_follows_the_primary_killed_with_sigkill() {
    let dir = tempdir();
    let mut primary = RedisServer::start().await;
    let replica = RedisServer::replica_of(&primary).await;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(RedisServer::sentinel(&dir, "ccgate", &primary).await);
    }
    // Every sentinel knows the replica before the primary dies (else none can promote it).
    for s in &sentinels {
        let mut c = s.conn().await;
        eventually("a sentinel sees the replica", || {
            let mut c = c.clone();
            async move {
                let r: Vec<redis::Value> =
                    redis::cmd("SENTINEL").arg("replicas").arg("ccgate").query_async(&mut c).await.unwrap();
                !r.is_empty()
            }
        })
        .await;
        let _: () = redis::cmd("PING").query_async(&mut c).await.unwrap();
    }
    let t = Topology {
        mode: StoreMode::Sentinel,
        url: "redis:///0".into(),
        nodes: sentinels.iter().map(RedisServer::addr).collect(),
        master: Some("ccgate".into()),
    };
    survives(
        t,
        async || {
            replicated(&primary, 1).await;
            primary.kill();
            eventually("the sentinels promoted the replica", || is_primary(&replica)).await;
            Instant::now()
        },
        &["connection_lost", "switch_master", "timeouts"],
    )
    .await;
    drop(sentinels);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ccgate-redis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_shard_failing_over_under_the_agent_costs_seconds() {
    let dir = tempdir();
    let mut nodes = Vec::new();
    for _ in 0..6 {
        nodes.push(RedisServer::cluster_node(&dir).await);
    }
    let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
    let created = common::tools::command("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
    for n in &nodes {
        let mut c = n.conn().await;
        eventually("the cluster is up", || {
            let mut c = c.clone();
            async move {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.unwrap();
                info.contains("cluster_state:ok")
            }
        })
        .await;
        let _: () = redis::cmd("PING").query_async(&mut c).await.unwrap();
    }
    // Seeds: three of the six nodes, as an operator lists them.
    let t = Topology { mode: StoreMode::Cluster, url: "redis:///0".into(), nodes: addrs[..3].to_vec(), master: None };
    survives(
        t,
        async || {
            // The shard of agent 153's keys: its primary, and the replica that will take over.
            let mut c = nodes[0].conn().await;
            let slot: i64 =
                redis::cmd("CLUSTER").arg("KEYSLOT").arg("ccgate:{a:153}:session").query_async(&mut c).await.unwrap();
            let table: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.unwrap();
            let (primary_id, primary_port) = table
                .lines()
                .map(|l| l.split(' ').collect::<Vec<_>>())
                .find(|f| {
                    f[2].contains("master")
                        && f[8..].iter().any(|r| match r.split_once('-') {
                            Some((a, b)) => a.parse::<i64>().unwrap() <= slot && slot <= b.parse::<i64>().unwrap(),
                            None => r.parse::<i64>().ok() == Some(slot),
                        })
                })
                .map(|f| (f[0].to_owned(), f[1].split([':', '@']).nth(1).unwrap().parse::<u16>().unwrap()))
                .unwrap();
            let replica_port = table
                .lines()
                .map(|l| l.split(' ').collect::<Vec<_>>())
                .find(|f| f[3] == primary_id)
                .map(|f| f[1].split([':', '@']).nth(1).unwrap().parse::<u16>().unwrap())
                .unwrap();
            let primary = nodes.iter().position(|n| n.port == primary_port).unwrap();
            let replica = nodes.iter().position(|n| n.port == replica_port).unwrap();
            let conn = nodes[primary].conn().await;
            let mut w = conn.clone();
            eventually("the shard's replica caught up", || {
                let mut w = w.clone();
                async move { redis::cmd("WAIT").arg(1).arg(100).query_async::<i64>(&mut w).await.unwrap() >= 1 }
            })
            .await;
            let _: () = redis::cmd("PING").query_async(&mut w).await.unwrap();
            nodes[primary].kill();
            eventually("the shard's replica was promoted", || is_primary(&nodes[replica])).await;
            Instant::now()
        },
        &[],
    )
    .await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An epoch a failover lost is never drawn again: the new primary draws from its clock. A
/// planted epoch that is not a number Lua can count with is taken as none.
#[tokio::test]
async fn an_epoch_the_new_primary_lost_is_never_drawn_again() {
    use ccgate::shared::{Backend, CreateMode, Lease, Leases, NewRecord, Records};
    let redis = RedisServer::start().await;
    let cfg = ccgate::config::StoreConfig {
        backend: StoreBackend::Redis,
        url: Some(Secret::new(redis.url())),
        ..Default::default()
    };
    let store =
        ccgate::shared::redis::RedisStore::new(&cfg, ccgate::metrics::Metrics::default(), ccgate::shared::TOMBSTONE)
            .unwrap();
    store.connect().await.unwrap();
    let record = NewRecord {
        sid: "s",
        guid: "g.AgentGateway0",
        cookies: &[],
        answer: b"{}",
        resumable: true,
        conf: "\"None\"",
        since: 0,
        tenant: None,
    };
    let first = store.create("153", &record, CreateMode::SignIn).await.unwrap();
    store.release("153", first).await.unwrap();
    let Lease::Held(lost) = store.acquire("153").await.unwrap() else { panic!("free lease") };
    // The failover: the new primary never got the takeover (epoch and lease as before it),
    // and its clock has moved on by the failover's duration (seconds; here: past the lost
    // epoch's millisecond).
    let mut c = redis.conn().await;
    eventually("Redis's clock passed the lost epoch", || {
        let mut c = c.clone();
        async move {
            let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
            s * 1000 + us / 1000 > lost
        }
    })
    .await;
    let _: () =
        redis::cmd("HSET").arg("ccgate:{a:153}:session").arg("epoch").arg(first).query_async(&mut c).await.unwrap();
    let _: () = redis::cmd("DEL").arg("ccgate:{a:153}:lease").query_async(&mut c).await.unwrap();
    let Lease::Held(next) = store.acquire("153").await.unwrap() else { panic!("free lease") };
    assert!(next > lost, "{next} must be above the lost {lost}");
    for planted in ["nan", "inf", "-5", "1e300"] {
        let _: () = redis::cmd("HSET")
            .arg("ccgate:{a:153}:session")
            .arg("epoch")
            .arg(planted)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL").arg("ccgate:{a:153}:lease").query_async(&mut c).await.unwrap();
        let taken = store.acquire("153").await.unwrap();
        assert!(matches!(taken, Lease::Held(e) if e > 1_700_000_000_000), "{planted}: {taken:?}");
    }
}

/// libfaketime's preload library (Debian: `faketime`, under the multiarch folder), loaded into
/// ccgate itself so that signals reach ccgate, not a wrapper.
fn libfaketime() -> String {
    common::tools::require("faketime");
    let dirs = std::fs::read_dir("/usr/lib").unwrap().filter_map(Result::ok).map(|e| e.path());
    std::iter::once(std::path::PathBuf::from("/usr/lib"))
        .chain(dirs)
        .map(|d| d.join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file())
        .expect("libfaketime.so.1 (apt-get install faketime)")
        .display()
        .to_string()
}

/// (d) A replica's clock minutes off: its graceful stop hands its agents over and removes
/// nobody (membership is scored and compared on Redis's clock).
async fn a_skewed_replica_hands_over_on_a_graceful_stop(skew: &str) {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let h = Harness::with(Options {
        config: Box::new(move |c| {
            c.store.backend = StoreBackend::Redis;
            c.store.url = Some(Secret::new(url));
            c.store.lease_ttl_ms = 3_000;
            c.rate_limits.limit = Vec::new();
        }),
        ..Options::default()
    })
    .await;
    // FAKETIME_DONT_FAKE_MONOTONIC: only the wall clock is off, as on a host whose time sync
    // failed; tokio's timers run on the monotonic clock.
    let lib = libfaketime();
    let skewed = Process::start_wrapped(
        &h.config,
        &h.dir,
        &[],
        &[("LD_PRELOAD", lib.as_str()), ("FAKETIME", skew), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
    );
    // A token the skewed replica accepts whichever way its clock is off.
    let now = ccgate::clock::unix_secs();
    let token =
        h.es.sign(&json!({
            "iss": common::ISSUER, "aud": common::AUDIENCE, "sub": "agent-153", "agent_id": "153",
            "iat": now - 900, "nbf": now - 900, "exp": now + 900,
        }))
        .unwrap();
    let r = h.call_at(&skewed.base, Method::POST, "/v1/session", Some(&token), "").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mut c = redis.conn().await;
    eventually("both replicas are members", || {
        let mut c = c.clone();
        async move { redis::cmd("ZCARD").arg("ccgate:replicas").query_async::<i64>(&mut c).await.unwrap() == 2 }
    })
    .await;
    skewed.signal("-TERM");
    let mut skewed = skewed;
    assert!(skewed.exit_status().await.success());
    let members: i64 = redis::cmd("ZCARD").arg("ccgate:replicas").query_async(&mut c).await.unwrap();
    assert_eq!(members, 1, "the skewed replica left and removed nobody");
    assert_eq!(h.sim.count(GatewayMethod::Logout), 0, "handed over, not signed out");
    // The other replica takes the agent over and serves it.
    eventually("the other replica polls 153", || async {
        h.running().metrics.render().lines().any(|l| l == "ccgate_leases{gateway=\"default\"} 1")
    })
    .await;
    let r = h.call(Method::GET, "/v1/session", Some("153"), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_minutes_ahead_removes_nobody_on_a_graceful_stop() {
    a_skewed_replica_hands_over_on_a_graceful_stop("+300s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_runs_minutes_behind_removes_nobody_on_a_graceful_stop() {
    a_skewed_replica_hands_over_on_a_graceful_stop("-300s").await;
}

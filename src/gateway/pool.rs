//! The gateway connections that app requests, sign-ins and sign-outs share: idle HTTP/1.1
//! connections of the same hand-written client the pollers use (`poll_conn.rs`), kept for the
//! next request.
//!
//! Why not hyper-util's pool, which this replaced: through it every request was four task
//! wake-ups (the request handed to the connection's own task over a channel, the answer handed
//! back over another), a URI parsed and a `Host` formatted per request, and a checkout that
//! allocates; about 15,000 instructions of ~105,000 per stop request (bench/RESULTS.md, issue
//! 27). Here the request's own task writes and reads the connection it took.
//!
//! The rules are hyper's: most recently used first (a warm connection, and the cold ones age
//! out), at most `max_idle` idle (more are closed when returned), none kept past
//! `idle_timeout`: trimmed whenever the pool is used and by a sweeper task, so an idle
//! process closes them too. A connection goes back only after an answer keep-alive allows
//! (`PollConnection::read_answer`); one whose exchange failed or timed out is dropped with
//! its future, and a pooled one the gateway closed meanwhile is noticed before it is written
//! to (`PollConnection::take_open`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::poll_conn::PollConnection;

/// The sweeper's period when the idle timeout is shorter: trimming more often than once a
/// second buys nothing, since every use of the pool trims too.
const MIN_SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// What the pool holds: a connection that may be open (the unit tests pool stand-ins).
pub trait Reusable: Default + Send + 'static {
    fn is_open(&self) -> bool;
}

impl Reusable for PollConnection {
    fn is_open(&self) -> bool {
        PollConnection::is_open(self)
    }
}

pub struct Pool<C = PollConnection> {
    /// Oldest at the front; checkout takes from the back.
    idle: Mutex<VecDeque<Idle<C>>>,
    max_idle: usize,
    idle_timeout: Duration,
    sweeping: AtomicBool,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

impl<C: Reusable> Pool<C> {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self { idle: Mutex::new(VecDeque::new()), max_idle, idle_timeout, sweeping: AtomicBool::new(false) })
    }

    /// The most recently returned connection, or a new one that dials at its first request.
    pub fn checkout(&self, now: Instant) -> C {
        let (conn, expired) = {
            let mut idle = crate::sync::lock(&self.idle);
            let expired = self.take_expired(&mut idle, now);
            (idle.pop_back().map(|i| i.conn), expired)
        };
        // Closed outside the lock.
        drop(expired);
        conn.unwrap_or_default()
    }

    /// Gives a connection back after a whole answer; one with no open stream is dropped.
    pub fn checkin(self: &Arc<Self>, conn: C, now: Instant) {
        if !conn.is_open() || self.max_idle == 0 {
            return;
        }
        let surplus = {
            let mut idle = crate::sync::lock(&self.idle);
            let mut surplus = self.take_expired(&mut idle, now);
            idle.push_back(Idle { conn, since: now });
            while idle.len() > self.max_idle {
                surplus.extend(idle.pop_front());
            }
            surplus
        };
        drop(surplus);
        self.start_sweeper();
    }

    /// Idle connections now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        crate::sync::lock(&self.idle).len()
    }

    fn take_expired(&self, idle: &mut VecDeque<Idle<C>>, now: Instant) -> Vec<Idle<C>> {
        let mut expired = Vec::new();
        while idle.front().is_some_and(|i| now.duration_since(i.since) >= self.idle_timeout) {
            expired.extend(idle.pop_front());
        }
        expired
    }

    fn sweep(&self) {
        let expired = self.take_expired(&mut crate::sync::lock(&self.idle), Instant::now());
        drop(expired);
    }

    /// One sweeper per pool, started by the first connection returned (so a pool built
    /// outside a runtime, as `check-config` does, starts none), ending with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool: Weak<Self> = Arc::downgrade(self);
        let period = self.idle_timeout.max(MIN_SWEEP_PERIOD);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(p) => p.sweep(),
                    None => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in connection: open or not, and which one.
    #[derive(Default, Debug, PartialEq)]
    struct Conn(Option<u32>);

    impl Reusable for Conn {
        fn is_open(&self) -> bool {
            self.0.is_some()
        }
    }

    const IDLE: Duration = Duration::from_secs(90);

    #[test]
    fn a_closed_connection_is_never_pooled_and_an_empty_pool_hands_out_a_new_one() {
        let pool = Pool::<Conn>::new(4, IDLE);
        assert_eq!(pool.checkout(Instant::now()), Conn(None));
        pool.checkin(Conn(None), Instant::now());
        assert_eq!(pool.idle(), 0);
        let pool = Pool::<Conn>::new(0, IDLE);
        pool.checkin(Conn(Some(1)), Instant::now());
        assert_eq!(pool.idle(), 0, "max_idle 0 keeps none");
    }

    /// The warmest first; past the cap the coldest is closed.
    #[tokio::test(start_paused = true)]
    async fn most_recently_used_first_and_the_cap_closes_the_oldest() {
        let pool = Pool::<Conn>::new(2, IDLE);
        for i in 1..=3 {
            pool.checkin(Conn(Some(i)), Instant::now());
        }
        assert_eq!(pool.idle(), 2);
        assert_eq!(pool.checkout(Instant::now()), Conn(Some(3)));
        assert_eq!(pool.checkout(Instant::now()), Conn(Some(2)));
        assert_eq!(pool.checkout(Instant::now()), Conn(None), "1 was closed at the cap");
    }

    /// None is handed out past the idle timeout, and the sweeper closes them with no traffic.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_after_the_timeout_with_or_without_traffic() {
        let pool = Pool::<Conn>::new(8, IDLE);
        pool.checkin(Conn(Some(1)), Instant::now());
        tokio::time::advance(IDLE / 2).await;
        pool.checkin(Conn(Some(2)), Instant::now());
        tokio::time::advance(IDLE / 2).await;
        assert_eq!(pool.checkout(Instant::now()), Conn(Some(2)), "1 is past its timeout, 2 is not");
        assert_eq!(pool.idle(), 0);

        pool.checkin(Conn(Some(3)), Instant::now());
        // The sweeper (started by the first checkin) runs every IDLE: by then 3 is expired.
        tokio::time::sleep(IDLE * 2).await;
        assert_eq!(pool.idle(), 0, "swept without any checkout");
    }

    /// The sweeper ends with its pool.
    #[tokio::test(start_paused = true)]
    async fn the_sweeper_ends_with_the_pool() {
        let pool = Pool::<Conn>::new(8, IDLE);
        pool.checkin(Conn(Some(1)), Instant::now());
        let weak = Arc::downgrade(&pool);
        drop(pool);
        tokio::time::sleep(IDLE * 2).await;
        assert!(weak.upgrade().is_none());
        assert_eq!(tokio::runtime::Handle::current().metrics().num_alive_tasks(), 0);
    }
}

//! Keeping many agents from hitting the gateway at once: the sign-in gate (a bounded number of
//! gateway sign-ins in flight, a bounded queue behind them), the re-poll pacer (polls after a
//! failure start at a fixed rate), and full jitter for back-off.
//!
//! Without them, 10,000 first requests open 10,000 sign-ins at the gateway at once, and after
//! an outage every agent's poller retries on the same doubling schedule, so a recovering
//! gateway gets every poll in the same instant.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// At most `concurrency` gateway sign-ins at once, and at most `queue` waiting for a turn.
pub(super) struct SignInGate {
    permits: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
}

/// The gate's queue is full.
#[derive(Debug)]
pub(super) struct QueueFull;

impl SignInGate {
    pub(super) fn new(concurrency: usize, queue: usize) -> Self {
        Self { permits: Semaphore::new(concurrency.max(1)), waiting: AtomicUsize::new(0), queue }
    }

    /// Waits for a turn; the permit ends it. Refuses at once when the queue is full.
    pub(super) async fn enter(&self) -> Result<(SemaphorePermit<'_>, Duration), QueueFull> {
        let started = Instant::now();
        if let Ok(p) = self.permits.try_acquire() {
            return Ok((p, Duration::ZERO));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueFull);
        }
        let permit = self.permits.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        // The semaphore is never closed.
        permit.map(|p| (p, started.elapsed())).map_err(|_| QueueFull)
    }

    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Spaces events at least `interval` apart, in arrival order: a leaky bucket with no burst.
pub(super) struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    /// `rate` per second; 0 does not pace.
    pub(super) fn new(rate: u32) -> Self {
        let interval = if rate == 0 { Duration::ZERO } else { Duration::from_secs(1) / rate };
        Self { interval, next: Mutex::new(Instant::now()) }
    }

    /// Returns at this caller's turn.
    pub(super) async fn wait(&self) {
        if self.interval.is_zero() {
            return;
        }
        let at = {
            let mut next = crate::sync::lock(&self.next);
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// "Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter"): a uniformly
/// random wait in `[0, ceiling]`, so pollers that failed together do not retry together.
pub(super) fn full_jitter(ceiling: Duration) -> Duration {
    let mut b = [0u8; 8];
    // A failed draw falls back to the whole ceiling: still correct, just not spread.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return ceiling;
    }
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    ceiling.mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_gate_bounds_concurrency_and_queue() {
        let gate = std::sync::Arc::new(SignInGate::new(2, 3));
        let (a, _) = gate.enter().await.unwrap();
        let (b, _) = gate.enter().await.unwrap();
        let mut queued = Vec::new();
        for _ in 0..3 {
            let g = gate.clone();
            queued.push(tokio::spawn(async move { g.enter().await.map(|(_, waited)| waited) }));
        }
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting(), 3);
        assert!(gate.enter().await.is_err(), "a fourth waiter is refused");
        tokio::time::advance(Duration::from_millis(250)).await;
        drop((a, b));
        for q in queued {
            let waited = q.await.unwrap().unwrap();
            assert!(waited >= Duration::from_millis(250), "{waited:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_callers() {
        let pacer = std::sync::Arc::new(Pacer::new(100));
        let start = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let p = pacer.clone();
                tokio::spawn(async move {
                    p.wait().await;
                    Instant::now()
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        assert!(times[49] >= Duration::from_millis(490), "50 at 100/s take ~0.5 s: {:?}", times[49]);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_spreads() {
        let c = Duration::from_secs(10);
        let draws: Vec<Duration> = (0..1000).map(|_| full_jitter(c)).collect();
        assert!(draws.iter().all(|d| *d <= c));
        let low = draws.iter().filter(|d| **d < c / 2).count();
        assert!((350..650).contains(&low), "about half below the middle: {low}");
    }
}

//! When an event is tried again: the endpoint's `retry_schedule_ms`, each wait with up to a
//! fifth added at random so that events which failed together (an endpoint that was down)
//! are not retried together, and never earlier than the schedule says.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    waits: Vec<Duration>,
}

impl Schedule {
    pub fn new(waits_ms: &[u64]) -> Self {
        Self { waits: waits_ms.iter().map(|&ms| Duration::from_millis(ms)).collect() }
    }

    /// Attempts an event gets in all.
    pub fn attempts(&self) -> u32 {
        self.waits.len() as u32 + 1
    }

    /// The wait after attempt `made` (from 1) failed, before jitter; `None`: that was the last.
    pub fn nominal(&self, made: u32) -> Option<Duration> {
        self.waits.get(made.checked_sub(1)? as usize).copied()
    }

    /// The wait after attempt `made` failed, with jitter in `[0, wait / 5]` drawn by `unit`
    /// (a number in `[0, 1)`).
    pub fn wait(&self, made: u32, unit: f64) -> Option<Duration> {
        let w = self.nominal(made)?;
        Some(w + w.mul_f64(unit.clamp(0.0, 1.0) / 5.0))
    }

    /// The longest wait: what a `Retry-After` may ask for at most.
    pub fn longest(&self) -> Duration {
        self.waits.iter().copied().max().unwrap_or(Duration::ZERO)
    }
}

/// A uniform number in `[0, 1)`; 0 when the system has no randomness to give.
pub fn unit() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_gives_eight_attempts_with_bounded_jitter() {
        let s = Schedule::new(&crate::config::DEFAULT_RETRY_SCHEDULE_MS);
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.wait(1, 0.0), Some(Duration::from_secs(5)));
        assert!(s.wait(1, 0.999_999).unwrap() < Duration::from_secs(6));
        assert_eq!(s.wait(2, 0.5), Some(Duration::from_secs(330)));
        assert_eq!(s.nominal(7), Some(Duration::from_secs(36_000)));
        assert_eq!(s.wait(8, 0.5), None, "the eighth attempt was the last");
        assert_eq!(s.longest(), Duration::from_secs(36_000));
        for _ in 0..100 {
            let u = unit();
            assert!((0.0..1.0).contains(&u));
            let w = s.wait(1, u).unwrap();
            assert!(w >= Duration::from_secs(5) && w <= Duration::from_secs(6), "{w:?}");
        }
        assert_eq!(Schedule::new(&[]).attempts(), 1);
    }
}

//! A budget for a log line that can repeat without end (a refused token, a failed poll, a
//! failed `accept`): a flood writes a burst, then a few lines a second, and counts the rest;
//! the next line written says how many were left out (`left_out`), so nothing is silently
//! lost and the disk does not fill. Metrics count every occurrence regardless.
//!
//! On tokio's clock, so tests run it under the paused clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Lines per second, sustained: enough to see every failure of a misconfigured peer, few
/// enough that a flood costs a few KiB a second of log.
pub const LINES_PER_SEC: u32 = 10;
/// Lines at once: a burst (an app restarting with a stale token, a gateway restart seen by
/// every poller) is seen whole.
pub const LINES_BURST: u32 = 50;

#[derive(Debug)]
pub struct LogBudget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Lines that may be written now (a token bucket of `LINES_BURST`).
    tokens: f64,
    at: Option<Instant>,
    left_out: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self { state: Mutex::new(State { tokens: f64::from(LINES_BURST), at: None, left_out: 0 }) }
    }
}

impl LogBudget {
    /// `Some(left_out)`: write the line, saying how many were left out since the last one;
    /// `None`: leave it out (it is counted).
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut st = crate::sync::lock(&self.state);
        let elapsed = st.at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        st.tokens = (st.tokens + elapsed.as_secs_f64() * f64::from(LINES_PER_SEC)).min(f64::from(LINES_BURST));
        st.at = Some(now);
        if st.tokens < 1.0 {
            st.left_out += 1;
            return None;
        }
        st.tokens -= 1.0;
        Some(std::mem::take(&mut st.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood is cut to the burst, and the next line written says how much was left out.
    #[tokio::test(start_paused = true)]
    async fn a_flood_writes_the_burst_then_counts_and_the_next_line_says_how_many() {
        let budget = LogBudget::default();
        let written = (0..LINES_BURST + 30).filter(|_| budget.admit().is_some()).count();
        assert_eq!(written, LINES_BURST as usize);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget.admit(), Some(30), "reported with the next line");
        assert_eq!(budget.admit(), None, "one line per 100 ms");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(budget.admit(), Some(1));
    }
}

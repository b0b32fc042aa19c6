//! [`ms`]: config durations are whole milliseconds (`*_ms`); every user of a section turns
//! them into a `Duration` the same way.

use std::time::Duration;

/// Milliseconds from config as a `Duration`.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

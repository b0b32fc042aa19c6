//! The one way this crate takes a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking over a poisoned lock: every critical section in the crate is short and
/// completes its writes before anything that could panic, so a panic elsewhere while the lock
/// was held leaves the data consistent, and refusing every later caller would turn one bug
/// into an outage.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

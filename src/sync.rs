//! Locks that survive poisoning. A thread that panicked while holding a lock (a job caught by
//! `catch_unwind`, a test's callback) must not take the API, the reports or the logs down with
//! it: every value guarded here stays consistent between statements.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`, also after another thread panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

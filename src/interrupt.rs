//! A process-wide request to stop long work at its next safe point: an attack after the
//! iteration unit it is in, whose results are already written (so the stopped run resumes
//! exactly as a killed one). The Python package requests it on Ctrl-C; anything embedding
//! the engine may.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks running work to stop at its next safe point.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Withdraws the request (before starting new work).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

//! What the proxy counts for `/metrics`: requests by operation and status
//! (recorded by the HTTP layer), bytes in and out, the governor's picture,
//! SlowDowns and the bytes they turned away, frames that failed to
//! authenticate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Plaintext bytes received from clients and stored.
    pub bytes_in: AtomicU64,
    /// Plaintext bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Requests answered SlowDown.
    pub slow_downs: AtomicU64,
    /// The bytes those requests asked for.
    pub rejected_bytes: AtomicU64,
    /// Frames that did not authenticate (altered upstream).
    pub tampered_frames: AtomicU64,
}

impl Stats {
    pub(crate) fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn slow_down(&self, bytes: u64) {
        self.slow_downs.fetch_add(1, Ordering::Relaxed);
        self.rejected_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn tampered(&self) {
        self.tampered_frames.fetch_add(1, Ordering::Relaxed);
    }
}

//! Retries of storage requests: exponential backoff with full jitter.
//!
//! object_store retries a request a few times itself (see
//! [`S3Config::request_retries`](super::bucket::S3Config)); this is the outer
//! loop, per operation, that redoes what must be redone between attempts
//! (re-reading a part, reopening a listing after its last key) and that
//! the user sets with `--retries`.

use std::time::Duration;

use super::StoreError;

/// How many times, and how patiently, an operation is retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts after the first.
    pub retries: u32,
    /// First backoff; doubled per attempt, with jitter, up to 10 s.
    pub base: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            retries: 5,
            base: Duration::from_millis(200),
        }
    }
}

/// Exponential backoff with full jitter for one operation's attempts.
pub struct Backoff {
    attempt: u32,
    max_attempts: u32,
    base: Duration,
}

impl Backoff {
    /// A fresh schedule.
    pub fn new(policy: &Retry) -> Self {
        Backoff {
            attempt: 0,
            max_attempts: policy.retries,
            base: policy.base,
        }
    }

    /// After a failure: sleeps and returns `true` if `e` is worth another
    /// attempt and attempts remain.
    pub async fn retry(&mut self, e: &StoreError) -> bool {
        if !e.retryable || self.attempt >= self.max_attempts {
            return false;
        }
        self.attempt += 1;
        let cap = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(Duration::from_secs(10));
        let delay = cap.mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::debug!(
            attempt = self.attempt,
            delay_ms = delay.as_millis() as u64,
            "retrying: {e}"
        );
        tokio::time::sleep(delay).await;
        true
    }
}

/// Runs `op` again after a backoff while it fails with a retryable error,
/// up to `policy.retries` more times. Every request of a copy goes through
/// this (or a loop with the same [`Backoff`] that must redo more between
/// attempts), so one flaky response never fails an object.
pub async fn with_retries<T, F, Fut>(policy: &Retry, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if backoff.retry(&e).await => continue,
            Err(e) => return Err(e),
        }
    }
}

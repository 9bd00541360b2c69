//! The circuit breaker: stop admitting work while real memory use is near
//! the real limit.
//!
//! Reservations are honest, but not everything is reserved: sockets, TLS
//! state, allocator fragmentation, another process in the same container.
//! The breaker watches what the kernel sees. When usage reaches the high
//! watermark (default 90 % of the limit) it opens the governor's breaker, so
//! no new permit is granted; permits already held keep working and their
//! release is what brings usage down. When usage falls below the low
//! watermark (default 80 %) granting resumes. Every transition is logged
//! with the numbers that caused it.
//!
//! The gap between the two watermarks is deliberate: without it the breaker
//! would flap on every sample near the line.
//!
//! The state machine ([`Breaker`]) is plain and testable; [`spawn`] runs it
//! every [`BreakerConfig::interval`] against a [`MemoryProbe`], which reads
//! Linux's `/proc` and cgroup files (elsewhere the probe reads nothing and
//! the breaker never opens).
//!
//! ```
//! use headroom_governor::breaker::{Breaker, BreakerChange, BreakerConfig};
//!
//! let mut breaker = Breaker::new(BreakerConfig::new(1000)); // a 1000-byte limit
//! assert_eq!(breaker.observe(850), None);
//! assert_eq!(breaker.observe(910), Some(BreakerChange::Opened { used: 910 }));
//! assert_eq!(breaker.observe(850), None, "between the watermarks: stays open");
//! assert_eq!(breaker.observe(790), Some(BreakerChange::Closed { used: 790 }));
//! ```

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::probe::{MemoryProbe, MemorySample};
use crate::{ByteSize, Governor};

/// Which reading the breaker compares with the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageSignal {
    /// This process's resident memory (`VmRSS`).
    ProcessRss,
    /// The cgroup's working set (usage minus inactive page cache), what the
    /// kernel's OOM killer and the kubelet act on. Falls back to RSS when
    /// there is no cgroup.
    CgroupWorkingSet,
}

/// Breaker settings.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// The hard limit usage is compared with (the container limit).
    pub limit: u64,
    /// Open at or above this share of `limit`.
    pub high_watermark: f64,
    /// Close below this share of `limit`.
    pub low_watermark: f64,
    /// How often the sampler reads the probe.
    pub interval: Duration,
    /// What counts as usage.
    pub signal: UsageSignal,
}

impl BreakerConfig {
    /// Defaults (90 % / 80 %, every 250 ms, cgroup working set) for `limit`.
    pub fn new(limit: u64) -> Self {
        BreakerConfig {
            limit,
            high_watermark: 0.9,
            low_watermark: 0.8,
            interval: Duration::from_millis(250),
            signal: UsageSignal::CgroupWorkingSet,
        }
    }
}

/// A transition of the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerChange {
    /// Usage reached the high watermark; admissions stop.
    Opened {
        /// Bytes in use.
        used: u64,
    },
    /// Usage fell below the low watermark; admissions resume.
    Closed {
        /// Bytes in use.
        used: u64,
    },
}

/// The breaker's state machine, separate from any clock or probe.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    open: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            open: false,
        }
    }

    /// Whether admissions are stopped.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Feeds one usage reading; returns the transition it caused, if any.
    pub fn observe(&mut self, used: u64) -> Option<BreakerChange> {
        let limit = self.config.limit as f64;
        let ratio = used as f64 / limit.max(1.0);
        if !self.open && ratio >= self.config.high_watermark {
            self.open = true;
            Some(BreakerChange::Opened { used })
        } else if self.open && ratio < self.config.low_watermark {
            self.open = false;
            Some(BreakerChange::Closed { used })
        } else {
            None
        }
    }

    /// Applies a transition to `gov` and logs it.
    fn apply(&self, change: BreakerChange, gov: &Governor) {
        let c = &self.config;
        match change {
            BreakerChange::Opened { used } => {
                let reason = format!(
                    "memory in use {} reached {:.0}% of the {} limit; new work waits until it falls below {:.0}%",
                    ByteSize(used),
                    c.high_watermark * 100.0,
                    ByteSize(c.limit),
                    c.low_watermark * 100.0
                );
                tracing::warn!(
                    used_bytes = used,
                    limit_bytes = c.limit,
                    reserved_bytes = gov.reserved(),
                    "memory breaker open: {reason}"
                );
                gov.open_breaker(reason);
            }
            BreakerChange::Closed { used } => {
                tracing::info!(
                    used_bytes = used,
                    limit_bytes = c.limit,
                    "memory breaker closed: memory in use {} is below {:.0}% of the {} limit; admitting work again",
                    ByteSize(used),
                    c.low_watermark * 100.0,
                    ByteSize(c.limit)
                );
                gov.close_breaker();
            }
        }
    }
}

/// Picks the configured usage reading out of a sample.
pub fn usage_of(sample: &MemorySample, signal: UsageSignal) -> Option<u64> {
    match signal {
        UsageSignal::ProcessRss => sample.rss,
        UsageSignal::CgroupWorkingSet => sample.cgroup_working_set.or(sample.rss),
    }
}

/// A running sampler; dropping it stops the sampler (the breaker stays in
/// its last state).
#[derive(Debug)]
pub struct BreakerTask {
    handle: JoinHandle<()>,
}

impl Drop for BreakerTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts a sampler on the current tokio runtime that reads `probe` every
/// `config.interval` and drives `gov`'s breaker.
pub fn spawn(gov: Governor, probe: MemoryProbe, config: BreakerConfig) -> BreakerTask {
    let signal = config.signal;
    spawn_with(gov, config, move || usage_of(&probe.sample(), signal))
}

/// Like [`spawn`], with any usage source (tests feed synthetic readings).
pub fn spawn_with<F>(gov: Governor, config: BreakerConfig, mut usage: F) -> BreakerTask
where
    F: FnMut() -> Option<u64> + Send + 'static,
{
    let handle = tokio::spawn(async move {
        let mut breaker = Breaker::new(config);
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(change) = usage().and_then(|used| breaker.observe(used)) {
                breaker.apply(change, &gov);
            }
        }
    });
    BreakerTask { handle }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn opens_at_high_and_closes_only_below_low() {
        let mut b = Breaker::new(BreakerConfig::new(1000));
        assert_eq!(b.observe(899), None);
        assert_eq!(b.observe(900), Some(BreakerChange::Opened { used: 900 }));
        assert_eq!(b.observe(950), None);
        assert_eq!(b.observe(850), None, "between the watermarks it stays open");
        assert!(b.is_open());
        assert_eq!(b.observe(799), Some(BreakerChange::Closed { used: 799 }));
        assert_eq!(b.observe(850), None, "and stays closed below high");
    }

    #[tokio::test(start_paused = true)]
    async fn sampler_stops_and_resumes_admissions() {
        let gov = Governor::new(1 << 20);
        let used = Arc::new(AtomicU64::new(0));
        let u = used.clone();
        let mut cfg = BreakerConfig::new(1000);
        cfg.interval = Duration::from_millis(10);
        let _task = spawn_with(gov.clone(), cfg, move || Some(u.load(Ordering::SeqCst)));

        used.store(950, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(gov.breaker_open());
        let held = gov.try_acquire(1, "test").unwrap_err();
        assert!(held.breaker_open);
        let waiter = tokio::spawn({
            let gov = gov.clone();
            async move { gov.acquire(10, "test").await.bytes() }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "no admission while open");
        let err = gov
            .acquire_timeout(1, "test", Duration::from_millis(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("memory breaker open"), "{err}");

        used.store(700, Ordering::SeqCst);
        assert_eq!(waiter.await.unwrap(), 10);
        assert!(!gov.breaker_open());
        assert_eq!(gov.stats().breaker_trips, 1);
    }
}

//! From the `--memory` flag to a running governor, and `headroom memory`.

use std::io::Write;

use headroom_governor::breaker::{self, BreakerConfig, BreakerTask, UsageSignal};
use headroom_governor::budget::physical_memory;
use headroom_governor::{
    BudgetDecision, BudgetPolicy, ByteSize, CgroupVersion, Governor, MemoryProbe, MemorySample,
};
use serde_json::json;

use crate::telemetry::LogFormat;

/// The governor of a job, with the breaker that watches real usage.
pub struct MemoryPlan {
    /// How the budget was chosen.
    pub decision: BudgetDecision,
    /// The process-wide governor.
    pub governor: Governor,
    /// The probe shared by the breaker and progress reports.
    pub probe: MemoryProbe,
    /// The breaker sampler; `None` without a hard limit to compare with.
    _breaker: Option<BreakerTask>,
}

impl MemoryPlan {
    /// Resolves the budget and, when there is a container limit, starts the
    /// breaker. Must run inside a tokio runtime.
    pub fn start(explicit: Option<ByteSize>) -> Self {
        let decision = BudgetPolicy::default().resolve_here(explicit.map(|b| b.0));
        if let Some(w) = &decision.warning {
            tracing::warn!("{w}");
        }
        let governor = Governor::new(reservable(decision.budget));
        let probe = MemoryProbe::detect();
        spawn_trimmer();
        let breaker = decision.limit.map(|limit| {
            let mut cfg = BreakerConfig::new(limit);
            cfg.signal = UsageSignal::CgroupWorkingSet;
            breaker::spawn(governor.clone(), probe.clone(), cfg)
        });
        tracing::info!("{decision}");
        MemoryPlan {
            decision,
            governor,
            probe,
            _breaker: breaker,
        }
    }
}

/// The part of a budget that permits may reserve. The rest (an eighth, at
/// most 64 MiB) is held back for what no permit pays for: freed small
/// chunks the allocator keeps resident, idle pooled connections, task and
/// channel bookkeeping. Without it, a copy of 20,000 small files and eight
/// 256 MiB files at `--memory 64MiB` peaked about 5 MiB above base + budget
/// while its heap stayed within its reservations (scripts/bench-copy.sh).
pub fn reservable(budget: u64) -> u64 {
    budget - (budget / 8).min(64 << 20)
}

/// The least budget whose [`reservable`] part is at least `needed`.
pub fn budget_for_reservable(needed: u64) -> u64 {
    // Below 512 MiB an eighth is held back; above, a fixed 64 MiB.
    let b = (needed * 8).div_ceil(7);
    if b / 8 <= 64 << 20 {
        // Integer division makes it a byte or two off either way: step up
        // from just below to the first that fits.
        (b.saturating_sub(2)..)
            .find(|&b| reservable(b) >= needed)
            .expect("some budget fits")
    } else {
        needed + (64 << 20)
    }
}

/// MiB as every record shows them, `null` when unknown.
fn mb(bytes: Option<u64>) -> serde_json::Value {
    json!(bytes.map(crate::telemetry::mb))
}

fn show(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unknown".to_string(), |b| ByteSize(b).to_string())
}

/// `headroom memory`: prints the plan as text or one JSON object.
pub fn report(
    explicit: Option<ByteSize>,
    format: LogFormat,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let decision = BudgetPolicy::default().resolve_here(explicit.map(|b| b.0));
    let probe = MemoryProbe::detect();
    let s: MemorySample = probe.sample();
    let physical = physical_memory();
    let cgroup_version = probe.cgroup().map(|c| match c.version() {
        CgroupVersion::V2 => "v2",
        CgroupVersion::V1 => "v1",
    });
    let defaults = BreakerConfig::new(0);
    match format {
        LogFormat::Json => {
            let v = json!({
                "budget_mb": mb(Some(decision.budget)),
                "budget_bytes": decision.budget,
                "budget_source": decision.to_string(),
                "limit_mb": mb(decision.limit),
                "cgroup": cgroup_version,
                "physical_mb": mb(physical),
                "breaker_high_watermark": decision.limit.map(|_| defaults.high_watermark),
                "breaker_low_watermark": decision.limit.map(|_| defaults.low_watermark),
                "rss_mb": mb(s.rss),
                "peak_rss_mb": mb(s.peak_rss),
                "heap_mb": mb(s.heap),
                "cgroup_current_mb": mb(s.cgroup_current),
                "cgroup_working_set_mb": mb(s.cgroup_working_set),
                "psi_some_avg10": s.psi_some_avg10,
                "warning": decision.warning,
            });
            writeln!(out, "{v}")
        }
        LogFormat::Text => {
            let limit = match (decision.limit, cgroup_version) {
                (Some(l), Some(v)) => format!("{} (cgroup {v})", ByteSize(l)),
                (None, Some(v)) => format!("none (cgroup {v} without a memory limit)"),
                _ => "none (no memory cgroup found)".to_string(),
            };
            writeln!(out, "container limit  {limit}")?;
            writeln!(out, "physical memory  {}", show(physical))?;
            writeln!(out, "{decision}")?;
            match decision.limit {
                Some(l) => writeln!(
                    out,
                    "breaker          stops admitting at {} ({:.0}%), resumes below {} ({:.0}%)",
                    ByteSize((l as f64 * defaults.high_watermark) as u64),
                    defaults.high_watermark * 100.0,
                    ByteSize((l as f64 * defaults.low_watermark) as u64),
                    defaults.low_watermark * 100.0
                )?,
                None => writeln!(out, "breaker          off (no hard limit to protect)")?,
            }
            writeln!(
                out,
                "this process     rss {}, peak rss {}, heap {}",
                show(s.rss),
                show(s.peak_rss),
                show(s.heap)
            )?;
            if s.cgroup_current.is_some() {
                writeln!(
                    out,
                    "cgroup usage     {} (working set {})",
                    show(s.cgroup_current),
                    show(s.cgroup_working_set)
                )?;
            }
            if let Some(p) = s.psi_some_avg10 {
                writeln!(out, "memory pressure  some avg10 {p:.2}%")?;
            }
            Ok(())
        }
    }
}

/// Returns freed heap memory to the kernel every second. Small buffers
/// (below the mmap threshold) come from arenas, which keep freed chunks
/// resident: after thousands of small objects, a few MiB of RSS would stay
/// above what is reserved while large parts take the whole budget.
/// `malloc_trim` releases those pages; on a heap of this size it takes well
/// under a millisecond.
fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // SAFETY: malloc_trim only releases free memory.
                    unsafe {
                        malloc_trim(0);
                    }
                }
            });
        }
    }
}

/// Makes glibc's malloc return large buffers to the kernel when they are
/// freed. By default glibc raises its mmap threshold after the first large
/// free, after which multi-MiB part buffers come from arenas that keep
/// freed memory resident: RSS would drift above what is reserved. With a
/// fixed threshold, every buffer of 256 KiB or more is its own mapping and
/// freeing it lowers RSS at once. Arenas are capped for the same reason.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only sets allocator parameters; it is called
        // before any thread exists.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 256 << 10);
            mallopt(M_TRIM_THRESHOLD, 1 << 20);
            mallopt(M_ARENA_MAX, 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eighth_of_the_budget_at_most_64_mib_is_held_back() {
        const MIB: u64 = 1 << 20;
        assert_eq!(reservable(64 * MIB), 56 * MIB);
        assert_eq!(reservable(32 * MIB), 28 * MIB);
        assert_eq!(reservable(4096 * MIB), 4032 * MIB, "capped at 64 MiB");
        assert_eq!(reservable(0), 0);
    }

    #[test]
    fn the_budget_for_a_reservable_amount_is_the_least_that_gives_it() {
        for needed in [0, 1, 7, 1 << 20, 3 << 20 | 12345, 448 << 20, 2 << 30] {
            let b = budget_for_reservable(needed);
            assert!(reservable(b) >= needed, "{needed}: {b}");
            assert!(
                b == 0 || reservable(b - 1) < needed,
                "{needed}: {b} is not the least"
            );
        }
    }
}

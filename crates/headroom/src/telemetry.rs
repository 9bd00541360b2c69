//! What a job tells its user while it runs and when it ends.
//!
//! * Logs: text or JSON lines on standard error (`RUST_LOG`, default info).
//! * Progress: every `--progress-interval`, a record with items, bytes,
//!   rates and the memory picture (`rss_mb`, `heap_mb`, `reserved_mb`,
//!   `budget_mb`, `in_flight`, `mb_per_1k_files`): a JSON line with
//!   `--log-format json`, else a log line; on a terminal a live progress bar
//!   as well.
//! * A leak detector: memory per 1,000 files should fall as a job goes on
//!   (memory is constant, files grow). If it rises several windows in a
//!   row, something keeps per-file state, and a warning says so.
//! * A summary at the end.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use headroom_governor::{ByteSize, Governor, MemoryProbe};
use serde_json::json;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Safe to call once per process.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is not an error worth reporting.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// How many failures the summary lists in full; every failure is logged
/// when it happens, so the rest are in the log, not in memory.
pub const FAILURES_KEPT: usize = 100;

/// Live counters of a copy, shared by its tasks and the reporter.
#[derive(Default, Debug)]
pub struct Counters {
    /// Objects listed at the source and selected by the filters.
    pub listed: AtomicU64,
    /// Their bytes.
    pub listed_bytes: AtomicU64,
    /// Objects copied (or, in a dry run, that would be).
    pub copied: AtomicU64,
    /// Objects already up to date at the destination.
    pub skipped: AtomicU64,
    /// Objects that failed.
    pub failed: AtomicU64,
    /// Bytes moved so far (or, in a dry run, that would be).
    pub bytes: std::sync::Arc<AtomicU64>,
    /// Bytes of skipped objects.
    pub skipped_bytes: AtomicU64,
    /// Transfers running now.
    pub in_flight: AtomicU64,
    /// Whether the listing has finished (the totals are final).
    pub listing_done: std::sync::atomic::AtomicBool,
    failures: Mutex<Vec<(String, String)>>,
}

impl Counters {
    /// Records a failed object: logged now, kept for the summary if there
    /// is room.
    pub fn fail(&self, what: String, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!("failed: {what}: {why}");
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < FAILURES_KEPT {
            f.push((what, why));
        }
    }

    /// Files finished one way or another.
    pub fn files_processed(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Vec<(String, String)> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Warns when memory per 1,000 files rises window after window.
#[derive(Debug, Default)]
pub struct LeakDetector {
    last: Option<f64>,
    rising: u32,
    warned: bool,
}

impl LeakDetector {
    /// Consecutive rising windows that make a warning.
    pub const WINDOWS: u32 = 3;

    /// Feeds one window's `mb_per_1k_files`; returns `true` when this
    /// window completes a run of [`Self::WINDOWS`] rises (once per run).
    pub fn observe(&mut self, mb_per_1k: f64) -> bool {
        let rose = self.last.is_some_and(|last| mb_per_1k > last * 1.01);
        self.last = Some(mb_per_1k);
        if rose {
            self.rising += 1;
        } else {
            self.rising = 0;
            self.warned = false;
        }
        if self.rising >= Self::WINDOWS && !self.warned {
            self.warned = true;
            return true;
        }
        false
    }
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1048576.0 * 100.0).round() / 100.0
}

/// One progress record.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Since the job started.
    pub elapsed: Duration,
    /// Files copied.
    pub files_done: u64,
    /// Files skipped.
    pub files_skipped: u64,
    /// Files failed.
    pub files_failed: u64,
    /// Bytes copied.
    pub bytes_done: u64,
    /// Files per second over the last window.
    pub files_per_second: f64,
    /// Bytes per second over the last window.
    pub bytes_per_second: f64,
    /// Resident memory.
    pub rss: u64,
    /// Heap bytes (counting allocator), if installed.
    pub heap: Option<u64>,
    /// Governor reservations.
    pub reserved: u64,
    /// Governor budget.
    pub budget: u64,
    /// Transfers running.
    pub in_flight: u64,
    /// Total bytes to move, once the listing is done.
    pub total_bytes: Option<u64>,
}

impl Snapshot {
    /// RSS per 1,000 files processed; `None` before any.
    pub fn mb_per_1k_files(&self) -> Option<f64> {
        let files = self.files_done + self.files_skipped + self.files_failed;
        (files > 0).then(|| mb(self.rss) / (files as f64 / 1000.0))
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "type": "progress",
            "elapsed_s": (self.elapsed.as_secs_f64() * 10.0).round() / 10.0,
            "files_done": self.files_done,
            "files_skipped": self.files_skipped,
            "files_failed": self.files_failed,
            "bytes_done": self.bytes_done,
            "files_per_second": (self.files_per_second * 10.0).round() / 10.0,
            "bytes_per_second": self.bytes_per_second.round(),
            "rss_mb": mb(self.rss),
            "heap_mb": self.heap.map(mb),
            "reserved_mb": mb(self.reserved),
            "budget_mb": mb(self.budget),
            "in_flight": self.in_flight,
            "mb_per_1k_files": self.mb_per_1k_files().map(|v| (v * 1000.0).round() / 1000.0),
            "total_bytes": self.total_bytes,
        })
    }

    fn line(&self) -> String {
        let eta = match (self.total_bytes, self.bytes_per_second) {
            (Some(total), rate) if rate > 0.0 && total > self.bytes_done => {
                format!(
                    ", ETA {}",
                    humantime::format_duration(Duration::from_secs(
                        ((total - self.bytes_done) as f64 / rate) as u64
                    ))
                )
            }
            _ => String::new(),
        };
        format!(
            "{} files ({} skipped, {} failed), {} at {}/s{eta} | memory: rss {}, reserved {} of {}, {} in flight",
            self.files_done,
            self.files_skipped,
            self.files_failed,
            ByteSize(self.bytes_done),
            ByteSize(self.bytes_per_second as u64),
            ByteSize(self.rss),
            ByteSize(self.reserved),
            ByteSize(self.budget),
            self.in_flight
        )
    }
}

/// Periodic progress reporting for one job.
pub struct Reporter {
    handle: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// Starts reporting every `interval` until [`stop`](Self::stop).
    pub fn start(
        counters: std::sync::Arc<Counters>,
        gov: Governor,
        probe: MemoryProbe,
        interval: Duration,
        format: LogFormat,
    ) -> Self {
        let bar = (format == LogFormat::Text && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64, 0u64);
            let mut leak = LeakDetector::default();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = snapshot(&counters, &gov, &probe, started, &mut last);
                match format {
                    LogFormat::Json => eprintln!("{}", s.json()),
                    LogFormat::Text if bar.is_some() => {}
                    LogFormat::Text => tracing::info!("{}", s.line()),
                }
                if let Some(bar) = &bar {
                    bar.set_message(s.line());
                }
                if let Some(v) = s.mb_per_1k_files()
                    && s.files_done + s.files_skipped >= 1000
                    && leak.observe(v)
                {
                    tracing::warn!(
                        mb_per_1k_files = v,
                        "memory per 1,000 files has risen for {} windows in a row: something may be keeping per-file state (rss {})",
                        LeakDetector::WINDOWS,
                        ByteSize(s.rss)
                    );
                }
            }
        });
        Reporter { handle }
    }

    /// Stops reporting.
    pub fn stop(self) {
        self.handle.abort();
    }
}

fn snapshot(
    c: &Counters,
    gov: &Governor,
    probe: &MemoryProbe,
    started: Instant,
    last: &mut (Instant, u64, u64),
) -> Snapshot {
    let now = Instant::now();
    let files = c.files_processed();
    let bytes = c.bytes.load(Ordering::Relaxed);
    let window = now.duration_since(last.0).as_secs_f64().max(1e-3);
    let files_per_second = (files - last.1.min(files)) as f64 / window;
    let bytes_per_second = (bytes - last.2.min(bytes)) as f64 / window;
    *last = (now, files, bytes);
    let sample = probe.sample();
    let stats = gov.stats();
    Snapshot {
        elapsed: started.elapsed(),
        files_done: c.copied.load(Ordering::Relaxed),
        files_skipped: c.skipped.load(Ordering::Relaxed),
        files_failed: c.failed.load(Ordering::Relaxed),
        bytes_done: bytes,
        files_per_second,
        bytes_per_second,
        rss: sample.rss.unwrap_or(0),
        heap: sample.heap,
        reserved: stats.reserved,
        budget: stats.budget,
        in_flight: c.in_flight.load(Ordering::Relaxed),
        total_bytes: c.listing_done.load(Ordering::Relaxed).then(|| {
            c.listed_bytes.load(Ordering::Relaxed) - c.skipped_bytes.load(Ordering::Relaxed)
        }),
    }
}

/// The end of a job.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Objects copied (or that would be).
    pub copied: u64,
    /// Objects already up to date.
    pub skipped: u64,
    /// Objects that failed.
    pub failed: u64,
    /// Bytes copied (or that would be).
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Peak resident memory of the process.
    pub peak_rss: Option<u64>,
    /// Peak governor reservation.
    pub peak_reserved: u64,
    /// The budget.
    pub budget: u64,
    /// The first failures, with reasons.
    pub failures: Vec<(String, String)>,
}

impl Summary {
    /// Collects the summary from a finished job's counters.
    pub fn collect(
        c: &Counters,
        gov: &Governor,
        probe: &MemoryProbe,
        elapsed: Duration,
        dry_run: bool,
    ) -> Self {
        let stats = gov.stats();
        Summary {
            dry_run,
            copied: c.copied.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            elapsed,
            peak_rss: probe.sample().peak_rss,
            peak_reserved: stats.peak_reserved,
            budget: stats.budget,
            failures: c.failures(),
        }
    }

    /// Prints the summary (text or one JSON object) to `out`.
    pub fn print(&self, format: LogFormat, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        match format {
            LogFormat::Json => {
                let v = json!({
                    "type": "summary",
                    "dry_run": self.dry_run,
                    "copied": self.copied,
                    "skipped": self.skipped,
                    "failed": self.failed,
                    "bytes": self.bytes,
                    "elapsed_s": self.elapsed.as_secs_f64(),
                    "peak_rss_mb": self.peak_rss.map(mb),
                    "peak_reserved_mb": mb(self.peak_reserved),
                    "budget_mb": mb(self.budget),
                    "failures": self.failures.iter().map(|(w, r)| json!({"object": w, "reason": r})).collect::<Vec<_>>(),
                });
                writeln!(out, "{v}")
            }
            LogFormat::Text => {
                let verb = if self.dry_run { "would copy" } else { "copied" };
                let rate = self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-3);
                writeln!(
                    out,
                    "{verb} {} objects ({}), skipped {} up to date, failed {} in {:.1?} ({}/s)",
                    self.copied,
                    ByteSize(self.bytes),
                    self.skipped,
                    self.failed,
                    self.elapsed,
                    ByteSize(rate as u64)
                )?;
                writeln!(
                    out,
                    "memory: peak RSS {}, peak reserved {} of a {} budget",
                    self.peak_rss
                        .map_or_else(|| "unknown".into(), |b| ByteSize(b).to_string()),
                    ByteSize(self.peak_reserved),
                    ByteSize(self.budget)
                )?;
                if self.failed > 0 {
                    writeln!(out, "failed objects:")?;
                    for (what, why) in &self.failures {
                        writeln!(out, "  {what}: {why}")?;
                    }
                    let more = self.failed.saturating_sub(self.failures.len() as u64);
                    if more > 0 {
                        writeln!(out, "  ... and {more} more (each is in the log above)")?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_detector_warns_once_per_run_of_rising_windows() {
        let mut d = LeakDetector::default();
        // Constant memory over more files: falling per-1k values.
        for v in [5.0, 2.5, 1.7, 1.2, 1.0] {
            assert!(!d.observe(v));
        }
        // The incident-03 pattern: 5.0, 7.5, 10.0, ...
        assert!(!d.observe(1.5));
        assert!(!d.observe(2.0));
        assert!(d.observe(2.6), "third rise in a row");
        assert!(!d.observe(3.0), "warned once for this run");
        assert!(!d.observe(2.0));
        assert!(!d.observe(2.5));
        assert!(!d.observe(3.0));
        assert!(d.observe(3.5), "a new run warns again");
    }

    #[test]
    fn mb_per_1k_files_divides_rss_by_thousands_of_files() {
        let s = Snapshot {
            elapsed: Duration::ZERO,
            files_done: 1500,
            files_skipped: 500,
            files_failed: 0,
            bytes_done: 0,
            files_per_second: 0.0,
            bytes_per_second: 0.0,
            rss: 30 << 20,
            heap: None,
            reserved: 0,
            budget: 0,
            in_flight: 0,
            total_bytes: None,
        };
        assert_eq!(s.mb_per_1k_files(), Some(15.0));
        let v = s.json();
        for key in [
            "files_done",
            "bytes_done",
            "files_per_second",
            "bytes_per_second",
            "rss_mb",
            "heap_mb",
            "reserved_mb",
            "budget_mb",
            "in_flight",
            "mb_per_1k_files",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
    }
}

//! What every job shares in telling its user how it goes: logging, the
//! periodic reporter with its leak detector, the memory picture, and the
//! list of failures a summary shows. Each job's own counters, progress
//! record and summary live with the job, named for what that job counts
//! (`jobs::copy::report`, `jobs::purge::report`, `jobs::ingest::report`),
//! as ripgrep's `printer` crate has one module per output.
//!
//! * Logs: text or JSON lines on standard error (`RUST_LOG`, default info).
//! * Progress: every `--progress-interval`, a record from the job's
//!   [`JobCounters`] with the memory picture (`rss_mb`, `heap_mb`,
//!   `reserved_mb`, `budget_mb`, `mb_per_1k_files`): a JSON line with
//!   `--log-format json`, else a log line; on a terminal a live progress bar
//!   as well.
//! * A leak detector: memory per 1,000 files should fall as a job goes on
//!   (memory is constant, files grow). If it rises several windows in a
//!   row, something keeps per-file state, and a warning says so.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use headroom_governor::{ByteSize, Governor, MemoryProbe};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// How logs and reports are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init_logging(format: LogFormat) {
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // s3s logs every S3 error it answers (a SlowDown, a NoSuchKey) at
    // ERROR: those are answers, not the proxy's errors, and the proxy logs
    // each request itself. Shown only when RUST_LOG names s3s.
    if !asked.contains("s3s")
        && let Ok(quiet) = "s3s=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

/// The failures of a job: all counted and logged when they happen, the
/// first [`FAILURES_KEPT`] kept for the summary.
#[derive(Debug, Default)]
pub struct Failures {
    count: AtomicU64,
    kept: Mutex<Vec<(String, String)>>,
}

impl Failures {
    /// Records a failure of `what` (an object, a path): logged now, kept
    /// for the summary if there is room.
    pub fn record(&self, what: String, why: String) {
        // Names come from listings: never let their control characters
        // reach a terminal.
        let (what, why) = (escape(&what).into_owned(), escape(&why).into_owned());
        self.count.fetch_add(1, Ordering::Relaxed);
        tracing::error!("failed: {what}: {why}");
        let mut f = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < FAILURES_KEPT {
            f.push((what, why));
        }
    }

    /// How many failed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first failures, with reasons.
    pub fn kept(&self) -> Vec<(String, String)> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `s` with control characters (ESC, CR, BEL...) written as `\u{1b}`
/// escapes, so a hostile file name or key cannot drive the terminal;
/// printable text, non-ASCII included, is unchanged.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
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

/// Bytes as MiB with two decimals, as every record shows memory.
pub fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1048576.0 * 100.0).round() / 100.0
}

/// Seconds with one decimal, as records show elapsed times and rates.
pub fn tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// RSS per 1,000 files gone through; `None` before any.
pub fn mb_per_1k_files(rss: u64, files: u64) -> Option<f64> {
    (files > 0).then(|| mb(rss) / (files as f64 / 1000.0))
}

/// The memory picture every progress record carries.
#[derive(Debug, Clone, Copy)]
pub struct MemoryPicture {
    /// Resident memory (0 where it cannot be read).
    pub rss: u64,
    /// Heap bytes (counting allocator), if installed.
    pub heap: Option<u64>,
    /// Governor reservations.
    pub reserved: u64,
    /// Governor budget.
    pub budget: u64,
}

impl MemoryPicture {
    /// Reads the probe and the governor now.
    pub fn sample(gov: &Governor, probe: &MemoryProbe) -> Self {
        let sample = probe.sample();
        let stats = gov.stats();
        MemoryPicture {
            rss: sample.rss.unwrap_or(0),
            heap: sample.heap,
            reserved: stats.reserved,
            budget: stats.budget,
        }
    }

    /// Adds `rss_mb`, `heap_mb`, `reserved_mb`, `budget_mb` and
    /// `mb_per_1k_files` (for `files` gone through) to a JSON record.
    pub fn add_to(&self, record: &mut serde_json::Value, files: u64) {
        record["rss_mb"] = json!(mb(self.rss));
        record["heap_mb"] = json!(self.heap.map(mb));
        record["reserved_mb"] = json!(mb(self.reserved));
        record["budget_mb"] = json!(mb(self.budget));
        record["mb_per_1k_files"] =
            json!(mb_per_1k_files(self.rss, files).map(|v| (v * 1000.0).round() / 1000.0));
    }

    /// `memory: rss X, reserved Y of Z`, as text records end.
    pub fn line(&self) -> String {
        format!(
            "memory: rss {}, reserved {} of {}",
            ByteSize(self.rss),
            ByteSize(self.reserved),
            ByteSize(self.budget)
        )
    }
}

/// Rates over the window since the previous report.
#[derive(Debug)]
pub struct RateWindow {
    at: Instant,
    items: u64,
    bytes: u64,
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            at: Instant::now(),
            items: 0,
            bytes: 0,
        }
    }
}

impl RateWindow {
    /// Items and bytes per second since the last call (or since
    /// creation), given the running totals; starts the next window.
    pub fn rates(&mut self, items: u64, bytes: u64) -> (f64, f64) {
        let now = Instant::now();
        let window = now.duration_since(self.at).as_secs_f64().max(1e-3);
        let per_second = (
            (items - self.items.min(items)) as f64 / window,
            (bytes - self.bytes.min(bytes)) as f64 / window,
        );
        *self = RateWindow {
            at: now,
            items,
            bytes,
        };
        per_second
    }
}

/// Periodic progress reporting for one job.
pub struct Reporter {
    handle: tokio::task::JoinHandle<()>,
}

/// One progress record, as printed: a JSON line with `--log-format json`,
/// else a log line (and the progress bar's message on a terminal).
pub struct Record {
    /// The JSON form.
    pub json: serde_json::Value,
    /// The one-line text form.
    pub line: String,
}

/// A job's live counters, as the reporter reads them: each job says what
/// its record shows and which files its memory per 1,000 files counts.
pub trait JobCounters: Default + Send + Sync + 'static {
    /// The command's name (`copy`, `purge`).
    const JOB: &'static str;

    /// Files gone through so far: the basis of memory per 1,000 files.
    fn files_seen(&self) -> u64;

    /// This moment's record. `rates` holds the previous report's totals.
    fn record(&self, elapsed: Duration, memory: &MemoryPicture, rates: &mut RateWindow) -> Record;
}

impl Reporter {
    /// Calls `record` every `interval` and prints what it returns, until
    /// [`stop`](Self::stop). Every job's reports go through here.
    pub fn every(
        interval: Duration,
        format: LogFormat,
        mut record: impl FnMut() -> Record + Send + 'static,
    ) -> Self {
        let bar = (format == LogFormat::Text && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let r = record();
                match format {
                    LogFormat::Json => eprintln!("{}", r.json),
                    LogFormat::Text if bar.is_some() => {}
                    LogFormat::Text => tracing::info!("{}", r.line),
                }
                if let Some(bar) = &bar {
                    bar.set_message(r.line);
                }
            }
        });
        Reporter { handle }
    }

    /// Starts reporting a job's `counters` every `interval`, with the leak
    /// detector watching memory per 1,000 files.
    pub fn start<C: JobCounters>(
        counters: std::sync::Arc<C>,
        gov: Governor,
        probe: MemoryProbe,
        interval: Duration,
        format: LogFormat,
    ) -> Self {
        let started = Instant::now();
        let mut last = RateWindow::default();
        let mut leak = LeakDetector::default();
        Self::every(interval, format, move || {
            let memory = MemoryPicture::sample(&gov, &probe);
            let files = counters.files_seen();
            if files >= 1000
                && let Some(v) = mb_per_1k_files(memory.rss, files)
                && leak.observe(v)
            {
                tracing::warn!(
                    mb_per_1k_files = v,
                    "memory per 1,000 files has risen for {} windows in a row: something may be keeping per-file state (rss {})",
                    LeakDetector::WINDOWS,
                    ByteSize(memory.rss)
                );
            }
            counters.record(started.elapsed(), &memory, &mut last)
        })
    }

    /// Stops reporting.
    pub fn stop(self) {
        self.handle.abort();
    }
}

/// What every job's summary ends with: wall time, memory, failures, and
/// whether a signal stopped it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Wall time.
    pub elapsed: Duration,
    /// Peak resident memory of the process.
    pub peak_rss: Option<u64>,
    /// Peak governor reservation.
    pub peak_reserved: u64,
    /// The budget.
    pub budget: u64,
    /// How many failed.
    pub failed: u64,
    /// The first failures, with reasons.
    pub failures: Vec<(String, String)>,
    /// A signal (or a cancel) stopped the job before it was done.
    pub interrupted: bool,
}

impl Outcome {
    /// Collects the end of a job.
    pub fn collect(
        failures: &Failures,
        gov: &Governor,
        probe: &MemoryProbe,
        elapsed: Duration,
    ) -> Self {
        let stats = gov.stats();
        Outcome {
            elapsed,
            peak_rss: probe.sample().peak_rss,
            peak_reserved: stats.peak_reserved,
            budget: stats.budget,
            failed: failures.count(),
            failures: failures.kept(),
            interrupted: false,
        }
    }

    /// Adds `elapsed_s`, the memory peaks and `failures` (each with its
    /// `noun`, e.g. "object" or "path", and a reason) to a JSON summary.
    pub fn add_to(&self, summary: &mut serde_json::Value, noun: &str) {
        summary["elapsed_s"] = json!(self.elapsed.as_secs_f64());
        summary["peak_rss_mb"] = json!(self.peak_rss.map(mb));
        summary["peak_reserved_mb"] = json!(mb(self.peak_reserved));
        summary["budget_mb"] = json!(mb(self.budget));
        summary["failures"] = self
            .failures
            .iter()
            .map(|(w, r)| json!({noun: w, "reason": r}))
            .collect();
    }

    /// The lines every text summary ends with: memory, then the failures
    /// kept (the rest are in the log) under `heading`.
    pub fn write_text(&self, out: &mut dyn std::io::Write, heading: &str) -> std::io::Result<()> {
        write_memory_line(out, self.peak_rss, self.peak_reserved, self.budget)?;
        if self.failed > 0 {
            writeln!(out, "{heading}")?;
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

/// The memory line every text summary has.
pub fn write_memory_line(
    out: &mut dyn std::io::Write,
    peak_rss: Option<u64>,
    peak_reserved: u64,
    budget: u64,
) -> std::io::Result<()> {
    writeln!(
        out,
        "memory: peak RSS {}, peak reserved {} of {} reservable",
        peak_rss.map_or_else(|| "unknown".into(), |b| ByteSize(b).to_string()),
        ByteSize(peak_reserved),
        ByteSize(budget)
    )
}

/// Wall-clock milliseconds since the Unix epoch (0 before it), as task
/// times and stream IDs count time.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A time as RFC 3339 in UTC, to the second.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
        // Per-file state kept for the whole run: memory per 1,000 files
        // rises window after window instead of falling.
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
        assert_eq!(mb_per_1k_files(30 << 20, 2000), Some(15.0));
        assert_eq!(mb_per_1k_files(30 << 20, 0), None);
        let mut v = json!({});
        MemoryPicture {
            rss: 30 << 20,
            heap: None,
            reserved: 0,
            budget: 0,
        }
        .add_to(&mut v, 2000);
        for key in [
            "rss_mb",
            "heap_mb",
            "reserved_mb",
            "budget_mb",
            "mb_per_1k_files",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["mb_per_1k_files"], 15.0);
    }
}

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
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use headroom_governor::{ByteSize, Governor, MemoryProbe};
use serde_json::json;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Safe to call once per process.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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

/// Which job a report is about: the words and keys of its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// `headroom copy`.
    Copy,
    /// `headroom purge`: `listed` counts files scanned, `copied` files
    /// deleted, `bytes` bytes freed, `skipped` files kept.
    Purge,
}

impl Job {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Job::Copy => "copy",
            Job::Purge => "purge",
        }
    }
}

/// Live counters of a job, shared by its tasks and the reporter.
#[derive(Debug)]
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
    /// Objects gone before they could be handled (purge).
    pub vanished: AtomicU64,
    /// Directories removed because they became empty (purge).
    pub dirs_removed: AtomicU64,
    /// Oldest and newest modification time (Unix seconds) among matched
    /// files (purge).
    pub oldest: AtomicI64,
    pub newest: AtomicI64,
    /// Metadata calls made and the time they took, for estimates.
    pub metadata_calls: AtomicU64,
    pub metadata_nanos: AtomicU64,
    /// Symlinks and special files (sockets, FIFOs, devices) the listing
    /// passed over: never followed, never copied, but counted and said.
    pub not_regular: AtomicU64,
    /// Directories not entered: another filesystem or mount (purge).
    pub skipped_mounts: AtomicU64,
    failures: Mutex<Vec<(String, String)>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            listed: AtomicU64::new(0),
            listed_bytes: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: Default::default(),
            skipped_bytes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            listing_done: Default::default(),
            vanished: AtomicU64::new(0),
            dirs_removed: AtomicU64::new(0),
            oldest: AtomicI64::new(i64::MAX),
            newest: AtomicI64::new(i64::MIN),
            metadata_calls: AtomicU64::new(0),
            metadata_nanos: AtomicU64::new(0),
            not_regular: AtomicU64::new(0),
            skipped_mounts: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        }
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

impl Counters {
    /// Records a failed object: logged now, kept for the summary if there
    /// is room.
    pub fn fail(&self, what: String, why: String) {
        // Names come from listings: never let their control characters
        // reach a terminal.
        let (what, why) = (escape(&what).into_owned(), escape(&why).into_owned());
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

/// Bytes as MiB with two decimals, as every record shows memory.
pub fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1048576.0 * 100.0).round() / 100.0
}

/// One progress record.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The job reported on.
    pub job: Job,
    /// Since the job started.
    pub elapsed: Duration,
    /// Files scanned (listed and selected).
    pub files_scanned: u64,
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
    /// RSS per 1,000 files processed (scanned, for a purge); `None`
    /// before any.
    pub fn mb_per_1k_files(&self) -> Option<f64> {
        let files = match self.job {
            Job::Copy => self.files_done + self.files_skipped + self.files_failed,
            Job::Purge => self.files_scanned,
        };
        (files > 0).then(|| mb(self.rss) / (files as f64 / 1000.0))
    }

    fn json(&self) -> serde_json::Value {
        if self.job == Job::Purge {
            return json!({
                "type": "progress",
                "elapsed_s": (self.elapsed.as_secs_f64() * 10.0).round() / 10.0,
                "files_scanned": self.files_scanned,
                "files_deleted": self.files_done,
                "files_kept": self.files_skipped,
                "files_failed": self.files_failed,
                "bytes_freed": self.bytes_done,
                "files_per_second": (self.files_per_second * 10.0).round() / 10.0,
                "rss_mb": mb(self.rss),
                "heap_mb": self.heap.map(mb),
                "reserved_mb": mb(self.reserved),
                "budget_mb": mb(self.budget),
                "in_flight": self.in_flight,
                "mb_per_1k_files": self.mb_per_1k_files().map(|v| (v * 1000.0).round() / 1000.0),
            });
        }
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
        if self.job == Job::Purge {
            return format!(
                "{} files scanned at {:.0}/s, {} deleted ({}), {} failed | memory: rss {}, reserved {} of {}",
                self.files_scanned,
                self.files_per_second,
                self.files_done,
                ByteSize(self.bytes_done),
                self.files_failed,
                ByteSize(self.rss),
                ByteSize(self.reserved),
                ByteSize(self.budget),
            );
        }
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

    /// Starts reporting a copy or purge every `interval`, with the leak
    /// detector watching memory per 1,000 files.
    pub fn start(
        counters: std::sync::Arc<Counters>,
        gov: Governor,
        probe: MemoryProbe,
        interval: Duration,
        format: LogFormat,
        job: Job,
    ) -> Self {
        let started = Instant::now();
        let mut last = RateWindow::default();
        let mut leak = LeakDetector::default();
        Self::every(interval, format, move || {
            let s = snapshot(job, &counters, &gov, &probe, started, &mut last);
            if let Some(v) = s.mb_per_1k_files()
                && s.files_done + s.files_skipped + s.files_scanned >= 1000
                && leak.observe(v)
            {
                tracing::warn!(
                    mb_per_1k_files = v,
                    "memory per 1,000 files has risen for {} windows in a row: something may be keeping per-file state (rss {})",
                    LeakDetector::WINDOWS,
                    ByteSize(s.rss)
                );
            }
            Record {
                json: s.json(),
                line: s.line(),
            }
        })
    }

    /// Stops reporting.
    pub fn stop(self) {
        self.handle.abort();
    }
}

fn snapshot(
    job: Job,
    c: &Counters,
    gov: &Governor,
    probe: &MemoryProbe,
    started: Instant,
    last: &mut RateWindow,
) -> Snapshot {
    // A purge's rate is its scan rate: deletions are a subset.
    let files = match job {
        Job::Copy => c.files_processed(),
        Job::Purge => c.listed.load(Ordering::Relaxed),
    };
    let bytes = c.bytes.load(Ordering::Relaxed);
    let (files_per_second, bytes_per_second) = last.rates(files, bytes);
    let sample = probe.sample();
    let stats = gov.stats();
    Snapshot {
        job,
        elapsed: started.elapsed(),
        files_scanned: c.listed.load(Ordering::Relaxed),
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
    /// The job summed up.
    pub job: Job,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Files scanned (purge).
    pub scanned: u64,
    /// Files gone before they could be handled (purge).
    pub vanished: u64,
    /// Empty directories removed (purge).
    pub dirs_removed: u64,
    /// Oldest and newest modification time among matched files (purge).
    pub oldest: Option<std::time::SystemTime>,
    pub newest: Option<std::time::SystemTime>,
    /// For a dry run: how long the real run is likely to take.
    pub estimate: Option<Duration>,
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
    /// A signal stopped the job before it was done.
    pub interrupted: bool,
    /// Symlinks and special files passed over.
    pub not_regular: u64,
    /// Directories not entered: another filesystem or mount (purge).
    pub skipped_mounts: u64,
}

impl Summary {
    /// Collects the summary from a finished job's counters.
    pub fn collect(
        job: Job,
        c: &Counters,
        gov: &Governor,
        probe: &MemoryProbe,
        elapsed: Duration,
        dry_run: bool,
    ) -> Self {
        let stats = gov.stats();
        let time = |secs: i64| {
            (secs != i64::MAX && secs != i64::MIN).then(|| {
                if secs >= 0 {
                    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)
                } else {
                    std::time::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                }
            })
        };
        Summary {
            job,
            dry_run,
            scanned: c.listed.load(Ordering::Relaxed),
            vanished: c.vanished.load(Ordering::Relaxed),
            dirs_removed: c.dirs_removed.load(Ordering::Relaxed),
            oldest: time(c.oldest.load(Ordering::Relaxed)),
            newest: time(c.newest.load(Ordering::Relaxed)),
            estimate: None,
            copied: c.copied.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            elapsed,
            peak_rss: probe.sample().peak_rss,
            peak_reserved: stats.peak_reserved,
            budget: stats.budget,
            failures: c.failures(),
            interrupted: false,
            not_regular: c.not_regular.load(Ordering::Relaxed),
            skipped_mounts: c.skipped_mounts.load(Ordering::Relaxed),
        }
    }

    /// Prints the summary (text or one JSON object) to `out`.
    pub fn print(&self, format: LogFormat, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        if self.job == Job::Purge {
            return self.print_purge(format, out);
        }
        match format {
            LogFormat::Json => {
                let v = json!({
                    "type": "summary",
                    "dry_run": self.dry_run,
                    "copied": self.copied,
                    "skipped": self.skipped,
                    "failed": self.failed,
                    "bytes": self.bytes,
                    "not_regular": self.not_regular,
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
                if self.not_regular > 0 {
                    writeln!(
                        out,
                        "passed over {} symlinks and special files (never followed or copied)",
                        self.not_regular
                    )?;
                }
                self.write_memory_and_failures(out, "failed objects:")
            }
        }
    }
}

impl Summary {
    /// The lines every job's text summary ends with: memory, then the
    /// failures kept (the rest are in the log).
    fn write_memory_and_failures(
        &self,
        out: &mut dyn std::io::Write,
        heading: &str,
    ) -> std::io::Result<()> {
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

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Summary {
    fn print_purge(&self, format: LogFormat, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let rate = self.scanned as f64 / self.elapsed.as_secs_f64().max(1e-3);
        match format {
            LogFormat::Json => {
                let v = json!({
                    "type": "summary",
                    "dry_run": self.dry_run,
                    "files_scanned": self.scanned,
                    "files_deleted": self.copied,
                    "bytes_freed": self.bytes,
                    "files_kept": self.skipped,
                    "failed": self.failed,
                    "vanished": self.vanished,
                    "dirs_removed": self.dirs_removed,
                    "mounts_not_entered": self.skipped_mounts,
                    "oldest_matched": self.oldest.map(rfc3339),
                    "newest_matched": self.newest.map(rfc3339),
                    "estimated_s": self.estimate.map(|d| d.as_secs_f64()),
                    "elapsed_s": self.elapsed.as_secs_f64(),
                    "files_per_second": rate.round(),
                    "peak_rss_mb": self.peak_rss.map(mb),
                    "peak_reserved_mb": mb(self.peak_reserved),
                    "budget_mb": mb(self.budget),
                    "failures": self.failures.iter().map(|(w, r)| json!({"path": w, "reason": r})).collect::<Vec<_>>(),
                });
                writeln!(out, "{v}")
            }
            LogFormat::Text => {
                let verb = if self.dry_run {
                    "would delete"
                } else {
                    "deleted"
                };
                writeln!(
                    out,
                    "{verb} {} files ({}), kept {}, failed {}, vanished {} in {:.1?} (scanned {} files, {:.0}/s)",
                    self.copied,
                    ByteSize(self.bytes),
                    self.skipped,
                    self.failed,
                    self.vanished,
                    self.elapsed,
                    self.scanned,
                    rate
                )?;
                if let (Some(a), Some(b)) = (self.oldest, self.newest) {
                    writeln!(
                        out,
                        "matched modification times from {} to {}",
                        rfc3339(a),
                        rfc3339(b)
                    )?;
                }
                if self.dirs_removed > 0 {
                    writeln!(out, "removed {} empty directories", self.dirs_removed)?;
                }
                if self.skipped_mounts > 0 {
                    writeln!(
                        out,
                        "did not enter {} directories on other filesystems or mounts (--cross-filesystems enters them)",
                        self.skipped_mounts
                    )?;
                }
                if let Some(e) = self.estimate {
                    writeln!(out, "a real run would take about {:.1?}", e)?;
                }
                self.write_memory_and_failures(out, "failures:")
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
            job: Job::Copy,
            files_scanned: 2000,
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

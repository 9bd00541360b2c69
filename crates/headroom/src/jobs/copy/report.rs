//! What a copy counts while it runs, and its summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use headroom_governor::ByteSize;
use serde_json::json;

use crate::telemetry::{
    Failures, JobCounters, LogFormat, MemoryPicture, Outcome, RateWindow, Record, tenths,
};

/// Live counters of a copy, shared by its tasks and the reporter.
#[derive(Debug, Default)]
pub struct CopyCounters {
    /// Objects listed at the source and selected by the filters.
    pub listed: AtomicU64,
    /// Their bytes.
    pub listed_bytes: AtomicU64,
    /// Objects copied (or, in a dry run, that would be).
    pub copied: AtomicU64,
    /// Objects already up to date at the destination.
    pub skipped: AtomicU64,
    /// Bytes moved so far (or, in a dry run, that would be).
    pub bytes: Arc<AtomicU64>,
    /// Bytes of skipped objects.
    pub skipped_bytes: AtomicU64,
    /// Transfers running now (a batch of small local files counts once).
    pub in_flight: AtomicU64,
    /// Whether the listing has finished (the totals are final).
    pub listing_done: AtomicBool,
    /// Symlinks and special files (sockets, FIFOs, devices) the listing
    /// passed over: never followed, never copied, but counted and said.
    pub not_regular: AtomicU64,
    /// Objects that failed.
    pub failures: Failures,
}

impl CopyCounters {
    /// Objects finished one way or another.
    pub fn objects_processed(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
            + self.failures.count()
    }

    /// Records a failed object.
    pub fn fail(&self, what: String, why: String) {
        self.failures.record(what, why);
    }
}

impl JobCounters for CopyCounters {
    const JOB: &'static str = "copy";

    fn files_seen(&self) -> u64 {
        self.objects_processed()
    }

    fn record(&self, elapsed: Duration, memory: &MemoryPicture, rates: &mut RateWindow) -> Record {
        let done = self.copied.load(Ordering::Relaxed);
        let skipped = self.skipped.load(Ordering::Relaxed);
        let failed = self.failures.count();
        let bytes = self.bytes.load(Ordering::Relaxed);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let (files_per_second, bytes_per_second) = rates.rates(self.objects_processed(), bytes);
        let total_bytes = self.listing_done.load(Ordering::Relaxed).then(|| {
            self.listed_bytes.load(Ordering::Relaxed) - self.skipped_bytes.load(Ordering::Relaxed)
        });
        let mut json = json!({
            "type": "progress",
            "elapsed_s": tenths(elapsed.as_secs_f64()),
            "files_done": done,
            "files_skipped": skipped,
            "files_failed": failed,
            "bytes_done": bytes,
            "files_per_second": tenths(files_per_second),
            "bytes_per_second": bytes_per_second.round(),
            "in_flight": in_flight,
            "total_bytes": total_bytes,
        });
        memory.add_to(&mut json, self.objects_processed());
        let eta = match total_bytes {
            Some(total) if bytes_per_second > 0.0 && total > bytes => format!(
                ", ETA {}",
                humantime::format_duration(Duration::from_secs(
                    ((total - bytes) as f64 / bytes_per_second) as u64
                ))
            ),
            _ => String::new(),
        };
        let line = format!(
            "{done} files ({skipped} skipped, {failed} failed), {} at {}/s{eta} | {}, {in_flight} in flight",
            ByteSize(bytes),
            ByteSize(bytes_per_second as u64),
            memory.line(),
        );
        Record { json, line }
    }
}

/// The end of a copy.
#[derive(Debug, Clone)]
pub struct CopySummary {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Objects copied (or that would be).
    pub copied: u64,
    /// Objects already up to date.
    pub skipped: u64,
    /// Bytes copied (or that would be).
    pub bytes: u64,
    /// Symlinks and special files passed over.
    pub not_regular: u64,
    /// Time, memory and failures.
    pub outcome: Outcome,
}

impl CopySummary {
    /// Collects the summary from a finished copy's counters.
    pub fn collect(c: &CopyCounters, dry_run: bool, outcome: Outcome) -> Self {
        CopySummary {
            dry_run,
            copied: c.copied.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            not_regular: c.not_regular.load(Ordering::Relaxed),
            outcome,
        }
    }

    /// Prints the summary (text or one JSON object) to `out`.
    pub fn print(&self, format: LogFormat, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let o = &self.outcome;
        match format {
            LogFormat::Json => {
                let mut v = json!({
                    "type": "summary",
                    "dry_run": self.dry_run,
                    "copied": self.copied,
                    "skipped": self.skipped,
                    "failed": o.failed,
                    "bytes": self.bytes,
                    "not_regular": self.not_regular,
                });
                o.add_to(&mut v, "object");
                writeln!(out, "{v}")
            }
            LogFormat::Text => {
                let verb = if self.dry_run { "would copy" } else { "copied" };
                let rate = self.bytes as f64 / o.elapsed.as_secs_f64().max(1e-3);
                writeln!(
                    out,
                    "{verb} {} objects ({}), skipped {} up to date, failed {} in {:.1?} ({}/s)",
                    self.copied,
                    ByteSize(self.bytes),
                    self.skipped,
                    o.failed,
                    o.elapsed,
                    ByteSize(rate as u64)
                )?;
                if self.not_regular > 0 {
                    writeln!(
                        out,
                        "passed over {} entries with nothing to copy (symlinks, special files, Google forms, shortcut loops: never followed or copied; each one is logged)",
                        self.not_regular
                    )?;
                }
                o.write_text(out, "failed objects:")
            }
        }
    }
}

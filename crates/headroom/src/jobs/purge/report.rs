//! What a purge counts while it runs, and its summary.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use headroom_governor::ByteSize;
use serde_json::json;

use crate::telemetry::{
    Failures, JobCounters, LogFormat, MemoryPicture, Outcome, RateWindow, Record, rfc3339, tenths,
};

/// Live counters of a purge, shared by its threads and the reporter.
#[derive(Debug)]
pub struct PurgeCounters {
    /// Files scanned (listed and selected by the filters).
    pub scanned: AtomicU64,
    /// Files deleted (or, in a dry run, that would be).
    pub deleted: AtomicU64,
    /// Their bytes.
    pub bytes_freed: AtomicU64,
    /// Files kept: newer than the cut-off, or not selected.
    pub kept: AtomicU64,
    /// Files gone before they could be handled.
    pub vanished: AtomicU64,
    /// Directories removed because they became empty.
    pub dirs_removed: AtomicU64,
    /// Directories not entered: another filesystem or mount.
    pub mounts_not_entered: AtomicU64,
    /// Oldest and newest modification time (Unix seconds) among matched
    /// files.
    pub oldest: AtomicI64,
    /// See `oldest`.
    pub newest: AtomicI64,
    /// Metadata calls made and the time they took, for estimates.
    pub metadata_calls: AtomicU64,
    /// See `metadata_calls`.
    pub metadata_nanos: AtomicU64,
    /// Metadata threads or delete batches working now.
    pub in_flight: AtomicU64,
    /// Files or directories that could not be handled.
    pub failures: Failures,
}

impl Default for PurgeCounters {
    fn default() -> Self {
        PurgeCounters {
            scanned: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            bytes_freed: AtomicU64::new(0),
            kept: AtomicU64::new(0),
            vanished: AtomicU64::new(0),
            dirs_removed: AtomicU64::new(0),
            mounts_not_entered: AtomicU64::new(0),
            oldest: AtomicI64::new(i64::MAX),
            newest: AtomicI64::new(i64::MIN),
            metadata_calls: AtomicU64::new(0),
            metadata_nanos: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            failures: Failures::default(),
        }
    }
}

impl PurgeCounters {
    /// Records a path that could not be handled.
    pub fn fail(&self, what: String, why: String) {
        self.failures.record(what, why);
    }

    /// Records a matched file of `size` bytes last modified at `secs`
    /// (Unix seconds), deleted or (in a dry run) to be.
    pub fn deleted(&self, size: u64, secs: i64) {
        self.deleted.fetch_add(1, Ordering::Relaxed);
        self.bytes_freed.fetch_add(size, Ordering::Relaxed);
        self.oldest.fetch_min(secs, Ordering::Relaxed);
        self.newest.fetch_max(secs, Ordering::Relaxed);
    }
}

impl JobCounters for PurgeCounters {
    const JOB: &'static str = "purge";

    /// A purge's memory is judged by files scanned: deletions are a
    /// subset.
    fn files_seen(&self) -> u64 {
        self.scanned.load(Ordering::Relaxed)
    }

    fn record(&self, elapsed: Duration, memory: &MemoryPicture, rates: &mut RateWindow) -> Record {
        let scanned = self.scanned.load(Ordering::Relaxed);
        let deleted = self.deleted.load(Ordering::Relaxed);
        let freed = self.bytes_freed.load(Ordering::Relaxed);
        let failed = self.failures.count();
        let (files_per_second, _) = rates.rates(scanned, freed);
        let mut json = json!({
            "type": "progress",
            "elapsed_s": tenths(elapsed.as_secs_f64()),
            "files_scanned": scanned,
            "files_deleted": deleted,
            "files_kept": self.kept.load(Ordering::Relaxed),
            "files_failed": failed,
            "bytes_freed": freed,
            "files_per_second": tenths(files_per_second),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
        });
        memory.add_to(&mut json, scanned);
        let line = format!(
            "{scanned} files scanned at {files_per_second:.0}/s, {deleted} deleted ({}), {failed} failed | {}",
            ByteSize(freed),
            memory.line(),
        );
        Record { json, line }
    }
}

/// The end of a purge.
#[derive(Debug, Clone)]
pub struct PurgeSummary {
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// Files scanned.
    pub scanned: u64,
    /// Files deleted (or that would be).
    pub deleted: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Files kept.
    pub kept: u64,
    /// Files gone before they could be handled.
    pub vanished: u64,
    /// Empty directories removed.
    pub dirs_removed: u64,
    /// Directories not entered: another filesystem or mount.
    pub mounts_not_entered: u64,
    /// Oldest and newest modification time among matched files.
    pub oldest: Option<SystemTime>,
    /// See `oldest`.
    pub newest: Option<SystemTime>,
    /// For a dry run: how long the real run is likely to take.
    pub estimate: Option<Duration>,
    /// Time, memory and failures.
    pub outcome: Outcome,
}

impl PurgeSummary {
    /// Collects the summary from a finished purge's counters.
    pub fn collect(c: &PurgeCounters, dry_run: bool, outcome: Outcome) -> Self {
        let time = |secs: i64| {
            (secs != i64::MAX && secs != i64::MIN).then(|| {
                if secs >= 0 {
                    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)
                } else {
                    std::time::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                }
            })
        };
        PurgeSummary {
            dry_run,
            scanned: c.scanned.load(Ordering::Relaxed),
            deleted: c.deleted.load(Ordering::Relaxed),
            bytes_freed: c.bytes_freed.load(Ordering::Relaxed),
            kept: c.kept.load(Ordering::Relaxed),
            vanished: c.vanished.load(Ordering::Relaxed),
            dirs_removed: c.dirs_removed.load(Ordering::Relaxed),
            mounts_not_entered: c.mounts_not_entered.load(Ordering::Relaxed),
            oldest: time(c.oldest.load(Ordering::Relaxed)),
            newest: time(c.newest.load(Ordering::Relaxed)),
            estimate: None,
            outcome,
        }
    }

    /// Prints the summary (text or one JSON object) to `out`.
    pub fn print(&self, format: LogFormat, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let o = &self.outcome;
        let rate = self.scanned as f64 / o.elapsed.as_secs_f64().max(1e-3);
        match format {
            LogFormat::Json => {
                let mut v = json!({
                    "type": "summary",
                    "dry_run": self.dry_run,
                    "files_scanned": self.scanned,
                    "files_deleted": self.deleted,
                    "bytes_freed": self.bytes_freed,
                    "files_kept": self.kept,
                    "failed": o.failed,
                    "vanished": self.vanished,
                    "dirs_removed": self.dirs_removed,
                    "mounts_not_entered": self.mounts_not_entered,
                    "oldest_matched": self.oldest.map(rfc3339),
                    "newest_matched": self.newest.map(rfc3339),
                    "estimated_s": self.estimate.map(|d| d.as_secs_f64()),
                    "files_per_second": rate.round(),
                });
                o.add_to(&mut v, "path");
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
                    self.deleted,
                    ByteSize(self.bytes_freed),
                    self.kept,
                    o.failed,
                    self.vanished,
                    o.elapsed,
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
                if self.mounts_not_entered > 0 {
                    writeln!(
                        out,
                        "did not enter {} directories on other filesystems or mounts (--cross-filesystems enters them)",
                        self.mounts_not_entered
                    )?;
                }
                if let Some(e) = self.estimate {
                    writeln!(out, "a real run would take about {:.1?}", e)?;
                }
                o.write_text(out, "failures:")
            }
        }
    }
}

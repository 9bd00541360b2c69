//! What an ingest counts while it runs, its progress records and its
//! summary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use headroom_governor::{ByteSize, Governor, MemoryProbe};
use serde_json::json;

use crate::telemetry::{LogFormat, RateWindow, Record, mb};

/// Live counters of an ingest, shared by reader, writer and reporter.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub events_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub events_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub batches: AtomicU64,
    /// The stream's length after the last write or poll.
    pub stream_length: AtomicU64,
    /// WebSocket reconnections.
    pub reconnects: AtomicU64,
    /// Redis calls that failed and were retried.
    pub redis_retries: AtomicU64,
    /// Events replayed by the source after a reconnect and dropped.
    pub replays_dropped: AtomicU64,
    /// AT Protocol: `#info OutdatedCursor` answers (events lost between
    /// the cursor and the server's window).
    pub cursor_gaps: AtomicU64,
    /// AT Protocol: `ConsumerTooSlow` errors (each a reconnect).
    pub too_slow: AtomicU64,
    /// AT Protocol: frames of unknown ops, or without a `seq`, skipped.
    pub frames_skipped: AtomicU64,
    /// AT Protocol: frames that were not DAG-CBOR (each drops the
    /// connection).
    pub frames_undecodable: AtomicU64,
    /// The last acknowledged sequence number, plus one (0: none yet).
    pub(super) acked_seq_plus_one: AtomicU64,
    backpressure: AtomicBool,
    /// Since the job started, when the current pause began (ns).
    backpressure_since_ns: AtomicU64,
    backpressure_total_ns: AtomicU64,
    pub backpressure_episodes: AtomicU64,
    started: std::sync::OnceLock<Instant>,
}

impl IngestCounters {
    pub(super) fn new() -> Self {
        let c = IngestCounters::default();
        let _ = c.started.set(Instant::now());
        c
    }

    fn now_ns(&self) -> u64 {
        self.started
            .get()
            .map_or(0, |s| s.elapsed().as_nanos() as u64)
    }

    /// Marks writing as paused; `true` if it was not already.
    pub fn start_backpressure(&self) -> bool {
        if self.backpressure.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.backpressure_since_ns
            .store(self.now_ns(), Ordering::Relaxed);
        self.backpressure_episodes.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Marks writing as resumed.
    pub fn end_backpressure(&self) {
        if self.backpressure.swap(false, Ordering::AcqRel) {
            let since = self.backpressure_since_ns.load(Ordering::Relaxed);
            self.backpressure_total_ns
                .fetch_add(self.now_ns().saturating_sub(since), Ordering::Relaxed);
            tracing::info!(
                "stream below high water after {:.1?}: writing again",
                Duration::from_nanos(self.now_ns().saturating_sub(since))
            );
        }
    }

    /// How long the current pause has lasted, if writing is paused.
    pub fn backpressure_for(&self) -> Option<Duration> {
        self.backpressure.load(Ordering::Acquire).then(|| {
            Duration::from_nanos(
                self.now_ns()
                    .saturating_sub(self.backpressure_since_ns.load(Ordering::Relaxed)),
            )
        })
    }

    /// All time spent paused, the current pause included.
    pub fn backpressure_total(&self) -> Duration {
        Duration::from_nanos(self.backpressure_total_ns.load(Ordering::Relaxed))
            + self.backpressure_for().unwrap_or_default()
    }

    /// The sequence number of the last event Redis acknowledged.
    pub fn last_acked_seq(&self) -> Option<u64> {
        self.acked_seq_plus_one
            .load(Ordering::Acquire)
            .checked_sub(1)
    }

    /// Events read and not yet acknowledged.
    pub fn events_in_flight(&self) -> u64 {
        let written = self.events_written.load(Ordering::Acquire);
        self.events_read
            .load(Ordering::Acquire)
            .saturating_sub(written)
    }

    /// Their bytes.
    pub fn bytes_in_flight(&self) -> u64 {
        let written = self.bytes_written.load(Ordering::Acquire);
        self.bytes_read
            .load(Ordering::Acquire)
            .saturating_sub(written)
    }
}

/// How an ingest ended.
#[derive(Debug)]
pub struct IngestSummary {
    pub source: String,
    pub target: String,
    pub events_read: u64,
    pub events_written: u64,
    pub bytes_written: u64,
    pub batches: u64,
    pub replays_dropped: u64,
    pub reconnects: u64,
    pub cursor_gaps: u64,
    pub too_slow: u64,
    pub frames_skipped: u64,
    pub frames_undecodable: u64,
    pub redis_retries: u64,
    pub backpressure_episodes: u64,
    pub backpressure_total: Duration,
    pub stream_length: u64,
    pub elapsed: Duration,
    pub peak_rss: Option<u64>,
    pub peak_reserved: u64,
    pub budget: u64,
    /// Why the job stopped early, if it did.
    pub error: Option<String>,
}

impl IngestSummary {
    /// Events read but never acknowledged (only after an error).
    pub fn unwritten(&self) -> u64 {
        self.events_read - self.events_written
    }

    /// Prints the summary (text or one JSON object) to `out`.
    pub fn print(&self, format: LogFormat, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        let rate = self.events_written as f64 / secs;
        match format {
            LogFormat::Json => {
                let v = json!({
                    "type": "summary",
                    "job": "ingest",
                    "source": self.source,
                    "target": self.target,
                    "events_read": self.events_read,
                    "events_written": self.events_written,
                    "events_unwritten": self.unwritten(),
                    "bytes_written": self.bytes_written,
                    "batches": self.batches,
                    "replays_dropped": self.replays_dropped,
                    "reconnects": self.reconnects,
                    "cursor_gaps": self.cursor_gaps,
                    "consumer_too_slow": self.too_slow,
                    "frames_skipped": self.frames_skipped,
                    "frames_undecodable": self.frames_undecodable,
                    "redis_retries": self.redis_retries,
                    "backpressure_episodes": self.backpressure_episodes,
                    "backpressure_s": self.backpressure_total.as_secs_f64(),
                    "stream_length": self.stream_length,
                    "elapsed_s": self.elapsed.as_secs_f64(),
                    "events_per_second": rate.round(),
                    "bytes_per_second": (self.bytes_written as f64 / secs).round(),
                    "peak_rss_mb": self.peak_rss.map(mb),
                    "peak_reserved_mb": mb(self.peak_reserved),
                    "budget_mb": mb(self.budget),
                    "error": self.error,
                });
                writeln!(out, "{v}")
            }
            LogFormat::Text => {
                writeln!(
                    out,
                    "wrote {} events ({}) from {} to {} in {:.1?} ({:.0} events/s, {}/s)",
                    self.events_written,
                    ByteSize(self.bytes_written),
                    self.source,
                    self.target,
                    self.elapsed,
                    rate,
                    ByteSize((self.bytes_written as f64 / secs) as u64),
                )?;
                writeln!(
                    out,
                    "stream length {}; paused {} times for {:.1?} in all (high water); {} reconnects, {} Redis retries, {} replayed events dropped",
                    self.stream_length,
                    self.backpressure_episodes,
                    self.backpressure_total,
                    self.reconnects,
                    self.redis_retries,
                    self.replays_dropped,
                )?;
                if self.cursor_gaps + self.too_slow + self.frames_skipped + self.frames_undecodable
                    > 0
                {
                    writeln!(
                        out,
                        "event stream: {} gaps (OutdatedCursor), {} ConsumerTooSlow, {} frames skipped, {} undecodable",
                        self.cursor_gaps,
                        self.too_slow,
                        self.frames_skipped,
                        self.frames_undecodable
                    )?;
                }
                crate::telemetry::write_memory_line(
                    out,
                    self.peak_rss,
                    self.peak_reserved,
                    self.budget,
                )?;
                if self.unwritten() > 0 {
                    writeln!(
                        out,
                        "NOT WRITTEN: {} events were read but Redis never acknowledged them",
                        self.unwritten()
                    )?;
                }
                Ok(())
            }
        }
    }
}

pub(super) fn progress(
    c: &IngestCounters,
    gov: &Governor,
    probe: &MemoryProbe,
    last: &mut RateWindow,
) -> Record {
    let events = c.events_written.load(Ordering::Relaxed);
    let bytes = c.bytes_written.load(Ordering::Relaxed);
    let (events_per_second, bytes_per_second) = last.rates(events, bytes);
    let sample = probe.sample();
    let stats = gov.stats();
    let paused = c.backpressure_for();
    let json = json!({
        "type": "progress",
        "job": "ingest",
        "elapsed_s": c.started.get().map(|s| (s.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        "events_read": c.events_read.load(Ordering::Relaxed),
        "events_written": events,
        "bytes_written": bytes,
        "events_per_second": events_per_second.round(),
        "bytes_per_second": bytes_per_second.round(),
        "events_in_flight": c.events_in_flight(),
        "bytes_in_flight": c.bytes_in_flight(),
        "stream_length": c.stream_length.load(Ordering::Relaxed),
        "backpressure": paused.is_some(),
        "backpressure_s": paused.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
        "backpressure_total_s": (c.backpressure_total().as_secs_f64() * 10.0).round() / 10.0,
        "reconnects": c.reconnects.load(Ordering::Relaxed),
        "redis_retries": c.redis_retries.load(Ordering::Relaxed),
        "rss_mb": sample.rss.map(mb),
        "heap_mb": sample.heap.map(mb),
        "reserved_mb": mb(stats.reserved),
        "budget_mb": mb(stats.budget),
    });
    let line = format!(
        "{events} events written at {:.0}/s ({}/s), {} in flight ({}), stream length {}{} | memory: rss {}, reserved {} of {}",
        events_per_second,
        ByteSize(bytes_per_second as u64),
        c.events_in_flight(),
        ByteSize(c.bytes_in_flight()),
        c.stream_length.load(Ordering::Relaxed),
        paused.map_or_else(String::new, |d| format!(
            ", PAUSED at high water for {d:.0?}"
        )),
        ByteSize(sample.rss.unwrap_or(0)),
        ByteSize(stats.reserved),
        ByteSize(stats.budget),
    );
    Record { json, line }
}

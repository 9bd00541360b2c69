//! `headroom ingest`: events from a WebSocket or standard input into a
//! Redis stream, with backpressure from the stream back to the source.
//!
//! ```text
//!  reader ──(event + permit)──▶ queue ──▶ writer ──script calls, --pipeline──▶ Redis
//!   │ waits for a permit          │ bounded in     │ waits while a stream
//!   │ (governor, bytes)           │ bytes and      │ is at --high-water
//!   │ and for queue room          │ events         │ or the pipeline is full
//!   ▼                             ▼                ▼
//!  stops reading: TCP window closes / the pipe fills
//! ```
//!
//! Memory is bounded at every stage (an ingester whose writer paused for
//! backpressure, with an unbounded channel in front of it, grew from 2.7 to
//! 7.3 GB in a minute and was OOM-killed):
//!
//! * every event is paid for by a governor permit from the moment it is
//!   read until Redis acknowledged the batch holding it (at-least-once:
//!   nothing leaves memory unwritten);
//! * the queue between reader and writer holds at most `--max-in-flight`
//!   events minus one batch, and at most the budget in bytes;
//! * the writer's own buffers (an encoded call per batch in flight, and
//!   the connection's) are a fixed reservation.
//!
//! So a writer paused for ten minutes holds exactly what it held after ten
//! milliseconds.

pub mod atproto;
mod redis_stream;
mod report;
pub mod route;
mod source;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use headroom_governor::{ByteSize, Permit, channel};

pub use redis_stream::{StreamId, Target};
pub use report::{IngestCounters, IngestSummary};
pub use source::{AtprotoStore, Format, Source, sequence_of};

use crate::telemetry::{RateWindow, Reporter};

/// How an ingest runs, besides its source and target: what `headroom
/// ingest`'s flags turn into. The defaults are the flags' defaults.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// A file holding the Redis password (else HEADROOM_REDIS_PASSWORD).
    pub redis_password_file: Option<std::path::PathBuf>,
    /// Events per batch (one atomic script call).
    pub batch_size: usize,
    /// Batches in flight on the connection at once.
    pub pipeline: usize,
    /// Bytes per batch at most (a single larger event goes alone).
    pub batch_bytes: ByteSize,
    /// Send a batch that is not full after this long.
    pub flush_interval: Duration,
    /// Trim the stream to about this many entries on every XADD.
    pub maxlen: Option<u64>,
    /// Pause writing (and so reading) while the stream holds this many
    /// entries or more.
    pub high_water: Option<u64>,
    /// Events read but not yet acknowledged by Redis, at most.
    pub max_in_flight: usize,
    /// The largest event accepted; a larger one is an error.
    pub max_event_size: ByteSize,
    /// The stream entry's field that holds the event.
    pub field: String,
    /// WebSocket only: the query parameter that carries the last
    /// acknowledged sequence number on reconnect.
    pub cursor_param: Option<String>,
    /// The numeric top-level JSON field holding an event's sequence number.
    pub sequence_field: String,
    /// Give up when Redis has refused every write for this long.
    pub redis_retry_for: Duration,
    /// Give up when the WebSocket cannot be reconnected for this long.
    pub reconnect_for: Duration,
    /// What the events are.
    pub format: Format,
    /// What an AT Protocol frame is stored as.
    pub atproto_store: AtprotoStore,
    /// An event stream's cursor when the Redis stream holds none of its
    /// events yet (none: live).
    pub start_cursor: Option<u64>,
    /// Events sent to other streams than the target's, by type and
    /// collection (`--route`).
    pub routes: Vec<route::Route>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            redis_password_file: None,
            batch_size: 500,
            pipeline: 4,
            batch_bytes: ByteSize(1 << 20),
            flush_interval: Duration::from_millis(20),
            maxlen: None,
            high_water: None,
            max_in_flight: 10_000,
            max_event_size: ByteSize(1 << 20),
            field: "data".into(),
            cursor_param: None,
            sequence_field: "seq".into(),
            redis_retry_for: Duration::from_secs(300),
            reconnect_for: Duration::from_secs(300),
            format: Format::Lines,
            atproto_store: AtprotoStore::Frame,
            start_cursor: None,
            routes: Vec::new(),
        }
    }
}

/// What one queued event costs besides its bytes: the `Event` itself, the
/// `Bytes` header and the allocator's rounding.
pub const EVENT_OVERHEAD: u64 = 128;

/// What one event costs in the encoded transaction besides its bytes: the
/// XADD, key, ID, field and RESP framing.
const COMMAND_OVERHEAD: u64 = 160;

/// The Redis connection's own buffers.
const CONNECTION_FOOTPRINT: u64 = 128 << 10;

/// One event between reader and Redis, with the permit that pays for it.
pub struct Event {
    /// The event as read (a line without its newline, or a message; an AT
    /// Protocol frame, or its body as JSON).
    pub data: Bytes,
    /// Its sequence number, when `--cursor-param` is used and it has one
    /// (an AT Protocol message always has one).
    pub seq: Option<u64>,
    /// Its stream ID, when it is derived from `seq` (AT Protocol: `0-SEQ`),
    /// so that a replayed event can never enter the stream twice.
    pub id: Option<StreamId>,
    /// Its type (`#commit`, ...), stored as the entry's `t` field.
    pub kind: Option<Box<str>>,
    /// The stream it goes to: 0 the target's, else the `--route`'s.
    pub stream: u16,
    _permit: Permit,
}

/// The queue between reader and writer counts an event's data; its permit
/// pays for the data and the overhead.
impl headroom_governor::channel::Footprint for Event {
    fn footprint(&self) -> u64 {
        self.data.len() as u64
    }
}

/// Checks the flags against each other and the budget; returns the
/// writer's and the reader's fixed reservations.
fn plan(from: &Source, args: &IngestOptions, budget: u64) -> anyhow::Result<(u64, u64)> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.pipeline == 0 {
        bail!("--pipeline must be at least 1");
    }
    if args.max_in_flight < (args.pipeline + 1) * args.batch_size {
        bail!(
            "--max-in-flight ({}) must be at least (--pipeline + 1) x --batch-size ({} x {}): that many batches are written while the next gathers",
            args.max_in_flight,
            args.pipeline + 1,
            args.batch_size
        );
    }
    if args.max_event_size.0 == 0 || args.batch_bytes.0 == 0 {
        bail!("--max-event-size and --batch-bytes must be more than zero");
    }
    if args.high_water == Some(0) {
        bail!("--high-water must be at least 1");
    }
    if args.field.is_empty() {
        bail!("--field must not be empty");
    }
    if args.start_cursor.is_some() && !args.format.keyed() {
        bail!("--start-cursor needs --format atproto or jetstream");
    }
    if !args.routes.is_empty() && !args.format.keyed() {
        bail!(
            "--route needs --format atproto or jetstream: opaque events have no type or collection to route by"
        );
    }
    if args.format.keyed() {
        let name = match args.format {
            Format::Atproto => "atproto",
            _ => "jetstream",
        };
        if *from == Source::Stdin {
            bail!(
                "--format {name} reads an event stream: give a ws:// or wss:// source, not standard input"
            );
        }
        if ["t", "seq"].contains(&args.field.as_str()) {
            bail!(
                "--field {}: with --format {name}, `t` and `seq` are the entry's own fields",
                args.field
            );
        }
    }
    let max_event = args.max_event_size.0;
    // Each batch in flight holds its encoded call until answered; the
    // newest is also packed for the socket and copied into the
    // connection's write buffer, which keeps its size.
    let call = args.batch_bytes.0.max(max_event) + args.batch_size as u64 * COMMAND_OVERHEAD;
    let writer = (args.pipeline as u64 + 2) * call + CONNECTION_FOOTPRINT;
    let reader = from.reader_footprint(max_event);
    let least = writer + reader + max_event + EVENT_OVERHEAD;
    if budget < least {
        bail!(
            "the memory budget leaves {} for buffers, less than the {} ingest needs with --max-event-size {} and --batch-bytes {}: raise --memory or lower those",
            ByteSize(budget),
            ByteSize(least),
            args.max_event_size,
            args.batch_bytes
        );
    }
    Ok((writer, reader))
}

/// The target with its password from --redis-password-file or
/// HEADROOM_REDIS_PASSWORD, where one is given.
fn target_with_password(to: &str, args: &IngestOptions) -> anyhow::Result<Target> {
    let password = match &args.redis_password_file {
        Some(path) => {
            use std::io::Read;
            let mut pw = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(4096).read_to_string(&mut pw))
                .with_context(|| format!("cannot read --redis-password-file {}", path.display()))?;
            Some(pw.trim_end_matches(['\r', '\n']).to_string())
        }
        None => std::env::var("HEADROOM_REDIS_PASSWORD").ok(),
    };
    let target: Target = to
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--to: {e}"))?;
    match password.filter(|p| !p.is_empty()) {
        Some(pw) => target.with_password(&pw).map_err(anyhow::Error::msg),
        None => Ok(target),
    }
}

/// Runs `headroom ingest` until the source ends, a signal stops it, or
/// something fails; the summary says which.
/// `to` is `redis://[USER@]HOST[:PORT][/DB]/STREAM`, parsed here so that
/// an error never repeats a password it may hold.
pub async fn run(
    from: &Source,
    to: &str,
    args: &IngestOptions,
    foreground: &super::ForegroundOptions,
) -> anyhow::Result<IngestSummary> {
    let memory = crate::memory::MemoryPlan::start(foreground.memory);
    let gov = memory.governor.clone();
    let (writer_bytes, reader_bytes) = plan(from, args, gov.budget())?;
    let counters = Arc::new(IngestCounters::new());
    let target = target_with_password(to, args)?;
    let router = route::Router::new(&args.routes, &target.stream).map_err(anyhow::Error::msg)?;
    let mut writer = redis_stream::StreamWriter::connect(
        target,
        redis_stream::WriterOptions {
            field: args.field.clone(),
            maxlen: args.maxlen,
            high_water: args.high_water,
            retry_for: args.redis_retry_for,
            pipeline: args.pipeline,
            routes: router.streams().to_vec(),
        },
        counters.clone(),
    )
    .await?;
    tracing::info!(
        "ingesting from {} into {} (stream length {})",
        from,
        writer.target(),
        counters.stream_length.load(Ordering::Relaxed)
    );
    // Fixed for the run, so an event as large as --max-event-size is
    // granted beside them (plan() checked that it fits).
    let _writer_permit = gov
        .reserve_fixed(writer_bytes, "ingest.writer", reader_bytes)
        .context("reserving the writer's buffers")?;
    let _reader_permit = gov
        .reserve_fixed(reader_bytes, "ingest.reader", 0)
        .context("reserving the reader's buffers")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(stop_on_signals(stop_tx));
    // One event waits in the reader and up to --pipeline batches in the
    // writer, with one gathering; the queue holds the rest of
    // --max-in-flight.
    let queue_events = args.max_in_flight - (args.pipeline + 1) * args.batch_size - 1;
    let (tx, rx) = channel::bounded::<Event>(gov.budget(), queue_events);

    let started = Instant::now();
    let reporter = {
        let (c, g, p) = (counters.clone(), gov.clone(), memory.probe.clone());
        let mut last = RateWindow::default();
        Reporter::every(
            foreground.progress_interval,
            foreground.log_format,
            move || report::progress(&c, &g, &p, &mut last),
        )
    };
    // An AT Protocol stream resumes from the last sequence number the
    // stream holds (its entries' IDs are `0-SEQ`).
    // The stream's own position wins over --start-cursor.
    let held = if args.format.keyed() {
        resume_point(&writer, args.format)?
    } else {
        None
    };
    let resume = held.or(args.start_cursor);
    if let Some(seq) = resume {
        counters
            .acked_seq_plus_one
            .store(seq + 1, Ordering::Release);
        match held {
            Some(_) => tracing::info!(
                "stream {} holds events up to {seq}: resuming after it",
                writer.target()
            ),
            None => tracing::info!(
                "stream {} holds none of this source's events: starting at --start-cursor {seq}",
                writer.target()
            ),
        }
    }
    let reader = {
        let cx = source::ReaderContext::new(
            gov.clone(),
            tx,
            counters.clone(),
            args,
            stop_rx,
            resume,
            router,
        );
        let from = from.clone();
        tokio::spawn(async move { source::read(&from, cx).await })
    };
    let written = write_loop(rx, &mut writer, args).await;
    // A failed writer dropped the queue: the reader stops at its next send.
    let read = match reader.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("the reader task failed: {e}")),
    };
    reporter.stop();
    signals.abort();
    let error = match (read, written) {
        (_, Err(w)) => Some(format!("{w:#}")),
        (Err(r), Ok(())) => Some(format!("{r:#}")),
        (Ok(()), Ok(())) => None,
    };
    let stats = gov.stats();
    Ok(IngestSummary {
        source: from.to_string(),
        target: writer.target().to_string(),
        events_read: counters.events_read.load(Ordering::Relaxed),
        events_written: counters.events_written.load(Ordering::Relaxed),
        bytes_written: counters.bytes_written.load(Ordering::Relaxed),
        batches: counters.batches.load(Ordering::Relaxed),
        replays_dropped: counters.replays_dropped.load(Ordering::Relaxed),
        cursor_gaps: counters.cursor_gaps.load(Ordering::Relaxed),
        too_slow: counters.too_slow.load(Ordering::Relaxed),
        frames_skipped: counters.frames_skipped.load(Ordering::Relaxed),
        frames_undecodable: counters.frames_undecodable.load(Ordering::Relaxed),
        reconnects: counters.reconnects.load(Ordering::Relaxed),
        redis_retries: counters.redis_retries.load(Ordering::Relaxed),
        backpressure_episodes: counters.backpressure_episodes.load(Ordering::Relaxed),
        backpressure_total: counters.backpressure_total(),
        stream_length: counters.stream_length.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        peak_rss: memory.probe.sample().peak_rss,
        peak_reserved: stats.peak_reserved,
        budget: stats.budget,
        error,
    })
}

/// The source position an event-stream ingest resumes after: the highest
/// of its streams' last IDs, `None` when they are new. Batches land whole
/// and in source order across the streams, so every event up to that
/// position is in its stream. A stream whose last ID no event of this
/// format has was written by something else.
fn resume_point(
    writer: &redis_stream::StreamWriter,
    format: Format,
) -> anyhow::Result<Option<u64>> {
    let mut resume = None;
    for (i, top) in writer.last_ids().into_iter().enumerate() {
        if top == StreamId::default() {
            continue;
        }
        match format.seq_of(top) {
            Some(seq) => resume = resume.max(Some(seq)),
            None => bail!(
                "stream {} was not written by an {} ingest (its last ID is {top}; this ingest's IDs are {}): ingest into a new stream",
                writer.stream_key(i),
                match format {
                    Format::Atproto => "AT Protocol",
                    _ => "Jetstream",
                },
                match format {
                    Format::Atproto => "0-SEQ",
                    _ => "MS-US from time_us",
                }
            ),
        }
    }
    Ok(resume)
}

/// Gathers batches from the queue and writes them until the queue closes
/// and is empty, then waits for the last answers. A batch closes at
/// `--batch-size` events, `--batch-bytes` bytes, or `--flush-interval`
/// after its first event.
async fn write_loop(
    mut rx: channel::Receiver<Event>,
    writer: &mut redis_stream::StreamWriter,
    args: &IngestOptions,
) -> anyhow::Result<()> {
    let mut carried: Option<Event> = None;
    loop {
        let first = match carried.take() {
            Some(e) => e,
            None => {
                // While no event comes, answers are taken as they arrive,
                // so a quiet source's last events are acknowledged.
                let next = loop {
                    if writer.idle() {
                        break rx.recv().await;
                    }
                    tokio::select! {
                        e = rx.recv() => break e,
                        () = writer.answered() => writer.settle_front().await?,
                    }
                };
                match next {
                    Some(e) => e,
                    None => return writer.flush().await,
                }
            }
        };
        let mut bytes = first.data.len() as u64;
        let mut batch: Vec<Event> = Vec::with_capacity(args.batch_size);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + args.flush_interval;
        while batch.len() < args.batch_size {
            let next = match rx.try_recv() {
                Some(e) => Some(e),
                // Past the deadline, the batch goes as it is.
                None => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            let Some(e) = next else { break };
            let len = e.data.len() as u64;
            if bytes + len > args.batch_bytes.0 {
                carried = Some(e);
                break;
            }
            bytes += len;
            batch.push(e);
        }
        writer.write(batch).await?;
    }
}

/// The first SIGINT or SIGTERM stops reading (what was read is still
/// written); a second one exits at once.
async fn stop_on_signals(stop: tokio::sync::watch::Sender<bool>) {
    crate::cancel::signalled().await;
    tracing::info!("stopping: writing the events already read (signal again to exit at once)");
    let _ = stop.send(true);
    crate::cancel::signalled().await;
    eprintln!("error: stopped by a second signal; events in flight were not written");
    std::process::exit(130);
}

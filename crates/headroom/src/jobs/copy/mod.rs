//! `headroom copy`: list -> select -> admit -> transfer.
//!
//! ```text
//!  source listing ──(byte-bounded channel)──> dispatcher ──spawn──> transfer tasks
//!   pauses when full        acquires a concurrency slot, then the
//!                           object's footprint from the governor
//! ```
//!
//! * The listing streams into a channel bounded in bytes and items; when the
//!   dispatcher stops taking entries (transfers saturated), the listing
//!   pauses. A listing of ten million objects holds one page at a time.
//! * The dispatcher admits each object *before* its task exists: it takes a
//!   concurrency slot (the adaptive limit), then the object's footprint in
//!   bytes from the governor, then spawns the task with both. It is the only
//!   place that waits for either, so there is no hold-and-wait between
//!   tasks. Tasks are detached: nothing about an object outlives it.
//! * Each task decides whether the destination is already up to date (size
//!   and modification time, or `--checksum`), then transfers.
//! * Local to local, small files go in batches: one blocking call copies
//!   up to 32 of them (`KERNEL_BATCH_FILES`) in turn with one slot and one
//!   permit (a kernel copy needs no buffer), taking only what the listing
//!   has ready. The hand-offs between threads, not the copies, were most
//!   of a small file's cost besides the kernel's own work.
//! * The end of the job is known by taking back every concurrency slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use headroom_governor::{ByteSize, Governor, MemoryProbe, channel};
use tokio::sync::{Semaphore, watch};

use crate::jobs::filter::Filter;
use crate::store::bucket::S3Config;
use crate::store::gdrive::DriveConfig;
use crate::store::retry::{Retry, with_retries};
use crate::store::{Entry, KeyRange, Listed, Location, Store, StoreError};
use crate::telemetry::Outcome;
use crate::transfer::{self, Kind, TransferConfig};

pub mod report;

pub use report::{CopyCounters, CopySummary};

/// Default ceiling on transfers in flight when `--concurrency` is not given.
pub const DEFAULT_CONCURRENCY: usize = 128;

/// Entries the listing may run ahead of the transfers.
const LISTING_QUEUE_ITEMS: usize = 4096;

/// Small files one local-to-local kernel copy takes in turn, on one
/// blocking thread with one slot and permit: each hand-off between the
/// dispatcher and the blocking pool costs futex wakes and context
/// switches, which are much of what a small file costs.
const KERNEL_BATCH_FILES: usize = 32;

/// Bytes past which a kernel batch takes no more files: files a batch
/// holds wait for those before them, so batches stay short.
const KERNEL_BATCH_BYTES: u64 = 2 << 20;

/// Attempts after the first for each read, part or upload, unless told
/// otherwise.
pub const DEFAULT_RETRIES: u32 = 5;

/// How a copy runs, besides its source and destination: what `headroom
/// copy`'s flags and a `serve` copy task's spec both turn into.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Report what would be copied; write nothing.
    pub dry_run: bool,
    /// Decide what is up to date by content (MD5) instead of size and
    /// modification time, where both sides can tell.
    pub checksum: bool,
    /// Copy only keys matching one of these globs (none: every key).
    pub include: Vec<String>,
    /// Skip keys matching one of these globs; wins over `include`.
    pub exclude: Vec<String>,
    /// A ceiling on transfers in flight (default [`DEFAULT_CONCURRENCY`]);
    /// the budget and the adaptive controller pick the number below it.
    pub concurrency: Option<usize>,
    /// A fixed multipart part size; `None` picks one per object.
    pub part_size: Option<u64>,
    /// Attempts after the first for each read, part or upload.
    pub retries: u32,
    /// How S3 locations are reached.
    pub s3: S3Config,
    /// How Google Drive is reached, and what its own files become.
    pub gdrive: DriveConfig,
    /// S3 to S3: S3 copies (`CopyObject`, `UploadPartCopy`) instead of
    /// streaming through headroom.
    pub server_side: bool,
    /// Server-side copies above this size are multipart.
    pub copy_cutoff: u64,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            dry_run: false,
            checksum: false,
            include: Vec::new(),
            exclude: Vec::new(),
            concurrency: None,
            server_side: true,
            copy_cutoff: transfer::DEFAULT_COPY_CUTOFF,
            part_size: None,
            retries: DEFAULT_RETRIES,
            s3: S3Config::default(),
            gdrive: DriveConfig::default(),
        }
    }
}

/// Whether `dst` already holds `src`'s content.
pub(crate) async fn up_to_date(
    src_store: &Store,
    dst_store: &Store,
    src: &Entry,
    dst: &Entry,
    checksum: bool,
    buf_len: usize,
) -> Result<bool, StoreError> {
    // An export's size is known only once it is made: its modification
    // time alone says whether the copy is current.
    if !src.size_unknown && src.size != dst.size {
        return Ok(false);
    }
    if checksum {
        let buf = || vec![0u8; buf_len.max(1)];
        let a = src_store.content_md5(src, buf()).await?;
        if let Some(a) = a
            && let Some(b) = dst_store.content_md5(dst, buf()).await?
        {
            return Ok(a == b);
        }
        // Neither side can tell the content's hash: fall back to mtime.
    }
    // The caller retries this whole check: the mtime's own request is not
    // retried again inside it.
    let once = Retry {
        retries: 0,
        ..Retry::default()
    };
    let src_mtime = src_store.source_mtime(src, &once).await?;
    Ok(matches!((src_mtime, dst.mtime), (Some(a), Some(b)) if crate::store::same_mtime(a, b)))
}

/// Raises the number of transfers in flight while throughput rises, and
/// backs off when it falls, between 1 and the ceiling.
#[derive(Debug)]
pub struct AdaptiveLimit {
    slots: Arc<Semaphore>,
    limit: AtomicUsize,
    ceiling: usize,
}

/// One step of the controller: from the current limit, the best throughput
/// seen at it and this window's throughput, the next limit. Only raise
/// when the limit was the binding constraint (slots all in use).
pub fn next_limit(current: usize, ceiling: usize, best: f64, now: f64, saturated: bool) -> usize {
    if now < best * 0.8 {
        (current * 3 / 4).max(1)
    } else if saturated && now >= best * 1.05 {
        (current + current / 2 + 1).min(ceiling)
    } else {
        current
    }
}

impl AdaptiveLimit {
    fn new(initial: usize, ceiling: usize) -> Arc<Self> {
        Arc::new(AdaptiveLimit {
            slots: Arc::new(Semaphore::new(initial)),
            limit: AtomicUsize::new(initial),
            ceiling,
        })
    }

    fn set(&self, new: usize) {
        let old = self.limit.swap(new, Ordering::Relaxed);
        if new > old {
            self.slots.add_permits(new - old);
        } else if new < old {
            // Take the surplus back as transfers finish.
            let slots = self.slots.clone();
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned((old - new) as u32).await {
                    p.forget();
                }
            });
        }
    }

    /// Adjusts the limit every `window` from `counters`' throughput.
    fn drive(
        self: Arc<Self>,
        counters: Arc<CopyCounters>,
        window: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut best = 0.0f64;
            let mut last = (0u64, 0u64);
            let mut tick = tokio::time::interval(window);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Small files count as 64 KiB of work each, so a stream of
                // tiny objects is judged by files per second.
                let (files, bytes) = (
                    counters.objects_processed(),
                    counters.bytes.load(Ordering::Relaxed),
                );
                let work = (bytes - last.1) as f64 + (files - last.0) as f64 * 65536.0;
                last = (files, bytes);
                let current = self.limit.load(Ordering::Relaxed);
                let saturated = counters.in_flight.load(Ordering::Relaxed) as usize >= current;
                let next = next_limit(current, self.ceiling, best, work, saturated);
                if next != current {
                    // Judge the new limit against what the old one achieved.
                    best = work;
                    tracing::debug!(from = current, to = next, "adaptive concurrency");
                    self.set(next);
                }
            }
        })
    }
}

/// What a copy runs with when something else owns the memory plan and the
/// progress reports: `headroom copy` itself, or a `headroom serve` task.
pub struct CopyEnv {
    /// The process's governor (shared by every task of a service).
    pub gov: Governor,
    /// The probe for the summary's peak RSS.
    pub probe: MemoryProbe,
    /// Where progress is counted.
    pub counters: Arc<CopyCounters>,
    /// Becomes `true` to stop: no new object starts, running ones finish.
    pub cancel: watch::Receiver<bool>,
    /// The keys to copy, in key order (a shard of a task, resumed after
    /// its checkpoint); `None`: every key, in the listing's own order.
    pub range: Option<KeyRange>,
    /// Tracks the completed prefix of the listing, for checkpoints.
    pub watermark: Option<Arc<Watermark>>,
}

impl CopyEnv {
    /// The environment of a copy in the foreground of the process: every
    /// key, in the listing's own order, no checkpoints.
    pub(crate) fn of(job: &super::Foreground<CopyCounters>) -> Self {
        CopyEnv {
            gov: job.plan.governor.clone(),
            probe: job.plan.probe.clone(),
            counters: job.counters.clone(),
            cancel: job.cancel.clone(),
            range: None,
            watermark: None,
        }
    }
}

/// Runs `headroom copy` in the foreground; returns the summary (failures
/// included), or an error when the job could not run at all.
pub async fn run(
    src: &Location,
    dst: &Location,
    options: &CopyOptions,
    foreground: &super::ForegroundOptions,
) -> anyhow::Result<CopySummary> {
    let job = super::Foreground::<CopyCounters>::start(foreground);
    let summary = execute(src, dst, options, CopyEnv::of(&job)).await;
    let interrupted = job.stop();
    summary.map(|mut s| {
        s.outcome.interrupted = interrupted;
        s
    })
}

/// Runs one copy from `src` to `dst` in `env`.
pub async fn execute(
    src: &Location,
    dst: &Location,
    args: &CopyOptions,
    env: CopyEnv,
) -> anyhow::Result<CopySummary> {
    let CopyEnv {
        gov,
        probe,
        counters,
        mut cancel,
        range,
        watermark,
    } = env;
    let ceiling = args.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1);
    let filter = check_options(src, dst, args)?;
    let s3 = args.s3.for_concurrency(ceiling);
    let src = Store::open_source(src, &s3, &args.gdrive).await?;
    let dst = Store::open_destination(dst, &s3).await?;
    let cfg = TransferConfig {
        part_size: args.part_size,
        server_side: args.server_side,
        copy_cutoff: args.copy_cutoff,
        retry: Retry {
            retries: args.retries,
            ..Retry::default()
        },
        ..TransferConfig::default()
    };
    let started = Instant::now();

    // The listing queue is paid for up front, out of the working budget,
    // and only if what is left can still carry the largest buffer one
    // object needs: otherwise the copy could never make progress.
    let read_overhead = src.read_overhead();
    let queue_bytes = super::listing_queue_bytes(gov.budget());
    let least = transfer::least_footprint(&dst, read_overhead, &cfg);
    let _queue = gov
        .reserve_fixed(queue_bytes, "copy.listing", least)
        .map_err(|e| super::budget_too_small("copy", &e))?;
    let working = gov.working_budget();
    let (tx, mut rx) = channel::bounded::<Listed>(queue_bytes, LISTING_QUEUE_ITEMS);
    let lister = {
        let (src, retry) = (src.clone(), cfg.retry);
        tokio::spawn(async move { src.list(tx, &retry, range.as_ref()).await })
    };

    let limit = AdaptiveLimit::new(ceiling.min(16), ceiling);
    let controller = limit
        .clone()
        .drive(counters.clone(), Duration::from_secs(1));
    let ctx = Arc::new(TaskContext {
        src,
        dst,
        gov: gov.clone(),
        cfg,
        counters: counters.clone(),
        checksum: args.checksum,
        dry_run: args.dry_run,
        cancel: cancel.clone(),
    });
    let mut stop = cancel.clone();
    // An object taken from the listing to fill a batch that did not fit in
    // it: the next one admitted.
    let mut held: Option<Admitted> = None;
    loop {
        let first = match held.take() {
            Some(a) => a,
            None => {
                let listed = tokio::select! {
                    biased;
                    _ = crate::cancel::until_set(&mut cancel) => break,
                    l = rx.recv() => match l {
                        Some(l) => l,
                        None => break,
                    },
                };
                match ctx.admit(listed, &filter, read_overhead, working, &watermark) {
                    Some(a) => a,
                    None => continue,
                }
            }
        };
        let (kind, footprint) = (first.kind, first.footprint);
        let mut batch = vec![first];
        if ctx.batches(&batch[0]) {
            // Small files queued behind it go with it, as far as the
            // listing has them ready: one hand-off for all of them.
            let mut bytes = batch[0].entry.size;
            while batch.len() < KERNEL_BATCH_FILES && bytes < KERNEL_BATCH_BYTES {
                let Some(listed) = rx.try_recv() else { break };
                let Some(a) = ctx.admit(listed, &filter, read_overhead, working, &watermark) else {
                    continue;
                };
                if ctx.batches(&a) && a.footprint == footprint {
                    bytes += a.entry.size;
                    batch.push(a);
                } else {
                    held = Some(a);
                    break;
                }
            }
        }
        let admitted = async {
            let slot = limit.slots.clone().acquire_owned().await;
            let permit = gov.acquire(footprint, "copy.object").await;
            (slot, permit)
        };
        let (slot, permit) = tokio::select! {
            biased;
            _ = crate::cancel::until_set(&mut stop) => break,
            a = admitted => a,
        };
        let slot = slot.expect("never closed");
        if ctx.in_kernel_alone(kind) {
            ctx.spawn_in_kernel(batch, permit, slot, watermark.clone());
        } else {
            // Only kernel copies are batched: this is the one object.
            let one = batch.pop().expect("a batch holds its first object");
            ctx.spawn_copy(one, permit, slot, watermark.clone());
        }
    }
    drop(rx);
    let cancelled = *cancel.borrow();
    counters.listing_done.store(!cancelled, Ordering::Relaxed);
    let listed = lister.await.context("listing task")?;
    // Every transfer holds a slot: taking all of them back means all ended.
    controller.abort();
    let all = limit.limit.load(Ordering::Relaxed).max(1) as u32;
    let _ = limit.slots.acquire_many(all).await;
    if let Some(remark) = ctx.src.remark() {
        tracing::info!("{remark}");
    }
    let outcome = Outcome::collect(&counters.failures, &gov, &probe, started.elapsed());
    let summary = CopySummary::collect(&counters, args.dry_run, outcome);
    if let Err(e) = listed {
        bail!("cannot list the source: {e}");
    }
    Ok(summary)
}

/// Bytes of listing a [`split_point`] looks ahead through at a time.
const SPLIT_QUEUE_BYTES: u64 = 64 << 10;

/// Where to cut `src`'s keys after `after` so that the first part holds
/// `objects` keys or `bytes` bytes, whichever comes first: the last key of
/// that part, or `None` when no more than that remains (or the source has
/// no key order to cut by). Lists keys only, through a queue of
/// `SPLIT_QUEUE_BYTES` paid for from `gov`; errors on the way are the
/// copy's to report, not this look-ahead's.
pub async fn split_point(
    src: &Location,
    args: &CopyOptions,
    gov: &Governor,
    after: Option<&str>,
    objects: u64,
    bytes: u64,
) -> anyhow::Result<Option<String>> {
    if !src.lists_in_key_order() {
        return Ok(None);
    }
    let store = Store::open_source(src, &args.s3, &args.gdrive).await?;
    let _queue = gov.acquire(SPLIT_QUEUE_BYTES, "copy.split").await;
    let (tx, mut rx) = channel::bounded::<Listed>(SPLIT_QUEUE_BYTES, 1024);
    let range = KeyRange {
        after: after.map(str::to_string),
        through: None,
    };
    let retry = Retry {
        retries: args.retries,
        ..Retry::default()
    };
    let lister = tokio::spawn(async move { store.list(tx, &retry, Some(&range)).await });
    let (mut n, mut b) = (0u64, 0u64);
    let mut cut = None;
    while let Some(listed) = rx.recv().await {
        let Ok(e) = listed else { continue };
        n += 1;
        b = b.saturating_add(e.size);
        if n >= objects.max(1) || b >= bytes {
            cut = Some(e.key);
            break;
        }
    }
    // Whether anything is left after the cut.
    let more = match cut {
        Some(_) => loop {
            match rx.recv().await {
                Some(Ok(_)) => break true,
                Some(Err(_)) => continue,
                None => break false,
            }
        },
        None => false,
    };
    drop(rx);
    lister.await.context("listing task")??;
    Ok(cut.filter(|_| more))
}

/// Checks what a copy is asked before anything starts; the filter of its
/// keys.
fn check_options(src: &Location, dst: &Location, args: &CopyOptions) -> anyhow::Result<Filter> {
    let filter = Filter::new(&args.include, &args.exclude)?;
    if let Some(p) = args.part_size
        && !(transfer::MIN_PART..=transfer::MAX_PART).contains(&p)
    {
        bail!(
            "--part-size {} is outside S3's limits of 5 MiB to 5 GiB",
            ByteSize(p)
        );
    }
    if let Some(why) = crate::store::location::overlap(src, dst) {
        bail!("refusing to copy {src} to {dst}: {why}");
    }
    Ok(filter)
}

/// The completed prefix of a listing: the last key before which every
/// admitted object finished (copied or up to date), and what those
/// objects were. A resumed listing starts after the key, and its counts
/// start from the prefix's, so a task's totals stay exact across attempts
/// (an object a dead attempt copied beyond its prefix is found up to date
/// by the next one, and counted once). Objects still in flight and
/// finished ones behind a slow or failed one are held, at most
/// [`WATERMARK_WINDOW`]; past that the watermark stops moving for the rest
/// of the run (a resume then re-checks more objects, it never skips one
/// that is not done).
#[derive(Debug, Default)]
pub struct Watermark {
    state: std::sync::Mutex<WatermarkState>,
}

/// How an admitted object ended, for the watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Copied (in a dry run: would be), with its bytes.
    Copied(u64),
    /// Found up to date.
    UpToDate,
    /// Not done (failed or stopped): the watermark stays before it.
    NotDone,
}

/// What the completed prefix of a listing holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCounts {
    /// Objects in it.
    pub listed: u64,
    /// Of those, copied, and their bytes.
    pub copied: u64,
    pub bytes: u64,
    /// Of those, found up to date.
    pub skipped: u64,
}

#[derive(Debug, Default)]
struct WatermarkState {
    /// Sequence number of `pending[0]`.
    front: u64,
    /// Admitted keys in listing order, with how each ended (`None`: not
    /// yet, or not done).
    pending: std::collections::VecDeque<(String, Option<Ended>)>,
    /// The watermark.
    done_key: Option<String>,
    /// What this run's objects up to it were.
    prefix: PrefixCounts,
    /// The window filled: nothing more is tracked this run.
    overflow: bool,
}

/// Keys a [`Watermark`] holds at most.
pub const WATERMARK_WINDOW: usize = 10_000;

impl Watermark {
    /// Starts at `key` (a previous checkpoint) or at the beginning.
    pub fn new(key: Option<String>) -> Self {
        Watermark {
            state: std::sync::Mutex::new(WatermarkState {
                done_key: key,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatermarkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an admitted object; its sequence number, or `None` once the
    /// window has overflowed.
    pub fn admit(&self, key: &str) -> Option<u64> {
        let mut s = self.lock();
        if s.overflow || s.pending.len() >= WATERMARK_WINDOW {
            s.overflow = true;
            return None;
        }
        s.pending.push_back((key.to_string(), None));
        Some(s.front + s.pending.len() as u64 - 1)
    }

    /// Records the end of object `seq`; one not done holds the watermark
    /// where it is.
    pub fn finish(&self, seq: u64, ended: Ended) {
        if ended == Ended::NotDone {
            return;
        }
        let mut s = self.lock();
        let Some(i) = seq.checked_sub(s.front) else {
            return;
        };
        if let Some(p) = s.pending.get_mut(i as usize) {
            p.1 = Some(ended);
        }
        while s.pending.front().is_some_and(|p| p.1.is_some()) {
            let (key, ended) = s.pending.pop_front().expect("front exists");
            s.front += 1;
            s.done_key = Some(key);
            s.prefix.listed += 1;
            match ended {
                Some(Ended::Copied(bytes)) => {
                    s.prefix.copied += 1;
                    s.prefix.bytes += bytes;
                }
                Some(Ended::UpToDate) => s.prefix.skipped += 1,
                _ => {}
            }
        }
    }

    /// The last key of the completed prefix.
    pub fn key(&self) -> Option<String> {
        self.lock().done_key.clone()
    }

    /// The last key of the completed prefix and what this run's objects
    /// up to it were, read together.
    pub fn checkpoint(&self) -> (Option<String>, PrefixCounts) {
        let s = self.lock();
        (s.done_key.clone(), s.prefix)
    }
}

/// An object admitted for copying: how, with what reservation, and its
/// place in the watermark.
struct Admitted {
    entry: Entry,
    kind: Kind,
    footprint: u64,
    seq: Option<u64>,
}

/// Records in `watermark` (if tracked) how object `seq` ended.
fn record_end(watermark: &Option<Arc<Watermark>>, seq: Option<u64>, ended: Ended) {
    if let (Some(w), Some(seq)) = (watermark, seq) {
        w.finish(seq, ended);
    }
}

struct TaskContext {
    src: Store,
    dst: Store,
    gov: Governor,
    cfg: TransferConfig,
    counters: Arc<CopyCounters>,
    checksum: bool,
    dry_run: bool,
    cancel: watch::Receiver<bool>,
}

impl TaskContext {
    /// The listed object if it is one to copy: a listing error is counted
    /// as a failure, a symlink or special file as passed over, and a key
    /// the filter does not select is left alone.
    fn selected(&self, listed: Listed, filter: &Filter) -> Option<Entry> {
        let counters = &self.counters;
        let entry = match listed {
            Ok(e) => e,
            Err(e) if e.passed_over => {
                counters.not_regular.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "passing over {}: {}",
                    crate::telemetry::escape(&e.path),
                    e.message
                );
                return None;
            }
            Err(e) => {
                counters.fail(e.path, format!("cannot list: {}", e.message));
                return None;
            }
        };
        if !filter.selects(&entry.key) {
            return None;
        }
        counters.listed.fetch_add(1, Ordering::Relaxed);
        counters
            .listed_bytes
            .fetch_add(entry.size, Ordering::Relaxed);
        Some(entry)
    }

    /// The listed object as admitted for copying (selected, planned and
    /// given its place in the watermark), or `None`: not selected, or
    /// failed (counted) because even its least footprint exceeds `working`.
    fn admit(
        &self,
        listed: Listed,
        filter: &Filter,
        read_overhead: u64,
        working: u64,
        watermark: &Option<Arc<Watermark>>,
    ) -> Option<Admitted> {
        let entry = self.selected(listed, filter)?;
        let planned = self.plan(&entry, read_overhead, working);
        // A failed object is admitted and never finished: it holds the
        // watermark, so a resumed run tries it again.
        let seq = watermark.as_ref().and_then(|w| w.admit(&entry.key));
        let (kind, footprint) = planned?;
        Some(Admitted {
            entry,
            kind,
            footprint,
            seq,
        })
    }

    /// Whether `a` is copied by the kernel from start to end in one
    /// blocking call, and small enough to share that call with others.
    fn batches(&self, a: &Admitted) -> bool {
        self.in_kernel_alone(a.kind) && a.entry.size < KERNEL_BATCH_BYTES
    }

    /// Whether an object of `kind` is one blocking call from start to end
    /// (local to local: destination looked at, copied, renamed into
    /// place), run on the blocking pool without a task of its own.
    fn in_kernel_alone(&self, kind: Kind) -> bool {
        matches!(kind, Kind::Kernel) && !self.checksum && !self.dry_run
    }

    /// How `entry` is moved and what must be reserved for it, within the
    /// `working` budget; `None` (the object failed, with the numbers) when
    /// even its least footprint is larger.
    fn plan(&self, entry: &Entry, read_overhead: u64, working: u64) -> Option<(Kind, u64)> {
        let kind = transfer::kind_for(
            &self.src,
            &self.dst,
            read_overhead,
            entry,
            working,
            &self.cfg,
        );
        let footprint = transfer::footprint(kind, entry.size, read_overhead);
        if footprint > working {
            // Only a part size forced by S3's 10,000-part limit gets here.
            self.counters.fail(
                self.src.display_key(&entry.key),
                format!(
                    "an object of {} needs {} for one part in flight, more than the {} the memory budget allows",
                    ByteSize(entry.size),
                    ByteSize(footprint),
                    ByteSize(working)
                ),
            );
            return None;
        }
        Some((kind, footprint))
    }

    /// Copies `batch` (small kernel copies, or one of any size) in turn on
    /// the blocking pool, without a task of its own to wait for it: a
    /// hand-off less per batch, which is what small files cost. `permit`
    /// and concurrency `slot` are released when the last one ends.
    fn spawn_in_kernel(
        self: &Arc<Self>,
        batch: Vec<Admitted>,
        permit: headroom_governor::Permit,
        slot: tokio::sync::OwnedSemaphorePermit,
        watermark: Option<Arc<Watermark>>,
    ) {
        let ctx = self.clone();
        ctx.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        drop(tokio::task::spawn_blocking(move || {
            for a in batch {
                let ended = ctx.copy_in_kernel(&a.entry);
                record_end(&watermark, a.seq, ended);
            }
            drop(permit);
            ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        }));
    }

    /// Starts the detached task that copies one admitted object with its
    /// `permit` and concurrency `slot`, both released when it ends.
    fn spawn_copy(
        self: &Arc<Self>,
        a: Admitted,
        permit: headroom_governor::Permit,
        slot: tokio::sync::OwnedSemaphorePermit,
        watermark: Option<Arc<Watermark>>,
    ) {
        let ctx = self.clone();
        ctx.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        drop(tokio::spawn(async move {
            let ended = ctx.copy_one(a.entry, a.kind, permit).await;
            record_end(&watermark, a.seq, ended);
            ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        }));
    }

    /// Copies one object by [`Store::copy_in_kernel_now`], on this
    /// (blocking) thread; how it ended.
    fn copy_in_kernel(&self, entry: &Entry) -> Ended {
        let what = || {
            format!(
                "{} -> {}",
                self.src.display_key(&entry.key),
                self.dst.display_key(&entry.key)
            )
        };
        if *self.cancel.borrow() {
            return self.not_copied(what(), transfer::interrupted(&self.src, entry));
        }
        match self.src.copy_in_kernel_now(
            entry,
            &self.dst,
            &self.counters.bytes,
            &self.cancel,
            true,
        ) {
            Ok(true) => self.copied(entry.size),
            Ok(false) => self.up_to_date(entry.size),
            Err(e) => self.not_copied(what(), e),
        }
    }

    /// Copies one object; how it ended.
    async fn copy_one(&self, entry: Entry, kind: Kind, permit: headroom_governor::Permit) -> Ended {
        let what = format!(
            "{} -> {}",
            self.src.display_key(&entry.key),
            self.dst.display_key(&entry.key)
        );
        let transfers = transfer::Transfers {
            src: &self.src,
            dst: &self.dst,
            gov: &self.gov,
            cfg: &self.cfg,
            bytes_done: &self.counters.bytes,
            cancel: &self.cancel,
        };
        let existing = match with_retries(&self.cfg.retry, || self.dst.stat(&entry.key)).await {
            Ok(e) => e,
            Err(e) => return self.not_copied(what, e),
        };
        if let Some(existing) = existing {
            let buf_len = (permit.bytes().saturating_sub(transfer::OBJECT_OVERHEAD) as usize)
                .clamp(1, 1 << 20);
            let fresh = with_retries(&self.cfg.retry, || {
                up_to_date(
                    &self.src,
                    &self.dst,
                    &entry,
                    &existing,
                    self.checksum,
                    buf_len,
                )
            });
            match fresh.await {
                Ok(true) => return self.up_to_date(entry.size),
                Ok(false) => {}
                Err(e) => return self.not_copied(what, e),
            }
        }
        if self.dry_run {
            println!("would copy {what} ({})", ByteSize(entry.size));
            self.counters.copied.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(entry.size, Ordering::Relaxed);
            return Ended::Copied(entry.size);
        }
        match transfers.copy_object(&entry, kind, permit).await {
            Ok(()) => self.copied(entry.size),
            Err(e) => self.not_copied(what, e),
        }
    }

    fn copied(&self, size: u64) -> Ended {
        self.counters.copied.fetch_add(1, Ordering::Relaxed);
        Ended::Copied(size)
    }

    fn up_to_date(&self, size: u64) -> Ended {
        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
        self.counters
            .skipped_bytes
            .fetch_add(size, Ordering::Relaxed);
        Ended::UpToDate
    }

    fn not_copied(&self, what: String, e: StoreError) -> Ended {
        // Stopped by a cancel or a signal, and cleaned up: not a failure
        // of the object (the job reports the interruption).
        if *self.cancel.borrow() {
            tracing::info!("{what}: {}", e.message);
        } else {
            self.counters.fail(what, e.to_string());
        }
        Ended::NotDone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn the_watermark_moves_over_the_completed_prefix_only() {
        let w = Watermark::new(Some("a".into()));
        let (b, c, d) = (
            w.admit("b").unwrap(),
            w.admit("c").unwrap(),
            w.admit("d").unwrap(),
        );
        w.finish(c, Ended::Copied(10));
        assert_eq!(w.key().as_deref(), Some("a"), "b is still running");
        w.finish(b, Ended::UpToDate);
        assert_eq!(w.key().as_deref(), Some("c"));
        w.finish(d, Ended::NotDone);
        let e = w.admit("e").unwrap();
        w.finish(e, Ended::Copied(5));
        assert_eq!(w.key().as_deref(), Some("c"), "a failed d holds it");
        assert_eq!(
            w.checkpoint().1,
            PrefixCounts {
                listed: 2,
                copied: 1,
                bytes: 10,
                skipped: 1
            },
            "the prefix counts b and c, not e beyond the failed d"
        );
        for i in 0..WATERMARK_WINDOW {
            w.admit(&format!("z{i}"));
        }
        assert_eq!(w.admit("late"), None, "the window is bounded");
    }

    #[test]
    fn mtimes_compare_to_the_coarser_precision() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
        assert!(crate::store::same_mtime(t, t));
        assert!(!crate::store::same_mtime(t, t + Duration::from_millis(5)));
        let whole = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        assert!(
            crate::store::same_mtime(whole, t),
            "a whole-second time matches within the second"
        );
        assert!(!crate::store::same_mtime(
            whole,
            whole + Duration::from_secs(2)
        ));
    }

    #[test]
    fn adaptive_limit_rises_with_throughput_and_backs_off() {
        assert_eq!(
            next_limit(16, 128, 100.0, 120.0, true),
            25,
            "rising and saturated: raise"
        );
        assert_eq!(
            next_limit(16, 128, 100.0, 120.0, false),
            16,
            "not the bottleneck: hold"
        );
        assert_eq!(next_limit(16, 128, 100.0, 101.0, true), 16, "flat: hold");
        assert_eq!(
            next_limit(16, 128, 100.0, 70.0, true),
            12,
            "falling: back off"
        );
        assert_eq!(
            next_limit(100, 128, 100.0, 200.0, true),
            128,
            "never above the ceiling"
        );
        assert_eq!(next_limit(1, 128, 100.0, 10.0, true), 1, "never below one");
    }
}

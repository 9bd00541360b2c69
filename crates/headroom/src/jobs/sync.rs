//! `headroom check SRC DST` and `headroom sync SRC DST`: two listings in
//! key order merged side by side, in constant memory.
//!
//! Neither listing is ever held: each streams through a byte-bounded queue
//! (S3 lists in key order; a local tree is walked with each directory
//! sorted the way S3 orders keys), and the merge holds one entry of each
//! side. So a check or a sync of 500,000 objects holds what one of 5 does,
//! plus, for a sync, one batch of keys to delete.
//!
//! * `check` compares every key present on both sides (size and
//!   modification time, or with `--checksum` MD5 where both sides can tell,
//!   as `copy` decides what is up to date) and prints each difference as
//!   rclone's `check --combined` does: `- KEY` missing from DST, `+ KEY`
//!   only in DST, `* KEY` different, `! KEY` could not be read. It exits 1
//!   on any.
//! * `sync` copies SRC to DST (`copy`), then deletes what DST holds and SRC
//!   does not. It deletes nothing when the copy failed for any object, and
//!   stops deleting at the first sign that the source's listing is not
//!   whole (a directory that could not be read, a listing that ended with
//!   an error): a key missing from a broken listing is not a key to
//!   delete. `--max-delete N` counts first and deletes nothing when more
//!   than N would go; `--dry-run` prints what would.

use std::cmp::Ordering as KeyOrder;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, bail};
use futures::stream::{FuturesOrdered, StreamExt};
use headroom_governor::{Governor, channel};
use serde::Serialize;

use super::copy::{CopyOptions, up_to_date};
use super::filter::Filter;
use crate::store::retry::{Retry, with_retries};
use crate::store::{Deleted, Entry, KeyRange, Listed, Location, Store};
use crate::telemetry::LogFormat;

/// Comparisons in flight at once (each may read both sides' content with
/// `--checksum`); answers are printed in key order.
const COMPARISONS: usize = 16;

/// The buffer one `--checksum` comparison hashes through.
const HASH_BUFFER: u64 = 1 << 20;

/// Entries in a listing queue at most (its bytes are bounded too).
const QUEUE_ITEMS: usize = 4096;

/// One side of the merge: a listing in key order, filtered.
struct Side {
    name: &'static str,
    rx: channel::Receiver<Listed>,
    lister: Option<tokio::task::JoinHandle<Result<(), crate::store::StoreError>>>,
    last: Option<String>,
    /// Entries that could not be listed, reported as they came.
    errors: u64,
}

impl Side {
    /// Starts listing `store` in key order, through a queue of
    /// `queue_bytes`.
    fn start(name: &'static str, store: Store, queue_bytes: u64, retry: Retry) -> Side {
        let (tx, rx) = channel::bounded::<Listed>(queue_bytes, QUEUE_ITEMS);
        let lister = {
            let store = store.clone();
            tokio::spawn(async move { store.list(tx, &retry, Some(&KeyRange::default())).await })
        };
        Side {
            name,
            rx,
            lister: Some(lister),
            last: None,
            errors: 0,
        }
    }

    /// The next entry the filter selects; `None` at the end, which is an
    /// error when the listing ended by failing. An entry that could not be
    /// listed is printed (`!`) and counted.
    async fn next(&mut self, filter: &Filter) -> anyhow::Result<Option<Entry>> {
        loop {
            let Some(listed) = self.rx.recv().await else {
                if let Some(lister) = self.lister.take() {
                    lister
                        .await
                        .context("listing task")?
                        .with_context(|| format!("cannot list {} to its end", self.name))?;
                }
                return Ok(None);
            };
            let entry = match listed {
                Ok(e) => e,
                Err(e) if e.passed_over => continue,
                Err(e) => {
                    self.errors += 1;
                    println!("! {} ({}: {})", e.path, self.name, e.message);
                    continue;
                }
            };
            if !filter.selects(&entry.key) {
                continue;
            }
            if let Some(last) = &self.last
                && *last >= entry.key
            {
                bail!(
                    "the listing of {} is not in key order ({:?} came after {:?}): cannot compare it",
                    self.name,
                    entry.key,
                    last
                );
            }
            self.last = Some(entry.key.clone());
            return Ok(Some(entry));
        }
    }
}

/// A key of the merged listings.
enum Pair {
    /// In SRC only.
    Missing(Entry),
    /// In DST only.
    Extra(Entry),
    /// On both sides.
    Both(Entry, Entry),
}

/// The two listings merged by key.
struct Merge {
    src: Side,
    dst: Side,
    a: Option<Entry>,
    b: Option<Entry>,
    filter: Filter,
}

impl Merge {
    async fn start(src: Side, dst: Side, filter: Filter) -> anyhow::Result<Merge> {
        let mut m = Merge {
            src,
            dst,
            a: None,
            b: None,
            filter,
        };
        m.a = m.src.next(&m.filter).await?;
        m.b = m.dst.next(&m.filter).await?;
        Ok(m)
    }

    async fn next(&mut self) -> anyhow::Result<Option<Pair>> {
        let order = match (&self.a, &self.b) {
            (None, None) => return Ok(None),
            (Some(_), None) => KeyOrder::Less,
            (None, Some(_)) => KeyOrder::Greater,
            (Some(a), Some(b)) => a.key.as_bytes().cmp(b.key.as_bytes()),
        };
        Ok(Some(match order {
            KeyOrder::Less => {
                let a = self.a.take().expect("compared");
                self.a = self.src.next(&self.filter).await?;
                Pair::Missing(a)
            }
            KeyOrder::Greater => {
                let b = self.b.take().expect("compared");
                self.b = self.dst.next(&self.filter).await?;
                Pair::Extra(b)
            }
            KeyOrder::Equal => {
                let (a, b) = (self.a.take(), self.b.take());
                self.a = self.src.next(&self.filter).await?;
                self.b = self.dst.next(&self.filter).await?;
                Pair::Both(a.expect("compared"), b.expect("compared"))
            }
        }))
    }
}

/// What a check found.
#[derive(Debug, Default, Serialize)]
pub struct CheckSummary {
    pub job: &'static str,
    /// Keys on both sides with the same content.
    pub same: u64,
    /// Keys on both sides that differ.
    pub differ: u64,
    /// Keys in SRC missing from DST.
    pub missing: u64,
    /// Keys in DST that SRC does not have.
    pub extra: u64,
    /// Entries that could not be listed or compared.
    pub errors: u64,
    pub elapsed_s: f64,
    pub peak_rss_mb: f64,
}

/// The counts of a check as it runs (read live by the task service).
#[derive(Debug, Default)]
pub struct CheckCounters {
    pub same: AtomicU64,
    pub differ: AtomicU64,
    pub missing: AtomicU64,
    pub extra: AtomicU64,
    pub errors: AtomicU64,
    /// Bytes of the source's entries compared with the destination's.
    pub bytes_compared: AtomicU64,
}

impl CheckCounters {
    /// The counts so far, as a summary (without time and memory).
    pub fn summary(&self) -> CheckSummary {
        let n = |a: &AtomicU64| a.load(Relaxed);
        CheckSummary {
            job: "check",
            same: n(&self.same),
            differ: n(&self.differ),
            missing: n(&self.missing),
            extra: n(&self.extra),
            errors: n(&self.errors),
            ..CheckSummary::default()
        }
    }
}

impl CheckSummary {
    /// Keys that differ, are missing or extra, or could not be compared.
    pub fn differences(&self) -> u64 {
        self.differ + self.missing + self.extra + self.errors
    }

    /// Whether SRC and DST hold the same keys with the same content.
    pub fn matches(&self) -> bool {
        self.differences() == 0
    }

    /// Prints the summary as text or as one JSON object.
    pub fn print(&self, format: LogFormat) {
        match format {
            LogFormat::Json => {
                let mut v = serde_json::to_value(self).unwrap_or_default();
                v["type"] = "summary".into();
                println!("{v}");
            }
            LogFormat::Text => eprintln!(
                "check: {} same, {} different, {} missing from the destination, {} only in the destination, {} errors in {:.1} s (peak RSS {:.1} MiB)",
                self.same,
                self.differ,
                self.missing,
                self.extra,
                self.errors,
                self.elapsed_s,
                self.peak_rss_mb
            ),
        }
    }
}

/// Opens `loc` for listing in key order: a directory or prefix of a store
/// that lists in key order.
async fn open_listed(loc: &Location, args: &CopyOptions) -> anyhow::Result<Store> {
    if !loc.lists_in_key_order() {
        bail!(
            "{loc}: check and sync merge listings in key order, which Google Drive does not give: copy from it instead"
        );
    }
    let store = Store::open_source(loc, &args.s3, &args.gdrive)
        .await
        .with_context(|| format!("cannot open {loc}"))?;
    if store.is_single() {
        bail!(
            "{loc} is a single file or object: check and sync compare a directory or prefix (give its directory and --include NAME)"
        );
    }
    Ok(store)
}

/// The two listing queues, paid for up front from `gov`.
fn reserve_queues(gov: &Governor) -> anyhow::Result<(u64, headroom_governor::FixedReservation)> {
    let queue_bytes = super::listing_queue_bytes(gov.budget());
    let permit = gov
        .reserve_fixed(
            2 * queue_bytes,
            "sync.listings",
            HASH_BUFFER + crate::transfer::OBJECT_OVERHEAD,
        )
        .map_err(|e| super::budget_too_small("comparison", &e))?;
    Ok((queue_bytes, permit))
}

/// Runs `headroom check`: prints every difference, returns the counts.
pub async fn check(
    src: &Location,
    dst: &Location,
    args: &CopyOptions,
    foreground: &super::ForegroundOptions,
) -> anyhow::Result<CheckSummary> {
    let memory = crate::memory::MemoryPlan::start(foreground.memory);
    let started = std::time::Instant::now();
    let counters = CheckCounters::default();
    compare(src, dst, args, &memory.governor, &counters, &mut |line| {
        println!("{line}")
    })
    .await?;
    let mut summary = counters.summary();
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.peak_rss_mb = crate::telemetry::mb(memory.probe.sample().peak_rss.unwrap_or(0));
    Ok(summary)
}

/// The comparison of `check` under `gov`: counts into `counters` as it
/// goes, and hands each difference to `difference` as its line
/// (`- KEY`, `+ KEY`, `* KEY`, `! KEY (why)`), in key order.
pub async fn compare(
    src: &Location,
    dst: &Location,
    args: &CopyOptions,
    gov: &Governor,
    counters: &CheckCounters,
    difference: &mut (dyn FnMut(String) + Send),
) -> anyhow::Result<()> {
    let gov = gov.clone();
    let filter = Filter::new(&args.include, &args.exclude)?;
    let (queue_bytes, _queues) = reserve_queues(&gov)?;
    let retry = Retry {
        retries: args.retries,
        ..Retry::default()
    };
    let (src_store, dst_store) = (open_listed(src, args).await?, open_listed(dst, args).await?);
    let mut merge = Merge::start(
        Side::start("the source", src_store.clone(), queue_bytes, retry),
        Side::start("the destination", dst_store.clone(), queue_bytes, retry),
        filter,
    )
    .await?;
    let checksum = args.checksum;
    let (src_store, dst_store) = (Arc::new(src_store), Arc::new(dst_store));
    let mut pending = FuturesOrdered::new();
    loop {
        let pair = merge.next().await?;
        let Some(pair) = pair else { break };
        let (s, d, g) = (src_store.clone(), dst_store.clone(), gov.clone());
        let bytes = &counters.bytes_compared;
        pending.push_back(async move {
            match pair {
                Pair::Missing(a) => (a.key, '-', None),
                Pair::Extra(b) => (b.key, '+', None),
                Pair::Both(a, b) => {
                    bytes.fetch_add(a.size, Relaxed);
                    // A comparison by content holds one buffer at a time.
                    let _permit = match checksum {
                        true => Some(
                            g.acquire(HASH_BUFFER + crate::transfer::OBJECT_OVERHEAD, "check.hash")
                                .await,
                        ),
                        false => None,
                    };
                    // As a copy does: the destination's own record of the
                    // source's mtime (S3 keeps it in metadata, which a
                    // listing does not show; a local listing has it).
                    let mut b = b;
                    match d.source_mtime(&b, &retry).await {
                        Ok(mtime) => b.mtime = mtime,
                        Err(e) => return (a.key, '!', Some(e.to_string())),
                    }
                    let same = with_retries(&retry, || {
                        up_to_date(&s, &d, &a, &b, checksum, HASH_BUFFER as usize)
                    })
                    .await;
                    match same {
                        Ok(true) => (a.key, '=', None),
                        Ok(false) => (a.key, '*', None),
                        Err(e) => (a.key, '!', Some(e.to_string())),
                    }
                }
            }
        });
        while pending.len() >= COMPARISONS {
            let answer = pending.next().await.expect("pending");
            report(answer, counters, difference);
        }
    }
    while let Some(answer) = pending.next().await {
        report(answer, counters, difference);
    }
    counters
        .errors
        .fetch_add(merge.src.errors + merge.dst.errors, Relaxed);
    Ok(())
}

/// Counts one comparison and hands on its line if it is a difference.
fn report(
    (key, sign, error): (String, char, Option<String>),
    counters: &CheckCounters,
    difference: &mut (dyn FnMut(String) + Send),
) {
    let key = crate::telemetry::escape(&key);
    let count = match sign {
        '=' => &counters.same,
        '*' => &counters.differ,
        '-' => &counters.missing,
        '+' => &counters.extra,
        _ => &counters.errors,
    };
    count.fetch_add(1, Relaxed);
    match (sign, error) {
        ('=', _) => {}
        (_, Some(e)) => difference(format!("{sign} {key} ({e})")),
        _ => difference(format!("{sign} {key}")),
    }
}

/// What a sync's deletion pass did.
#[derive(Debug, Default, Serialize)]
pub struct Deletions {
    /// Keys DST held that SRC does not.
    pub extra: u64,
    /// Of them, deleted (or, with `--dry-run`, that would be).
    pub deleted: u64,
    /// Deletions that failed.
    pub failed: u64,
    /// Why deleting stopped or never started, if it did.
    pub refused: Option<String>,
}

/// The deletion pass of `headroom sync`, after its copy: see the
/// [module docs](self). `copy_failed` says whether any object of the copy
/// failed (then nothing is deleted).
pub async fn delete_extras(
    src: &Location,
    dst: &Location,
    args: &CopyOptions,
    gov: &Governor,
    max_delete: Option<u64>,
    copy_failed: bool,
    would_delete: &mut (dyn FnMut(String) + Send),
) -> anyhow::Result<Deletions> {
    let mut out = Deletions::default();
    if copy_failed {
        out.refused = Some(
            "the copy failed for some objects: nothing is deleted until a sync copies everything"
                .into(),
        );
        return Ok(out);
    }
    let filter = Filter::new(&args.include, &args.exclude)?;
    let (queue_bytes, _queues) = reserve_queues(gov)?;
    let retry = Retry {
        retries: args.retries,
        ..Retry::default()
    };
    let src_store = open_listed(src, args).await?;
    let dst_store = open_listed(dst, args).await?;
    if let Some(max) = max_delete {
        // Count first: more than the limit, and nothing is deleted.
        let mut merge = Merge::start(
            Side::start("the source", src_store.clone(), queue_bytes, retry),
            Side::start("the destination", dst_store.clone(), queue_bytes, retry),
            filter.clone(),
        )
        .await?;
        let mut extra = 0u64;
        while let Some(pair) = merge.next().await? {
            if matches!(pair, Pair::Extra(_)) {
                extra += 1;
            }
        }
        if merge.src.errors > 0 {
            out.refused = Some(format!(
                "{} entries of the source could not be listed: nothing is deleted",
                merge.src.errors
            ));
            return Ok(out);
        }
        if extra > max {
            out.extra = extra;
            out.refused = Some(format!(
                "{extra} objects would be deleted, more than --max-delete {max}: nothing is deleted"
            ));
            return Ok(out);
        }
    }
    let mut merge = Merge::start(
        Side::start("the source", src_store, queue_bytes, retry),
        Side::start("the destination", dst_store.clone(), queue_bytes, retry),
        filter,
    )
    .await?;
    let batch_keys = dst_store.delete_batch_keys();
    let mut batch: Vec<String> = Vec::with_capacity(batch_keys);
    loop {
        let pair = match merge.next().await {
            Ok(p) => p,
            // The source's listing ended by failing: what is left of the
            // destination cannot be told extra.
            Err(e) => {
                out.refused = Some(format!("{e:#}: deleting stopped"));
                break;
            }
        };
        if merge.src.errors > 0 {
            out.refused = Some(format!(
                "{} entries of the source could not be listed: deleting stopped",
                merge.src.errors
            ));
            break;
        }
        let Some(pair) = pair else { break };
        let Pair::Extra(entry) = pair else { continue };
        out.extra += 1;
        if args.dry_run {
            would_delete(format!(
                "would delete {}",
                dst_store.display_key(&entry.key)
            ));
            out.deleted += 1;
            continue;
        }
        batch.push(entry.key);
        if batch.len() >= batch_keys {
            delete_batch(&dst_store, &mut batch, &retry, &mut out).await;
        }
    }
    if !batch.is_empty() {
        delete_batch(&dst_store, &mut batch, &retry, &mut out).await;
    }
    Ok(out)
}

impl Deletions {
    /// Prints what the deletion pass did, as text or one JSON object.
    pub fn print(&self, format: LogFormat, dry_run: bool) {
        match format {
            LogFormat::Json => {
                let mut v = serde_json::to_value(self).unwrap_or_default();
                v["type"] = "deletions".into();
                v["dry_run"] = dry_run.into();
                println!("{v}");
            }
            LogFormat::Text => {
                eprintln!(
                    "sync: {} objects only in the destination, {} {}, {} failed",
                    self.extra,
                    self.deleted,
                    if dry_run {
                        "would be deleted"
                    } else {
                        "deleted"
                    },
                    self.failed
                );
                if let Some(why) = &self.refused {
                    eprintln!("sync: {why}");
                }
            }
        }
    }
}

async fn delete_batch(store: &Store, batch: &mut Vec<String>, retry: &Retry, out: &mut Deletions) {
    match with_retries(retry, || store.delete(batch)).await {
        Ok(results) => {
            for (key, r) in batch.iter().zip(results) {
                match r {
                    Deleted::Deleted | Deleted::Vanished => {
                        out.deleted += 1;
                        tracing::info!("deleted {}", store.display_key(key));
                    }
                    Deleted::Failed(why) => {
                        out.failed += 1;
                        tracing::warn!("cannot delete {}: {why}", store.display_key(key));
                    }
                }
            }
        }
        Err(e) => {
            out.failed += batch.len() as u64;
            tracing::warn!("deleting {} objects failed: {e}", batch.len());
        }
    }
    batch.clear();
}

/// What `headroom sync` did: its copy, then its deletions.
#[derive(Debug)]
pub struct SyncSummary {
    pub copy: super::copy::CopySummary,
    pub deletions: Deletions,
}

/// Runs `headroom sync`: a copy, then the deletion pass, under one
/// memory plan.
pub async fn sync(
    src: &Location,
    dst: &Location,
    args: &CopyOptions,
    max_delete: Option<u64>,
    foreground: &super::ForegroundOptions,
) -> anyhow::Result<SyncSummary> {
    // Refused before anything is copied, not after.
    open_listed(src, args).await?;
    let job = super::Foreground::<super::copy::CopyCounters>::start(foreground);
    let gov = job.plan.governor.clone();
    let copied = super::copy::execute(src, dst, args, super::copy::CopyEnv::of(&job)).await;
    let deletions = match &copied {
        Ok(copy) if !*job.cancel.borrow() => {
            delete_extras(
                src,
                dst,
                args,
                &gov,
                max_delete,
                copy.outcome.failed > 0,
                &mut |line| println!("{line}"),
            )
            .await
        }
        _ => Ok(Deletions {
            refused: Some("the copy did not finish: nothing is deleted".into()),
            ..Deletions::default()
        }),
    };
    let interrupted = job.stop();
    let mut copy = copied?;
    copy.outcome.interrupted = interrupted;
    Ok(SyncSummary {
        copy,
        deletions: deletions?,
    })
}

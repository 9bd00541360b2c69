//! `headroom purge`: delete files older than a cut-off, in memory that
//! depends on the tree's depth and the concurrency, never on the number of
//! files.
//!
//! # Local trees
//!
//! ```text
//!  walkers (few threads)                      workers (--concurrency threads)
//!  readdir one directory at a time  --batch-->  fstatat + unlinkat, relative
//!  subdirectories -> bounded queue,   queue     to the directory's open fd
//!  or, when it is full, walked inline (bounded)
//!  (depth first on the walker's own stack)
//! ```
//!
//! * The frontier is bounded: a walker that finds a subdirectory offers it
//!   to a queue of [`DIR_QUEUE`] entries; when the queue is full it descends
//!   itself, depth first. Memory is the queue plus, per walker, one open
//!   directory per level of depth.
//! * File names go to workers in batches of at most [`BATCH_NAMES`] names
//!   and [`BATCH_BYTES`] bytes through a queue of one batch per worker, so
//!   a flat directory of millions of files streams through constant memory
//!   while `--concurrency` metadata calls are in flight: on NFS/EFS, where
//!   each call costs milliseconds, that is what keeps the filesystem busy.
//! * Every call is relative to an open directory fd (`openat` with
//!   `O_NOFOLLOW`, `fstatat` with `AT_SYMLINK_NOFOLLOW`, `unlinkat`): a
//!   symlink is never followed, even if it replaces a directory mid-walk; a
//!   matching symlink is deleted itself. Directories on another filesystem
//!   are not entered unless `--cross-filesystems`.
//! * `--remove-empty-dirs`: a directory's state is reference counted by its
//!   pending batches and subdirectories; when the last one is done it tries
//!   `rmdir`, which fails harmlessly if anything is left in it.
//!
//! # S3 prefixes
//!
//! The listing streams through a byte-bounded channel (its LastModified is
//! the age); matching keys are deleted with DeleteObjects in batches of up
//! to 1,000, a few batches in flight, each key's error reported.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::stream::{FuturesUnordered, StreamExt};
use headroom_governor::{Governor, MemoryProbe, channel};
use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use tokio::sync::watch;

use crate::jobs::filter::Filter;
use crate::store::bucket::S3Config;
use crate::store::retry::Retry;
use crate::store::{Deleted, Listed, Location, Store};
use crate::telemetry::Outcome;

pub mod report;

pub use report::{PurgeCounters, PurgeSummary};

/// How a purge runs, besides its target and age: what `headroom purge`'s
/// flags and a `serve` purge task's spec both turn into.
#[derive(Clone, Debug, Default)]
pub struct PurgeOptions {
    /// Delete nothing; report what would go and how long it would take.
    pub dry_run: bool,
    /// Consider only paths matching one of these globs (none: every path).
    pub include: Vec<String>,
    /// Never delete paths matching one of these globs; wins over `include`.
    pub exclude: Vec<String>,
    /// Remove directories the purge left empty (never the target).
    pub remove_empty_dirs: bool,
    /// Metadata calls in flight at most (default [`DEFAULT_CONCURRENCY`]).
    pub concurrency: Option<usize>,
    /// Descend into directories on other filesystems (mount points) too.
    pub cross_filesystems: bool,
    /// Allow purging `/`, a home directory, a system tree or a whole bucket.
    pub force: bool,
    /// How S3 targets are reached.
    pub s3: S3Config,
}

/// Parses an age such as `30d`, `12h`, `90m`, `1w`, `2d12h`: more than
/// zero.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}): use a number and a unit, e.g. 30d, 12h, 90m")
    })?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: it must be more than zero"));
    }
    Ok(d)
}

/// Metadata calls in flight by default.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Directories waiting for a walker, at most.
pub const DIR_QUEUE: usize = 256;
/// Names per batch handed to a worker, at most.
pub const BATCH_NAMES: usize = 256;
/// Bytes of names per batch, at most (a name is at most 255 bytes).
pub const BATCH_BYTES: usize = 8 << 10;
/// Heap of one open directory level: the kernel's getdents buffer in
/// rustix's `Dir`, the node and its path.
const DIR_LEVEL_BYTES: u64 = 40 << 10;
/// Levels of depth reserved per walker up front; deeper trees are rare and
/// the reservation is for the governor's picture, not a hard limit.
const RESERVED_DEPTH: u64 = 32;
/// Heap of one key of a delete batch: the key, its copies for the
/// request, its part of the XML body and its result.
const DELETE_KEY_BYTES: u64 = 1100;
/// Stack size of every walker and worker thread.
const THREAD_STACK: usize = 256 << 10;
/// Resident memory charged per thread: the part of its stack a walk or a
/// stat/unlink loop touches (a few pages), its thread-local state and
/// glibc's per-thread structures. Measured at about 9 KiB a thread (a purge
/// of 4,000 files peaked at 12.8 MiB RSS with 32 threads, 21.7 MiB with
/// 1,000); charged with room to spare.
const THREAD_BYTES: u64 = 64 << 10;
/// Threads a local purge may start: `--concurrency` above this is refused
/// (each unit is an OS thread, and thousands of them are a fork bomb
/// rather than a faster purge).
pub const MAX_CONCURRENCY: usize = 1024;

/// Threads and fixed buffers of a local purge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LocalPlan {
    workers: usize,
    walkers: usize,
}

impl LocalPlan {
    /// Batch queues and the workers and walkers that hold them.
    fn batch_bytes(self) -> u64 {
        (self.workers + self.walkers) as u64
            * (BATCH_BYTES as u64
                + (BATCH_NAMES * std::mem::size_of::<CString>()) as u64
                + THREAD_BYTES)
    }

    /// The directory queue and each walker's open directories.
    fn dir_bytes(self) -> u64 {
        DIR_QUEUE as u64 * (std::mem::size_of::<DirJob>() as u64 + 512)
            + self.walkers as u64 * RESERVED_DEPTH * DIR_LEVEL_BYTES
    }

    fn bytes(self) -> u64 {
        self.batch_bytes() + self.dir_bytes()
    }

    /// The threads for `concurrency` workers (the default when `None`)
    /// within `working` bytes: an explicit `--concurrency` is kept (the
    /// walkers may shrink) and refused later if it does not fit; the
    /// default shrinks to what fits, down to one worker and one walker.
    fn choose(concurrency: Option<usize>, working: u64) -> Self {
        let fit = |workers: usize| {
            let mut plan = LocalPlan {
                workers,
                walkers: (workers / 8).clamp(1, 8),
            };
            while plan.walkers > 1 && plan.bytes() > working {
                plan.walkers -= 1;
            }
            plan
        };
        match concurrency {
            Some(n) => fit(n),
            None => {
                let mut workers = DEFAULT_CONCURRENCY;
                while workers > 1 && fit(workers).bytes() > working {
                    workers -= 1;
                }
                fit(workers)
            }
        }
    }
}

/// What a purge runs with when something else owns the memory plan and
/// the progress reports: `headroom purge` itself, or a `headroom serve`
/// task.
pub struct PurgeEnv {
    pub gov: Governor,
    pub probe: MemoryProbe,
    pub counters: Arc<PurgeCounters>,
    /// Becomes `true` to stop: no further directory is read and no further
    /// file deleted.
    pub cancel: watch::Receiver<bool>,
    /// For benchmarks only (`scripts/bench-purge.sh`): a sleep before every
    /// local metadata call, to stand in for a high-latency filesystem.
    /// Never an option of a real purge.
    pub simulated_latency: Option<Duration>,
}

/// Runs `headroom purge` in the foreground: deletes what below `target`
/// was last modified longer than `older_than` ago; returns its summary.
pub async fn run(
    target: &Location,
    older_than: Duration,
    options: &PurgeOptions,
    foreground: &super::ForegroundOptions,
    simulated_latency: Option<Duration>,
) -> anyhow::Result<PurgeSummary> {
    let job = super::Foreground::<PurgeCounters>::start(foreground);
    let summary = execute(
        target,
        older_than,
        options,
        PurgeEnv {
            gov: job.plan.governor.clone(),
            probe: job.plan.probe.clone(),
            counters: job.counters.clone(),
            cancel: job.cancel.clone(),
            simulated_latency,
        },
    )
    .await;
    let interrupted = job.stop();
    summary.map(|mut s| {
        s.outcome.interrupted = interrupted;
        s
    })
}

/// Runs one purge of `target` in `env`.
pub async fn execute(
    target: &Location,
    older_than: Duration,
    args: &PurgeOptions,
    env: PurgeEnv,
) -> anyhow::Result<PurgeSummary> {
    let PurgeEnv {
        gov,
        probe,
        counters,
        cancel,
        simulated_latency,
    } = env;
    let filter = Filter::new(&args.include, &args.exclude)?;
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .filter(|t| *t > UNIX_EPOCH)
        .with_context(|| {
            format!(
                "--older-than {} reaches before 1970",
                humantime::format_duration(older_than)
            )
        })?;
    if args.concurrency == Some(0) {
        bail!("--concurrency must be at least 1");
    }
    if let Some(n) = args.concurrency.filter(|&n| n > MAX_CONCURRENCY) {
        bail!(
            "--concurrency {n} is more than the {MAX_CONCURRENCY} metadata threads a purge runs at most"
        );
    }
    let concurrency = args.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    // Checked before anything starts: a bad target costs nothing. A local
    // tree is purged by its own walker (openat/unlinkat below an open
    // directory, mount and system-tree guards); any other store by its
    // listing and batch deletes.
    let local_root = match target.local_path() {
        Some(path) => Some(check_local_target(path, args.force)?),
        None => {
            if target.whole_bucket().is_some() && !args.force {
                bail!(
                    "refusing to purge the whole bucket {target} without --force: name a prefix ({}/PREFIX)",
                    target.to_string().trim_end_matches('/')
                );
            }
            None
        }
    };

    let started = Instant::now();
    let outcome = match local_root {
        Some(root) => {
            let ctx = Arc::new(Ctx {
                cutoff: unix(cutoff),
                filter,
                dry_run: args.dry_run,
                remove_empty_dirs: args.remove_empty_dirs && !args.dry_run,
                cross_filesystems: args.cross_filesystems,
                latency: simulated_latency,
                root_dev: std::sync::OnceLock::new(),
                counters: counters.clone(),
                stop: cancel.clone(),
            });
            purge_local(ctx, root, args.concurrency, &gov).await
        }
        None => {
            let store = Store::open_prefix(target, &args.s3.for_concurrency(concurrency))?;
            let listed = ListedPurge {
                store,
                cutoff,
                filter,
                dry_run: args.dry_run,
                concurrency,
                counters: counters.clone(),
            };
            listed.run(&gov, &cancel).await
        }
    };
    outcome?;
    let outcome = Outcome::collect(&counters.failures, &gov, &probe, started.elapsed());
    let mut summary = PurgeSummary::collect(&counters, args.dry_run, outcome);
    if args.dry_run {
        summary.estimate = Some(estimate(&counters, started.elapsed(), concurrency));
    }
    Ok(summary)
}

/// How long the real run is likely to take: the scan just measured, plus
/// one more metadata call (the unlink) per matched file at the measured
/// mean latency, `concurrency` at a time.
fn estimate(c: &PurgeCounters, scan: Duration, concurrency: usize) -> Duration {
    let calls = c.metadata_calls.load(Ordering::Relaxed).max(1);
    let mean = c.metadata_nanos.load(Ordering::Relaxed) as f64 / calls as f64;
    let deletes = c.deleted.load(Ordering::Relaxed) as f64;
    scan + Duration::from_nanos((deletes * mean / concurrency as f64) as u64)
}

/// `(seconds, nanoseconds)` since the epoch, comparable with a stat's.
fn unix(t: SystemTime) -> (i64, i64) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i64)
}

/// Resolves the target and refuses what must not be purged.
fn check_local_target(path: &Path, force: bool) -> anyhow::Result<PathBuf> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("target {} does not exist", path.display())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read target {}", path.display()));
        }
    };
    if !meta.is_dir() {
        bail!(
            "target {} is a file, not a directory: purge deletes old files below a directory",
            path.display()
        );
    }
    let canonical = path
        .canonicalize()
        .with_context(|| format!("cannot resolve target {}", path.display()))?;
    if !force && let Some(why) = protected(&canonical) {
        bail!(
            "refusing to purge {} without --force: {why}",
            canonical.display()
        );
    }
    Ok(canonical)
}

/// Trees whose old files are not cache: the system's own, and where users
/// live. Purging below them (`/var/log/app`) is fine; the trees
/// themselves need --force.
const SYSTEM_TREES: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/snap",
    "/srv",
    "/sys",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/spool",
    "/var/mail",
];

/// Why `dir` (canonical) must not be purged without --force, if it must
/// not: a system tree, or any user's home directory (from the password
/// database, so it holds under sudo, cron and systemd, whatever `$HOME`
/// says), or one that holds home directories.
fn protected(dir: &Path) -> Option<String> {
    if SYSTEM_TREES.iter().any(|t| Path::new(t) == dir) {
        return Some(if dir == Path::new("/") {
            "it is the whole filesystem".to_string()
        } else {
            "it is a system directory".to_string()
        });
    }
    // Users' homes from the password database, read a line at a time, and
    // `$HOME` for a user it does not list. Being a home outranks holding
    // one; the first home found below `dir` is kept for the message.
    let mut holds: Option<String> = None;
    let mut check = |user: &str, home: &Path| -> Option<String> {
        let home = home.canonicalize().ok().filter(|h| h != Path::new("/"))?;
        if home == dir {
            return Some(format!("it is the home directory of {user}"));
        }
        if holds.is_none() && home.starts_with(dir) {
            holds = Some(format!(
                "it holds the home directory of {user} ({})",
                home.display()
            ));
        }
        None
    };
    if let Ok(passwd) = std::fs::File::open("/etc/passwd") {
        use std::io::BufRead;
        for line in std::io::BufReader::new(passwd)
            .lines()
            .map_while(Result::ok)
        {
            let mut fields = line.split(':');
            let user = fields.next().unwrap_or_default();
            if let Some(home) = fields.nth(4).filter(|h| h.starts_with('/'))
                && let Some(why) = check(user, Path::new(home))
            {
                return Some(why);
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME")
        && let Some(why) = check("the current user ($HOME)", Path::new(&home))
    {
        return Some(why);
    }
    holds
}

/// What every walker and worker shares.
struct Ctx {
    cutoff: (i64, i64),
    filter: Filter,
    dry_run: bool,
    remove_empty_dirs: bool,
    cross_filesystems: bool,
    /// `--simulate-latency`: a sleep before each metadata call.
    latency: Option<Duration>,
    /// The target's device and mount (`None` where statx cannot tell),
    /// set when it is opened.
    root_dev: std::sync::OnceLock<(u64, Option<u64>)>,
    counters: Arc<PurgeCounters>,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    /// Whether the purge was cancelled.
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stands in for a slow filesystem's round trip, when asked to.
    fn metadata_call(&self) {
        if let Some(d) = self.latency {
            std::thread::sleep(d);
        }
    }

    fn fail(&self, path: String, e: Errno) {
        let why = match e {
            Errno::ACCESS | Errno::PERM => format!("permission denied ({e})"),
            other => other.to_string(),
        };
        self.counters.fail(path, why);
    }
}

/// An open directory being purged. Alive while a walker reads it, a batch
/// of its files is pending or a subdirectory is; dropping the last
/// reference is when it may be removed.
struct DirNode {
    fd: OwnedFd,
    /// Path below the target ("" for the target), for messages and globs.
    rel: String,
    parent: Option<(Arc<DirNode>, CString)>,
    ctx: Arc<Ctx>,
    /// This purge deleted something in it (a file, or a directory it
    /// emptied): only then may it be removed when empty. A directory that
    /// was empty before, or whose files were all kept or excluded, stays.
    emptied: std::sync::atomic::AtomicBool,
}

impl DirNode {
    fn path_of(&self, name: &CStr) -> String {
        let name = String::from_utf8_lossy(name.to_bytes());
        if self.rel.is_empty() {
            name.into_owned()
        } else {
            format!("{}/{name}", self.rel)
        }
    }
}

impl Drop for DirNode {
    fn drop(&mut self) {
        let Some((parent, name)) = &self.parent else {
            return; // the target itself stays
        };
        if !self.ctx.remove_empty_dirs || !self.emptied.load(Ordering::Acquire) {
            return;
        }
        match rustix::fs::unlinkat(&parent.fd, name.as_c_str(), AtFlags::REMOVEDIR) {
            Ok(()) => {
                parent.emptied.store(true, Ordering::Release);
                self.ctx
                    .counters
                    .dirs_removed
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Not empty (kept files), or gone already: nothing to do.
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOENT | Errno::BUSY) => {}
            Err(e) => self.ctx.fail(format!("{}/ (rmdir)", self.rel), e),
        }
    }
}

/// A directory to walk: a name in an open parent (or the target's path).
struct DirJob {
    parent: Option<Arc<DirNode>>,
    name: CString,
    rel: String,
}

/// File names of one directory for a worker.
struct Batch {
    dir: Arc<DirNode>,
    names: Vec<CString>,
    bytes: usize,
}

async fn purge_local(
    ctx: Arc<Ctx>,
    root: PathBuf,
    concurrency: Option<usize>,
    gov: &Governor,
) -> anyhow::Result<()> {
    // The threads, their queues and open directories, paid for up front
    // or refused with the budget they need.
    let plan = LocalPlan::choose(concurrency, gov.working_budget());
    let _batches = gov
        .reserve_fixed(plan.batch_bytes(), "purge.batches", plan.dir_bytes())
        .map_err(|e| super::budget_too_small("purge", &e))?;
    let _dirs = gov
        .reserve_fixed(plan.dir_bytes(), "purge.dirs", 0)
        .map_err(|e| super::budget_too_small("purge", &e))?;
    if concurrency.is_none() && plan.workers < DEFAULT_CONCURRENCY {
        tracing::info!(
            "{} metadata threads fit in the memory budget (default {DEFAULT_CONCURRENCY})",
            plan.workers
        );
    }
    let (workers, walkers) = (plan.workers, plan.walkers);
    raise_fd_limit();

    let name = CString::new(root.as_os_str().as_bytes()).context("target path contains NUL")?;
    let first = DirJob {
        parent: None,
        name,
        rel: String::new(),
    };
    tokio::task::spawn_blocking(move || walk_tree(&ctx, first, walkers, workers))
        .await
        .context("purge threads")
}

/// Walks from `first` with `walkers` readdir threads feeding `workers`
/// stat/unlink threads; returns when every directory and file is done.
fn walk_tree(ctx: &Arc<Ctx>, first: DirJob, walkers: usize, workers: usize) {
    let (dir_tx, dir_rx) = sync_channel::<DirJob>(DIR_QUEUE);
    let (batch_tx, batch_rx) = sync_channel::<Batch>(workers);
    let dir_rx = Mutex::new(dir_rx);
    let batch_rx = Mutex::new(batch_rx);
    // Directories queued or being walked; 0 with an empty queue = done.
    let outstanding = AtomicUsize::new(1);
    dir_tx.send(first).expect("queue has room");
    std::thread::scope(|s| {
        for i in 0..workers {
            let (ctx, rx) = (ctx, &batch_rx);
            std::thread::Builder::new()
                .name(format!("purge-worker-{i}"))
                .stack_size(THREAD_STACK)
                .spawn_scoped(s, move || worker(ctx, rx))
                .expect("spawn purge worker");
        }
        let walker_handles: Vec<_> = (0..walkers)
            .map(|i| {
                let (ctx, rx, tx, batches, outstanding) =
                    (ctx, &dir_rx, dir_tx.clone(), batch_tx.clone(), &outstanding);
                std::thread::Builder::new()
                    .name(format!("purge-walker-{i}"))
                    .stack_size(THREAD_STACK)
                    .spawn_scoped(s, move || walker(ctx, rx, &tx, &batches, outstanding))
                    .expect("spawn purge walker")
            })
            .collect();
        for h in walker_handles {
            let _ = h.join();
        }
        // Walkers are done: closing the batch queue lets workers finish.
        drop(batch_tx);
    });
}

fn walker(
    ctx: &Arc<Ctx>,
    rx: &Mutex<Receiver<DirJob>>,
    tx: &SyncSender<DirJob>,
    batches: &SyncSender<Batch>,
    outstanding: &AtomicUsize,
) {
    loop {
        let job = rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(Duration::from_millis(10));
        match job {
            Ok(job) => {
                if !ctx.stopped() {
                    walk(ctx, job, tx, batches, outstanding);
                }
                outstanding.fetch_sub(1, Ordering::AcqRel);
            }
            Err(RecvTimeoutError::Timeout) if outstanding.load(Ordering::Acquire) == 0 => return,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Opens a directory without following a symlink, on the target's
/// filesystem unless crossing is allowed.
fn open_dir(ctx: &Arc<Ctx>, job: DirJob) -> Option<(Arc<DirNode>, Dir)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let at = job.parent.as_ref().map_or(CWD, |p| p.fd.as_fd());
    let shown = || {
        if job.rel.is_empty() {
            ".".to_string()
        } else {
            format!("{}/", job.rel)
        }
    };
    ctx.metadata_call();
    let fd = match rustix::fs::openat(at, job.name.as_c_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            ctx.counters.vanished.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Err(e) => {
            ctx.fail(shown(), e);
            return None;
        }
    };
    if !ctx.cross_filesystems {
        let dev = match rustix::fs::fstat(&fd) {
            Ok(st) => st.st_dev,
            Err(e) => {
                ctx.fail(shown(), e);
                return None;
            }
        };
        // A bind mount of the same filesystem has the same device: the
        // mount id tells them apart.
        let mount = rustix::fs::statx(
            &fd,
            c"",
            AtFlags::EMPTY_PATH,
            rustix::fs::StatxFlags::MNT_ID,
        )
        .ok()
        .filter(|st| st.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0)
        .map(|st| st.stx_mnt_id);
        let root = *ctx.root_dev.get_or_init(|| (dev, mount));
        if dev != root.0 || (mount.is_some() && root.1.is_some() && mount != root.1) {
            tracing::info!("not entering {}: another filesystem or mount", shown());
            ctx.counters
                .mounts_not_entered
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
    }
    let dir = match Dir::read_from(&fd) {
        Ok(d) => d,
        Err(e) => {
            ctx.fail(shown(), e);
            return None;
        }
    };
    let parent = job.parent.map(|p| (p, job.name));
    let node = Arc::new(DirNode {
        fd,
        rel: job.rel,
        parent,
        ctx: ctx.clone(),
        emptied: std::sync::atomic::AtomicBool::new(false),
    });
    Some((node, dir))
}

/// Reads one directory (and, while the queue is full, its subdirectories,
/// depth first), handing file names to the workers.
fn walk(
    ctx: &Arc<Ctx>,
    job: DirJob,
    tx: &SyncSender<DirJob>,
    batches: &SyncSender<Batch>,
    outstanding: &AtomicUsize,
) {
    let mut stack: Vec<(Arc<DirNode>, Dir)> = Vec::new();
    stack.extend(open_dir(ctx, job));
    let mut batch: Option<Batch> = None;
    let flush = |batch: &mut Option<Batch>| {
        if let Some(b) = batch.take()
            && !b.names.is_empty()
        {
            // Blocks while every worker is busy: the walk waits for them.
            let _ = batches.send(b);
        }
    };
    while let Some((node, dir)) = stack.last_mut() {
        let entry = match dir.read() {
            None => {
                flush(&mut batch);
                stack.pop();
                continue;
            }
            Some(Err(e)) => {
                ctx.fail(format!("{}/", node.rel), e);
                flush(&mut batch);
                stack.pop();
                continue;
            }
            Some(Ok(entry)) => entry,
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            // Some filesystems do not fill d_type: ask, without following.
            FileType::Unknown => rustix::fs::statat(&node.fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
            _ => false,
        };
        if is_dir {
            let child = DirJob {
                parent: Some(node.clone()),
                name: name.to_owned(),
                rel: node.path_of(name),
            };
            outstanding.fetch_add(1, Ordering::AcqRel);
            match tx.try_send(child) {
                Ok(()) => {}
                Err(TrySendError::Full(child) | TrySendError::Disconnected(child)) => {
                    // The frontier is full: descend here instead.
                    outstanding.fetch_sub(1, Ordering::AcqRel);
                    flush(&mut batch);
                    stack.extend(open_dir(ctx, child));
                }
            }
            continue;
        }
        let b = batch.get_or_insert_with(|| Batch {
            dir: node.clone(),
            names: Vec::with_capacity(32),
            bytes: 0,
        });
        b.bytes += name.to_bytes().len() + 1;
        b.names.push(name.to_owned());
        if b.names.len() >= BATCH_NAMES || b.bytes >= BATCH_BYTES {
            flush(&mut batch);
        }
    }
}

fn worker(ctx: &Arc<Ctx>, rx: &Mutex<Receiver<Batch>>) {
    loop {
        let batch = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(batch) = batch else {
            return;
        };
        if ctx.stopped() {
            continue; // drained, not deleted
        }
        ctx.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        for name in &batch.names {
            purge_file(ctx, &batch.dir, name);
        }
        ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stats one entry (never following a symlink) and deletes it if it is
/// old enough and selected.
fn purge_file(ctx: &Ctx, dir: &DirNode, name: &CStr) {
    let c = &ctx.counters;
    let started = Instant::now();
    ctx.metadata_call();
    let stat = rustix::fs::statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW);
    c.metadata_calls.fetch_add(1, Ordering::Relaxed);
    c.metadata_nanos
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let st = match stat {
        Ok(st) => st,
        Err(Errno::NOENT) => {
            c.vanished.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(e) => return ctx.fail(dir.path_of(name), e),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        return; // replaced by a directory since the walk saw it
    }
    c.scanned.fetch_add(1, Ordering::Relaxed);
    let mtime = (st.st_mtime as i64, st.st_mtime_nsec as i64);
    let selected = mtime < ctx.cutoff
        && (ctx.filter.selects_everything() || ctx.filter.selects(&dir.path_of(name)));
    if !selected {
        c.kept.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if !ctx.dry_run {
        ctx.metadata_call();
        match rustix::fs::unlinkat(&dir.fd, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOENT) => {
                c.vanished.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => return ctx.fail(dir.path_of(name), e),
        }
        dir.emptied.store(true, Ordering::Release);
    }
    c.deleted(st.st_size as u64, mtime.0);
}

/// A purge opens a directory per level per walker plus the parents of
/// queued directories: more than the common soft limit of 1,024 on deep,
/// wide trees. Raise the soft limit to the hard one.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("could not raise the open-file limit: {e}");
        }
    }
}

/// A purge of a store through its listing and batch deletes (an S3
/// prefix).
struct ListedPurge {
    store: Store,
    cutoff: SystemTime,
    filter: Filter,
    dry_run: bool,
    concurrency: usize,
    counters: Arc<PurgeCounters>,
}

/// Matched keys for one delete request, with each one's size and mtime
/// (Unix seconds) for the counters. The keys are handed to the store as
/// they are: its request holds the only other copy.
#[derive(Default)]
struct Doomed {
    keys: Vec<String>,
    sizes: Vec<(u64, i64)>,
}

impl ListedPurge {
    async fn run(self, gov: &Governor, cancel: &watch::Receiver<bool>) -> anyhow::Result<()> {
        let keys_per_batch = self.store.delete_batch_keys();
        let batch_bytes = keys_per_batch as u64 * DELETE_KEY_BYTES;
        // The listing queue and the batches (one being filled, the rest in
        // flight), paid for up front: as many in flight as fit, at least one.
        let queue_bytes = super::listing_queue_bytes(gov.budget());
        let _queue = gov
            .reserve_fixed(queue_bytes, "purge.listing", 2 * batch_bytes)
            .map_err(|e| super::budget_too_small("purge", &e))?;
        let fit = (gov.working_budget() / batch_bytes).saturating_sub(1) as usize;
        let in_flight = self.concurrency.clamp(1, 8).min(fit).max(1);
        let _batches = gov
            .reserve_fixed((in_flight as u64 + 1) * batch_bytes, "purge.batches", 0)
            .map_err(|e| super::budget_too_small("purge", &e))?;
        let (tx, mut rx) = channel::bounded::<Listed>(queue_bytes, 4096);
        let lister = {
            let store = self.store.clone();
            tokio::spawn(async move { store.list(tx, &Retry::default(), None).await })
        };
        let this = &self;
        let mut batch = Doomed::default();
        let mut running = FuturesUnordered::new();
        while let Some(listed) = rx.recv().await {
            if *cancel.borrow() {
                // The listing stops when its queue is dropped below.
                batch = Doomed::default();
                break;
            }
            let entry = match listed {
                Ok(e) => e,
                Err(e) => {
                    self.counters.fail(e.path.clone(), e.message.clone());
                    continue;
                }
            };
            self.counters.scanned.fetch_add(1, Ordering::Relaxed);
            let old = entry.mtime.is_some_and(|t| t < self.cutoff);
            if !(old && self.filter.selects(&entry.key)) {
                self.counters.kept.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let secs = unix(entry.mtime.unwrap_or(UNIX_EPOCH)).0;
            batch.keys.push(entry.key);
            batch.sizes.push((entry.size, secs));
            if batch.keys.len() >= keys_per_batch {
                if running.len() >= in_flight {
                    running.next().await;
                }
                running.push(this.delete_batch(std::mem::take(&mut batch)));
            }
        }
        if !batch.keys.is_empty() {
            running.push(this.delete_batch(batch));
        }
        while running.next().await.is_some() {}
        drop(rx);
        lister
            .await
            .context("listing task")?
            .map_err(|e| anyhow::anyhow!("cannot list the target: {e}"))?;
        Ok(())
    }

    /// Deletes one batch (one request), recording each key's outcome.
    async fn delete_batch(&self, batch: Doomed) {
        let counters = &self.counters;
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        if self.dry_run {
            for (size, secs) in &batch.sizes {
                counters.deleted(*size, *secs);
            }
        } else {
            match self.store.delete(&batch.keys).await {
                Ok(results) => {
                    for (result, (key, (size, secs))) in
                        results.into_iter().zip(batch.keys.iter().zip(&batch.sizes))
                    {
                        match result {
                            Deleted::Deleted => counters.deleted(*size, *secs),
                            Deleted::Vanished => {
                                counters.vanished.fetch_add(1, Ordering::Relaxed);
                            }
                            Deleted::Failed(why) => counters.fail(self.store.display_key(key), why),
                        }
                    }
                }
                Err(e) => {
                    for key in &batch.keys {
                        counters.fail(self.store.display_key(key), e.to_string());
                    }
                }
            }
        }
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

//! Running tasks: what a task asks for (its spec: a copy or a purge), and
//! the scheduler that claims queued tasks from the database and runs them.
//! A purge task's counters use the copy columns: objects listed = files
//! scanned, copied = deleted, bytes = bytes freed, skipped = kept.
//!
//! Memory: the service has one governor. A task first reserves its share
//! of it ("serve.task", FIFO like every reservation) and then runs its copy
//! inside a governor of exactly that share, so tasks cannot together hold
//! more than the budget and one huge task cannot starve the others beyond
//! its share. Only running tasks are in memory (at most `--max-running`);
//! everything else is read from the database on demand.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headroom_governor::{ByteSize, Governor, MemoryProbe};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::db::{Db, Kind, Progress, Status, TaskRow};
use crate::cli::{CopyArgs, PurgeArgs, S3Args};
use crate::jobs::copy::{self, CopyEnv, Watermark};
use crate::jobs::purge::{self, PurgeEnv};
use crate::store::Location;
use crate::telemetry::Counters;

/// What `POST /api/tasks` accepts: a copy (`source`, `destination`) or a
/// purge (`target`, `older_than`), with the options both share.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// `copy` or `purge`.
    pub kind: String,
    /// Copy: a path, file://PATH or s3://BUCKET/PREFIX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Copy: same forms as `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Purge: a directory or s3://BUCKET/PREFIX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Purge: delete what was last modified longer ago, e.g. "30d".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
    /// Purge: remove directories left empty.
    #[serde(default)]
    pub remove_empty_dirs: bool,
    /// This task's share of the service's memory, e.g. "64MiB".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Copy: compare content (MD5) instead of size and mtime.
    #[serde(default)]
    pub checksum: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

/// The job a task runs, with its arguments.
pub enum JobArgs {
    Copy(Box<CopyArgs>),
    Purge(Box<PurgeArgs>),
}

/// A validated spec, ready to run.
pub struct Validated {
    pub spec: TaskSpec,
    pub kind: Kind,
    pub job: JobArgs,
    pub share: Option<u64>,
}

fn required<'a>(field: &str, value: &'a Option<String>, kind: &str) -> Result<&'a str, String> {
    value
        .as_deref()
        .ok_or_else(|| format!("{field}: required for a {kind} task"))
}

fn absent(field: &str, value: &Option<String>, kind: &str) -> Result<(), String> {
    match value {
        Some(_) => Err(format!("{field}: not an option of a {kind} task")),
        None => Ok(()),
    }
}

/// Refuses a local `loc` outside every root (none: no local paths). The
/// path is resolved first (symlinks, `..`; a destination that does not
/// exist yet through its nearest existing ancestor), so a link or a `..`
/// cannot lead out of a root.
fn confined(field: &str, loc: &Location, roots: &[std::path::PathBuf]) -> Result<(), String> {
    let Location::Local(path) = loc else {
        return Ok(());
    };
    if roots.is_empty() {
        return Err(format!(
            "{field}: local paths are not allowed by this service (it was started without --allow-path); use an s3:// location"
        ));
    }
    let resolved = crate::store::location::resolve(path)
        .ok_or_else(|| format!("{field}: cannot resolve {}", path.display()))?;
    if roots.iter().any(|r| resolved.starts_with(r)) {
        Ok(())
    } else {
        Err(format!(
            "{field}: {} is outside the directories this service may use (--allow-path {})",
            path.display(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Checks a spec against the local roots it may use; the error names the
/// bad field.
pub fn validate(spec: TaskSpec, roots: &[std::path::PathBuf]) -> Result<Validated, String> {
    let share = match &spec.memory {
        None => None,
        Some(m) => {
            let b: ByteSize = m.parse().map_err(|e| format!("memory: {e}"))?;
            if b.0 < 1 << 20 {
                return Err(format!("memory: {m} is below the 1 MiB a task needs"));
            }
            Some(b.0)
        }
    };
    crate::jobs::filter::Filter::new(&spec.include, &spec.exclude)
        .map_err(|e| format!("include/exclude: {e:#}"))?;
    if spec.concurrency == Some(0) {
        return Err("concurrency: must be at least 1".into());
    }
    let s3 = S3Args {
        s3_timeout: Duration::from_secs(300),
        ..S3Args::default()
    };
    let kind: Kind = spec.kind.parse().map_err(|e| format!("kind: {e}"))?;
    let job = match kind {
        Kind::Copy => {
            absent("target", &spec.target, "copy")?;
            absent("older_than", &spec.older_than, "copy")?;
            let src: Location = required("source", &spec.source, "copy")?
                .parse()
                .map_err(|e| format!("source: {e}"))?;
            let dst: Location = required("destination", &spec.destination, "copy")?
                .parse()
                .map_err(|e| format!("destination: {e}"))?;
            confined("source", &src, roots)?;
            confined("destination", &dst, roots)?;
            JobArgs::Copy(Box::new(CopyArgs {
                src,
                dst,
                dry_run: spec.dry_run,
                checksum: spec.checksum,
                include: spec.include.clone(),
                exclude: spec.exclude.clone(),
                concurrency: spec.concurrency,
                part_size: None,
                retries: 5,
                progress_interval: Duration::from_secs(5),
                s3,
            }))
        }
        Kind::Purge => {
            absent("source", &spec.source, "purge")?;
            absent("destination", &spec.destination, "purge")?;
            if spec.checksum {
                return Err("checksum: not an option of a purge task".into());
            }
            let target: Location = required("target", &spec.target, "purge")?
                .parse()
                .map_err(|e| format!("target: {e}"))?;
            confined("target", &target, roots)?;
            let older_than =
                crate::cli::parse_age(required("older_than", &spec.older_than, "purge")?)
                    .map_err(|e| format!("older_than: {e}"))?;
            JobArgs::Purge(Box::new(PurgeArgs {
                target,
                older_than,
                dry_run: spec.dry_run,
                include: spec.include.clone(),
                exclude: spec.exclude.clone(),
                remove_empty_dirs: spec.remove_empty_dirs,
                concurrency: spec.concurrency,
                cross_filesystems: false,
                force: false,
                simulate_latency: None,
                progress_interval: Duration::from_secs(5),
                s3,
            }))
        }
    };
    Ok(Validated {
        spec,
        kind,
        job,
        share,
    })
}

/// A task being run: what the API shows live, and how to cancel it.
pub struct Running {
    pub counters: Arc<Counters>,
    pub gov: Governor,
    cancel: watch::Sender<bool>,
}

/// Live numbers of a running task.
#[derive(Debug, Serialize)]
pub struct Live {
    pub objects_listed: u64,
    pub objects_copied: u64,
    pub objects_skipped: u64,
    pub objects_failed: u64,
    pub bytes_copied: u64,
    pub in_flight: u64,
    pub memory_share: u64,
    pub memory_reserved: u64,
    pub memory_peak_reserved: u64,
}

/// The scheduler and the running tasks.
pub struct Tasks {
    db: Db,
    gov: Governor,
    running: Mutex<HashMap<String, Arc<Running>>>,
    wake: Notify,
    max_running: usize,
    default_share: u64,
    /// Set by [`Tasks::shutdown`]: nothing new starts, and stopped tasks
    /// stay `running` in the database so the next start resumes them.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Where local task paths may be (checked again when a task starts).
    roots: Arc<Vec<std::path::PathBuf>>,
}

impl Tasks {
    pub fn new(
        db: Db,
        gov: Governor,
        max_running: usize,
        roots: Arc<Vec<std::path::PathBuf>>,
    ) -> Arc<Self> {
        let default_share = (gov.budget() / max_running.max(1) as u64).max(8 << 20);
        Arc::new(Tasks {
            db,
            gov,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            max_running: max_running.max(1),
            default_share,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            roots,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the scheduler (a task was queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The live state of a running task.
    pub fn live(&self, id: &str) -> Option<Live> {
        let r = self.lock().get(id)?.clone();
        let stats = r.gov.stats();
        let c = &r.counters;
        Some(Live {
            objects_listed: c.listed.load(Ordering::Relaxed),
            objects_copied: c.copied.load(Ordering::Relaxed),
            objects_skipped: c.skipped.load(Ordering::Relaxed),
            objects_failed: c.failed.load(Ordering::Relaxed),
            bytes_copied: c.bytes.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            memory_share: stats.budget,
            memory_reserved: stats.reserved,
            memory_peak_reserved: stats.peak_reserved,
        })
    }

    /// Whether task `id` runs in this process.
    pub fn running_here(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// How many tasks run now.
    pub fn running_count(&self) -> usize {
        self.lock().len()
    }

    /// Asks a running task to stop; whether it was running here.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(r) => {
                let _ = r.cancel.send(true);
                true
            }
            None => false,
        }
    }

    /// Stops every running task for a shutdown (SIGTERM): each stops
    /// cleanly (partial files removed, multipart uploads aborted), keeps
    /// its checkpoint and stays `running`, to resume at the next start.
    /// Waits up to `grace` for them.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for r in self.lock().values() {
            let _ = r.cancel.send(true);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.running_count();
        if left > 0 {
            tracing::warn!(
                "{left} tasks did not stop within {grace:?}; they resume at the next start"
            );
        }
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Claims and starts queued tasks while there is room, forever.
    pub async fn schedule(self: Arc<Self>) {
        loop {
            while !self.shutting_down() && self.running_count() < self.max_running {
                match self.db.claim_next().await {
                    Ok(Some(task)) => self.clone().start(task),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("cannot claim a queued task: {e}");
                        break;
                    }
                }
            }
            // Woken by a new task or a finished one; polls as a fallback.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.wake.notified()).await;
        }
    }

    fn start(self: Arc<Self>, task: TaskRow) {
        let (cancel, cancelled) = watch::channel(false);
        let spec: Result<TaskSpec, _> = serde_json::from_value(task.spec.clone());
        let validated = spec
            .map_err(|e| e.to_string())
            .and_then(|spec| validate(spec, &self.roots));
        let share = validated
            .as_ref()
            .ok()
            .and_then(|v| v.share)
            .unwrap_or(self.default_share)
            .min(self.gov.budget());
        let task_gov = Governor::new(share);
        let running = Arc::new(Running {
            counters: Arc::new(Counters::default()),
            gov: task_gov.clone(),
            cancel,
        });
        self.lock().insert(task.id.clone(), running.clone());
        tokio::spawn(async move {
            let id = task.id.clone();
            self.run(task, validated, running, cancelled, share).await;
            self.lock().remove(&id);
            self.wake();
        });
    }

    async fn run(
        &self,
        task: TaskRow,
        validated: Result<Validated, String>,
        running: Arc<Running>,
        mut cancelled: watch::Receiver<bool>,
        share: u64,
    ) {
        let id = task.id.clone();
        let base = (
            task.objects_copied - task.attempt_objects_copied,
            task.bytes_copied - task.attempt_bytes_copied,
        );
        let v = match validated {
            Ok(v) => v,
            Err(e) => {
                let _ = self
                    .db
                    .finish(&id, base, &Progress::default(), Status::Failed, Some(&e))
                    .await;
                return;
            }
        };
        let what = match &v.job {
            JobArgs::Copy(a) => format!("copy {} -> {}", a.src, a.dst),
            JobArgs::Purge(a) => format!(
                "purge {} older than {}",
                a.target,
                humantime::format_duration(a.older_than)
            ),
        };
        tracing::info!(
            "task {id}: {what} (attempt {}, {} of memory{})",
            task.attempts,
            ByteSize(share),
            task.checkpoint_key
                .as_deref()
                .map_or(String::new(), |k| format!(", resuming after {k:?}"))
        );
        // The task's share of the service's memory, waited for in turn.
        let _share = tokio::select! {
            p = self.gov.acquire(share, "serve.task") => p,
            _ = crate::jobs::until_set(&mut cancelled) => {
                let _ = self.db.finish(&id, base, &Progress::default(), Status::Cancelled, None).await;
                return;
            }
        };
        let watermark = Arc::new(Watermark::new(task.checkpoint_key.clone()));
        let counters = running.counters.clone();
        let progress = |w: &Watermark| Progress {
            objects_listed: counters.listed.load(Ordering::Relaxed) as i64,
            objects_skipped: counters.skipped.load(Ordering::Relaxed) as i64,
            objects_failed: counters.failed.load(Ordering::Relaxed) as i64,
            attempt_objects_copied: counters.copied.load(Ordering::Relaxed) as i64,
            attempt_bytes_copied: counters.bytes.load(Ordering::Relaxed) as i64,
            checkpoint_key: w.key(),
        };
        let job = async {
            match &v.job {
                JobArgs::Copy(args) => {
                    let env = CopyEnv {
                        gov: running.gov.clone(),
                        probe: MemoryProbe::detect(),
                        counters: counters.clone(),
                        cancel: cancelled.clone(),
                        start_after: task.checkpoint_key.clone(),
                        watermark: Some(watermark.clone()),
                    };
                    copy::execute(args, env).await
                }
                JobArgs::Purge(args) => {
                    let env = PurgeEnv {
                        gov: running.gov.clone(),
                        probe: MemoryProbe::detect(),
                        counters: counters.clone(),
                        cancel: cancelled.clone(),
                    };
                    purge::execute(args, env).await
                }
            }
        };
        tokio::pin!(job);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                _ = tick.tick() => {
                    match self.db.progress(&id, base, &progress(&watermark)).await {
                        Ok(true) => {}
                        // Deleted (or changed) under us, e.g. deleted in
                        // the moment it was claimed: stop working for it.
                        Ok(false) => {
                            if !*cancelled.borrow() {
                                tracing::info!("task {id}: no longer in the database as running; stopping");
                                let _ = running.cancel.send(true);
                            }
                        }
                        Err(e) => tracing::warn!("task {id}: cannot save progress: {e}"),
                    }
                }
            }
        };
        let p = progress(&watermark);
        if self.shutting_down() {
            // Left `running` with its checkpoint: the next start resumes it.
            if let Err(e) = self.db.progress(&id, base, &p).await {
                tracing::warn!("task {id}: cannot save progress at shutdown: {e}");
            }
            tracing::info!("task {id}: stopped for shutdown; it resumes at the next start");
            return;
        }
        let (status, error) = match result {
            _ if *cancelled.borrow() => (Status::Cancelled, None),
            Ok(s) if s.failed > 0 => (
                Status::Failed,
                Some(format!(
                    "{} objects failed; first: {}",
                    s.failed,
                    s.failures
                        .first()
                        .map_or_else(String::new, |(w, r)| format!("{w}: {r}"))
                )),
            ),
            Ok(_) => (Status::Succeeded, None),
            Err(e) => (Status::Failed, Some(format!("{e:#}"))),
        };
        tracing::info!("task {id}: {status}");
        if let Err(e) = self
            .db
            .finish(&id, base, &p, status, error.as_deref())
            .await
        {
            tracing::error!("task {id}: cannot save its end ({status}): {e}");
        }
    }
}

//! Running tasks: what a task asks for (its spec: a copy or a purge), and
//! the scheduler that claims queued tasks from the database and runs them.
//! The database keeps every kind's counters in the same columns (items
//! listed, done, skipped, failed, bytes done); [`CounterNames`] says what
//! each is called for a copy and for a purge in the API.
//!
//! A task runs as shards (see `db`): the scheduler claims shards, and a
//! copy shard with no end first cuts itself after `--shard-objects` keys
//! or `--shard-bytes` bytes, queueing the rest as the next shard, so one
//! task spreads over every replica with room, shard by shard.
//!
//! Memory: the service has one governor. A shard first reserves its task's
//! share of it ("serve.task", FIFO like every reservation) and then runs
//! its job inside a governor of exactly that share, so shards cannot
//! together hold more than the budget and one huge task cannot starve the
//! others beyond its share. Only running shards are in memory (at most
//! `--max-running`); everything else is read from the database on demand.
//!
//! A new kind of task is a variant of [`TaskSpec`] (with its spec struct),
//! of [`Job`] and of `db::Kind`; the compiler then names every place that
//! must handle it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headroom_governor::{ByteSize, Governor, MemoryProbe};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::db::{
    Claim, Counts, Db, Heartbeat, Kind, Lease, Progress, ReplicaRow, Room, ShardEnd, ShardRow,
    Status,
};
use crate::jobs::copy::{self, CopyCounters, CopyEnv, CopyOptions, PrefixCounts, Watermark};
use crate::jobs::purge::{self, PurgeCounters, PurgeEnv, PurgeOptions};
use crate::jobs::sync::{self, CheckCounters};
use crate::store::gdrive::{CredentialsConfig, DriveConfig};
use crate::store::{KeyRange, Location};
use crate::telemetry::Outcome;

/// What `POST /api/tasks` accepts, tagged by `kind`: a copy or a purge.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TaskSpec {
    /// `{"kind": "copy", "source": ..., "destination": ...}`
    Copy(CopySpec),
    /// `{"kind": "purge", "target": ..., "older_than": ...}`
    Purge(PurgeSpec),
    /// `{"kind": "sync", "source": ..., "destination": ..., "max_delete": N}`:
    /// a copy, then the deletion of what only the destination holds.
    Sync(CopySpec),
    /// `{"kind": "check", "source": ..., "destination": ...}`: the
    /// differences, in the task's report; it fails if there is any.
    Check(CopySpec),
}

/// A copy task, or a sync or check task (the same fields; `max_delete` is
/// a sync's, the `gdrive_*` fields a copy's).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CopySpec {
    /// A path, file://PATH, s3://BUCKET/PREFIX or gdrive://...
    pub source: String,
    /// Same forms as `source`.
    pub destination: String,
    /// This task's share of the service's memory, e.g. "64MiB".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// Compare content (MD5) instead of size and mtime.
    #[serde(default)]
    pub checksum: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// A `gdrive://` source's credentials: a name the service holds
    /// (`--gdrive-credentials NAME=FILE`), never a secret in the row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gdrive_credentials: Option<String>,
    /// The user a service account acts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gdrive_impersonate: Option<String>,
    /// Export formats by preference (default: docx, xlsx, pptx, pdf).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gdrive_export: Vec<String>,
    /// Pass shortcuts over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gdrive_skip_shortcuts: bool,
    /// A sync deletes nothing when more than this many objects would go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delete: Option<u64>,
}

/// The Google Drive credentials a service holds, by name, and where it
/// reaches Drive: a task names credentials, it never carries them.
#[derive(Clone, Debug, Default)]
pub struct DriveAccess {
    /// `--gdrive-endpoint`, else HEADROOM_GDRIVE_ENDPOINT, else Google's.
    pub endpoint: Option<String>,
    /// `--gdrive-credentials NAME=FILE`.
    pub credentials: std::collections::BTreeMap<String, std::path::PathBuf>,
}

impl DriveAccess {
    /// The Drive settings of a copy task from `src`, checked; the error
    /// names the bad field.
    fn config(&self, c: &CopySpec, src: &Location) -> Result<DriveConfig, String> {
        let is_drive = matches!(src, Location::GDrive(_));
        if !is_drive {
            let set = [
                ("gdrive_credentials", c.gdrive_credentials.is_some()),
                ("gdrive_impersonate", c.gdrive_impersonate.is_some()),
                ("gdrive_export", !c.gdrive_export.is_empty()),
                ("gdrive_skip_shortcuts", c.gdrive_skip_shortcuts),
            ];
            if let Some((field, _)) = set.iter().find(|(_, on)| *on) {
                return Err(format!("{field}: only a gdrive:// source takes it"));
            }
            return Ok(DriveConfig::default());
        }
        let file = match &c.gdrive_credentials {
            None => None,
            Some(name) => Some(self.credentials.get(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = self.credentials.keys().map(String::as_str).collect();
                format!(
                    "gdrive_credentials: this service holds no credentials named {name:?} (it holds: {}; start it with --gdrive-credentials NAME=FILE)",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )
            })?),
        };
        crate::store::gdrive::names::check_exports(&c.gdrive_export)
            .map_err(|e| format!("gdrive_export: {e}"))?;
        Ok(DriveConfig {
            endpoint: self.endpoint.clone(),
            credentials: CredentialsConfig {
                file,
                impersonate: c.gdrive_impersonate.clone(),
                ..CredentialsConfig::default()
            },
            exports: c.gdrive_export.clone(),
            skip_shortcuts: c.gdrive_skip_shortcuts,
        })
    }
}

/// A purge task.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeSpec {
    /// A directory or s3://BUCKET/PREFIX.
    pub target: String,
    /// Delete what was last modified longer ago, e.g. "30d".
    pub older_than: String,
    /// Remove directories left empty.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

impl TaskSpec {
    /// Which kind of task this is.
    pub fn kind(&self) -> Kind {
        match self {
            TaskSpec::Copy(_) => Kind::Copy,
            TaskSpec::Purge(_) => Kind::Purge,
            TaskSpec::Sync(_) => Kind::Sync,
            TaskSpec::Check(_) => Kind::Check,
        }
    }

    /// Whether it writes (or deletes) nothing.
    pub fn dry_run(&self) -> bool {
        match self {
            TaskSpec::Copy(c) | TaskSpec::Sync(c) | TaskSpec::Check(c) => c.dry_run,
            TaskSpec::Purge(p) => p.dry_run,
        }
    }

    /// A spec as the API received it; the error names the bad field.
    pub fn parse(body: serde_json::Value) -> Result<Self, String> {
        serde_json::from_value(body).map_err(|e| {
            let e = e.to_string();
            if e.starts_with("unknown variant") {
                format!("kind: {e}")
            } else {
                e
            }
        })
    }

    /// A spec as the database holds it. Rows written before specs were
    /// tagged carry every kind's flags (`checksum` on a purge,
    /// `remove_empty_dirs` on a copy) at their defaults: those are
    /// dropped, anything else foreign to the kind is an error.
    pub fn from_stored(mut stored: serde_json::Value) -> Result<Self, String> {
        let foreign = match stored["kind"].as_str() {
            Some("copy") => "remove_empty_dirs",
            Some("purge") => "checksum",
            _ => "",
        };
        if let Some(map) = stored.as_object_mut()
            && map.get(foreign) == Some(&serde_json::Value::Bool(false))
        {
            map.remove(foreign);
        }
        Self::parse(stored)
    }
}

/// The job a task runs, with its options.
pub enum Job {
    Copy {
        src: Location,
        dst: Location,
        options: Box<CopyOptions>,
    },
    Purge {
        target: Location,
        older_than: Duration,
        options: PurgeOptions,
    },
    Sync {
        src: Location,
        dst: Location,
        options: Box<CopyOptions>,
        max_delete: Option<u64>,
    },
    Check {
        src: Location,
        dst: Location,
        options: Box<CopyOptions>,
    },
}

/// A validated spec, ready to run.
pub struct Validated {
    pub spec: TaskSpec,
    pub job: Job,
    pub share: Option<u64>,
}

/// Refuses a local `loc` outside every root (none: no local paths). The
/// path is resolved first (symlinks, `..`; a destination that does not
/// exist yet through its nearest existing ancestor), so a link or a `..`
/// cannot lead out of a root.
fn confined(field: &str, loc: &Location, roots: &[std::path::PathBuf]) -> Result<(), String> {
    let Some(path) = loc.local_path() else {
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

/// Location fields of a spec, each parsed (every one of them first, so a
/// malformed one is named before a misplaced one) and then confined to
/// `roots`.
fn locations<const N: usize>(
    fields: [(&str, &str); N],
    roots: &[std::path::PathBuf],
) -> Result<[Location; N], String> {
    let mut parsed = Vec::with_capacity(N);
    for (field, value) in fields {
        parsed.push(
            value
                .parse::<Location>()
                .map_err(|e| format!("{field}: {e}"))?,
        );
    }
    for ((field, _), loc) in fields.iter().zip(&parsed) {
        confined(field, loc, roots)?;
    }
    Ok(parsed.try_into().expect("one location per field"))
}

/// The options every kind shares, checked.
fn check_common(
    memory: &Option<String>,
    include: &[String],
    exclude: &[String],
    concurrency: Option<usize>,
) -> Result<Option<u64>, String> {
    crate::jobs::filter::Filter::new(include, exclude)
        .map_err(|e| format!("include/exclude: {e:#}"))?;
    if concurrency == Some(0) {
        return Err("concurrency: must be at least 1".into());
    }
    let Some(m) = memory else {
        return Ok(None);
    };
    let b: ByteSize = m.parse().map_err(|e| format!("memory: {e}"))?;
    if b.0 < 1 << 20 {
        return Err(format!("memory: {m} is below the 1 MiB a task needs"));
    }
    Ok(Some(b.0))
}

/// Checks a spec against the local roots it may use and builds its job;
/// the error names the bad field. Every option a spec does not set is the
/// job's own default.
pub fn validate(
    spec: TaskSpec,
    roots: &[std::path::PathBuf],
    drive: &DriveAccess,
) -> Result<Validated, String> {
    // The fields a copy, a sync and a check share.
    let copy_like =
        |c: &CopySpec| -> Result<(Location, Location, Box<CopyOptions>, Option<u64>), String> {
            let share = check_common(&c.memory, &c.include, &c.exclude, c.concurrency)?;
            let [src, dst] = locations(
                [("source", &c.source), ("destination", &c.destination)],
                roots,
            )?;
            let gdrive = drive.config(c, &src)?;
            let options = Box::new(CopyOptions {
                dry_run: c.dry_run,
                checksum: c.checksum,
                include: c.include.clone(),
                exclude: c.exclude.clone(),
                concurrency: c.concurrency,
                gdrive,
                ..CopyOptions::default()
            });
            Ok((src, dst, options, share))
        };
    // A sync and a check merge two listings in key order.
    let merged = |c: &CopySpec, src: &Location| -> Result<(), String> {
        if !src.lists_in_key_order() {
            return Err(format!(
                "source: {} and check merge listings in key order, which Google Drive does not give: copy from it instead",
                spec.kind().as_str()
            ));
        }
        if c.gdrive_credentials.is_some() {
            return Err("gdrive_credentials: only a copy from gdrive:// takes it".into());
        }
        Ok(())
    };
    let (job, share) = match &spec {
        TaskSpec::Copy(c) => {
            if c.max_delete.is_some() {
                return Err("max_delete: only a sync task takes it".into());
            }
            let (src, dst, options, share) = copy_like(c)?;
            (Job::Copy { src, dst, options }, share)
        }
        TaskSpec::Sync(c) => {
            let (src, dst, options, share) = copy_like(c)?;
            merged(c, &src)?;
            let max_delete = c.max_delete;
            (
                Job::Sync {
                    src,
                    dst,
                    options,
                    max_delete,
                },
                share,
            )
        }
        TaskSpec::Check(c) => {
            if c.max_delete.is_some() {
                return Err("max_delete: only a sync task takes it".into());
            }
            if c.dry_run {
                return Err("dry_run: a check writes nothing".into());
            }
            let (src, dst, options, share) = copy_like(c)?;
            merged(c, &src)?;
            (Job::Check { src, dst, options }, share)
        }
        TaskSpec::Purge(p) => {
            let share = check_common(&p.memory, &p.include, &p.exclude, p.concurrency)?;
            let [target] = locations([("target", &p.target)], roots)?;
            let job = Job::Purge {
                target,
                older_than: purge::parse_age(&p.older_than)
                    .map_err(|e| format!("older_than: {e}"))?,
                options: PurgeOptions {
                    dry_run: p.dry_run,
                    include: p.include.clone(),
                    exclude: p.exclude.clone(),
                    remove_empty_dirs: p.remove_empty_dirs,
                    concurrency: p.concurrency,
                    ..PurgeOptions::default()
                },
            };
            (job, share)
        }
    };
    Ok(Validated { spec, job, share })
}

/// What a task's counters are called in the API, by kind: the database
/// holds them in the same columns for every kind.
pub struct CounterNames {
    /// Listed and selected (objects, or files scanned).
    pub listed: &'static str,
    /// Done (copied, or deleted; in a dry run, to be).
    pub done: &'static str,
    /// Passed by (up to date, or kept).
    pub skipped: &'static str,
    /// Failed.
    pub failed: &'static str,
    /// Bytes of those done.
    pub bytes: &'static str,
    /// `listed`, `done` and `bytes` of the current attempts alone.
    pub attempt_listed: &'static str,
    pub attempt_done: &'static str,
    /// See `attempt_done`.
    pub attempt_bytes: &'static str,
}

impl CounterNames {
    /// The names for a task of `kind`.
    pub fn of(kind: Kind, dry_run: bool) -> &'static CounterNames {
        match (kind, dry_run) {
            // A sync's deletions are in its report.
            (Kind::Copy | Kind::Sync, _) => &CounterNames {
                listed: "objects_listed",
                done: "objects_copied",
                skipped: "objects_skipped",
                failed: "objects_failed",
                bytes: "bytes_copied",
                attempt_listed: "attempt_objects_listed",
                attempt_done: "attempt_objects_copied",
                attempt_bytes: "attempt_bytes_copied",
            },
            // A dry run deleted nothing, and says what it would have.
            (Kind::Purge, true) => &CounterNames {
                listed: "files_scanned",
                done: "files_to_delete",
                skipped: "files_kept",
                failed: "files_failed",
                bytes: "bytes_to_free",
                attempt_listed: "attempt_files_scanned",
                attempt_done: "attempt_files_to_delete",
                attempt_bytes: "attempt_bytes_to_free",
            },
            (Kind::Check, _) => &CounterNames {
                listed: "entries_compared",
                done: "differences",
                skipped: "entries_same",
                failed: "entries_unreadable",
                bytes: "bytes_compared",
                attempt_listed: "attempt_entries_compared",
                attempt_done: "attempt_differences",
                attempt_bytes: "attempt_bytes_compared",
            },
            (Kind::Purge, false) => &CounterNames {
                listed: "files_scanned",
                done: "files_deleted",
                skipped: "files_kept",
                failed: "files_failed",
                bytes: "bytes_freed",
                attempt_listed: "attempt_files_scanned",
                attempt_done: "attempt_files_deleted",
                attempt_bytes: "attempt_bytes_freed",
            },
        }
    }
}

/// The live counters of a running task, of its job's own type.
pub enum TaskCounters {
    /// A copy's, or a sync's.
    Copy(Arc<CopyCounters>),
    Purge(Arc<PurgeCounters>),
    Check(Arc<CheckCounters>),
}

impl TaskCounters {
    fn for_job(job: Option<&Job>) -> Self {
        match job {
            Some(Job::Purge { .. }) => TaskCounters::Purge(Arc::default()),
            Some(Job::Check { .. }) => TaskCounters::Check(Arc::default()),
            _ => TaskCounters::Copy(Arc::default()),
        }
    }

    /// The counters as the database keeps them, for any kind, with the
    /// checkpoint and its counts.
    fn progress(&self, checkpoint_key: Option<String>, checkpoint: Counts) -> Progress {
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
        let (attempt, failed) = match self {
            TaskCounters::Copy(c) => (
                Counts {
                    listed: n(&c.listed),
                    done: n(&c.copied),
                    skipped: n(&c.skipped),
                    bytes: n(&c.bytes),
                },
                c.failures.count(),
            ),
            TaskCounters::Purge(c) => (
                Counts {
                    listed: n(&c.scanned),
                    done: n(&c.deleted),
                    skipped: n(&c.kept),
                    bytes: n(&c.bytes_freed),
                },
                c.failures.count(),
            ),
            TaskCounters::Check(c) => {
                let s = c.summary();
                (
                    Counts {
                        listed: (s.same + s.differences()) as i64,
                        done: (s.differ + s.missing + s.extra) as i64,
                        skipped: s.same as i64,
                        bytes: n(&c.bytes_compared),
                    },
                    s.errors,
                )
            }
        };
        Progress {
            attempt,
            items_failed: failed as i64,
            checkpoint_key,
            checkpoint,
        }
    }

    fn in_flight(&self) -> u64 {
        match self {
            TaskCounters::Copy(c) => c.in_flight.load(Ordering::Relaxed),
            TaskCounters::Purge(c) => c.in_flight.load(Ordering::Relaxed),
            TaskCounters::Check(_) => 0,
        }
    }
}

/// A task being run: what the API shows live, and how to cancel it.
pub struct Running {
    pub counters: TaskCounters,
    pub gov: Governor,
    /// The names its counters have in the API.
    names: &'static CounterNames,
    cancel: watch::Sender<bool>,
}

/// The scheduler and the running tasks.
pub struct Tasks {
    db: Db,
    gov: Governor,
    /// The shards running here, by task and shard number.
    running: Mutex<HashMap<(String, i64), Arc<Running>>>,
    wake: Notify,
    max_running: usize,
    default_share: u64,
    /// Set by [`Tasks::shutdown`]: nothing new starts, and stopped tasks
    /// stay `running` in the database so the next start resumes them.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Where local task paths may be (checked again when a task starts).
    roots: Arc<Vec<std::path::PathBuf>>,
    /// The Drive credentials tasks may name.
    drive: Arc<DriveAccess>,
    /// Who this replica is, how long its leases last, and what expired
    /// leases' tasks become.
    fleet: FleetOptions,
    started_at: i64,
}

/// How a replica takes part in the fleet of services on one database.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// This replica's id, unique among live replicas (default: host name
    /// and process id). A restart under the same id takes its previous
    /// process's tasks back at once; others wait for their leases to
    /// expire.
    pub replica: String,
    /// How long a lease lasts unless renewed (every second, with the
    /// task's progress).
    pub lease_ttl: Duration,
    /// Whether a task whose lease expired is queued again (else it becomes
    /// `interrupted`).
    pub resume: bool,
    /// A copy shard is cut after this many keys...
    pub shard_objects: u64,
    /// ...or once its keys hold this many bytes.
    pub shard_bytes: u64,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            replica: default_replica_id(),
            lease_ttl: DEFAULT_LEASE_TTL,
            resume: true,
            shard_objects: DEFAULT_SHARD_OBJECTS,
            shard_bytes: DEFAULT_SHARD_BYTES,
        }
    }
}

/// A lease's life unless renewed.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// Keys in a shard unless told otherwise: small enough that a few
/// replicas share a bucket of tens of thousands of objects, large enough
/// that a shard's start (a claim, a look-ahead of its keys) is a small
/// part of its work.
pub const DEFAULT_SHARD_OBJECTS: u64 = 5_000;

/// Bytes in a shard unless told otherwise (large objects are shared out
/// by bytes, not by count).
pub const DEFAULT_SHARD_BYTES: u64 = 16 << 30;

/// `HOST-PID`: unique among live processes, and the same for a container
/// restarted in its pod (the host name is the pod's, the pid is 1).
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "headroom".into());
    format!("{host}-{}", std::process::id())
}

impl Tasks {
    pub fn new(
        db: Db,
        gov: Governor,
        max_running: usize,
        roots: Arc<Vec<std::path::PathBuf>>,
        drive: Arc<DriveAccess>,
        fleet: FleetOptions,
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
            drive,
            fleet,
            started_at: crate::telemetry::now_ms() as i64,
        })
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.fleet.replica
    }

    /// The lease time-to-live.
    pub fn lease_ttl(&self) -> Duration {
        self.fleet.lease_ttl
    }

    /// The ids of the tasks with shards running in this process.
    pub fn running_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The shards running in this process, as `TASK/NO`.
    pub fn running_shards(&self) -> Vec<String> {
        let mut shards: Vec<String> = self
            .lock()
            .keys()
            .map(|(id, no)| format!("{id}/{no}"))
            .collect();
        shards.sort();
        shards
    }

    /// The shards of task `id` running in this process.
    fn shards_here(&self, id: &str) -> Vec<Arc<Running>> {
        self.lock()
            .iter()
            .filter(|((task, _), _)| task == id)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// This replica's row of the fleet, as of now.
    fn replica_row(&self, stopped: bool) -> ReplicaRow {
        let stats = self.gov.stats();
        let now = crate::telemetry::now_ms() as i64;
        ReplicaRow {
            id: self.fleet.replica.clone(),
            started_at: self.started_at,
            heartbeat_at: now,
            memory_budget: stats.budget as i64,
            memory_reserved: stats.reserved as i64,
            tasks_running: self.running_count() as i64,
            stopped_at: stopped.then_some(now),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Arc<Running>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the scheduler (a task was queued).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The live state of a task's shards running here: their counters
    /// under its kind's names, transfers in flight, and their memory
    /// shares, reserved and peak reserved bytes, summed.
    pub fn live(&self, id: &str) -> Option<serde_json::Value> {
        let shards = self.shards_here(id);
        let names = shards.first()?.names;
        let (mut p, mut in_flight) = (Progress::default(), 0u64);
        let (mut share, mut reserved, mut peak) = (0u64, 0u64, 0u64);
        for r in &shards {
            let q = r.counters.progress(None, Counts::default());
            p.attempt.listed += q.attempt.listed;
            p.attempt.skipped += q.attempt.skipped;
            p.attempt.done += q.attempt.done;
            p.attempt.bytes += q.attempt.bytes;
            p.items_failed += q.items_failed;
            in_flight += r.counters.in_flight();
            let stats = r.gov.stats();
            share += stats.budget;
            reserved += stats.reserved;
            peak += stats.peak_reserved;
        }
        let mut v = json!({
            "shards_here": shards.len(),
            "in_flight": in_flight,
            "memory_share": share,
            "memory_reserved": reserved,
            "memory_peak_reserved": peak,
        });
        v[names.listed] = json!(p.attempt.listed);
        v[names.done] = json!(p.attempt.done);
        v[names.skipped] = json!(p.attempt.skipped);
        v[names.failed] = json!(p.items_failed);
        v[names.bytes] = json!(p.attempt.bytes);
        Some(v)
    }

    /// Whether a shard of task `id` runs in this process.
    pub fn running_here(&self, id: &str) -> bool {
        !self.shards_here(id).is_empty()
    }

    /// How many shards run here now.
    pub fn running_count(&self) -> usize {
        self.lock().len()
    }

    /// Asks the shards of task `id` running here to stop; whether any was.
    pub fn cancel(&self, id: &str) -> bool {
        let shards = self.shards_here(id);
        for r in &shards {
            let _ = r.cancel.send(true);
        }
        !shards.is_empty()
    }

    /// Stops every running task for a shutdown (SIGTERM): each stops
    /// cleanly (partial files removed, multipart uploads aborted) and is
    /// handed back, queued with its checkpoint, for another replica or
    /// the next start to resume. Waits up to `grace` for them.
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
                "{left} tasks did not stop within {grace:?}; their leases expire and another replica (or the next start) resumes them"
            );
        }
        if let Err(e) = self.db.beat(&self.replica_row(true)).await {
            tracing::warn!("cannot record this replica's stop: {e}");
        }
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Every second, forever: writes this replica's row, ends expired
    /// leases, and claims queued tasks while there is room.
    pub async fn schedule(self: Arc<Self>) {
        let ttl = self.fleet.lease_ttl.as_millis() as i64;
        let expired_to = if self.fleet.resume {
            Status::Queued
        } else {
            Status::Interrupted
        };
        loop {
            if self.shutting_down() {
                return;
            }
            if let Err(e) = self.db.beat(&self.replica_row(false)).await {
                tracing::warn!("cannot write this replica's heartbeat: {e}");
            }
            match self.db.expire_leases(expired_to).await {
                Ok(expired) => {
                    for (id, no, owner, ago) in expired {
                        tracing::warn!(
                            task = %id,
                            replica = %owner,
                            "task {id} shard {no}: the lease of replica {owner} expired {ago} ms ago; the shard is {expired_to}"
                        );
                    }
                }
                Err(e) => tracing::warn!("cannot end expired leases: {e}"),
            }
            // Shares of tasks claimed in this round, which they may not
            // have reserved yet.
            let mut claimed = 0u64;
            while !self.shutting_down() && self.running_count() < self.max_running {
                let stats = self.gov.stats();
                let room = Room {
                    available: stats.budget.saturating_sub(stats.reserved + claimed),
                    budget: stats.budget,
                    default_share: self.default_share,
                };
                match self.db.claim_next(&self.fleet.replica, ttl, room).await {
                    Ok(Some(claim)) => claimed += self.clone().start(claim),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("cannot claim a queued task: {e}");
                        break;
                    }
                }
            }
            // Woken by a new task or a finished one; polls as a fallback.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// Starts a claimed shard; the memory share it runs with.
    fn start(self: Arc<Self>, claim: Claim) -> u64 {
        let Claim { task, shard } = claim;
        let (cancel, cancelled) = watch::channel(false);
        let validated = TaskSpec::from_stored(task.spec.clone())
            .map_err(|e| format!("the stored spec cannot be read: {e}"))
            .and_then(|spec| validate(spec, &self.roots, &self.drive));
        let share = validated
            .as_ref()
            .ok()
            .and_then(|v| v.share)
            .unwrap_or(self.default_share)
            .min(self.gov.budget());
        let task_gov = Governor::new(share);
        let running = Arc::new(Running {
            counters: TaskCounters::for_job(validated.as_ref().ok().map(|v| &v.job)),
            gov: task_gov.clone(),
            names: CounterNames::of(
                task.kind,
                validated.as_ref().is_ok_and(|v| v.spec.dry_run()),
            ),
            cancel,
        });
        let key = (task.id.clone(), shard.no);
        self.lock().insert(key.clone(), running.clone());
        tokio::spawn(async move {
            self.run(task.kind, shard, validated, running, cancelled, share)
                .await;
            self.lock().remove(&key);
            self.wake();
        });
        share
    }

    /// The keys a copy shard covers: its range, cut first (when it has no
    /// end) after `--shard-objects` keys or `--shard-bytes` bytes from
    /// where it resumes, the rest queued as the next shard. `None`: the
    /// job lists everything (a purge). An error: the lease was lost.
    async fn shard_range(
        &self,
        job: &Job,
        shard: &ShardRow,
        lease: &Lease,
        gov: &Governor,
    ) -> anyhow::Result<Option<KeyRange>> {
        let Job::Copy { src, options, .. } = job else {
            return Ok(None);
        };
        if !src.lists_in_key_order() {
            return Ok(None);
        }
        let range = KeyRange {
            after: shard.after_key.clone(),
            through: shard.through_key.clone(),
        };
        let resumed = range.resumed_after(shard.checkpoint_key.as_deref());
        if range.through.is_some() {
            return Ok(Some(resumed));
        }
        let cut = crate::jobs::copy::split_point(
            src,
            options,
            gov,
            resumed.after.as_deref(),
            self.fleet.shard_objects,
            self.fleet.shard_bytes,
        )
        .await;
        let at = match cut {
            Ok(Some(at)) => at,
            Ok(None) => return Ok(Some(resumed)),
            // The copy reports what the listing cannot do.
            Err(e) => {
                tracing::debug!("{lease}: not cut: {e:#}");
                return Ok(Some(resumed));
            }
        };
        match self.db.split(lease, &at).await {
            Ok(true) => {
                tracing::info!(
                    "{lease}: cut after {}; the keys after it are shard {}",
                    crate::telemetry::escape(&at),
                    lease.shard + 1
                );
                self.wake();
                Ok(Some(KeyRange {
                    after: resumed.after,
                    through: Some(at),
                }))
            }
            Ok(false) => anyhow::bail!("its lease was lost before it was cut"),
            Err(e) => {
                tracing::warn!("{lease}: cannot cut it ({e}); it runs to the end of the keys");
                Ok(Some(resumed))
            }
        }
    }

    async fn run(
        &self,
        kind: Kind,
        shard: ShardRow,
        validated: Result<Validated, String>,
        running: Arc<Running>,
        cancelled: watch::Receiver<bool>,
        share: u64,
    ) {
        let lease = Lease {
            task: shard.task_id.clone(),
            shard: shard.no,
            owner: self.fleet.replica.clone(),
            attempt: shard.attempts,
        };
        let v = match validated {
            Ok(v) => v,
            Err(e) => {
                let p = Progress::default();
                let _ = self
                    .db
                    .finish(
                        &lease,
                        Counts::default(),
                        &p,
                        ShardEnd::with(Status::Failed, Some(&e)),
                    )
                    .await;
                return;
            }
        };
        // What earlier attempts left, each key counted once: a copy in key
        // order resumes after its checkpoint, from the checkpoint's counts
        // (objects copied beyond it are found up to date again); a Drive
        // copy lists everything again (earlier copies are found up to
        // date); a purge's deletions are not found again, so they add up.
        // A sync or a check runs whole again (a sync's copy finds what it
        // copied up to date).
        let resumable = matches!(&v.job, Job::Copy { src, .. } if src.lists_in_key_order());
        let base = match &v.job {
            Job::Copy { .. } if resumable => shard.checkpoint,
            Job::Copy { .. } | Job::Sync { .. } | Job::Check { .. } => Counts::default(),
            Job::Purge { .. } => Counts {
                done: shard.items_done,
                bytes: shard.bytes_done,
                ..Counts::default()
            },
        };
        let what = v.job.describe();
        tracing::info!(
            "{lease}: {what} (attempt {}, {} of memory{})",
            shard.attempts,
            ByteSize(share),
            shard
                .checkpoint_key
                .as_deref()
                .map_or(String::new(), |k| format!(", resuming after {k:?}"))
        );
        let watermark = Arc::new(Watermark::new(shard.checkpoint_key.clone()));
        let progress = |w: &Watermark| {
            let (key, prefix) = if resumable {
                w.checkpoint()
            } else {
                (None, PrefixCounts::default())
            };
            running
                .counters
                .progress(key, shard.checkpoint.plus(prefix))
        };
        // The task's share of the service's memory is waited for in turn,
        // under the lease: the heartbeat below renews it meanwhile.
        let job = async {
            let mut waiting = cancelled.clone();
            let _share = tokio::select! {
                p = self.gov.acquire(share, "serve.task") => p,
                _ = crate::cancel::until_set(&mut waiting) => {
                    return Err(anyhow::anyhow!("cancelled before it started"));
                }
            };
            let range = self
                .shard_range(&v.job, &shard, &lease, &running.gov)
                .await?;
            run_job(&v.job, &running, &cancelled, range, &watermark).await
        };
        tokio::pin!(job);
        let ttl = self.fleet.lease_ttl;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = tokio::time::Instant::now();
        // Set when this replica no longer holds the attempt: nothing more
        // is written for it.
        let mut lost = false;
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                _ = tick.tick(), if !lost => {
                    // A write that hangs (the database unreachable without
                    // an error) counts as failed after a third of the lease.
                    let beat = tokio::time::timeout(
                        ttl / 3,
                        self.db.progress(&lease, ttl.as_millis() as i64, base, &progress(&watermark)),
                    )
                    .await;
                    match beat {
                        Ok(Ok(Heartbeat::Held { cancel_requested })) => {
                            renewed = tokio::time::Instant::now();
                            if cancel_requested && !*cancelled.borrow() {
                                tracing::info!("{lease}: cancelled (recorded by another replica)");
                                let _ = running.cancel.send(true);
                            }
                        }
                        Ok(Ok(Heartbeat::Lost)) => {
                            tracing::warn!(
                                "{lease}: this replica no longer holds its attempt {} (taken over, ended or deleted): stopping without writing",
                                lease.attempt
                            );
                            lost = true;
                            let _ = running.cancel.send(true);
                        }
                        Ok(Err(e)) => tracing::warn!("{lease}: cannot renew its lease: {e}"),
                        Err(_) => tracing::warn!("{lease}: renewing its lease took over {:?}", ttl / 3),
                    }
                    // Fencing on this side too: past two thirds of the
                    // lease without a renewal, another replica may take the
                    // shard over at any moment, so this one stops its work.
                    if !lost && renewed.elapsed() > ttl * 2 / 3 {
                        tracing::warn!(
                            "{lease}: its lease was not renewed for {:?}: stopping; another replica resumes it when the lease expires",
                            renewed.elapsed()
                        );
                        lost = true;
                        let _ = running.cancel.send(true);
                    }
                }
            }
        };
        if lost {
            return;
        }
        let p = progress(&watermark);
        if self.shutting_down() {
            match self.db.release(&lease, base, &p).await {
                Ok(Some(_)) => tracing::info!(
                    "{lease}: stopped for shutdown and handed back (queued with its checkpoint)"
                ),
                Ok(None) => {
                    tracing::info!("{lease}: stopped for shutdown; its lease was no longer held")
                }
                Err(e) => tracing::warn!(
                    "{lease}: cannot hand it back at shutdown ({e}); its lease expires and another replica resumes it"
                ),
            }
            return;
        }
        let report = result
            .as_ref()
            .ok()
            .and_then(|e| e.report.as_ref())
            .map(|r| r.to_string());
        let deleted = result.as_ref().map_or(0, |e| e.deleted);
        let (status, error) = ending(kind, result, *cancelled.borrow());
        match self
            .db
            .finish(
                &lease,
                base,
                &p,
                ShardEnd {
                    status,
                    error: error.as_deref(),
                    report: report.as_deref(),
                    deleted,
                },
            )
            .await
        {
            Ok(Some(task_status)) => {
                tracing::info!("{lease}: {status}");
                if task_status != Status::Running && task_status != Status::Queued {
                    tracing::info!("task {}: {task_status}", lease.task);
                }
            }
            Ok(None) => tracing::warn!(
                "{lease}: its lease was lost before its end ({status}) was written; the replica holding it now writes the end"
            ),
            Err(e) => tracing::error!("{lease}: cannot save its end ({status}): {e}"),
        }
    }
}

impl Job {
    /// One line for the log: what the job does.
    fn describe(&self) -> String {
        match self {
            Job::Copy { src, dst, .. } => format!("copy {src} -> {dst}"),
            Job::Purge {
                target, older_than, ..
            } => format!(
                "purge {target} older than {}",
                humantime::format_duration(*older_than)
            ),
            Job::Sync { src, dst, .. } => format!("sync {src} -> {dst}"),
            Job::Check { src, dst, .. } => format!("check {src} against {dst}"),
        }
    }
}

/// How a job ended: its outcome, what it reports besides its counters
/// (a sync's deletions, a check's differences), and what makes it fail
/// although no item failed (deletions refused, differences found).
pub struct Ended {
    outcome: Outcome,
    report: Option<serde_json::Value>,
    problem: Option<String>,
    /// Keys a sync deleted (its copies are the outcome's).
    deleted: u64,
}

impl From<Outcome> for Ended {
    fn from(outcome: Outcome) -> Self {
        Ended {
            outcome,
            report: None,
            problem: None,
            deleted: 0,
        }
    }
}

/// Differences a check task's report lists (its counts cover them all).
const REPORTED_DIFFERENCES: usize = 100;

/// Runs a shard's job inside its own governor, counting into its
/// counters; a copy lists `range` and moves `watermark`.
async fn run_job(
    job: &Job,
    running: &Running,
    cancelled: &watch::Receiver<bool>,
    range: Option<KeyRange>,
    watermark: &Arc<Watermark>,
) -> anyhow::Result<Ended> {
    let copy_env = |counters: &Arc<CopyCounters>, range, watermark| CopyEnv {
        gov: running.gov.clone(),
        probe: MemoryProbe::detect(),
        counters: counters.clone(),
        cancel: cancelled.clone(),
        range,
        watermark,
    };
    match (job, &running.counters) {
        (Job::Copy { src, dst, options }, TaskCounters::Copy(counters)) => {
            let env = copy_env(counters, range, Some(watermark.clone()));
            Ok(copy::execute(src, dst, options, env).await?.outcome.into())
        }
        (
            Job::Sync {
                src,
                dst,
                options,
                max_delete,
            },
            TaskCounters::Copy(counters),
        ) => {
            let outcome = copy::execute(src, dst, options, copy_env(counters, None, None))
                .await?
                .outcome;
            if *cancelled.borrow() {
                return Ok(outcome.into());
            }
            let deletions = sync::delete_extras(
                src,
                dst,
                options,
                &running.gov,
                *max_delete,
                outcome.failed > 0,
                &mut |line| tracing::info!("{line}"),
            )
            .await?;
            let problem = match (&deletions.refused, deletions.failed) {
                // A failed copy says so itself.
                (Some(_), _) if outcome.failed > 0 => None,
                (Some(why), _) => Some(why.clone()),
                (None, 0) => None,
                (None, n) => Some(format!("{n} deletions failed")),
            };
            Ok(Ended {
                deleted: deletions.deleted,
                report: Some(json!({ "deletions": deletions })),
                outcome,
                problem,
            })
        }
        (Job::Check { src, dst, options }, TaskCounters::Check(counters)) => {
            let started = std::time::Instant::now();
            let mut listed = Vec::new();
            sync::compare(src, dst, options, &running.gov, counters, &mut |line| {
                if listed.len() < REPORTED_DIFFERENCES {
                    listed.push(line);
                }
            })
            .await?;
            let summary = counters.summary();
            let outcome = Outcome::collect(
                &crate::telemetry::Failures::default(),
                &running.gov,
                &MemoryProbe::detect(),
                started.elapsed(),
            );
            let problem = (!summary.matches()).then(|| {
                format!(
                    "{} differences ({} different, {} missing from the destination, {} only in the destination, {} unreadable); first: {}",
                    summary.differences(),
                    summary.differ,
                    summary.missing,
                    summary.extra,
                    summary.errors,
                    listed.first().map_or("", String::as_str)
                )
            });
            Ok(Ended {
                deleted: 0,
                report: Some(json!({ "check": summary, "differences": listed })),
                outcome,
                problem,
            })
        }
        (
            Job::Purge {
                target,
                older_than,
                options,
            },
            TaskCounters::Purge(counters),
        ) => {
            let env = PurgeEnv {
                gov: running.gov.clone(),
                probe: MemoryProbe::detect(),
                counters: counters.clone(),
                cancel: cancelled.clone(),
                simulated_latency: None,
            };
            Ok(purge::execute(target, *older_than, options, env)
                .await?
                .outcome
                .into())
        }
        // TaskCounters::for_job makes the counters of the job's kind.
        _ => anyhow::bail!("internal error: the task's counters are not its job's"),
    }
}

/// The status a task ends in, and its error: cancelled whatever the job
/// said, failed when the job could not run, an item failed (the first
/// one named) or the job found a problem, else succeeded.
fn ending(kind: Kind, result: anyhow::Result<Ended>, cancelled: bool) -> (Status, Option<String>) {
    match result {
        _ if cancelled => (Status::Cancelled, None),
        Ok(Ended { outcome: s, .. }) if s.failed > 0 => (
            Status::Failed,
            Some(format!(
                "{} {} failed; first: {}",
                s.failed,
                match kind {
                    Kind::Copy | Kind::Sync | Kind::Check => "objects",
                    Kind::Purge => "files",
                },
                s.failures
                    .first()
                    .map_or_else(String::new, |(w, r)| format!("{w}: {r}"))
            )),
        ),
        Ok(Ended {
            problem: Some(p), ..
        }) => (Status::Failed, Some(p)),
        Ok(_) => (Status::Succeeded, None),
        Err(e) => (Status::Failed, Some(format!("{e:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_tagged_by_kind_and_name_the_bad_field() {
        let copy = TaskSpec::parse(json!({"kind": "copy", "source": "/a", "destination": "/b"}));
        assert!(matches!(copy, Ok(TaskSpec::Copy(_))), "{copy:?}");
        for (body, field) in [
            (json!({"kind": "mirror", "source": "/a"}), "kind"),
            (json!({"source": "/a", "destination": "/b"}), "kind"),
            (json!({"kind": "copy", "source": "/a"}), "destination"),
            (json!({"kind": "purge", "target": "/a"}), "older_than"),
            (
                json!({"kind": "purge", "target": "/a", "older_than": "1d", "checksum": true}),
                "checksum",
            ),
        ] {
            let e = TaskSpec::parse(body.clone()).unwrap_err();
            assert!(e.contains(field), "{body}: {e}");
        }
    }

    #[test]
    fn a_stored_spec_names_a_dry_run_the_way_migration_0008_finds_it() {
        // 0008 marks earlier tasks as dry runs by `spec LIKE
        // '%"dry_run":true%'`: the compact JSON the API stores.
        let marked = |body: serde_json::Value| {
            let spec = TaskSpec::parse(body).unwrap();
            serde_json::to_string(&spec)
                .unwrap()
                .contains(r#""dry_run":true"#)
        };
        for kind in ["copy", "sync"] {
            assert!(marked(
                json!({"kind": kind, "source": "/a", "destination": "/b", "dry_run": true})
            ));
        }
        assert!(marked(
            json!({"kind": "purge", "target": "/a", "older_than": "1d", "dry_run": true})
        ));
        assert!(!marked(
            json!({"kind": "copy", "source": "/a", "destination": "/b"})
        ));
        // The words inside a path are escaped, so they do not match.
        assert!(!marked(
            json!({"kind": "copy", "source": "/a/\"dry_run\":true", "destination": "/b"})
        ));
    }

    #[test]
    fn rows_written_before_specs_were_tagged_still_run() {
        // What the untagged spec serialised: every kind's flags.
        let old_copy = json!({"kind": "copy", "source": "/a", "destination": "/b",
            "remove_empty_dirs": false, "include": [], "exclude": [], "dry_run": false, "checksum": true});
        let Ok(TaskSpec::Copy(c)) = TaskSpec::from_stored(old_copy) else {
            panic!("an old copy row must parse");
        };
        assert!(c.checksum);
        let old_purge = json!({"kind": "purge", "target": "/a", "older_than": "30d",
            "remove_empty_dirs": true, "include": [], "exclude": [], "dry_run": false, "checksum": false});
        assert!(matches!(
            TaskSpec::from_stored(old_purge),
            Ok(TaskSpec::Purge(PurgeSpec {
                remove_empty_dirs: true,
                ..
            }))
        ));
        // A flag that was set is not silently dropped.
        let odd =
            json!({"kind": "copy", "source": "/a", "destination": "/b", "remove_empty_dirs": true});
        assert!(TaskSpec::from_stored(odd).is_err());
    }

    #[test]
    fn a_task_runs_with_the_jobs_own_defaults() {
        let spec = TaskSpec::parse(
            json!({"kind": "copy", "source": "s3://bucket/x", "destination": "s3://bucket/y"}),
        )
        .unwrap();
        let v = validate(spec, &[], &DriveAccess::default()).unwrap();
        let Job::Copy { options, .. } = v.job else {
            panic!("a copy")
        };
        let defaults = CopyOptions::default();
        assert_eq!(options.retries, defaults.retries);
        assert_eq!(options.s3.request_timeout, defaults.s3.request_timeout);
        assert_eq!(options.part_size, None);
    }
}

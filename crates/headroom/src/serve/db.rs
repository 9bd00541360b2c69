//! Where tasks live: SQLite (a file, the default) or PostgreSQL, through
//! sqlx's `Any` driver, so there is one schema (`migrations/`) and one set
//! of queries (`$1` placeholders work on both).
//!
//! The database is the truth: only running tasks are also in memory, and
//! every change of status is a conditional `UPDATE … WHERE status = …`, so
//! a deleted task is never written back and a cancelled one never runs.
//!
//! A task's work is in its shards (`shards`): ranges of the source's keys
//! that replicas claim under leases, renew, split and end. A task's
//! counters are the sums of its shards' (one aggregate per read), and its
//! status follows them: `running` while a shard runs, `queued` when none
//! runs and some wait, and at the end `succeeded`, `failed` (a shard
//! failed), `interrupted` (a shard was) or `cancelled`. Every change that
//! can end or re-queue a task takes the task's row first (an `UPDATE` of
//! it), so two replicas ending its last two shards at once cannot both
//! miss the other's end, and a claim never races a task's settling.

use crate::telemetry::now_ms;
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// A task's life: `queued` → `running` → `succeeded` | `failed` |
/// `cancelled`; `running` → `interrupted` when the service died and does
/// not resume on its own (`--no-resume`). Stored and shown as the
/// lower-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl Status {
    /// Every status, in the order of a task's life.
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::Interrupted,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {s:?}; one of {}", all.join(", "))
            })
    }
}

/// What a task does. Stored and shown as the lower-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Copy,
    Purge,
    Sync,
    Check,
}

impl Kind {
    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Copy => "copy",
            Kind::Purge => "purge",
            Kind::Sync => "sync",
            Kind::Check => "check",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "copy" => Ok(Kind::Copy),
            "purge" => Ok(Kind::Purge),
            "sync" => Ok(Kind::Sync),
            "check" => Ok(Kind::Check),
            other => Err(format!(
                "unknown task kind {other:?}; one of \"copy\", \"purge\", \"sync\", \"check\""
            )),
        }
    }
}

/// One row of `tasks`.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub kind: Kind,
    pub status: Status,
    pub spec: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The most attempts any of its shards took (1 when none was resumed).
    pub attempts: i64,
    /// The counters, for any kind (see `tasks::CounterNames` for what
    /// each means to a copy and to a purge), summed over its shards.
    /// Totals over every attempt, each key counted once:
    pub items_listed: i64,
    pub items_done: i64,
    pub items_skipped: i64,
    pub bytes_done: i64,
    /// The current (or last) attempts:
    pub items_failed: i64,
    pub attempt_items_listed: i64,
    pub attempt_items_done: i64,
    pub attempt_bytes_done: i64,
    pub checkpoint_key: Option<String>,
    pub error: Option<String>,
    /// What a finished single-shard task reports besides its counters
    /// (JSON: a sync's deletions, a check's differences).
    pub report: Option<String>,
    /// A replica holding one of its running shards (the first by id), and
    /// the earliest of their leases' expiries.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    /// Its shards by status.
    pub shards: ShardCounts,
}

/// How many shards a task has, by status.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ShardCounts {
    pub total: i64,
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// Running on this many replicas.
    pub replicas: i64,
}

/// One row of `shards`: a range of a task's keys and its progress.
#[derive(Debug, Clone, Serialize)]
pub struct ShardRow {
    pub task_id: String,
    pub no: i64,
    /// Keys after this one; `None`: from the first.
    pub after_key: Option<String>,
    /// Keys up to this one; `None`: to the last (the shard that may split).
    pub through_key: Option<String>,
    pub status: Status,
    pub attempts: i64,
    pub items_done: i64,
    pub bytes_done: i64,
    pub items_listed: i64,
    pub items_skipped: i64,
    pub items_failed: i64,
    pub attempt_items_listed: i64,
    pub attempt_items_done: i64,
    pub attempt_bytes_done: i64,
    pub checkpoint_key: Option<String>,
    /// What the keys up to the checkpoint were, over every attempt.
    pub checkpoint: Counts,
    pub error: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub started_at: Option<i64>,
    pub updated_at: i64,
}

/// The lease a replica holds on a running attempt of a shard: writes for
/// the attempt name all of it, and do nothing once another replica (or
/// attempt) holds it.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The task.
    pub task: String,
    /// Its shard.
    pub shard: i64,
    /// The replica.
    pub owner: String,
    /// The shard's attempt (its `attempts` when it was claimed).
    pub attempt: i64,
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} shard {}", self.task, self.shard)
    }
}

/// What a replica has room for when it claims a task.
#[derive(Clone, Copy, Debug)]
pub struct Room {
    /// Its governor's budget not reserved now.
    pub available: u64,
    /// Its governor's budget.
    pub budget: u64,
    /// The share of a task that asked for none.
    pub default_share: u64,
}

/// What renewing a lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// Still held; whether a cancel was recorded (by any replica).
    Held { cancel_requested: bool },
    /// Taken over, ended or deleted: stop working for it.
    Lost,
}

/// One replica of the fleet, as it last wrote itself.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaRow {
    pub id: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub memory_budget: i64,
    pub memory_reserved: i64,
    /// Shards it runs.
    pub tasks_running: i64,
    pub stopped_at: Option<i64>,
}

fn row(r: &AnyRow) -> Result<TaskRow, sqlx::Error> {
    let spec: String = r.try_get("spec")?;
    let status: String = r.try_get("status")?;
    let id: String = r.try_get("id")?;
    // A row this version cannot read is an error, never a silent null.
    let corrupt = |what: String| sqlx::Error::Decode(format!("task {id}: {what}").into());
    Ok(TaskRow {
        status: status.parse().map_err(corrupt)?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt(format!("spec: {e}")))?,
        kind: r.try_get::<String, _>("kind")?.parse().map_err(corrupt)?,
        id,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        attempts: r.try_get("attempts")?,
        items_done: r.try_get("items_done")?,
        bytes_done: r.try_get("bytes_done")?,
        items_listed: r.try_get("items_listed")?,
        items_skipped: r.try_get("items_skipped")?,
        items_failed: r.try_get("items_failed")?,
        attempt_items_done: r.try_get("attempt_items_done")?,
        attempt_bytes_done: r.try_get("attempt_bytes_done")?,
        attempt_items_listed: r.try_get("attempt_items_listed")?,
        checkpoint_key: r.try_get("checkpoint_key")?,
        error: r.try_get("error")?,
        report: r.try_get("report")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
        shards: ShardCounts {
            total: r.try_get("shards_total")?,
            queued: r.try_get("shards_queued")?,
            running: r.try_get("shards_running")?,
            succeeded: r.try_get("shards_succeeded")?,
            failed: r.try_get("shards_failed")?,
            replicas: r.try_get("shards_replicas")?,
        },
    })
}

fn shard_row(r: &AnyRow) -> Result<ShardRow, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(ShardRow {
        task_id: r.try_get("task_id")?,
        no: r.try_get("no")?,
        after_key: r.try_get("after_key")?,
        through_key: r.try_get("through_key")?,
        status: status
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        attempts: r.try_get("attempts")?,
        items_done: r.try_get("items_done")?,
        bytes_done: r.try_get("bytes_done")?,
        items_listed: r.try_get("items_listed")?,
        items_skipped: r.try_get("items_skipped")?,
        items_failed: r.try_get("items_failed")?,
        attempt_items_listed: r.try_get("attempt_items_listed")?,
        attempt_items_done: r.try_get("attempt_items_done")?,
        attempt_bytes_done: r.try_get("attempt_bytes_done")?,
        checkpoint_key: r.try_get("checkpoint_key")?,
        checkpoint: Counts {
            listed: r.try_get("checkpoint_items_listed")?,
            done: r.try_get("checkpoint_items_done")?,
            skipped: r.try_get("checkpoint_items_skipped")?,
            bytes: r.try_get("checkpoint_bytes_done")?,
        },
        error: r.try_get("error")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
        started_at: r.try_get("started_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// A select of tasks with their shards' sums: `$from` is the tasks (a
/// table or a page of it, as `t`), `$which` the shards' condition (the
/// same tasks). Sums are cast because PostgreSQL's SUM of BIGINT is
/// NUMERIC.
macro_rules! tasks_with_sums {
    ($from:literal, $which:literal) => {
        concat!(
            "SELECT t.*, ",
            "CAST(COALESCE(a.items_done, 0) AS BIGINT) AS items_done, ",
            "CAST(COALESCE(a.bytes_done, 0) AS BIGINT) AS bytes_done, ",
            "CAST(COALESCE(a.items_listed, 0) AS BIGINT) AS items_listed, ",
            "CAST(COALESCE(a.items_skipped, 0) AS BIGINT) AS items_skipped, ",
            "CAST(COALESCE(a.items_failed, 0) AS BIGINT) AS items_failed, ",
            "CAST(COALESCE(a.attempt_items_done, 0) AS BIGINT) AS attempt_items_done, ",
            "CAST(COALESCE(a.attempt_items_listed, 0) AS BIGINT) AS attempt_items_listed, ",
            "CAST(COALESCE(a.attempt_bytes_done, 0) AS BIGINT) AS attempt_bytes_done, ",
            "CAST(COALESCE(a.attempts, 0) AS BIGINT) AS attempts, ",
            "CAST(COALESCE(a.shards_total, 0) AS BIGINT) AS shards_total, ",
            "CAST(COALESCE(a.shards_queued, 0) AS BIGINT) AS shards_queued, ",
            "CAST(COALESCE(a.shards_running, 0) AS BIGINT) AS shards_running, ",
            "CAST(COALESCE(a.shards_succeeded, 0) AS BIGINT) AS shards_succeeded, ",
            "CAST(COALESCE(a.shards_failed, 0) AS BIGINT) AS shards_failed, ",
            "CAST(COALESCE(a.shards_replicas, 0) AS BIGINT) AS shards_replicas, ",
            "a.checkpoint_key, a.report, a.lease_owner, a.lease_expires_at ",
            "FROM ",
            $from,
            " t LEFT JOIN (SELECT task_id, SUM(items_done) AS items_done, SUM(bytes_done) AS bytes_done, ",
            "SUM(items_listed) AS items_listed, SUM(items_skipped) AS items_skipped, ",
            "SUM(items_failed) AS items_failed, SUM(attempt_items_done) AS attempt_items_done, ",
            "SUM(attempt_bytes_done) AS attempt_bytes_done, SUM(attempt_items_listed) AS attempt_items_listed, ",
            "COUNT(*) AS shards_total, MAX(attempts) AS attempts, ",
            "SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS shards_queued, ",
            "SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS shards_running, ",
            "SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END) AS shards_succeeded, ",
            "SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS shards_failed, ",
            "COUNT(DISTINCT CASE WHEN status = 'running' THEN lease_owner END) AS shards_replicas, ",
            "CASE WHEN COUNT(*) = 1 THEN MAX(checkpoint_key) END AS checkpoint_key, ",
            "CASE WHEN COUNT(*) = 1 THEN MAX(report) END AS report, ",
            "MIN(CASE WHEN status = 'running' THEN lease_owner END) AS lease_owner, ",
            "MIN(CASE WHEN status = 'running' THEN lease_expires_at END) AS lease_expires_at ",
            "FROM shards WHERE ",
            $which,
            " GROUP BY task_id) a ON a.task_id = t.id"
        )
    };
}

/// The status a task whose shards all stopped running takes: cancelled if
/// a cancel was recorded, queued while a shard waits, else by its shards'
/// ends (a failed one fails it, an interrupted one interrupts it).
macro_rules! settled_status {
    () => {
        concat!(
            "CASE WHEN cancel_requested = 1 THEN 'cancelled' ",
            "WHEN EXISTS (SELECT 1 FROM shards s WHERE s.task_id = tasks.id AND s.status = 'queued') THEN 'queued' ",
            "WHEN EXISTS (SELECT 1 FROM shards s WHERE s.task_id = tasks.id AND s.status = 'failed') THEN 'failed' ",
            "WHEN EXISTS (SELECT 1 FROM shards s WHERE s.task_id = tasks.id AND s.status = 'interrupted') THEN 'interrupted' ",
            "ELSE 'succeeded' END"
        )
    };
}

/// Settles task `id` if no shard of it runs any more: its status follows
/// its shards (see [`settled_status`]), its error is its first failed
/// shard's, and a cancelled task's waiting shards are cancelled too. The
/// first write takes the task's row (PostgreSQL waits for a claim or
/// another settling in progress; the next statement then sees it).
/// Returns the status it took, `None` when it was not running or a shard
/// still runs.
async fn settle(conn: &mut sqlx::AnyConnection, id: &str) -> sqlx::Result<Option<Status>> {
    let now = now_ms() as i64;
    let locked =
        sqlx::query("UPDATE tasks SET updated_at = $1 WHERE id = $2 AND status = 'running'")
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    if locked.rows_affected() == 0 {
        return Ok(None);
    }
    let settled = sqlx::query(concat!(
        "UPDATE tasks SET status = ",
        settled_status!(),
        ", error = CASE WHEN ",
        settled_status!(),
        " = 'failed' THEN (SELECT s.error FROM shards s WHERE s.task_id = tasks.id AND s.status = 'failed' ",
        "ORDER BY s.no LIMIT 1) ELSE NULL END, ",
        "finished_at = CASE WHEN ",
        settled_status!(),
        " IN ('succeeded', 'failed', 'cancelled') THEN COALESCE(finished_at, $1) ELSE finished_at END ",
        "WHERE id = $2 AND status = 'running' ",
        "AND NOT EXISTS (SELECT 1 FROM shards s WHERE s.task_id = tasks.id AND s.status = 'running') ",
        "RETURNING status"
    ))
    .bind(now)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = settled else { return Ok(None) };
    let status: Status = r
        .try_get::<String, _>("status")?
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
    if status == Status::Cancelled {
        sqlx::query(
            "UPDATE shards SET status = 'cancelled', updated_at = $1 WHERE task_id = $2 AND status IN ('queued', 'interrupted')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(status))
}

/// What a claim started: the task and the attempt of its shard.
#[derive(Debug, Clone)]
pub struct Claim {
    pub task: TaskRow,
    pub shard: ShardRow,
}

/// How a shard's attempt ends, besides its progress.
#[derive(Debug, Clone, Copy)]
pub struct ShardEnd<'a> {
    pub status: Status,
    pub error: Option<&'a str>,
    /// What a single-shard task reports besides its counters (JSON).
    pub report: Option<&'a str>,
    /// Keys a sync deleted.
    pub deleted: u64,
}

impl<'a> ShardEnd<'a> {
    /// An end with `status` and `error`, nothing reported or deleted.
    pub fn with(status: Status, error: Option<&'a str>) -> Self {
        ShardEnd {
            status,
            error,
            report: None,
            deleted: 0,
        }
    }
}

/// What `/metrics` reads from the database.
pub struct DbStats {
    /// Tasks per status.
    pub by_status: Vec<(String, i64)>,
    /// Per kind, over all its tasks but dry runs.
    pub totals: Vec<Totals>,
}

/// What the tasks of one kind did, summed over their shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub kind: Kind,
    /// Items done (copied, or deleted by a purge) and their bytes.
    pub done: i64,
    pub bytes: i64,
    /// Keys a sync deleted.
    pub deleted: i64,
}

impl DbStats {
    /// The totals of `kind` (zeros when it has no tasks).
    pub fn totals_of(&self, kind: Kind) -> Totals {
        self.totals
            .iter()
            .find(|t| t.kind == kind)
            .copied()
            .unwrap_or(Totals {
                kind,
                done: 0,
                bytes: 0,
                deleted: 0,
            })
    }
}

/// Counts of a shard's keys: listed, done (copied, or deleted), skipped
/// (up to date, or kept) and the bytes of those done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub listed: i64,
    pub done: i64,
    pub skipped: i64,
    pub bytes: i64,
}

impl Counts {
    /// These counts and a listing's completed prefix (its copies as done).
    pub fn plus(self, p: crate::jobs::copy::PrefixCounts) -> Counts {
        Counts {
            listed: self.listed + p.listed as i64,
            done: self.done + p.copied as i64,
            skipped: self.skipped + p.skipped as i64,
            bytes: self.bytes + p.bytes as i64,
        }
    }
}

/// Progress of a running attempt, written every second.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// This attempt's counts; the shard's totals add them to what earlier
    /// attempts left (see `tasks`: a resumed copy's checkpoint counts).
    pub attempt: Counts,
    pub items_failed: i64,
    pub checkpoint_key: Option<String>,
    /// The keys up to `checkpoint_key` over every attempt.
    pub checkpoint: Counts,
}

/// Connections to the database at most.
const MAX_CONNECTIONS: u32 = 4;
/// SQLite's page cache per connection: 512 KiB (the default is 2 MiB).
/// The scheduler's queries every second spread work over every pooled
/// connection, so all of their caches fill: 2 MiB in all.
const SQLITE_CACHE_PRAGMA: &str = "PRAGMA cache_size = -512";

/// The task database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    /// Shown in logs, without a password.
    pub display: String,
    /// PostgreSQL (a fleet's database) rather than SQLite (one machine's).
    postgres: bool,
}

/// Turns `--db` into a sqlx URL: postgres:// and sqlite: URLs as given, a
/// plain path as a SQLite file (created if missing).
pub fn database_url(db: &str) -> String {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") || db.starts_with("sqlite:")
    {
        db.to_string()
    } else {
        format!("sqlite://{db}?mode=rwc")
    }
}

/// The columns `$1`..`$14` of a progress write set, in [`bind_progress`]'s
/// order.
macro_rules! progress_columns {
    () => {
        concat!(
            "updated_at = $1, items_listed = $2, items_skipped = $3, items_failed = $4, ",
            "attempt_items_done = $5, attempt_bytes_done = $6, items_done = $7, bytes_done = $8, ",
            "attempt_items_listed = $9, checkpoint_key = COALESCE($10, checkpoint_key), ",
            "checkpoint_items_listed = $11, checkpoint_items_done = $12, ",
            "checkpoint_items_skipped = $13, checkpoint_bytes_done = $14"
        )
    };
}

/// Binds `$1`..`$14` of a progress write: the time, the totals over every
/// attempt (`base` plus this one's), this attempt's counters, the
/// checkpoint and its counts.
fn bind_progress<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    base: Counts,
    p: &'q Progress,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let a = &p.attempt;
    q.bind(now_ms() as i64)
        .bind(base.listed + a.listed)
        .bind(base.skipped + a.skipped)
        .bind(p.items_failed)
        .bind(a.done)
        .bind(a.bytes)
        .bind(base.done + a.done)
        .bind(base.bytes + a.bytes)
        .bind(a.listed)
        .bind(p.checkpoint_key.as_deref())
        .bind(p.checkpoint.listed)
        .bind(p.checkpoint.done)
        .bind(p.checkpoint.skipped)
        .bind(p.checkpoint.bytes)
}

/// Leases are stamped and compared with the database's clock, never a
/// replica's: replicas whose clocks disagree still agree on when a lease
/// expires. `$sql!(NOW)` expands to the statement for each backend, with
/// `NOW` the current Unix time in milliseconds by that database's clock.
macro_rules! on_db_clock {
    ($db:expr, $sql:ident) => {
        if $db.postgres {
            $sql!("CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
        } else {
            $sql!("CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)")
        }
    };
}

impl Db {
    /// Connects and brings the schema up to date.
    pub async fn open(db: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let url = database_url(db);
        let display = match url::Url::parse(&url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => url.clone(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // SQLite's page cache is per connection: a fixed
                    // 512 KiB each, whatever the history's size.
                    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                        sqlx::query(SQLITE_CACHE_PRAGMA).execute(conn).await?;
                    }
                    Ok(())
                })
            })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
            .with_context(|| format!("cannot open the task database {display}"))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate the task database {display}"))?;
        let postgres = url.starts_with("postgres");
        Ok(Db {
            pool,
            display,
            postgres,
        })
    }

    /// Whether this is PostgreSQL, where replicas share tasks; SQLite is
    /// one machine's.
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Whether the database answers and takes writes (a read-only
    /// database, a full disk or a lost primary is not ready).
    pub async fn ping(&self) -> bool {
        sqlx::query("UPDATE readiness SET checked_at = $1 WHERE id = 1")
            .bind(now_ms() as i64)
            .execute(&self.pool)
            .await
            .is_ok_and(|r| r.rows_affected() == 1)
    }

    /// Records that a running task is to be cancelled; whether it was
    /// running. Done before the run is stopped, so the cancel holds even
    /// if the service dies before the task's end is written.
    pub async fn request_cancel(&self, id: &str) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE tasks SET cancel_requested = 1, updated_at = $1 WHERE id = $2 AND status = 'running'",
        )
        .bind(now_ms() as i64)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Queues a new task, with one shard over all its keys; `share` is the
    /// memory it asked for (`None`: the default of the replica that claims
    /// it); `dry_run` keeps its counts out of the service's totals.
    pub async fn insert(
        &self,
        id: &str,
        kind: Kind,
        spec: &str,
        share: Option<u64>,
        dry_run: bool,
    ) -> sqlx::Result<TaskRow> {
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tasks (id, kind, status, spec, created_at, updated_at, memory_share, dry_run) VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(spec)
        .bind(now)
        .bind(now)
        .bind(share.map(|s| s as i64))
        .bind(i64::from(dry_run))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO shards (task_id, no, status, updated_at) VALUES ($1, 0, 'queued', $2)",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get(id).await?.ok_or_else(|| sqlx::Error::RowNotFound)
    }

    /// A task, with its counters summed over its shards.
    pub async fn get(&self, id: &str) -> sqlx::Result<Option<TaskRow>> {
        let r = sqlx::query(concat!(
            tasks_with_sums!("tasks", "task_id = $1"),
            " WHERE t.id = $2"
        ))
        .bind(id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(row).transpose()
    }

    /// A page of tasks, newest first, optionally of one status.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: i64,
        offset: i64,
    ) -> sqlx::Result<(Vec<TaskRow>, i64)> {
        // The page is chosen once for the tasks and once for their shards'
        // sums, so only the page's shards are summed. Rows become tasks as
        // they arrive: a page is never held twice.
        let (rows, total) = match status {
            Some(s) => {
                let rows = sqlx::query(concat!(
                    tasks_with_sums!(
                        "(SELECT * FROM tasks WHERE status = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3)",
                        "task_id IN (SELECT id FROM tasks WHERE status = $4 ORDER BY created_at DESC, id DESC LIMIT $5 OFFSET $6)"
                    ),
                    " ORDER BY t.created_at DESC, t.id DESC"
                ))
                .bind(s.as_str())
                .bind(limit)
                .bind(offset)
                .bind(s.as_str())
                .bind(limit)
                .bind(offset)
                .fetch(&self.pool)
                .map(|r| r.and_then(|r| row(&r)))
                .try_collect::<Vec<TaskRow>>()
                .await?;
                let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tasks WHERE status = $1")
                    .bind(s.as_str())
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")?;
                (rows, total)
            }
            None => {
                let rows = sqlx::query(concat!(
                    tasks_with_sums!(
                        "(SELECT * FROM tasks ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2)",
                        "task_id IN (SELECT id FROM tasks ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4)"
                    ),
                    " ORDER BY t.created_at DESC, t.id DESC"
                ))
                .bind(limit)
                .bind(offset)
                .bind(limit)
                .bind(offset)
                .fetch(&self.pool)
                .map(|r| r.and_then(|r| row(&r)))
                .try_collect::<Vec<TaskRow>>()
                .await?;
                let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tasks")
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")?;
                (rows, total)
            }
        };
        Ok((rows, total))
    }

    /// A page of task `id`'s shards, in key order.
    pub async fn shards(&self, id: &str, limit: i64, offset: i64) -> sqlx::Result<Vec<ShardRow>> {
        let rows =
            sqlx::query("SELECT * FROM shards WHERE task_id = $1 ORDER BY no LIMIT $2 OFFSET $3")
                .bind(id)
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(shard_row).collect()
    }

    /// Tasks per status, and per kind the totals of its tasks (items done
    /// and their bytes: copied, or deleted and freed).
    pub async fn stats(&self) -> sqlx::Result<DbStats> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let by_status = rows
            .iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect::<sqlx::Result<Vec<(String, i64)>>>()?;
        let rows = sqlx::query(
            "SELECT t.kind, CAST(COALESCE(SUM(s.items_done), 0) AS BIGINT) AS o, CAST(COALESCE(SUM(s.bytes_done), 0) AS BIGINT) AS b, \
             CAST(COALESCE(SUM(s.items_deleted), 0) AS BIGINT) AS d \
             FROM shards s JOIN tasks t ON t.id = s.task_id WHERE t.dry_run = 0 GROUP BY t.kind",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut totals = Vec::with_capacity(rows.len());
        for r in &rows {
            let kind: String = r.try_get("kind")?;
            let kind: Kind = kind
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
            totals.push(Totals {
                kind,
                done: r.try_get("o")?,
                bytes: r.try_get("b")?,
                deleted: r.try_get("d")?,
            });
        }
        Ok(DbStats { by_status, totals })
    }

    /// Moves a task that no shard runs from one status to another (a
    /// cancel of a waiting task, a resume of an interrupted one); whether
    /// it was in `from`. Its waiting shards follow: interrupted ones are
    /// queued again on a resume, waiting ones cancelled on a cancel.
    pub async fn transition(&self, id: &str, from: Status, to: Status) -> sqlx::Result<bool> {
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE tasks SET status = $1, updated_at = $2, finished_at = CASE WHEN $3 = 'cancelled' THEN COALESCE(finished_at, $4) ELSE finished_at END \
             WHERE id = $5 AND status = $6",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(to.as_str())
        .bind(now)
        .bind(id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        let moved = match to {
            Status::Queued => sqlx::query(
                "UPDATE shards SET status = 'queued', updated_at = $1 WHERE task_id = $2 AND status = 'interrupted'",
            ),
            _ => sqlx::query(
                "UPDATE shards SET status = $1, updated_at = $2 WHERE task_id = $3 AND status IN ('queued', 'interrupted')",
            )
            .bind(to.as_str()),
        };
        moved.bind(now).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Settles each task of `ids` in its own transaction (see [`settle`]).
    async fn settle_all(&self, ids: Vec<String>) -> sqlx::Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for id in ids {
            if !seen.insert(id.clone()) {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            settle(&mut tx, &id).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Marks every `running` shard (the service died under them: SQLite,
    /// one machine) as `to`, and settles their tasks: queued or
    /// interrupted, cancelled if a cancel was recorded. How many shards.
    pub async fn recover_running(&self, to: Status) -> sqlx::Result<u64> {
        let rows = sqlx::query(
            "UPDATE shards SET status = $1, updated_at = $2, lease_owner = NULL, lease_expires_at = NULL \
             WHERE status = 'running' RETURNING task_id",
        )
        .bind(to.as_str())
        .bind(now_ms() as i64)
        .fetch_all(&self.pool)
        .await?;
        let n = rows.len() as u64;
        let mut ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get("task_id"))
            .collect::<Result<_, _>>()?;
        // Tasks left running without a running shard (an older version's).
        let stranded = sqlx::query("SELECT id FROM tasks WHERE status = 'running'")
            .fetch_all(&self.pool)
            .await?;
        for r in &stranded {
            ids.push(r.try_get("id")?);
        }
        self.settle_all(ids).await?;
        Ok(n)
    }

    /// Marks the `running` shards whose lease `owner` held (this replica's
    /// previous process: a restart under the same replica id) as `to`, and
    /// settles their tasks. Other replicas' shards are theirs until their
    /// leases expire. How many shards.
    pub async fn recover_owner(&self, owner: &str, to: Status) -> sqlx::Result<u64> {
        let rows = sqlx::query(
            "UPDATE shards SET status = $1, updated_at = $2, lease_owner = NULL, lease_expires_at = NULL \
             WHERE status = 'running' AND lease_owner = $3 RETURNING task_id",
        )
        .bind(to.as_str())
        .bind(now_ms() as i64)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        let n = rows.len() as u64;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get("task_id"))
            .collect::<Result<_, _>>()?;
        self.settle_all(ids).await?;
        Ok(n)
    }

    /// Ends the leases that expired (their replica died, froze or lost the
    /// database): those shards become `to` (queued, to be claimed again,
    /// or interrupted) and their tasks are settled (cancelled if a cancel
    /// was recorded). Returns each shard with the replica that held it and
    /// how many milliseconds ago its lease expired (the lease columns keep
    /// the last holder until the next claim).
    pub async fn expire_leases(&self, to: Status) -> sqlx::Result<Vec<(String, i64, String, i64)>> {
        macro_rules! expire {
            ($now:literal) => {
                concat!(
                    "UPDATE shards SET status = $1, updated_at = $2 WHERE status = 'running' AND lease_expires_at < ",
                    $now,
                    " RETURNING task_id, no, COALESCE(lease_owner, '') AS owner, ",
                    $now,
                    " - COALESCE(lease_expires_at, 0) AS expired_ms_ago"
                )
            };
        }
        let rows = sqlx::query(on_db_clock!(self, expire))
            .bind(to.as_str())
            .bind(now_ms() as i64)
            .fetch_all(&self.pool)
            .await?;
        let expired = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("task_id")?,
                    r.try_get("no")?,
                    r.try_get("owner")?,
                    r.try_get::<i64, _>("expired_ms_ago")?,
                ))
            })
            .collect::<sqlx::Result<Vec<(String, i64, String, i64)>>>()?;
        let ids: Vec<String> = expired.iter().map(|e| e.0.clone()).collect();
        self.settle_all(ids).await?;
        Ok(expired)
    }

    /// Claims, for `owner` with a lease of `ttl_ms`, the first waiting
    /// shard of a task whose memory share fits in its `room` (a task
    /// without one takes the replica's default; a share above the budget
    /// runs within the budget): of the task with the fewest shards running,
    /// the oldest among those, so a large task's shards never keep a later
    /// task waiting. Starts a new attempt of the shard, and of the task if
    /// it was queued. The task's
    /// row is taken first, on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so
    /// replicas claiming at once never wait for each other.
    pub async fn claim_next(
        &self,
        owner: &str,
        ttl_ms: i64,
        room: Room,
    ) -> sqlx::Result<Option<Claim>> {
        // The same statement but for the row lock, which SQLite (one
        // writer at a time) neither needs nor has.
        macro_rules! claim_task {
            ($lock:literal) => {
                concat!(
                    "UPDATE tasks SET status = 'running', started_at = COALESCE(started_at, $1), updated_at = $2, ",
                    "error = CASE WHEN status = 'queued' THEN NULL ELSE error END ",
                    "WHERE id = (SELECT t.id FROM tasks t WHERE t.status IN ('queued', 'running') AND t.cancel_requested = 0 ",
                    "AND CASE WHEN t.memory_share IS NULL THEN $3 WHEN t.memory_share > $4 THEN $5 ELSE t.memory_share END <= $6 ",
                    "AND EXISTS (SELECT 1 FROM shards s WHERE s.task_id = t.id AND s.status = 'queued') ",
                    "ORDER BY (SELECT COUNT(*) FROM shards r WHERE r.task_id = t.id AND r.status = 'running'), ",
                    "t.created_at, t.id LIMIT 1",
                    $lock,
                    ") AND status IN ('queued', 'running') RETURNING id"
                )
            };
        }
        let sql = if self.postgres {
            claim_task!(" FOR UPDATE OF t SKIP LOCKED")
        } else {
            claim_task!("")
        };
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        let task = sqlx::query(sql)
            .bind(now)
            .bind(now)
            .bind(room.default_share as i64)
            .bind(room.budget as i64)
            .bind(room.budget as i64)
            .bind(room.available as i64)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(task) = task else { return Ok(None) };
        let id: String = task.try_get("id")?;
        macro_rules! claim_shard {
            ($now:literal) => {
                concat!(
                    "UPDATE shards SET status = 'running', attempts = attempts + 1, attempt_items_done = 0, ",
                    "attempt_bytes_done = 0, attempt_items_listed = 0, items_failed = 0, error = NULL, report = NULL, ",
                    "lease_owner = $1, lease_expires_at = ",
                    $now,
                    " + $2, started_at = COALESCE(started_at, $3), updated_at = $4 ",
                    "WHERE task_id = $5 AND no = (SELECT MIN(no) FROM shards WHERE task_id = $6 AND status = 'queued') ",
                    "AND status = 'queued' RETURNING *"
                )
            };
        }
        let shard = sqlx::query(on_db_clock!(self, claim_shard))
            .bind(owner)
            .bind(ttl_ms)
            .bind(now)
            .bind(now)
            .bind(&id)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        // Claimed by another replica since the task was chosen: nothing is
        // changed (the rollback undoes the task's write).
        let Some(shard) = shard else { return Ok(None) };
        let shard = shard_row(&shard)?;
        tx.commit().await?;
        match self.get(&id).await? {
            Some(task) => Ok(Some(Claim { task, shard })),
            None => Ok(None),
        }
    }

    /// Writes a running shard's progress and renews its lease by `ttl_ms`.
    /// `base` is what earlier attempts of it left. Nothing is written
    /// unless `lease` still holds the attempt; the answer says whether it
    /// does, and whether a cancel of the task was recorded.
    pub async fn progress(
        &self,
        lease: &Lease,
        ttl_ms: i64,
        base: Counts,
        p: &Progress,
    ) -> sqlx::Result<Heartbeat> {
        macro_rules! renew {
            ($now:literal) => {
                concat!(
                    "UPDATE shards SET ",
                    progress_columns!(),
                    ", lease_expires_at = ",
                    $now,
                    " + $15 WHERE task_id = $16 AND no = $17 AND status = 'running' AND lease_owner = $18 AND attempts = $19 ",
                    "RETURNING CAST(COALESCE((SELECT cancel_requested FROM tasks WHERE tasks.id = shards.task_id), 1) AS BIGINT) AS cancel_requested"
                )
            };
        }
        let r = bind_progress(sqlx::query(on_db_clock!(self, renew)), base, p)
            .bind(ttl_ms)
            .bind(&lease.task)
            .bind(lease.shard)
            .bind(&lease.owner)
            .bind(lease.attempt)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match r {
            Some(r) => Heartbeat::Held {
                cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
            },
            None => Heartbeat::Lost,
        })
    }

    /// Cuts the running shard of `lease`, which has no end yet, after key
    /// `at`: the shard ends there and the keys after it are queued as the
    /// next shard, in one fenced transaction. Whether `lease` still held
    /// the shard (and it had no end).
    pub async fn split(&self, lease: &Lease, at: &str) -> sqlx::Result<bool> {
        let now = now_ms() as i64;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE shards SET through_key = $1, updated_at = $2 WHERE task_id = $3 AND no = $4 \
             AND status = 'running' AND lease_owner = $5 AND attempts = $6 AND through_key IS NULL",
        )
        .bind(at)
        .bind(now)
        .bind(&lease.task)
        .bind(lease.shard)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO shards (task_id, no, after_key, status, updated_at) VALUES ($1, $2, $3, 'queued', $4)",
        )
        .bind(&lease.task)
        .bind(lease.shard + 1)
        .bind(at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Hands a running shard back (a replica stopping for SIGTERM): it is
    /// queued again with its progress and checkpoint, for any replica (or
    /// this one's next start) to resume; whether `lease` still held it.
    pub async fn release(
        &self,
        lease: &Lease,
        base: Counts,
        p: &Progress,
    ) -> sqlx::Result<Option<Status>> {
        self.finish(lease, base, p, ShardEnd::with(Status::Queued, None))
            .await
    }

    /// Ends a running shard's attempt with its final progress (or,
    /// `queued`, hands it back), fenced by `lease`, and settles its task
    /// in the same transaction. `None` when `lease` no longer held it;
    /// else the task's status after.
    pub async fn finish(
        &self,
        lease: &Lease,
        base: Counts,
        p: &Progress,
        end: ShardEnd<'_>,
    ) -> sqlx::Result<Option<Status>> {
        let ShardEnd {
            status,
            error,
            report,
            deleted,
        } = end;
        let mut tx = self.pool.begin().await?;
        let query = sqlx::query(concat!(
            "UPDATE shards SET ",
            progress_columns!(),
            ", status = $15, error = $16, report = $17, items_deleted = $18, ",
            "lease_owner = CASE WHEN $19 = 'queued' THEN NULL ELSE lease_owner END, lease_expires_at = NULL ",
            "WHERE task_id = $20 AND no = $21 AND status = 'running' AND lease_owner = $22 AND attempts = $23"
        ));
        let r = bind_progress(query, base, p)
            .bind(status.as_str())
            .bind(error)
            .bind(report)
            .bind(deleted as i64)
            .bind(status.as_str())
            .bind(&lease.task)
            .bind(lease.shard)
            .bind(&lease.owner)
            .bind(lease.attempt)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        settle(&mut tx, &lease.task).await?;
        tx.commit().await?;
        let now = self.get(&lease.task).await?;
        Ok(Some(now.map_or(status, |t| t.status)))
    }

    /// Writes this replica's row of the fleet.
    pub async fn beat(&self, r: &ReplicaRow) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO replicas (id, started_at, heartbeat_at, memory_budget, memory_reserved, tasks_running, stopped_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET \
             started_at = $8, heartbeat_at = $9, memory_budget = $10, memory_reserved = $11, \
             tasks_running = $12, stopped_at = $13",
        )
        .bind(&r.id)
        .bind(r.started_at)
        .bind(r.heartbeat_at)
        .bind(r.memory_budget)
        .bind(r.memory_reserved)
        .bind(r.tasks_running)
        .bind(r.stopped_at)
        .bind(r.started_at)
        .bind(r.heartbeat_at)
        .bind(r.memory_budget)
        .bind(r.memory_reserved)
        .bind(r.tasks_running)
        .bind(r.stopped_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The replicas that wrote their row since `since` (Unix ms).
    pub async fn replicas(&self, since: i64) -> sqlx::Result<Vec<ReplicaRow>> {
        let rows = sqlx::query("SELECT * FROM replicas WHERE heartbeat_at >= $1 ORDER BY id")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ReplicaRow {
                    id: r.try_get("id")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                    memory_budget: r.try_get("memory_budget")?,
                    memory_reserved: r.try_get("memory_reserved")?,
                    tasks_running: r.try_get("tasks_running")?,
                    stopped_at: r.try_get("stopped_at")?,
                })
            })
            .collect()
    }

    /// The running shards: task, shard, the replica holding it and until
    /// when.
    pub async fn leases(&self) -> sqlx::Result<Vec<(String, i64, String, i64)>> {
        let rows = sqlx::query(
            "SELECT task_id, no, lease_owner, lease_expires_at FROM shards WHERE status = 'running' AND lease_owner IS NOT NULL ORDER BY task_id, no",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("task_id")?,
                    r.try_get("no")?,
                    r.try_get("lease_owner")?,
                    r.try_get("lease_expires_at")?,
                ))
            })
            .collect()
    }

    /// Deletes one task and its shards; whether it existed. A replica
    /// still running a shard of it finds no row at its next write.
    pub async fn delete(&self, id: &str) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM shards WHERE task_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes every task in `status`, with their shards; how many tasks.
    pub async fn delete_status(&self, status: Status) -> sqlx::Result<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM shards WHERE task_id IN (SELECT id FROM tasks WHERE status = $1)")
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("DELETE FROM tasks WHERE status = $1")
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }
}

//! Where tasks live: SQLite (a file, the default) or PostgreSQL, through
//! sqlx's `Any` driver, so there is one schema (`migrations/`) and one set
//! of queries (`$1` placeholders work on both).
//!
//! The database is the truth: only running tasks are also in memory, and
//! every change of status is a conditional `UPDATE … WHERE status = …`, so
//! a deleted task is never written back and a cancelled one never runs.

use crate::telemetry::now_ms;
use anyhow::Context;
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
}

impl Kind {
    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Copy => "copy",
            Kind::Purge => "purge",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "copy" => Ok(Kind::Copy),
            "purge" => Ok(Kind::Purge),
            other => Err(format!(
                "unknown task kind {other:?}; one of \"copy\", \"purge\""
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
    pub attempts: i64,
    /// The counters, for any kind (see `tasks::CounterNames` for what
    /// each means to a copy and to a purge). Totals over every attempt:
    pub items_done: i64,
    pub bytes_done: i64,
    /// The current (or last) attempt:
    pub items_listed: i64,
    pub items_skipped: i64,
    pub items_failed: i64,
    pub attempt_items_done: i64,
    pub attempt_bytes_done: i64,
    pub checkpoint_key: Option<String>,
    pub error: Option<String>,
    /// The replica whose lease holds the running attempt, and until when.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
}

/// The lease a replica holds on a running attempt: writes for the attempt
/// name both, and do nothing once another replica (or attempt) holds it.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The replica.
    pub owner: String,
    /// The attempt (`attempts` when it was claimed).
    pub attempt: i64,
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
        checkpoint_key: r.try_get("checkpoint_key")?,
        error: r.try_get("error")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
    })
}

/// What `/metrics` reads from the database.
pub struct DbStats {
    /// Tasks per status.
    pub by_status: Vec<(String, i64)>,
    /// Per kind: items done and their bytes over all its tasks.
    pub totals: Vec<(Kind, i64, i64)>,
}

impl DbStats {
    /// The totals of `kind` (0 when it has no tasks).
    pub fn totals_of(&self, kind: Kind) -> (i64, i64) {
        self.totals
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map_or((0, 0), |(_, o, b)| (*o, *b))
    }
}

/// Progress of a running attempt, written every second.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub items_listed: i64,
    pub items_skipped: i64,
    pub items_failed: i64,
    /// This attempt's copies; the totals add them to earlier attempts'.
    pub attempt_items_done: i64,
    pub attempt_bytes_done: i64,
    pub checkpoint_key: Option<String>,
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

/// Binds `$1`..`$9` of a progress write: the time and `p`'s counters,
/// the totals over every attempt (`base` plus this one's), the checkpoint.
fn bind_progress<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    base: (i64, i64),
    p: &'q Progress,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    q.bind(now_ms() as i64)
        .bind(p.items_listed)
        .bind(p.items_skipped)
        .bind(p.items_failed)
        .bind(p.attempt_items_done)
        .bind(p.attempt_bytes_done)
        .bind(base.0 + p.attempt_items_done)
        .bind(base.1 + p.attempt_bytes_done)
        .bind(p.checkpoint_key.as_deref())
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

    /// Queues a new task; `share` is the memory it asked for (`None`: the
    /// default of the replica that claims it).
    pub async fn insert(
        &self,
        id: &str,
        kind: Kind,
        spec: &str,
        share: Option<u64>,
    ) -> sqlx::Result<TaskRow> {
        let now = now_ms() as i64;
        sqlx::query(
            "INSERT INTO tasks (id, kind, status, spec, created_at, updated_at, memory_share) VALUES ($1, $2, 'queued', $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(spec)
        .bind(now)
        .bind(now)
        .bind(share.map(|s| s as i64))
        .execute(&self.pool)
        .await?;
        self.get(id).await?.ok_or_else(|| sqlx::Error::RowNotFound)
    }

    pub async fn get(&self, id: &str) -> sqlx::Result<Option<TaskRow>> {
        let r = sqlx::query("SELECT * FROM tasks WHERE id = $1")
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
        let (rows, total) = match status {
            Some(s) => {
                let rows = sqlx::query(
                    "SELECT * FROM tasks WHERE status = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
                )
                .bind(s.as_str())
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?;
                let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tasks WHERE status = $1")
                    .bind(s.as_str())
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")?;
                (rows, total)
            }
            None => {
                let rows = sqlx::query(
                    "SELECT * FROM tasks ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2",
                )
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?;
                let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tasks")
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")?;
                (rows, total)
            }
        };
        Ok((rows.iter().map(row).collect::<Result<_, _>>()?, total))
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
            "SELECT kind, CAST(COALESCE(SUM(items_done), 0) AS BIGINT) AS o, CAST(COALESCE(SUM(bytes_done), 0) AS BIGINT) AS b FROM tasks GROUP BY kind",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut totals = Vec::with_capacity(rows.len());
        for r in &rows {
            let kind: String = r.try_get("kind")?;
            let kind: Kind = kind
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
            totals.push((kind, r.try_get("o")?, r.try_get("b")?));
        }
        Ok(DbStats { by_status, totals })
    }

    /// Moves a task from one status to another; whether it was in `from`.
    pub async fn transition(&self, id: &str, from: Status, to: Status) -> sqlx::Result<bool> {
        let r = sqlx::query(
            "UPDATE tasks SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
        )
        .bind(to.as_str())
        .bind(now_ms() as i64)
        .bind(id)
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks every `running` task (the service died under them) as `to`,
    /// but those whose cancel was recorded as `cancelled`.
    pub async fn recover_running(&self, to: Status) -> sqlx::Result<u64> {
        let now = now_ms() as i64;
        sqlx::query(
            "UPDATE tasks SET status = 'cancelled', updated_at = $1, finished_at = COALESCE(finished_at, $2) \
             WHERE status = 'running' AND cancel_requested = 1",
        )
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let r =
            sqlx::query("UPDATE tasks SET status = $1, updated_at = $2 WHERE status = 'running'")
                .bind(to.as_str())
                .bind(now_ms() as i64)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected())
    }

    /// Marks the `running` tasks whose lease `owner` held (this replica's
    /// previous process: a restart under the same replica id) as `to`, but
    /// those whose cancel was recorded as `cancelled`. Other replicas'
    /// tasks are theirs until their leases expire.
    pub async fn recover_owner(&self, owner: &str, to: Status) -> sqlx::Result<u64> {
        let now = now_ms() as i64;
        let r = sqlx::query(
            "UPDATE tasks SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE $1 END, \
             finished_at = CASE WHEN cancel_requested = 1 THEN COALESCE(finished_at, $2) ELSE finished_at END, \
             updated_at = $3, lease_owner = NULL, lease_expires_at = NULL \
             WHERE status = 'running' AND lease_owner = $4",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(now)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Ends the leases that expired (their replica died, froze or lost the
    /// database): those tasks become `to` (queued, to be claimed again, or
    /// interrupted), or `cancelled` if a cancel was recorded. Returns each
    /// task with the replica that held it and how many milliseconds ago its
    /// lease expired (the lease columns keep the last holder until the next
    /// claim).
    pub async fn expire_leases(&self, to: Status) -> sqlx::Result<Vec<(String, String, i64)>> {
        macro_rules! expire {
            ($now:literal) => {
                concat!(
                    "UPDATE tasks SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE $1 END, ",
                    "finished_at = CASE WHEN cancel_requested = 1 THEN COALESCE(finished_at, $2) ELSE finished_at END, ",
                    "updated_at = $3 WHERE status = 'running' AND lease_expires_at < ",
                    $now,
                    " RETURNING id, COALESCE(lease_owner, '') AS owner, ",
                    $now,
                    " - COALESCE(lease_expires_at, 0) AS expired_ms_ago"
                )
            };
        }
        let now = now_ms() as i64;
        let rows = sqlx::query(on_db_clock!(self, expire))
            .bind(to.as_str())
            .bind(now)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("owner")?,
                    r.try_get::<i64, _>("expired_ms_ago")?,
                ))
            })
            .collect()
    }

    /// Claims, for `owner` with a lease of `ttl_ms`, the oldest queued
    /// task whose memory share fits in its `room` (a task without one takes
    /// the replica's default; a share above the budget runs within the
    /// budget): starts a new attempt. One statement; on PostgreSQL the row
    /// is taken with `FOR UPDATE SKIP LOCKED`, so replicas claiming at once
    /// each get a different task and never wait for each other.
    pub async fn claim_next(
        &self,
        owner: &str,
        ttl_ms: i64,
        room: Room,
    ) -> sqlx::Result<Option<TaskRow>> {
        // The same statement but for the row lock, which SQLite (one
        // writer at a time) neither needs nor has.
        macro_rules! claim {
            ($now:literal, $lock:literal) => {
                concat!(
                    "UPDATE tasks SET status = 'running', started_at = COALESCE(started_at, $1), updated_at = $2, ",
                    "attempts = attempts + 1, attempt_items_done = 0, attempt_bytes_done = 0, ",
                    "items_listed = 0, items_skipped = 0, items_failed = 0, error = NULL, ",
                    "lease_owner = $3, lease_expires_at = ",
                    $now,
                    " + $4 ",
                    "WHERE id = (SELECT id FROM tasks WHERE status = 'queued' ",
                    "AND CASE WHEN memory_share IS NULL THEN $5 WHEN memory_share > $6 THEN $7 ELSE memory_share END <= $8 ",
                    "ORDER BY created_at, id LIMIT 1",
                    $lock,
                    ") AND status = 'queued' RETURNING id"
                )
            };
        }
        let sql = if self.postgres {
            claim!(
                "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
                " FOR UPDATE SKIP LOCKED"
            )
        } else {
            claim!(
                "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
                ""
            )
        };
        let now = now_ms() as i64;
        let claimed = sqlx::query(sql)
            .bind(now)
            .bind(now)
            .bind(owner)
            .bind(ttl_ms)
            .bind(room.default_share as i64)
            .bind(room.budget as i64)
            .bind(room.budget as i64)
            .bind(room.available as i64)
            .fetch_optional(&self.pool)
            .await?;
        match claimed {
            Some(r) => self.get(&r.try_get::<String, _>("id")?).await,
            None => Ok(None),
        }
    }

    /// Writes a running attempt's progress and renews its lease by
    /// `ttl_ms`. `base` is what earlier attempts copied. Nothing is
    /// written unless `lease` still holds the attempt; the answer says
    /// whether it does, and whether a cancel was recorded.
    pub async fn progress(
        &self,
        id: &str,
        lease: &Lease,
        ttl_ms: i64,
        base: (i64, i64),
        p: &Progress,
    ) -> sqlx::Result<Heartbeat> {
        macro_rules! renew {
            ($now:literal) => {
                concat!(
                    "UPDATE tasks SET updated_at = $1, items_listed = $2, items_skipped = $3, items_failed = $4, ",
                    "attempt_items_done = $5, attempt_bytes_done = $6, items_done = $7, bytes_done = $8, ",
                    "checkpoint_key = COALESCE($9, checkpoint_key), lease_expires_at = ",
                    $now,
                    " + $10 WHERE id = $11 AND status = 'running' AND lease_owner = $12 AND attempts = $13 ",
                    "RETURNING CAST(cancel_requested AS BIGINT) AS cancel_requested"
                )
            };
        }
        let r = bind_progress(sqlx::query(on_db_clock!(self, renew)), base, p)
            .bind(ttl_ms)
            .bind(id)
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

    /// Hands a running attempt back (a replica stopping for SIGTERM): the
    /// task is queued again with its progress and checkpoint, for any
    /// replica (or this one's next start) to resume; whether `lease` still
    /// held it.
    pub async fn release(
        &self,
        id: &str,
        lease: &Lease,
        base: (i64, i64),
        p: &Progress,
    ) -> sqlx::Result<bool> {
        self.finish(id, lease, base, p, Status::Queued, None).await
    }

    /// Ends a running attempt with its final progress (or, `queued`, hands
    /// it back), in one fenced write; whether `lease` still held it.
    pub async fn finish(
        &self,
        id: &str,
        lease: &Lease,
        base: (i64, i64),
        p: &Progress,
        status: Status,
        error: Option<&str>,
    ) -> sqlx::Result<bool> {
        let finished = (status != Status::Queued).then_some(now_ms() as i64);
        let query = sqlx::query(
            "UPDATE tasks SET updated_at = $1, items_listed = $2, items_skipped = $3, items_failed = $4, \
             attempt_items_done = $5, attempt_bytes_done = $6, items_done = $7, bytes_done = $8, \
             checkpoint_key = COALESCE($9, checkpoint_key), status = $10, error = $11, \
             finished_at = COALESCE($12, finished_at), lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $13 AND status = 'running' AND lease_owner = $14 AND attempts = $15",
        );
        let r = bind_progress(query, base, p)
            .bind(status.as_str())
            .bind(error)
            .bind(finished)
            .bind(id)
            .bind(&lease.owner)
            .bind(lease.attempt)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
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

    /// The running tasks and the replica holding each.
    pub async fn leases(&self) -> sqlx::Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT id, lease_owner, lease_expires_at FROM tasks WHERE status = 'running' AND lease_owner IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("lease_owner")?,
                    r.try_get("lease_expires_at")?,
                ))
            })
            .collect()
    }

    /// Deletes one task; whether it existed.
    pub async fn delete(&self, id: &str) -> sqlx::Result<bool> {
        let r = sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes every task in `status`; how many.
    pub async fn delete_status(&self, status: Status) -> sqlx::Result<u64> {
        let r = sqlx::query("DELETE FROM tasks WHERE status = $1")
            .bind(status.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}

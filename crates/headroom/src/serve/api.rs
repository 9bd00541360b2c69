//! The HTTP API (axum): JSON under `/api`, Prometheus text at `/metrics`,
//! health at `/healthz` and `/readyz`, the dashboard at `/`. Documented
//! by `openapi.json`, served at `/api/openapi.json`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use headroom_governor::{Governor, MemoryProbe};
use serde::Deserialize;
use serde_json::json;

use super::db::{Db, Kind, Status, TaskRow};
use super::tasks::{CounterNames, TaskSpec, Tasks, validate};

/// What every handler shares.
pub struct AppState {
    pub db: Db,
    pub tasks: Arc<Tasks>,
    pub gov: Governor,
    pub probe: MemoryProbe,
    /// Who may ask: the token, the host names, the local roots.
    pub access: Arc<Access>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

type Shared = Arc<AppState>;

/// An API error: a status and a message, as `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!("database: {e}");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("task database error: {e}"),
        )
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no task {id}"))
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/openapi.json", get(openapi))
        .route(
            "/api/tasks",
            get(list_tasks).post(create_task).delete(cleanup_tasks),
        )
        .route("/api/tasks/{id}", get(get_task).delete(delete_task))
        .route("/api/tasks/{id}/cancel", post(cancel_task))
        .route("/api/tasks/{id}/shards", get(list_shards))
        .route("/api/tasks/{id}/resume", post(resume_task))
        .route("/api/fleet", get(fleet))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        // A task spec is small: bodies above 64 KiB are refused unread.
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10))
        .with_state(state)
}

/// Who may use the service and where tasks may reach.
pub struct Access {
    token: String,
    /// Host names besides IP addresses and `localhost`.
    hosts: Vec<String>,
    /// Canonical directories local task paths must be in.
    pub paths: Arc<Vec<std::path::PathBuf>>,
    /// The Google Drive credentials tasks may name.
    pub drive: Arc<super::tasks::DriveAccess>,
}

impl Access {
    /// Checks the configuration: every allowed path must exist.
    pub fn new(
        token: String,
        hosts: &[String],
        paths: &[std::path::PathBuf],
        drive: super::tasks::DriveAccess,
    ) -> anyhow::Result<Self> {
        for (name, file) in &drive.credentials {
            std::fs::metadata(file).map_err(|e| {
                anyhow::anyhow!(
                    "--gdrive-credentials {name}={}: cannot read it: {e}",
                    file.display()
                )
            })?;
        }
        let paths = paths
            .iter()
            .map(|p| {
                anyhow::Context::with_context(p.canonicalize(), || {
                    format!("--allow-path {}: cannot resolve it", p.display())
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Access {
            token,
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            paths: Arc::new(paths),
            drive: Arc::new(drive),
        })
    }

    /// The token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `host` (a Host header or an Origin's authority, with or
    /// without a port) may address this service: an IP address (DNS
    /// rebinding needs a name), `localhost`, or a configured name.
    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(v6) => {
                return v6
                    .split(']')
                    .next()
                    .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
            }
            None => host.rsplit_once(':').map_or(host, |(h, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            }),
        };
        let name = name.to_ascii_lowercase();
        name.parse::<std::net::Ipv4Addr>().is_ok()
            || name == "localhost"
            || self.hosts.contains(&name)
    }

    /// Whether `given` is the token, in time that does not depend on
    /// where they differ.
    fn token_matches(&self, given: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), given.as_bytes());
        let mut diff = (a.len() != b.len()) as u8;
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ b.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// Paths anyone may read: probes, the dashboard's static page (it asks
/// for the token) and the API description.
fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/" | "/api/openapi.json")
}

/// Every request: addressed to an allowed host, from no foreign origin,
/// and (but for [`open_path`]s) with the token.
async fn guard(
    State(state): State<Shared>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let access = &state.access;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !access.host_allowed(host) {
        return Err(ApiError(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this service does not answer to host {:?}; start it with --allow-host NAME to add a name",
                crate::telemetry::escape(host)
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let authority = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, a)| a);
        if authority != Some(host) || !access.host_allowed(host) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "requests from another origin are refused".into(),
            ));
        }
    }
    if !open_path(request.uri().path()) {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !given.is_some_and(|t| access.token_matches(t)) {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "this request needs Authorization: Bearer <token> (see --token-file)".into(),
            ));
        }
    }
    Ok(next.run(request).await)
}

/// Serves `app` on `listener` until `shutdown` resolves: at most
/// `max_connections` at once (the rest wait in the listen backlog), and a
/// connection that does not send a request's headers within
/// [`HEADER_READ_TIMEOUT`] (an idle keep-alive one included) is closed, so
/// idle sockets cannot lock everyone out.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_charged(listener, app, max_connections, None, shutdown).await
}

/// What a connection holds before any request on it is admitted: hyper's
/// connection state and read buffer, the request being parsed.
pub const CONNECTION_BYTES: u64 = 64 << 10;

/// [`serve`], and with `charge` every accepted connection also holds
/// [`CONNECTION_BYTES`] of that governor for as long as it is open: a
/// connection waiting for its request to be admitted is paid for too, and
/// while the budget is full an accepted connection is not read from.
pub async fn serve_charged(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: usize,
    charge: Option<headroom_governor::Governor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    // HTTP/1.1 only: hyper-util's auto-detecting builder reads the first
    // bytes (h1 or h2?) before any timeout applies, so a silent socket
    // would be held forever.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => return,
            s = slots.clone().acquire_owned() => s.expect("never closed"),
        };
        let (socket, _) = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (app, builder, charge) = (app.clone(), builder.clone(), charge.clone());
        tokio::spawn(async move {
            // Paid for before a byte of it is read: while the budget is
            // full, an accepted connection waits here, holding only its
            // socket.
            let paid = match &charge {
                Some(gov) => Some(gov.acquire(CONNECTION_BYTES, "connection").await),
                None => None,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = builder
                .serve_connection(TokioIo::new(socket), service)
                .with_upgrades()
                .await;
            drop((slot, paid));
        });
    }
}

/// How long a connection may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// A task as the API shows it: the row, its counters under its kind's
/// names, plus live numbers while running.
fn view(state: &AppState, row: TaskRow) -> serde_json::Value {
    let names = CounterNames::of(row.kind, row.spec["dry_run"].as_bool().unwrap_or(false));
    let mut v = json!({
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "spec": row.spec,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "attempts": row.attempts,
        "checkpoint_key": row.checkpoint_key,
        "error": row.error,
        "report": row.report.as_deref().and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()),
        "replica": (row.status == Status::Running).then_some(row.lease_owner),
        "lease_expires_at": (row.status == Status::Running).then_some(row.lease_expires_at),
        "shards": row.shards,
        "live": state.tasks.live(&row.id),
    });
    v[names.done] = json!(row.items_done);
    v[names.bytes] = json!(row.bytes_done);
    v[names.listed] = json!(row.items_listed);
    v[names.skipped] = json!(row.items_skipped);
    v[names.failed] = json!(row.items_failed);
    v[names.attempt_listed] = json!(row.attempt_items_listed);
    v[names.attempt_done] = json!(row.attempt_items_done);
    v[names.attempt_bytes] = json!(row.attempt_bytes_done);
    v
}

/// A task's spec at most, stored: what bounds a page of tasks in memory
/// (at most 500 of them, each its spec and a few hundred bytes of
/// counters).
const MAX_SPEC_BYTES: usize = 16 << 10;

async fn create_task(
    State(state): State<Shared>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(body) = body.map_err(|e| bad(e.body_text()))?;
    let spec = TaskSpec::parse(body).map_err(bad)?;
    let v = validate(spec, &state.access.paths, &state.access.drive).map_err(bad)?;
    let id = new_id();
    let spec = serde_json::to_string(&v.spec).map_err(|e| bad(e.to_string()))?;
    if spec.len() > MAX_SPEC_BYTES {
        return Err(bad(format!(
            "the task's spec is {} bytes; at most {MAX_SPEC_BYTES} (long include/exclude lists belong in fewer, wider globs)",
            spec.len()
        )));
    }
    let row = state
        .db
        .insert(&id, v.spec.kind(), &spec, v.share, v.spec.dry_run())
        .await?;
    state.tasks.wake();
    Ok((StatusCode::CREATED, Json(view(&state, row))))
}

/// A new task id: time-ordered, with 48 random bits, so replicas
/// creating tasks in the same millisecond do not collide.
fn new_id() -> String {
    format!(
        "t{:x}{:012x}",
        crate::telemetry::now_ms() as i64,
        fastrand::u64(..) & 0xffff_ffff_ffff
    )
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

fn check_status(s: &str) -> Result<Status, ApiError> {
    s.parse().map_err(|e| bad(format!("status: {e}")))
}

/// A page's `limit` (default 50, at most 500) and `offset`, checked.
fn page(q: &ListQuery) -> Result<(i64, i64), ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad("limit: must be between 1 and 500"));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(bad("offset: must not be negative"));
    }
    Ok((limit, offset))
}

async fn list_tasks(
    State(state): State<Shared>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let status = q.status.as_deref().map(check_status).transpose()?;
    let (limit, offset) = page(&q)?;
    let (rows, total) = state.db.list(status, limit, offset).await?;
    // Written task by task: a page of 500 is never a tree of JSON values.
    // At most `limit` (500) tasks of a spec of MAX_SPEC_BYTES each.
    let mut body = Vec::with_capacity(rows.len() * 1024 + 64);
    body.extend_from_slice(b"{\"tasks\":[");
    for (i, r) in rows.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &view(&state, r)).map_err(|e| bad(e.to_string()))?;
    }
    body.extend_from_slice(
        format!("],\"total\":{total},\"limit\":{limit},\"offset\":{offset}}}").as_bytes(),
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get_task(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let row = state.db.get(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&state, row)))
}

/// A task's shards, in key order, a page at a time: each one's range of
/// keys, status, the replica holding it (or that last held it), and its
/// counters under the task's kind's names.
async fn list_shards(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let row = state.db.get(&id).await?.ok_or_else(|| not_found(&id))?;
    if q.status.is_some() {
        return Err(bad("status: shards are listed in key order, not by status"));
    }
    let (limit, offset) = page(&q)?;
    let names = CounterNames::of(row.kind, row.spec["dry_run"].as_bool().unwrap_or(false));
    let shards: Vec<serde_json::Value> = state
        .db
        .shards(&id, limit, offset)
        .await?
        .into_iter()
        .map(|s| {
            let mut v = json!({
                "no": s.no,
                "after_key": s.after_key,
                "through_key": s.through_key,
                "status": s.status,
                "attempts": s.attempts,
                "replica": s.lease_owner,
                "lease_expires_at": (s.status == Status::Running).then_some(s.lease_expires_at),
                "checkpoint_key": s.checkpoint_key,
                "error": s.error,
                "started_at": s.started_at,
                "updated_at": s.updated_at,
            });
            v[names.done] = json!(s.items_done);
            v[names.bytes] = json!(s.bytes_done);
            v[names.listed] = json!(s.items_listed);
            v[names.skipped] = json!(s.items_skipped);
            v[names.failed] = json!(s.items_failed);
            v
        })
        .collect();
    Ok(Json(json!({
        "task": id,
        "shards": shards,
        "total": row.shards.total,
        "limit": limit,
        "offset": offset,
    })))
}

async fn cancel_task(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let row = state.db.get(&id).await?.ok_or_else(|| not_found(&id))?;
    match row.status {
        Status::Queued | Status::Interrupted => {
            if !state
                .db
                .transition(&id, row.status, Status::Cancelled)
                .await?
            {
                // Claimed by the scheduler in between: cancel the run.
                state.db.request_cancel(&id).await?;
                for _ in 0..50 {
                    if state.tasks.cancel(&id) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        Status::Running => {
            // Recorded first (a 503 if the database refuses the write):
            // a cancel that was answered 200 holds across a crash.
            if state.db.request_cancel(&id).await? || state.tasks.running_here(&id) {
                state.tasks.cancel(&id);
            }
        }
        other => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "task {id} is {other}; only queued, interrupted or running tasks can be cancelled"
                ),
            ));
        }
    }
    let row = state.db.get(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&state, row)))
}

async fn resume_task(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let row = state.db.get(&id).await?.ok_or_else(|| not_found(&id))?;
    if !state
        .db
        .transition(&id, Status::Interrupted, Status::Queued)
        .await?
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "task {id} is {}; only interrupted tasks can be resumed",
                row.status
            ),
        ));
    }
    state.tasks.wake();
    let row = state.db.get(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&state, row)))
}

async fn delete_task(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    // Deleted first (a 503 if the database refuses), then a running task
    // is stopped; its last progress write finds no row and changes nothing.
    let deleted = state.db.delete(&id).await?;
    state.tasks.cancel(&id);
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

#[derive(Deserialize)]
struct CleanupQuery {
    status: Option<String>,
}

async fn cleanup_tasks(
    State(state): State<Shared>,
    Query(q): Query<CleanupQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = q
        .status
        .ok_or_else(|| bad("status: required, e.g. DELETE /api/tasks?status=failed"))?;
    let status = check_status(&status)?;
    if matches!(status, Status::Running | Status::Queued) {
        return Err(bad(
            "status: running and queued tasks are not cleaned up in bulk; cancel them first",
        ));
    }
    let deleted = state.db.delete_status(status).await?;
    Ok(Json(json!({ "deleted": deleted, "status": status })))
}

async fn readyz(State(state): State<Shared>) -> Response {
    if state.db.ping().await {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the task database does not answer or does not take writes\n",
        )
            .into_response()
    }
}

/// Replicas whose heartbeat is older than this many leases are not shown.
const FLEET_WINDOW_LEASES: u32 = 4;

/// The replicas on this database (those heard from within four leases),
/// each with its memory and the tasks it holds, and which one answered.
async fn fleet_view(state: &AppState) -> Result<serde_json::Value, ApiError> {
    let now = crate::telemetry::now_ms() as i64;
    let ttl = state.tasks.lease_ttl();
    let window = (ttl * FLEET_WINDOW_LEASES).as_millis() as i64;
    let replicas = state.db.replicas(now - window).await?;
    let leases = state.db.leases().await?;
    let list: Vec<serde_json::Value> = replicas
        .into_iter()
        .map(|r| {
            let held: Vec<String> = leases
                .iter()
                .filter(|(_, _, owner, _)| *owner == r.id)
                .map(|(id, no, _, _)| format!("{id}/{no}"))
                .collect();
            let mut tasks: Vec<&str> = leases
                .iter()
                .filter(|(_, _, owner, _)| *owner == r.id)
                .map(|(id, _, _, _)| id.as_str())
                .collect();
            tasks.dedup();
            let age = now - r.heartbeat_at;
            json!({
                "id": r.id,
                "started_at": r.started_at,
                "heartbeat_at": r.heartbeat_at,
                "heartbeat_age_ms": age,
                "alive": r.stopped_at.is_none() && age < ttl.as_millis() as i64,
                "stopped_at": r.stopped_at,
                "memory_budget": r.memory_budget,
                "memory_reserved": r.memory_reserved,
                "shards_running": r.tasks_running,
                "tasks_held": tasks,
                "shards_held": held,
            })
        })
        .collect();
    Ok(json!({
        "replica": state.tasks.replica(),
        "lease_ttl_ms": ttl.as_millis() as u64,
        "running_here": state.tasks.running_ids(),
        "shards_here": state.tasks.running_shards(),
        "replicas": list,
    }))
}

async fn fleet(State(state): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(fleet_view(&state).await?))
}

/// Sets the gauges from the database, the governor and the probe, then
/// renders them (metrics-exporter-prometheus).
async fn metrics(State(state): State<Shared>) -> Result<Response, ApiError> {
    let db_stats = state.db.stats().await?;
    let by_status = &db_stats.by_status;
    // A sync's copies are copies; its deletions have a gauge of their own.
    let (copy, sync, purge) = (
        db_stats.totals_of(Kind::Copy),
        db_stats.totals_of(Kind::Sync),
        db_stats.totals_of(Kind::Purge),
    );
    let stats = state.gov.stats();
    let sample = state.probe.sample();
    for s in Status::ALL {
        let n = by_status
            .iter()
            .find(|(st, _)| st == s.as_str())
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("headroom_tasks", "status" => s.as_str()).set(n as f64);
    }
    metrics::gauge!("headroom_objects_copied").set((copy.done + sync.done) as f64);
    metrics::gauge!("headroom_bytes_copied").set((copy.bytes + sync.bytes) as f64);
    metrics::gauge!("headroom_files_deleted").set(purge.done as f64);
    metrics::gauge!("headroom_bytes_freed").set(purge.bytes as f64);
    metrics::gauge!("headroom_objects_deleted_by_sync").set(sync.deleted as f64);
    metrics::gauge!("headroom_memory_budget_bytes").set(stats.budget as f64);
    metrics::gauge!("headroom_memory_reserved_bytes").set(stats.reserved as f64);
    metrics::gauge!("headroom_memory_peak_reserved_bytes").set(stats.peak_reserved as f64);
    metrics::gauge!("headroom_memory_waiters").set(stats.waiters as f64);
    metrics::gauge!("headroom_rss_bytes").set(sample.rss.unwrap_or(0) as f64);
    metrics::gauge!("headroom_tasks_running_here").set(state.tasks.running_count() as f64);
    let fleet = fleet_view(&state).await?;
    let replicas = fleet["replicas"].as_array().cloned().unwrap_or_default();
    metrics::gauge!("headroom_fleet_replicas_alive")
        .set(replicas.iter().filter(|r| r["alive"] == true).count() as f64);
    for r in &replicas {
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let n = |k: &str| r[k].as_i64().unwrap_or(0) as f64;
        metrics::gauge!("headroom_replica_heartbeat_age_seconds", "replica" => id.clone())
            .set(n("heartbeat_age_ms") / 1000.0);
        metrics::gauge!("headroom_replica_memory_budget_bytes", "replica" => id.clone())
            .set(n("memory_budget"));
        metrics::gauge!("headroom_replica_memory_reserved_bytes", "replica" => id.clone())
            .set(n("memory_reserved"));
        metrics::gauge!("headroom_replica_tasks_held", "replica" => id.clone())
            .set(r["tasks_held"].as_array().map_or(0, |a| a.len()) as f64);
        metrics::gauge!("headroom_replica_shards_held", "replica" => id)
            .set(r["shards_held"].as_array().map_or(0, |a| a.len()) as f64);
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response())
}

/// Installs the process's metrics recorder and describes the gauges.
pub fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    for (name, help) in [
        ("headroom_tasks", "Tasks by status, from the database."),
        (
            "headroom_objects_copied",
            "Objects copied by all copy and sync tasks in the database (not dry runs).",
        ),
        (
            "headroom_bytes_copied",
            "Bytes copied by all copy and sync tasks in the database (not dry runs).",
        ),
        (
            "headroom_files_deleted",
            "Files deleted by all purge tasks in the database (not dry runs).",
        ),
        (
            "headroom_bytes_freed",
            "Bytes freed by all purge tasks in the database (not dry runs).",
        ),
        (
            "headroom_objects_deleted_by_sync",
            "Objects sync tasks deleted from their destination, counted when each ends (not dry runs).",
        ),
        (
            "headroom_memory_budget_bytes",
            "The service governor's budget.",
        ),
        (
            "headroom_memory_reserved_bytes",
            "Reserved now: the running tasks' memory shares.",
        ),
        (
            "headroom_memory_peak_reserved_bytes",
            "Peak reserved since the service started.",
        ),
        (
            "headroom_memory_waiters",
            "Tasks waiting for their memory share.",
        ),
        ("headroom_rss_bytes", "Resident memory of the service."),
        (
            "headroom_tasks_running_here",
            "Shards of tasks this process runs now.",
        ),
        (
            "headroom_fleet_replicas_alive",
            "Replicas on this database whose heartbeat is younger than a lease.",
        ),
        (
            "headroom_replica_heartbeat_age_seconds",
            "Per replica: how long ago it last wrote its heartbeat.",
        ),
        (
            "headroom_replica_memory_budget_bytes",
            "Per replica: its governor's budget.",
        ),
        (
            "headroom_replica_memory_reserved_bytes",
            "Per replica: what its running tasks reserve.",
        ),
        (
            "headroom_replica_tasks_held",
            "Per replica: the tasks with running shards whose lease it holds.",
        ),
        (
            "headroom_replica_shards_held",
            "Per replica: the running shards whose lease it holds.",
        ),
    ] {
        metrics::describe_gauge!(name, help);
    }
    Ok(handle)
}

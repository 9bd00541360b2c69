//! `headroom serve`: copy tasks behind an HTTP API and a dashboard, kept
//! in a database so that a restart or a crash loses nothing.
//!
//! * [`db`]: the task table (SQLite file by default, or PostgreSQL).
//! * [`tasks`]: specs, validation, the scheduler, running tasks with their
//!   memory shares and checkpoints.
//! * [`api`]: the HTTP routes.
//!
//! On start, tasks the previous process left `running` are queued again
//! and resume from their checkpoint (or become `interrupted` with
//! `--no-resume`). Deleted tasks are gone from the database, so they
//! cannot come back; cancelled ones stay cancelled.

pub mod api;
pub mod db;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};

/// How the service runs: what `headroom serve`'s flags turn into. The
/// defaults are the flags' defaults.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The task database: a SQLite file path, `sqlite:PATH`, or
    /// `postgres://USER:PASSWORD@HOST/DB`.
    pub db: String,
    /// A file holding the API token (else HEADROOM_TOKEN, else one
    /// generated beside the database).
    pub token_file: Option<std::path::PathBuf>,
    /// Directories local task paths may be in (none: S3 only).
    pub allow_path: Vec<std::path::PathBuf>,
    /// Host names requests may be addressed to, besides IP addresses and
    /// localhost.
    pub allow_host: Vec<String>,
    /// Connections open at once at most.
    pub max_connections: usize,
    /// Tasks running at once.
    pub max_running: usize,
    /// Whether tasks left `running` by the previous process resume at
    /// start (else they become `interrupted`).
    pub resume: bool,
    /// The Google Drive credentials tasks may name, and the endpoint.
    pub gdrive: tasks::DriveAccess,
    /// This replica's id in a fleet (default: host name and process id).
    pub replica_id: Option<String>,
    /// How long a task's lease lasts unless renewed.
    pub lease_ttl: std::time::Duration,
    /// A copy shard is cut after this many keys...
    pub shard_objects: u64,
    /// ...or once its keys hold this many bytes.
    pub shard_bytes: u64,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            db: "headroom.db".into(),
            token_file: None,
            allow_path: Vec::new(),
            allow_host: Vec::new(),
            max_connections: 512,
            max_running: 4,
            resume: true,
            gdrive: tasks::DriveAccess::default(),
            replica_id: None,
            lease_ttl: tasks::DEFAULT_LEASE_TTL,
            shard_objects: tasks::DEFAULT_SHARD_OBJECTS,
            shard_bytes: tasks::DEFAULT_SHARD_BYTES,
        }
    }
}

/// How long running tasks get to stop at SIGTERM (Kubernetes gives 30 s).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// The largest token file read.
const TOKEN_FILE_MAX: u64 = 4096;

/// Reads a token file: at most [`TOKEN_FILE_MAX`] bytes, trimmed.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut token = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(TOKEN_FILE_MAX + 1).read_to_string(&mut token))
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    if token.len() as u64 > TOKEN_FILE_MAX {
        bail!(
            "the token file {} is larger than {TOKEN_FILE_MAX} bytes: it should hold only the token",
            path.display()
        );
    }
    Ok(token.trim().to_string())
}

/// Where a generated token is kept: beside a SQLite database, else in the
/// working directory.
fn generated_token_path(db: &str) -> std::path::PathBuf {
    let file = db.strip_prefix("sqlite:").unwrap_or(db);
    let dir = if db.contains("://") && !db.starts_with("sqlite:") {
        None
    } else {
        std::path::Path::new(file)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
    };
    dir.unwrap_or(std::path::Path::new("."))
        .join("headroom.token")
}

/// The API token: `--token-file`, else `HEADROOM_TOKEN`, else the one
/// generated at the first start (32 random bytes from the kernel, kept
/// with mode 0600). Whether it was generated just now.
fn token(args: &ServeOptions) -> anyhow::Result<(String, Option<std::path::PathBuf>)> {
    let given = match &args.token_file {
        Some(path) => Some(read_token_file(path)?),
        None => std::env::var("HEADROOM_TOKEN")
            .ok()
            .map(|t| t.trim().to_string()),
    };
    let (token, generated) = match given {
        Some(t) => (t, None),
        None => {
            let path = generated_token_path(&args.db);
            if path.exists() {
                (read_token_file(&path)?, None)
            } else {
                (generate_token(&path)?, Some(path))
            }
        }
    };
    if token.len() < 16 {
        bail!("the API token is shorter than 16 characters: use a long random one");
    }
    Ok((token, generated))
}

fn generate_token(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("cannot read random bytes for the API token")?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the token file {}", path.display()))?;
    writeln!(f, "{token}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Runs the service until SIGINT or SIGTERM, with the budget of
/// `memory` (`None`: derived from the container's limit).
pub async fn run(
    args: &ServeOptions,
    memory: Option<headroom_governor::ByteSize>,
) -> anyhow::Result<()> {
    let (token, generated) = token(args)?;
    let access = Arc::new(api::Access::new(
        token,
        &args.allow_host,
        &args.allow_path,
        args.gdrive.clone(),
    )?);
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let memory = crate::memory::MemoryPlan::start(memory);
    let db = db::Db::open(&args.db).await?;
    let to = if args.resume {
        db::Status::Queued
    } else {
        db::Status::Interrupted
    };
    let fleet = tasks::FleetOptions {
        replica: args
            .replica_id
            .clone()
            .unwrap_or_else(tasks::default_replica_id),
        lease_ttl: args.lease_ttl,
        resume: args.resume,
        shard_objects: args.shard_objects,
        shard_bytes: args.shard_bytes,
    };
    if fleet.lease_ttl < std::time::Duration::from_secs(3) {
        bail!("--lease-ttl must be at least 3s (leases are renewed every second)");
    }
    // SQLite is one machine's: every task left running was this service's.
    // On PostgreSQL other replicas may be running theirs: only this
    // replica's own (a restart under the same id) are taken back now, the
    // rest when their leases expire.
    let recovered = if db.is_postgres() {
        db.recover_owner(&fleet.replica, to).await?
    } else {
        db.recover_running(to).await?
    };
    if recovered > 0 {
        tracing::info!("{recovered} shards were running when the service stopped: now {to}");
    }
    tracing::info!(
        replica = %fleet.replica,
        "replica {} on {} (leases of {:?})",
        fleet.replica,
        db.display,
        fleet.lease_ttl
    );
    let tasks = tasks::Tasks::new(
        db.clone(),
        memory.governor.clone(),
        args.max_running,
        access.paths.clone(),
        access.drive.clone(),
        fleet,
    );
    let scheduler = tokio::spawn(tasks.clone().schedule());
    let state = Arc::new(api::AppState {
        db: db.clone(),
        tasks: tasks.clone(),
        gov: memory.governor.clone(),
        probe: memory.probe.clone(),
        access,
        metrics: api::install_metrics()?,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    if let Some(path) = &generated {
        eprintln!(
            "generated an API token, kept in {} (mode 0600); every request needs \
             Authorization: Bearer {}; the dashboard: http://{addr}/#token={}",
            path.display(),
            state.access.token(),
            state.access.token()
        );
    }
    // Tests and scripts read this line to find an ephemeral port.
    println!("listening on http://{addr}");
    tracing::info!("serving on http://{addr} with tasks in {}", db.display);
    api::serve(listener, api::router(state), args.max_connections, async {
        crate::cancel::signalled().await;
        tracing::info!("stopping; running tasks resume at the next start");
    })
    .await;
    // Tasks stop cleanly (no partial files, no unaborted uploads) and are
    // resumed from their checkpoints at the next start.
    tasks.shutdown(SHUTDOWN_GRACE).await;
    scheduler.abort();
    Ok(())
}

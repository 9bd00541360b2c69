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

use crate::cli::{GlobalArgs, ServeArgs};

/// How long running tasks get to stop at SIGTERM (Kubernetes gives 30 s).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// The largest token file read.
const TOKEN_FILE_MAX: u64 = 4096;

/// Reads the token: `--token-file`, else `HEADROOM_TOKEN`.
fn token(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let token = match &args.token_file {
        Some(path) => {
            // A token is short: read at most TOKEN_FILE_MAX bytes of it.
            use std::io::Read;
            let mut token = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(TOKEN_FILE_MAX + 1).read_to_string(&mut token))
                .with_context(|| format!("cannot read --token-file {}", path.display()))?;
            if token.len() as u64 > TOKEN_FILE_MAX {
                bail!(
                    "--token-file {} is larger than {TOKEN_FILE_MAX} bytes: it should hold only the token",
                    path.display()
                );
            }
            Some(token.trim().to_string())
        }
        None => std::env::var("HEADROOM_TOKEN")
            .ok()
            .map(|t| t.trim().to_string()),
    };
    match token {
        Some(t) if t.is_empty() => bail!("the API token is empty"),
        t => Ok(t),
    }
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: &ServeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let token = token(args)?;
    if !args.listen.ip().is_loopback() && token.is_none() {
        bail!(
            "refusing to listen on {} without a token: anyone who can reach it could start and delete tasks; set --token-file or HEADROOM_TOKEN, or listen on 127.0.0.1",
            args.listen
        );
    }
    let memory = crate::memory::MemoryPlan::start(global.memory);
    let db = db::Db::open(&args.db).await?;
    let to = if args.no_resume {
        "interrupted"
    } else {
        "queued"
    };
    let recovered = db.recover_running(to).await?;
    if recovered > 0 {
        tracing::info!("{recovered} tasks were running when the service stopped: now {to}");
    }
    let tasks = tasks::Tasks::new(db.clone(), memory.governor.clone(), args.max_running);
    let scheduler = tokio::spawn(tasks.clone().schedule());
    let state = Arc::new(api::AppState {
        db: db.clone(),
        tasks: tasks.clone(),
        gov: memory.governor.clone(),
        probe: memory.probe.clone(),
        token,
        metrics: api::install_metrics()?,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    // Tests and scripts read this line to find an ephemeral port.
    println!("listening on http://{addr}");
    tracing::info!("serving on http://{addr} with tasks in {}", db.display);
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async {
            crate::jobs::signalled().await;
            tracing::info!("stopping; running tasks resume at the next start");
        })
        .await
        .context("the HTTP server failed")?;
    // Tasks stop cleanly (no partial files, no unaborted uploads) and are
    // resumed from their checkpoints at the next start.
    tasks.shutdown(SHUTDOWN_GRACE).await;
    scheduler.abort();
    Ok(())
}

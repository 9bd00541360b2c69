//! The jobs: each a pipeline from a source through byte-bounded channels.

pub mod copy;
pub mod filter;
pub mod ingest;
pub mod purge;

/// Resolves once `flag` is `true` (or its sender is gone without setting
/// it: then never). The guard `wait_for` returns is dropped here, so the
/// future stays `Send` inside `select!`.
pub(crate) async fn until_set(flag: &mut tokio::sync::watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Bytes a listing may run ahead of the work on it: a sixteenth of the
/// budget, between 64 KiB (a few hundred entries) and 1 MiB.
pub(crate) fn listing_queue_bytes(budget: u64) -> u64 {
    (budget / 16).clamp(64 << 10, 1 << 20)
}

/// The error of a job whose fixed buffers and least per-item buffer do not
/// fit in its budget: it names the least budget for this job with these
/// flags, as `--memory` (which keeps an eighth back) and as a `serve` task
/// share (which is all reservable).
pub(crate) fn budget_too_small(
    job: &str,
    e: &headroom_governor::ReserveFixedError,
) -> anyhow::Error {
    use headroom_governor::ByteSize;
    let needed = e.budget_needed();
    anyhow::anyhow!(
        "the memory budget is too small for this {job} with these options: {e}. \
         Give it --memory {} or more (a serve task: a memory share of {} or more)",
        ByteSize(crate::memory::budget_for_reservable(needed)),
        ByteSize(needed)
    )
}

/// What a job run from the command line owns: the memory plan, the
/// counters its progress reports read, and a cancel flag that SIGINT or
/// SIGTERM sets (a `headroom serve` task brings its own of each).
pub(crate) struct Standalone {
    pub plan: crate::memory::MemoryPlan,
    pub counters: std::sync::Arc<crate::telemetry::Counters>,
    pub cancel: tokio::sync::watch::Receiver<bool>,
    reporter: crate::telemetry::Reporter,
    signals: tokio::task::JoinHandle<()>,
}

/// Resolves at the next SIGINT or SIGTERM.
pub(crate) async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Sets `cancel` at the first SIGINT/SIGTERM, so the job stops cleanly
/// (partial files removed, multipart uploads aborted); exits at once at
/// the second.
async fn cancel_on_signals(cancel: tokio::sync::watch::Sender<bool>, job: &'static str) {
    signalled().await;
    tracing::warn!(
        "interrupted: stopping the {job}, removing partial files and aborting incomplete uploads (signal again to exit at once)"
    );
    let _ = cancel.send(true);
    signalled().await;
    eprintln!("error: interrupted twice; exiting without cleaning up");
    std::process::exit(130);
}

impl Standalone {
    /// Resolves the budget and starts reporting every `interval`.
    pub fn start(
        global: &crate::cli::GlobalArgs,
        interval: std::time::Duration,
        job: crate::telemetry::Job,
    ) -> Self {
        let plan = crate::memory::MemoryPlan::start(global.memory);
        let counters = std::sync::Arc::new(crate::telemetry::Counters::default());
        let reporter = crate::telemetry::Reporter::start(
            counters.clone(),
            plan.governor.clone(),
            plan.probe.clone(),
            interval,
            global.log_format,
            job,
        );
        let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
        let signals = tokio::spawn(cancel_on_signals(cancel_tx, job.name()));
        Standalone {
            plan,
            counters,
            cancel,
            reporter,
            signals,
        }
    }

    /// Stops the reports; whether a signal interrupted the job.
    pub fn stop(self) -> bool {
        self.signals.abort();
        self.reporter.stop();
        *self.cancel.borrow()
    }
}

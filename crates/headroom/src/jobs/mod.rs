//! The jobs: each a pipeline from a source through byte-bounded channels.

pub mod copy;
pub mod filter;
pub mod ingest;
pub mod purge;
pub mod sync;

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

/// How a job in the foreground of the process reports and what it may
/// use: the options every command shares (`--memory`, `--log-format`,
/// `--progress-interval`).
#[derive(Clone, Debug)]
pub struct ForegroundOptions {
    /// The memory budget; `None` derives it from the container's limit
    /// (see [`crate::memory::MemoryPlan::start`]).
    pub memory: Option<headroom_governor::ByteSize>,
    /// How logs, progress and the summary are printed.
    pub log_format: crate::telemetry::LogFormat,
    /// How often progress is reported.
    pub progress_interval: std::time::Duration,
}

impl Default for ForegroundOptions {
    fn default() -> Self {
        ForegroundOptions {
            memory: None,
            log_format: crate::telemetry::LogFormat::Text,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// How often progress is reported unless told otherwise.
pub const DEFAULT_PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A job in the foreground of the process (`headroom copy`, `purge`): it
/// owns the memory plan, the counters its progress reports read, and a
/// cancel flag that SIGINT or SIGTERM sets. A `headroom serve` task runs
/// in the background of the service instead, which brings its own of
/// each.
pub(crate) struct Foreground<C> {
    pub plan: crate::memory::MemoryPlan,
    pub counters: std::sync::Arc<C>,
    pub cancel: tokio::sync::watch::Receiver<bool>,
    reporter: crate::telemetry::Reporter,
    signals: tokio::task::JoinHandle<()>,
}

/// Sets `cancel` at the first SIGINT/SIGTERM, so the job stops cleanly
/// (partial files removed, multipart uploads aborted); exits at once at
/// the second.
async fn cancel_on_signals(cancel: tokio::sync::watch::Sender<bool>, job: &'static str) {
    crate::cancel::signalled().await;
    tracing::warn!(
        "interrupted: stopping the {job}, removing partial files and aborting incomplete uploads (signal again to exit at once)"
    );
    let _ = cancel.send(true);
    crate::cancel::signalled().await;
    eprintln!("error: interrupted twice; exiting without cleaning up");
    std::process::exit(130);
}

impl<C: crate::telemetry::JobCounters> Foreground<C> {
    /// Resolves the budget and starts reporting as `options` say.
    pub fn start(options: &ForegroundOptions) -> Self {
        let plan = crate::memory::MemoryPlan::start(options.memory);
        let counters = std::sync::Arc::new(C::default());
        let reporter = crate::telemetry::Reporter::start(
            counters.clone(),
            plan.governor.clone(),
            plan.probe.clone(),
            options.progress_interval,
            options.log_format,
        );
        let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
        let signals = tokio::spawn(cancel_on_signals(cancel_tx, C::JOB));
        Foreground {
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

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

/// What a job run from the command line owns: the memory plan, the
/// counters its progress reports read, and a cancel flag nobody sets (a
/// `headroom serve` task brings its own of each).
pub(crate) struct Standalone {
    pub plan: crate::memory::MemoryPlan,
    pub counters: std::sync::Arc<crate::telemetry::Counters>,
    pub cancel: tokio::sync::watch::Receiver<bool>,
    reporter: crate::telemetry::Reporter,
    _never: tokio::sync::watch::Sender<bool>,
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
        let (never, cancel) = tokio::sync::watch::channel(false);
        Standalone {
            plan,
            counters,
            cancel,
            reporter,
            _never: never,
        }
    }

    /// Stops the reports.
    pub fn stop(self) {
        self.reporter.stop();
    }
}

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

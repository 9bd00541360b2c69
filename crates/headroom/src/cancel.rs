//! Stopping: the cancel flag every job and transfer watches (a
//! `tokio::sync::watch` of `bool` that becomes `true` once), and the
//! signals that set it.

/// Resolves once `flag` is `true` (or its sender is gone without setting
/// it: then never). The guard `wait_for` returns is dropped here, so the
/// future stays `Send` inside `select!`.
pub async fn until_set(flag: &mut tokio::sync::watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves at the next SIGINT or SIGTERM.
pub async fn signalled() {
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

//! How every long-running component learns it should stop.

/// Resolves on the first SIGTERM (how Kubernetes and the lab stop a
/// process) or ctrl-c (SIGINT, a person at a terminal). Without a SIGTERM
/// handler (it cannot be installed) only ctrl-c counts, said in a warning.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops this cleanly");
            let _ = ctrl_c.await;
        }
    }
}

/// Resolves on SIGTERM only (daemons the lab starts in the background, for
/// which ctrl-c in the starting terminal must not count). The handler is
/// installed before this returns, so a SIGTERM sent right after is not lost.
pub fn terminate_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        term.recv().await;
    })
}

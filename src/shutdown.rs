//! Process signals: SIGTERM/SIGINT end the process gracefully; SIGHUP asks for a reload.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM or SIGINT.
pub async fn terminate() {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers there is nothing to wait for but Ctrl-C.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

//! Hot reload triggers: a `notify` watcher on the config file's *directory* (so editors that
//! write-and-rename and Kubernetes' `..data` symlink swap are seen), debounced, and SIGHUP.
//! Both only ask the control task to reload; it decides whether the file really changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::control::{ControlHandle, ReloadSource};

/// Events closer together than this are one change (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches `config_path`'s directory until `token` is cancelled. Keep the returned watcher
/// alive for as long as watching should go on.
pub fn watch(
    config_path: &Path,
    control: ControlHandle,
    token: CancellationToken,
) -> notify::Result<RecommendedWatcher> {
    let dir: PathBuf = match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Access events (reads) are noise; anything else may be a change.
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => warn!(error = %e, "config watcher error"),
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Let the burst settle, then reload once.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            debug!("config directory changed");
            control.request_reload(ReloadSource::Watcher);
        }
    });
    Ok(watcher)
}

/// Turns every SIGHUP into a reload request until `token` is cancelled.
pub fn on_sighup(control: ControlHandle, token: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = hup.recv() => control.request_reload(ReloadSource::Signal),
            }
        }
    });
}

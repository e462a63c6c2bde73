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
/// The longest a reload waits for a burst to end.
const MAX_WAIT: Duration = Duration::from_millis(600);

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
    let name = config_path.file_name().map(|n| n.to_os_string());
    // Only events about the file itself (in place, or a rename onto it) or about the
    // Kubernetes `..data` link count: other files in the directory (logs) are noise.
    let relevant = move |e: &notify::Event| {
        e.paths.iter().any(|p| {
            let f = p.file_name();
            f.is_some() && (f == name.as_deref() || f == Some(std::ffi::OsStr::new("..data")))
        })
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Access events (reads) are noise; anything else may be a change.
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
            Ok(e) if relevant(&e) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
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
            // Let the burst settle, then reload once; a steady stream of events still
            // reloads every MAX_WAIT.
            let deadline = tokio::time::Instant::now() + MAX_WAIT;
            loop {
                let wait =
                    DEBOUNCE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
                    Ok(Some(())) => break,
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

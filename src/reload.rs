//! Hot reload triggers: a `notify` watcher on the config file's *directory* (so editors that
//! write-and-rename and Kubernetes' `..data` symlink swap are seen), debounced, and SIGHUP.
//! Both only ask the control task to reload; it decides whether the file really changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::control::{ControlHandle, ReloadSource};

/// Events closer together than this are one change (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(150);
/// The longest a reload waits for a burst to end.
const MAX_WAIT: Duration = Duration::from_millis(600);

/// How often the watched directory is checked for having been removed or replaced (a
/// `rm -rf cfg; mkdir cfg` leaves an inotify watch on a directory that no longer exists).
const REARM_CHECK: Duration = Duration::from_secs(1);

pub use crate::api::WatchView;

/// Shared between the watcher task and the admin API.
pub type WatchStatus = Arc<ArcSwap<WatchView>>;

/// Identity of a directory (device, inode): a directory removed and made again has a new one.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    meta.is_dir().then(|| (meta.dev(), meta.ino()))
}

/// Watches `config_path`'s directory until `token` is cancelled, and asks the control task to
/// reload after changes. When the directory goes away or is replaced, the watch is armed
/// again on the new one (and a reload asked for, since the file may have changed meanwhile);
/// while that cannot be done, `status` and the log say so. SIGHUP and `POST /admin/reload`
/// work all along.
pub fn watch(
    config_path: &Path,
    control: ControlHandle,
    token: CancellationToken,
    status: WatchStatus,
) {
    let dir: PathBuf = match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = config_path.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watched_dir = dir.clone();
    // The watch on the directory as it is now (its identity and the watcher), or why not.
    let arm_now = move || -> Result<((u64, u64), RecommendedWatcher), String> {
        let id = identity(&dir).ok_or_else(|| format!("directory {} is missing", dir.display()))?;
        arm(&dir, name.clone(), tx.clone())
            .map(|w| (id, w))
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))
    };
    // Armed before returning, so that an edit right after startup is seen.
    let mut armed = arm_now();
    show(&status, &armed);
    tokio::spawn(async move {
        let mut check = tokio::time::interval(REARM_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = check.tick() => {
                    let id = identity(&watched_dir);
                    if id.is_some() && armed.as_ref().ok().map(|(armed_id, _)| *armed_id) == id {
                        continue;
                    }
                    // Gone or replaced: a new watch (the old one, on a dead directory, goes).
                    armed = arm_now();
                    if armed.is_ok() {
                        // The file may have changed while it was not watched.
                        info!(dir = %watched_dir.display(), "config directory watched again");
                        control.request_reload(ReloadSource::Watcher);
                    }
                    show(&status, &armed);
                }
                got = rx.recv() => {
                    if got.is_none() {
                        return;
                    }
                    debounce(&mut rx).await;
                    debug!("config directory changed");
                    control.request_reload(ReloadSource::Watcher);
                }
            }
        }
    });
}

/// Publishes whether the file is watched; a new reason not to is logged once.
fn show<W>(status: &WatchStatus, armed: &Result<W, String>) {
    let view = WatchView {
        watching: armed.is_ok(),
        error: armed.as_ref().err().cloned(),
    };
    if **status.load() == view {
        return;
    }
    if let Some(error) = &view.error {
        warn!(%error, "config file not watched; reload with SIGHUP or POST /admin/reload (retrying every second)");
    }
    status.store(Arc::new(view));
}

/// Lets a burst of events settle: returns once none came for `DEBOUNCE`, or after
/// `MAX_WAIT` when they keep coming.
async fn debounce(rx: &mut mpsc::UnboundedReceiver<()>) {
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        let wait = DEBOUNCE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(())) if tokio::time::Instant::now() < deadline => continue,
            Ok(Some(())) | Ok(None) | Err(_) => return,
        }
    }
}

/// A `notify` watcher on `dir` that sends on `tx` for events about the config file (in
/// place, or a rename onto it) or the Kubernetes `..data` link; other files are noise.
fn arm(
    dir: &Path,
    name: Option<std::ffi::OsString>,
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<RecommendedWatcher> {
    let relevant = move |e: &notify::Event| {
        e.paths.iter().any(|p| {
            let f = p.file_name();
            f.is_some() && (f == name.as_deref() || f == Some(std::ffi::OsStr::new("..data")))
        })
    };
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
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
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

//! Hot reload triggers: a `notify` watcher on the config file's *directory* (so editors that
//! write-and-rename and Kubernetes' `..data` symlink swap are seen) and, for a symlinked
//! file, on its target's directory, debounced; and SIGHUP.
//! Both only ask the control task to reload; it decides whether the file really changed.

use std::ffi::OsString;
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

/// How often the watched directories are checked for having been removed or replaced (a
/// `rm -rf cfg; mkdir cfg` leaves an inotify watch on a directory that no longer exists),
/// and the config symlink for leading elsewhere.
const REARM_CHECK: Duration = Duration::from_secs(1);

pub use crate::api::WatchView;

/// Shared between the watcher task and the admin API.
pub type WatchStatus = Arc<ArcSwap<WatchView>>;

/// Identity of a directory (device, inode): a directory removed and made again usually has a
/// new one (not always: ext4 hands a freed inode out again at once, hence the removal event).
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    meta.is_dir().then(|| (meta.dev(), meta.ino()))
}

/// What the watcher's callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// Something about the config file changed.
    Changed,
    /// A watched directory itself was removed or renamed: its watch is dead.
    Gone,
}

/// A directory watched for one file name in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spot {
    dir: PathBuf,
    name: OsString,
}

/// Where the config file can change: its own directory (for its name, and for Kubernetes'
/// `..data` link) and, when the path is a symlink, the directory of the file it leads to,
/// since an edit made there changes nothing in the link's directory.
fn spots(config_path: &Path) -> Vec<Spot> {
    let dir = match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = config_path.file_name().unwrap_or_default().to_os_string();
    let mut all = vec![Spot { dir, name }];
    let target = std::fs::canonicalize(config_path).ok().and_then(|real| {
        Some(Spot {
            dir: real.parent()?.to_path_buf(),
            name: real.file_name()?.to_os_string(),
        })
    });
    if let (Some(target), Some(first)) = (target, all.first()) {
        let first_real = std::fs::canonicalize(&first.dir).unwrap_or_else(|_| first.dir.clone());
        if target.dir != first_real || target.name != first.name {
            all.push(target);
        }
    }
    all
}

/// A live watch: where, each directory's identity when armed, and the watcher itself.
struct Armed {
    spots: Vec<Spot>,
    ids: Vec<Option<(u64, u64)>>,
    _watcher: RecommendedWatcher,
}

impl Armed {
    /// Still watching what the config path leads to now, in the same directories.
    fn current(&self, config_path: &Path) -> bool {
        let spots = spots(config_path);
        let ids: Vec<_> = spots.iter().map(|s| identity(&s.dir)).collect();
        spots == self.spots && ids == self.ids
    }
}

/// Watches the config file until `token` is cancelled, and asks the control task to reload
/// after changes. When a watched directory is removed or replaced (its removal event, or a
/// new identity found by the check every second), or the symlink leads elsewhere, the watch
/// is armed again on what is there now (and a reload asked for, since the file may have
/// changed meanwhile); while that cannot be done, `status` and the log say so. SIGHUP and
/// `POST /admin/reload` work all along.
pub fn watch(
    config_path: &Path,
    control: ControlHandle,
    token: CancellationToken,
    status: WatchStatus,
) {
    let config_path = config_path.to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
    // Armed before returning, so that an edit right after startup is seen.
    let mut armed = arm(&config_path, &tx);
    show(&status, &armed);
    tokio::spawn(async move {
        let mut check = tokio::time::interval(REARM_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Arms the watch again; the old one goes first (it may watch a dead directory).
        let rearm = |armed: &mut Result<Armed, String>| {
            let was_watching = armed.is_ok();
            *armed = Err("re-arming".to_string());
            *armed = arm(&config_path, &tx);
            if armed.is_ok() {
                // The file may have changed while it was not watched.
                if was_watching {
                    debug!(path = %config_path.display(), "config file watched again");
                } else {
                    info!(path = %config_path.display(), "config file watched again");
                }
                control.request_reload(ReloadSource::Watcher);
            }
            show(&status, armed);
        };
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = check.tick() => {
                    if !armed.as_ref().is_ok_and(|a| a.current(&config_path)) {
                        rearm(&mut armed);
                    }
                }
                got = rx.recv() => {
                    let Some(first) = got else { return };
                    let gone = debounce(&mut rx, first).await;
                    // A swapped symlink leads to another directory: watch that one at once.
                    if gone || !armed.as_ref().is_ok_and(|a| a.current(&config_path)) {
                        rearm(&mut armed);
                    } else {
                        debug!("config file changed");
                        control.request_reload(ReloadSource::Watcher);
                    }
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
/// `MAX_WAIT` when they keep coming; true when a watched directory went away meanwhile.
async fn debounce(rx: &mut mpsc::UnboundedReceiver<Signal>, first: Signal) -> bool {
    let mut gone = first == Signal::Gone;
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        let wait = DEBOUNCE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(signal)) => {
                gone |= signal == Signal::Gone;
                if tokio::time::Instant::now() >= deadline {
                    return gone;
                }
            }
            Ok(None) | Err(_) => return gone,
        }
    }
}

/// A `notify` watcher on every spot of `config_path`, sending on `tx` for events about the
/// config file (in place, or a rename onto it), the Kubernetes `..data` link, or a watched
/// directory's own removal; other files are noise.
fn arm(config_path: &Path, tx: &mpsc::UnboundedSender<Signal>) -> Result<Armed, String> {
    let spots = spots(config_path);
    let mut ids = Vec::with_capacity(spots.len());
    for spot in &spots {
        let id = identity(&spot.dir)
            .ok_or_else(|| format!("directory {} is missing", spot.dir.display()))?;
        ids.push(Some(id));
    }
    let seen = spots.clone();
    let tx = tx.clone();
    let classify = move |e: &notify::Event| -> Option<Signal> {
        if e.need_rescan() {
            return Some(Signal::Changed);
        }
        let removed = matches!(
            e.kind,
            notify::EventKind::Remove(_)
                | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
        );
        if removed && e.paths.iter().any(|p| seen.iter().any(|s| *p == s.dir)) {
            return Some(Signal::Gone);
        }
        let data = std::ffi::OsStr::new("..data");
        let ours = |p: &PathBuf| {
            seen.iter().any(|s| {
                p.parent() == Some(s.dir.as_path())
                    && p.file_name()
                        .is_some_and(|f| f == s.name.as_os_str() || f == data)
            })
        };
        e.paths.iter().any(ours).then_some(Signal::Changed)
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Access events (reads) are noise; anything else may be a change.
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
            Ok(e) => {
                if let Some(signal) = classify(&e) {
                    let _ = tx.send(signal);
                }
            }
            Err(e) => warn!(error = %e, "config watcher error"),
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", config_path.display()))?;
    let mut watched: Vec<&Path> = Vec::new();
    for spot in &spots {
        if watched.contains(&spot.dir.as_path()) {
            continue;
        }
        watcher
            .watch(&spot.dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", spot.dir.display()))?;
        watched.push(&spot.dir);
    }
    Ok(Armed {
        spots,
        ids,
        _watcher: watcher,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_file_is_watched_where_it_lives_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        let (etc, srv) = (root.join("etc"), root.join("srv"));
        std::fs::create_dir(&etc).expect("mkdir");
        std::fs::create_dir(&srv).expect("mkdir");
        let spot = |dir: &Path, name: &str| Spot {
            dir: dir.to_path_buf(),
            name: name.into(),
        };
        // A plain file: its directory alone.
        let plain = etc.join("plain.toml");
        std::fs::write(&plain, "").expect("write");
        assert_eq!(spots(&plain), [spot(&etc, "plain.toml")]);
        // A link to another directory: both.
        let link = etc.join("switchyard.toml");
        std::os::unix::fs::symlink(srv.join("live.toml"), &link).expect("link");
        std::fs::write(srv.join("live.toml"), "").expect("write");
        assert_eq!(
            spots(&link),
            [spot(&etc, "switchyard.toml"), spot(&srv, "live.toml")]
        );
        // A link within the same directory: both names there.
        let near = etc.join("near.toml");
        std::os::unix::fs::symlink("plain.toml", &near).expect("link");
        assert_eq!(
            spots(&near),
            [spot(&etc, "near.toml"), spot(&etc, "plain.toml")]
        );
        // A dangling link: its own directory (the target's may come later; checked each second).
        let dangling = etc.join("dangling.toml");
        std::os::unix::fs::symlink(srv.join("none.toml"), &dangling).expect("link");
        assert_eq!(spots(&dangling), [spot(&etc, "dangling.toml")]);
    }
}

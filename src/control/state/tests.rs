//! The control state without sockets: reloads and admin changes against a config file in a
//! temporary directory, checked on what the state says and what the file holds.

use std::path::Path;

use super::*;
use crate::config;

const FILE: &str = r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
persist = true
[[routes]]
service = "shop"
[services.shop]
strategy = "canary"
weights = { stable = 90, canary = 10 }
[services.shop.pools.stable]
endpoints = ["127.0.0.1:1"]
[services.shop.pools.canary]
endpoints = ["127.0.0.1:2"]
"#;

fn loaded(dir: &Path, text: &str) -> ControlState {
    let path = dir.join("switchyard.toml");
    if let Err(e) = std::fs::write(&path, text) {
        panic!("{e}");
    }
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    match ControlState::new(config, text.to_string()) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn weights(state: &ControlState) -> Vec<(String, u32)> {
    let svc = &state.config().services["shop"];
    svc.weights.iter().map(|(p, w)| (p.clone(), *w)).collect()
}

fn set(state: &mut ControlState, stable: u32, canary: u32) -> Result<ServiceView, ControlError> {
    let body = format!(r#"{{"stable": {stable}, "canary": {canary}}}"#);
    let change = Change::set_weights("shop".into(), body.as_bytes());
    state.change(change, &Guard::default())
}

fn tmp() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn an_unchanged_file_is_no_reload_and_a_broken_one_changes_nothing() {
    let dir = tmp();
    let mut state = loaded(dir.path(), FILE);
    assert!(state.reload(ReloadSource::Watcher).is_ok());
    assert_eq!(
        state.generation(),
        1,
        "the same text is not a new generation"
    );

    let broken = FILE.replace("canary = 10 }", "canary = \"ten\" }");
    assert!(std::fs::write(dir.path().join("switchyard.toml"), broken).is_ok());
    let err = state.reload(ReloadSource::Watcher).err();
    let Some(ControlError::Reload(ReloadError::Invalid(e))) = &err else {
        panic!("{err:?}");
    };
    assert!(e.to_string().contains("switchyard.toml"), "{e}");
    assert_eq!(state.generation(), 1);
    assert_eq!(
        weights(&state),
        [("stable".into(), 90), ("canary".into(), 10)]
    );
    let status = state.status_view();
    assert!(!status.last_reload.ok && !status.persisted);
    assert_eq!(
        status.restart_required, None,
        "an invalid file needs an edit, not a restart"
    );

    // Put back as it was: the failure is over, still without a new generation.
    assert!(std::fs::write(dir.path().join("switchyard.toml"), FILE).is_ok());
    assert!(state.reload(ReloadSource::Watcher).is_ok());
    let status = state.status_view();
    assert!(status.last_reload.ok && status.persisted);
    assert_eq!(state.generation(), 1);
}

#[test]
fn a_new_listen_address_is_refused_until_a_restart_and_said_so() {
    let dir = tmp();
    let mut state = loaded(dir.path(), FILE);
    let moved = FILE.replacen("127.0.0.1:0", "127.0.0.1:9", 1);
    assert!(std::fs::write(dir.path().join("switchyard.toml"), moved).is_ok());
    let err = state.reload(ReloadSource::Signal).err();
    assert!(
        matches!(
            &err,
            Some(ControlError::Reload(ReloadError::NeedsRestart(_)))
        ),
        "{err:?}"
    );
    let status = state.status_view();
    assert!(
        status
            .restart_required
            .is_some_and(|why| why.contains("server.listen")),
    );
    assert_eq!(state.generation(), 1);
}

#[test]
fn an_admin_change_is_written_back_and_its_own_write_is_no_reload() {
    let dir = tmp();
    let mut state = loaded(dir.path(), FILE);
    let view = set(&mut state, 50, 50);
    assert!(
        view.as_ref()
            .is_ok_and(|v| v.persisted && v.generation == 2),
        "{view:?}"
    );
    let on_disk = std::fs::read_to_string(dir.path().join("switchyard.toml")).unwrap_or_default();
    assert!(
        on_disk.contains("stable = 50") && on_disk.contains("canary = 50"),
        "{on_disk}"
    );
    // The watcher sees our own write: nothing to apply.
    assert!(state.reload(ReloadSource::Watcher).is_ok());
    assert_eq!(state.generation(), 2);
}

#[test]
fn a_hand_edit_not_yet_reloaded_is_never_written_over() {
    let dir = tmp();
    let mut state = loaded(dir.path(), FILE);
    let edited = FILE.replace("canary = 10 }", "canary = 30 }");
    assert!(std::fs::write(dir.path().join("switchyard.toml"), &edited).is_ok());
    let view = set(&mut state, 50, 50);
    assert!(
        view.as_ref().is_ok_and(|v| !v.persisted),
        "live, not written: {view:?}"
    );
    let on_disk = std::fs::read_to_string(dir.path().join("switchyard.toml")).unwrap_or_default();
    assert_eq!(on_disk, edited);
    // The edit's reload then applies it.
    assert!(state.reload(ReloadSource::Watcher).is_ok());
    assert_eq!(
        weights(&state),
        [("stable".into(), 90), ("canary".into(), 30)]
    );
    assert!(state.status_view().persisted);
}

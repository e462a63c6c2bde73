//! The control state's effects, kept apart from its decisions: the table readers see (with
//! the endpoint registry it is built over) and the config file (what it last said, and
//! whether the live state is written in it). The control state decides what to serve; these
//! carry it out and remember what was carried out.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tracing::warn;

use super::timestamp;
use crate::api::ReloadView;
use crate::config::{self, Config};
use crate::router::{RoutingTable, TableError};
use crate::upstream::Registry;

/// The routing table the data path reads, and the live endpoint states it is built over.
pub(super) struct Published {
    pub(super) registry: Registry,
    tables: Arc<ArcSwap<RoutingTable>>,
}

impl Published {
    /// The first table, at generation 1.
    pub(super) fn first(config: &Config) -> Result<Published, TableError> {
        let mut registry = Registry::new();
        super::reload::apply_file_drains(&mut registry, config, None);
        let table = RoutingTable::build(config, &mut registry, 1)?;
        Ok(Published {
            registry,
            tables: Arc::new(ArcSwap::from_pointee(table)),
        })
    }

    pub(super) fn tables(&self) -> Arc<ArcSwap<RoutingTable>> {
        self.tables.clone()
    }

    /// The table being served.
    pub(super) fn table(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.tables.load()
    }

    /// Builds a table from `config` at `generation` and serves it; endpoint and pool states
    /// the config no longer has are let go.
    pub(super) fn publish(&mut self, config: &Config, generation: u64) -> Result<(), TableError> {
        let table = RoutingTable::build(config, &mut self.registry, generation)?;
        self.tables.store(Arc::new(table));
        self.registry.retain(|(s, p, a)| {
            config
                .services
                .get(s)
                .and_then(|svc| svc.pools.get(p))
                .is_some_and(|pool| pool.endpoints.contains(a))
        });
        self.registry.retain_pools(|s, p| {
            s.is_empty()
                || config
                    .services
                    .get(s)
                    .is_some_and(|svc| p.is_empty() || svc.pools.contains_key(p))
        });
        Ok(())
    }
}

/// The config file as this process knows it.
pub(super) struct FileSide {
    /// The file's text as last loaded or written by us: a watcher event whose file still
    /// holds this text is our own write (or no change) and is not a reload.
    pub(super) text: String,
    /// The config as the file last said (drains in a reload apply as a delta against it).
    pub(super) config: Config,
    /// The live state is kept: in the file, or in a fleet's store.
    pub(super) persisted: bool,
    /// The live state is what `text` says (admin changes since were written back).
    pub(super) live_matches_text: bool,
    pub(super) last_reload: ReloadView,
    pub(super) restart_required: Option<String>,
}

impl FileSide {
    /// A file just loaded; the demo's built-in config has no text and is kept nowhere.
    pub(super) fn loaded(config: &Config, text: String) -> FileSide {
        FileSide {
            persisted: !text.is_empty(),
            text,
            config: config.clone(),
            live_matches_text: true,
            last_reload: ReloadView {
                ok: true,
                at: timestamp(SystemTime::now()),
                error: None,
            },
            restart_required: None,
        }
    }

    /// A reload found the text already known (our own write, a touch, a file put back as
    /// it was): an earlier failure is over.
    pub(super) fn unchanged(&mut self, now: String) {
        self.persisted = self.live_matches_text;
        self.restart_required = None;
        if !self.last_reload.ok {
            self.reloaded(now);
        }
    }

    /// A reload applied.
    pub(super) fn reloaded(&mut self, now: String) {
        self.restart_required = None;
        self.last_reload = ReloadView {
            ok: true,
            at: now,
            error: None,
        };
    }

    /// A reload failed: the file now says something the live state does not.
    pub(super) fn failed(&mut self, at: String, msg: String, restart: bool) {
        self.last_reload = ReloadView {
            ok: false,
            at,
            error: Some(msg.clone()),
        };
        self.restart_required = restart.then_some(msg);
        self.persisted = false;
    }

    /// Writes the live split back into the file when `admin.persist` is on.
    pub(super) fn persist(&mut self, live: &Config) {
        // A hand edit not reloaded yet must not be folded into our write (and then taken
        // for our own text): leave the file alone; the pending reload applies the edit.
        let on_disk = std::fs::read_to_string(&live.path).ok();
        if live.admin.persist && on_disk.as_deref() != Some(self.text.as_str()) {
            warn!(
                "config file changed on disk since it was loaded: the admin change is live but not written; the file's edit applies on its reload"
            );
            self.live_matches_text = false;
            self.persisted = false;
            return;
        }
        self.live_matches_text = live.admin.persist
            && match config::persist::write_back(&live.path, live) {
                Ok(text) => {
                    self.text = text;
                    self.config = live.clone();
                    true
                }
                Err(e) => {
                    warn!(error = %e, "admin change is live but could not be written to the config file");
                    false
                }
            };
        self.persisted = self.live_matches_text;
    }
}

//! The control task's side of hot reload: re-read the file, refuse what needs a restart,
//! apply drains as a delta, publish, and keep the state a reload must not lose.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, warn};

use super::{ControlState, timestamp};
use crate::config::{self, Config};
use crate::control::command::{ControlError, ReloadSource, StatusView};
use crate::observe::audit::Actor;
use crate::router::RoutingTable;
use crate::upstream::Registry;

impl ControlState {
    // === reload ===

    /// Re-reads the config file. An invalid file changes nothing.
    pub fn reload(&mut self, source: ReloadSource) -> Result<StatusView, ControlError> {
        self.reload_over(source, None)
    }

    /// Re-reads the config file; in a fleet, `fleet` puts the fleet's live fields over the
    /// file's before anything is published, so a file's own weights, active pools or drains
    /// are never live here until the fleet has taken them (the caller commits them), and the
    /// generation stays the fleet's.
    pub fn reload_over(
        &mut self,
        source: ReloadSource,
        fleet: Option<&dyn Fn(&mut Config)>,
    ) -> Result<StatusView, ControlError> {
        let now = timestamp(SystemTime::now());
        let read = self.read_file().and_then(|read| {
            let Some((text, next)) = read else {
                return Ok(None);
            };
            let certs = self.check_file(&next)?;
            Ok(Some((text, next, certs)))
        });
        match read {
            Ok(None) => {
                self.file.unchanged(now);
                Ok(self.status_view())
            }
            Ok(Some((text, next, certs))) => {
                let before = self.live_fields();
                let (next, generation, runtime_only) = self.take_file(next, fleet);
                self.history.clear();
                self.file.text = text;
                self.config = next;
                self.publish_as(generation)?;
                // Certificates switch with the table, not before it is known to publish.
                if let Some(NewCerts {
                    store,
                    pairs,
                    certs,
                }) = certs
                {
                    store.replace(pairs, certs);
                }
                self.after_reload(source, now, runtime_only, &before);
                Ok(self.status_view())
            }
            Err(e) => Err(self.reload_failed(source, now, e)),
        }
    }

    /// The file's text and config, or `None` when the text is the one already read.
    fn read_file(&self) -> Result<Option<(String, Config)>, ReloadError> {
        let path = &self.config.path;
        let text = std::fs::read_to_string(path).map_err(|e| ReloadError::Unreadable {
            path: path.display().to_string(),
            error: Arc::new(e),
        })?;
        if text == self.file.text {
            return Ok(None);
        }
        let next = config::parse(&text, path).map_err(|e| ReloadError::Invalid(Arc::new(e)))?;
        Ok(Some((text, next)))
    }

    /// Whether `next` can be applied without a restart and builds a table; a new certificate
    /// list must load before anything is applied.
    fn check_file(&self, next: &Config) -> Result<Option<NewCerts>, ReloadError> {
        if let Some(why) = needs_restart(&self.config, next) {
            return Err(ReloadError::NeedsRestart(why));
        }
        RoutingTable::validate(next).map_err(|e| ReloadError::Table(Arc::new(e)))?;
        let (Some(store), Some(tls)) = (&self.certs, &next.server.tls) else {
            return Ok(None);
        };
        if *store.pairs() == tls.certs {
            return Ok(None);
        }
        let certs = crate::tls::load(&tls.certs).map_err(|errors| ReloadError::Certificates {
            path: next.path.display().to_string(),
            errors,
        })?;
        Ok(Some(NewCerts {
            store: store.clone(),
            pairs: tls.certs.clone(),
            certs,
        }))
    }

    /// The config to serve from a new file, its generation, and whether it carries runtime
    /// drains the file does not mention. Drains that changed are applied to the registry.
    fn take_file(
        &mut self,
        mut next: Config,
        fleet: Option<&dyn Fn(&mut Config)>,
    ) -> (Config, u64, bool) {
        if let Some(put_fleet_over) = fleet {
            self.file.config = next.clone();
            put_fleet_over(&mut next);
            // The drains that differ from the live ones, as adopting applies them.
            apply_file_drains(&mut self.published.registry, &next, Some(&self.config));
            return (next, self.generation, false);
        }
        apply_file_drains(&mut self.published.registry, &next, Some(&self.file.config));
        // Runtime drains that the file did not mention stay; the live config shows them.
        let mut runtime_only = false;
        for (sname, svc) in next.services.iter_mut() {
            for (pname, pool) in svc.pools.iter_mut() {
                for addr in &pool.endpoints {
                    let draining = self
                        .published
                        .registry
                        .get(sname, pname, addr)
                        .is_some_and(|s| s.is_draining());
                    if draining && !pool.drained.contains(addr) {
                        pool.drained.push(addr.clone());
                        runtime_only = true;
                    }
                }
            }
        }
        self.file.config = next.clone();
        (next, self.generation + 1, runtime_only)
    }

    /// After a new file was published: rollouts, status, metric, log and audit.
    fn after_reload(
        &mut self,
        source: ReloadSource,
        now: String,
        runtime_only: bool,
        before: &crate::api::LiveFields,
    ) {
        self.sync_rollouts();
        self.file.live_matches_text = !runtime_only;
        // A running rollout owns its split: a file that set other weights is overridden.
        // In a fleet, the fleet's state (split and progress) is put back after the reload,
        // and its leader starts rollouts.
        if self.config.cluster.is_none() {
            self.reapply_rollout_splits();
            self.start_auto_rollouts();
        }
        self.file.persisted = self.file.live_matches_text;
        self.file.reloaded(now);
        metrics::counter!("switchyard_config_reloads_total", "result" => "success").increment(1);
        info!(
            source = source.as_str(),
            generation = self.generation,
            "config reloaded"
        );
        let call = format!("reload ({})", source.as_str());
        self.record(super::Origin::new(Actor::File, call), before);
    }

    fn reload_failed(&mut self, source: ReloadSource, at: String, e: ReloadError) -> ControlError {
        let msg = e.to_string();
        warn!(source = source.as_str(), error = %msg, "config reload failed; the previous config keeps serving");
        metrics::counter!("switchyard_config_reloads_total", "result" => "failure").increment(1);
        let restart = matches!(e, ReloadError::NeedsRestart(_));
        self.file.failed(at, msg, restart);
        ControlError::Reload(e)
    }
}

/// A new certificate list, loaded, for the store that serves it.
struct NewCerts {
    store: Arc<crate::tls::CertStore>,
    pairs: Vec<crate::config::CertPair>,
    certs: crate::tls::Certs,
}

/// Why a reload changed nothing (the previous config keeps serving).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("{path}: cannot read: {error}")]
    Unreadable {
        path: String,
        error: Arc<std::io::Error>,
    },
    /// Every problem of the file, each with its line and key.
    #[error("{}", .0.to_string().trim_end())]
    Invalid(Arc<config::ConfigErrors>),
    /// A change only a restart can apply (a listen address, the worker count, ...).
    #[error("{0}: restart switchyard to apply it; nothing was changed")]
    NeedsRestart(String),
    #[error(transparent)]
    Table(Arc<crate::router::TableError>),
    #[error("{path}: {}", errors.join("; "))]
    Certificates { path: String, errors: Vec<String> },
}

/// A new file that changes what only a restart can apply.
fn needs_restart(live: &Config, next: &Config) -> Option<String> {
    if live.server.listen != next.server.listen {
        return Some(format!(
            "server.listen changed from {} to {}",
            live.server.listen, next.server.listen
        ));
    }
    if live.admin.listen != next.admin.listen {
        return Some(format!(
            "admin.listen changed from {} to {}",
            live.admin.listen, next.admin.listen
        ));
    }
    if live.server.takeover_socket != next.server.takeover_socket {
        return Some(format!(
            "server.takeover_socket changed from {} to {}",
            live.server.takeover_socket.display(),
            next.server.takeover_socket.display()
        ));
    }
    let tls = |c: &Config| {
        c.server
            .tls
            .as_ref()
            .map(|t| (t.listen, t.handshake_timeout))
    };
    if tls(live) != tls(next) {
        return Some("server.tls.listen or handshake_timeout changed".to_string());
    }
    // The fleet's connections, lease and name are set up once, at start.
    if live.cluster != next.cluster {
        return Some("the [cluster] section changed".to_string());
    }
    None
}

/// Drains written in the file: at start every listed endpoint is drained; on a reload only
/// what the file changed applies (listed now but not before: drain; no longer listed: undrain),
/// so drains made through the admin API survive a reload of a file that never heard of them.
pub(super) fn apply_file_drains(registry: &mut Registry, next: &Config, previous: Option<&Config>) {
    for (sname, svc) in &next.services {
        for (pname, pool) in &svc.pools {
            let before: &[String] = previous
                .and_then(|c| c.services.get(sname))
                .and_then(|s| s.pools.get(pname))
                .map_or(&[], |p| p.drained.as_slice());
            for addr in &pool.endpoints {
                let now_listed = pool.drained.contains(addr);
                let changed = match previous {
                    None => now_listed,
                    Some(_) => now_listed != before.contains(addr),
                };
                if changed {
                    registry
                        .endpoint(sname, pname, addr)
                        .set_draining(now_listed);
                }
            }
        }
    }
}

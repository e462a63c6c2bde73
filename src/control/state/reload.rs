//! The control task's side of hot reload: re-read the file, refuse what needs a restart,
//! apply drains as a delta, publish, and keep the state a reload must not lose.

use std::time::SystemTime;

use tracing::{info, warn};

use super::{ControlState, timestamp};
use crate::config::{self, Config};
use crate::control::command::{ControlError, ReloadSource, ReloadView, StatusView};
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
        let path = self.config.path.clone();
        let result = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            .and_then(|text| {
                if text == self.file_text {
                    return Ok(None);
                }
                let next = config::parse(&text, &path)
                    .map_err(|e| e.to_string().trim_end().to_string())?;
                Ok(Some((text, next)))
            });
        let now = timestamp(SystemTime::now());
        match result {
            Ok(None) => {
                // Our own persisted write, a touch, or a file put back as it was: nothing to
                // apply, no new generation; an earlier failure is over.
                self.persisted = self.live_matches_text;
                self.restart_required = None;
                if !self.last_reload.ok {
                    self.last_reload = ReloadView {
                        ok: true,
                        at: now,
                        error: None,
                    };
                }
                Ok(self.status_view())
            }
            Ok(Some((text, next))) => {
                if let Some(why) = needs_restart(&self.config, &next) {
                    let msg = format!("{why}: restart switchyard to apply it; nothing was changed");
                    return Err(self.reload_failed(source, now, msg, true));
                }
                if let Err(e) = RoutingTable::validate(&next) {
                    return Err(self.reload_failed(source, now, e.to_string(), false));
                }
                // A new certificate list must load before anything is applied.
                let new_certs = match (&self.certs, &next.server.tls) {
                    (Some(store), Some(tls)) if *store.pairs() != tls.certs => {
                        match crate::tls::load(&tls.certs) {
                            Ok(certs) => Some((store.clone(), tls.certs.clone(), certs)),
                            Err(errors) => {
                                let msg = format!("{}: {}", path.display(), errors.join("; "));
                                return Err(self.reload_failed(source, now, msg, false));
                            }
                        }
                    }
                    _ => None,
                };

                let before = self.live_fields();
                let mut next = next;
                let mut runtime_only = false;
                let generation = match fleet {
                    Some(put_fleet_over) => {
                        self.file_config = next.clone();
                        put_fleet_over(&mut next);
                        // The drains that differ from the live ones, as adopting applies them.
                        apply_file_drains(&mut self.registry, &next, Some(&self.config));
                        self.generation
                    }
                    None => {
                        apply_file_drains(&mut self.registry, &next, Some(&self.file_config));
                        // Runtime drains that the file did not mention stay; the live config
                        // shows them.
                        for (sname, svc) in next.services.iter_mut() {
                            for (pname, pool) in svc.pools.iter_mut() {
                                for addr in &pool.endpoints {
                                    let draining = self
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
                        self.file_config = next.clone();
                        self.generation + 1
                    }
                };
                self.history.clear();
                self.file_text = text;
                self.config = next;
                self.publish_as(generation)?;
                // Certificates switch with the table, not before it is known to publish.
                if let Some((store, pairs, certs)) = new_certs {
                    store.replace(pairs, certs);
                }
                self.sync_rollouts();
                self.live_matches_text = !runtime_only;
                // A running rollout owns its split: a file that set other weights is overridden.
                // In a fleet, the fleet's state (split and progress) is put back after the
                // reload, and its leader starts rollouts.
                if self.config.cluster.is_none() {
                    self.reapply_rollout_splits();
                    self.start_auto_rollouts();
                }
                self.persisted = self.live_matches_text;
                self.restart_required = None;
                self.last_reload = ReloadView {
                    ok: true,
                    at: now,
                    error: None,
                };
                metrics::counter!("switchyard_config_reloads_total", "result" => "success")
                    .increment(1);
                info!(
                    source = source.as_str(),
                    generation = self.generation,
                    "config reloaded"
                );
                let call = format!("reload ({})", source.as_str());
                self.record(super::Origin::new(Actor::File, call), &before);
                Ok(self.status_view())
            }
            Err(msg) => Err(self.reload_failed(source, now, msg, false)),
        }
    }

    fn reload_failed(
        &mut self,
        source: ReloadSource,
        at: String,
        msg: String,
        restart: bool,
    ) -> ControlError {
        warn!(source = source.as_str(), error = %msg, "config reload failed; the previous config keeps serving");
        metrics::counter!("switchyard_config_reloads_total", "result" => "failure").increment(1);
        self.last_reload = ReloadView {
            ok: false,
            at,
            error: Some(msg.clone()),
        };
        self.restart_required = restart.then(|| msg.clone());
        // The file now says something the live state does not.
        self.persisted = false;
        ControlError::Reload(msg)
    }
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

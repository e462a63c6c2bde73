//! Assembles a running switchyard from a validated config: the control task and admin API
//! on a control thread, the data-plane workers, reload triggers, and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::control::{self, ControlHandle, ControlState};
use crate::router::RoutingTable;
use crate::takeover::Inherited;
use crate::{reload, server};

/// How an instance is started.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    /// Watch the config file's directory and reload on change.
    pub watch: bool,
    /// Reload on SIGHUP (the binary; not tests, which share one process).
    pub sighup: bool,
}

impl Options {
    pub fn new(workers: usize) -> Self {
        Options {
            workers,
            watch: true,
            sighup: false,
        }
    }
}

/// A running instance: listeners, control task, admin API.
pub struct Instance {
    pub addr: SocketAddr,
    /// The HTTPS listener, when `server.tls` is set.
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub tables: Arc<ArcSwap<RoutingTable>>,
    pub control: ControlHandle,
    admin: Arc<AdminState>,
    /// A copy of the admin socket, to hand to a successor.
    admin_socket: Option<std::net::TcpListener>,
    /// Stops the data plane (workers drain).
    token: CancellationToken,
    /// Stops the control task and admin API, after the data plane has drained, so
    /// `/readyz` can answer 503 during the grace period.
    control_token: CancellationToken,
    data: server::Running,
    control_thread: JoinHandle<()>,
}

impl Instance {
    /// Builds the first table and starts everything. The config file (if it exists) is
    /// what reloads are compared against.
    pub fn start(config: &Config, options: &Options) -> anyhow::Result<Instance> {
        Self::start_on(config, options, None)
    }

    /// [`Self::start`], on the sockets and with the live state a predecessor handed over
    /// when `inherited` is given (`run --takeover`).
    pub fn start_on(
        config: &Config,
        options: &Options,
        inherited: Option<Inherited>,
    ) -> anyhow::Result<Instance> {
        // Before the first table: its metric handles must come from the real recorder.
        let exporter = crate::metrics::install();
        let file_text = std::fs::read_to_string(&config.path).unwrap_or_default();
        if config.admin.persist {
            let removed = crate::config::persist::remove_stale_temps(&config.path);
            if removed > 0 {
                tracing::info!(
                    removed,
                    "removed temp files left by an interrupted config write"
                );
            }
        }
        let certs = match &config.server.tls {
            Some(tls) => {
                let loaded = crate::tls::load(&tls.certs).map_err(|errors| {
                    anyhow::anyhow!(
                        "{}: {}",
                        config.path.display(),
                        errors.join(&format!("\n{}: ", config.path.display()))
                    )
                })?;
                Some(crate::tls::CertStore::new(tls.certs.clone(), loaded))
            }
            None => None,
        };
        // A successor takes its predecessor's name over with the sockets: that name is held
        // by the predecessor until it leaves the fleet, which it does at the handover.
        if let Some(cluster) = &config.cluster
            && inherited.is_none()
        {
            check_fleet_name(cluster)?;
        }
        let mut state = ControlState::new(config.clone(), file_text)?;
        // In a fleet the shared state comes from etcd anyway.
        if let Some(inherited) = &inherited
            && config.cluster.is_none()
        {
            inherited.live.restore(&mut state)?;
        } else if inherited.is_none() {
            state.resume_rollouts();
        }
        state.set_cert_store(certs.clone());
        let observer = Arc::new(crate::observe::Observer::default());
        state.set_observer(observer.clone());
        let tables = state.tables();
        let token = CancellationToken::new();
        let control_token = CancellationToken::new();

        let (sockets, admin_listener) = match inherited {
            Some(inherited) => inherited_sockets(config, options, inherited)?,
            None => {
                // std's bind sets SO_REUSEADDR but never SO_REUSEPORT: no other process can
                // share it.
                let admin = std::net::TcpListener::bind(config.admin.listen)
                    .map_err(server::in_use)
                    .with_context(|| {
                        format!("cannot listen on admin.listen {}", config.admin.listen)
                    })?;
                let tls = config.server.tls.as_ref().map(|t| t.listen);
                let sockets = server::Sockets::bind(config.server.listen, tls, options.workers)?;
                (sockets, admin)
            }
        };
        admin_listener.set_nonblocking(true)?;
        let admin_addr = admin_listener.local_addr()?;
        let admin_copy = admin_listener.try_clone()?;
        let tls_listener = match (&certs, &config.server.tls) {
            (Some(store), Some(tls)) => Some(server::TlsListener {
                addr: tls.listen,
                config: store.server_config()?,
                handshake_timeout: tls.handshake_timeout,
            }),
            _ => None,
        };
        let data = server::start(
            sockets,
            tls_listener,
            tables.clone(),
            options.workers,
            token.clone(),
        )?;

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (path, token2, opts, token_secret) = (
            config.path.clone(),
            control_token.clone(),
            options.clone(),
            config.admin.token.clone(),
        );
        let tables2 = tables.clone();
        let control_thread = std::thread::Builder::new()
            .name("switchyard-control".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("control runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let handle = control::spawn::<crate::fleet::FleetSide>(state, token2.clone());
                    let listener = match tokio::net::TcpListener::from_std(admin_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::anyhow!("admin listener: {e}")));
                            return;
                        }
                    };
                    tokio::spawn(crate::observe::sampler::run(
                        tables2.clone(),
                        observer.clone(),
                        token2.clone(),
                    ));
                    let render_tables = tables2.clone();
                    let watch_status: reload::WatchStatus =
                        Arc::new(arc_swap::ArcSwap::from_pointee(reload::WatchView {
                            watching: false,
                            error: (!opts.watch).then(|| "file watching is off".to_string()),
                        }));
                    let admin = Arc::new(AdminState {
                        watcher: watch_status.clone(),
                        control: handle.clone(),
                        tables: tables2,
                        token: token_secret,
                        ready: AtomicBool::new(true),
                        observer,
                        stats_cache: Default::default(),
                        metrics: Some(Box::new(move || {
                            crate::metrics::render(exporter.as_ref(), &render_tables.load())
                        })),
                    });
                    if opts.watch {
                        reload::watch(&path, handle.clone(), token2.clone(), watch_status);
                    }
                    if let Some(store) = certs {
                        crate::tls::watch(store, token2.clone());
                    }
                    if opts.sighup {
                        reload::on_sighup(handle.clone(), token2.clone());
                    }
                    let _ = ready_tx.send(Ok((handle, admin.clone())));
                    admin::serve(listener, admin, token2).await;
                });
            })?;
        let (control, admin) = ready_rx
            .recv()
            .context("control thread ended during start")??;
        Ok(Instance {
            addr: data.addr,
            tls_addr: data.tls_addr,
            admin_addr,
            tables,
            control,
            admin,
            admin_socket: Some(admin_copy),
            token,
            control_token,
            data,
            control_thread,
        })
    }

    /// A token that, once cancelled, stops the instance gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Copies of every listening socket, for a successor.
    fn sockets(&self) -> std::io::Result<(server::Sockets, std::net::TcpListener)> {
        let admin = match &self.admin_socket {
            Some(a) => a.try_clone()?,
            None => return Err(std::io::Error::other("the admin listener is closed")),
        };
        Ok((self.data.sockets()?, admin))
    }

    /// Stops accepting on every listener at once, the admin one included (a successor
    /// serves them now); in-flight requests go on.
    fn stop_accepting(&self) {
        self.admin.ready.store(false, Ordering::Relaxed);
        self.token.cancel();
        self.control_token.cancel();
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), and returns.
    pub fn shutdown(mut self) {
        self.admin_socket = None;
        self.admin.ready.store(false, Ordering::Relaxed);
        self.token.cancel();
        self.data.join();
        self.control_token.cancel();
        let _ = self.control_thread.join();
    }
}

/// The default worker count: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `switchyard run`: serve until SIGTERM/SIGINT (or until a successor took over), then
/// drain and return. With `takeover`, first take the sockets and live state over from the
/// instance running on `server.takeover_socket`, if any.
pub fn serve(config: &Config, workers: usize, takeover: bool) -> anyhow::Result<()> {
    let options = Options {
        workers,
        watch: true,
        sighup: true,
    };
    let mut signals = crate::shutdown::Terminate::install()?;
    let path = &config.server.takeover_socket;
    let inherited = if takeover {
        let found = crate::takeover::connect(path)
            .with_context(|| format!("cannot take over through {}", path.display()))?;
        if found.is_none() {
            tracing::info!(socket = %path.display(), "--takeover: no running instance on the takeover socket; starting normally");
        }
        found
    } else {
        None
    };
    let (instance, listener) = match inherited {
        Some((inherited, handshake)) => {
            let pid = inherited.pid;
            let instance = Instance::start_on(config, &options, Some(inherited))?;
            // Should the start above fail, the predecessor sees the connection close and
            // serves on.
            let listener = match handshake.confirm() {
                Ok(listener) => listener,
                Err(e) => {
                    // The predecessor did not hear GO: it serves on, this one steps back.
                    instance.shutdown();
                    return Err(anyhow::anyhow!("cannot tell the predecessor to stop: {e}"));
                }
            };
            tracing::info!(from_pid = pid, socket = %path.display(), "took over the listeners and the live state");
            (instance, Some(listener))
        }
        None => {
            // After the listeners: a busy address is the error to name first.
            let instance = Instance::start(config, &options)?;
            match crate::takeover::bind(path) {
                Ok(listener) => (instance, Some(listener)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    instance.shutdown();
                    return Err(e.into());
                }
                // A read-only config directory (a Kubernetes ConfigMap, where pods roll
                // instead) must not keep switchyard from serving.
                Err(e) => {
                    tracing::warn!(error = %e, "no takeover socket: `run --takeover` cannot take over from this instance (set server.takeover_socket to a writable place)");
                    (instance, None)
                }
            }
        }
    };
    tracing::info!(
        config = %config.path.display(),
        addr = %instance.addr,
        admin = %instance.admin_addr,
        "switchyard running"
    );
    let sockets = || instance.sockets();
    let stop = || instance.stop_accepting();
    // Only a socket this instance serves is its to remove.
    let bound = listener.is_some();
    let handed = match listener {
        Some(listener) => signals.run_until(crate::takeover::serve(
            listener,
            crate::takeover::Predecessor {
                control: &instance.control,
                sockets: &sockets,
                stop: &stop,
            },
        )),
        None => signals
            .run_until(std::future::pending::<std::io::Result<()>>())
            .and(None),
    };
    match handed {
        Some(Ok(())) => {
            tracing::info!("handed over to a successor: stopped accepting, draining connections")
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "takeover socket failed: serving until a signal");
            signals.run_until(std::future::pending::<()>());
            tracing::info!("signal received: draining connections");
            remove_socket(path, bound);
        }
        None => {
            tracing::info!("signal received: draining connections");
            remove_socket(path, bound);
        }
    }
    instance.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// A socket file left behind would only say "stale" to the next start.
fn remove_socket(path: &std::path::Path, bound: bool) {
    if bound {
        let _ = std::fs::remove_file(path);
    }
}

/// The sockets a predecessor handed over, with a word where the config asks for others:
/// a takeover keeps the listeners, a restart moves them.
fn inherited_sockets(
    config: &Config,
    options: &Options,
    inherited: Inherited,
) -> anyhow::Result<(server::Sockets, std::net::TcpListener)> {
    let Inherited {
        mut sockets, admin, ..
    } = inherited;
    let differs = |want: SocketAddr, have: Option<SocketAddr>| {
        have.is_some_and(|h| want.port() != 0 && h != want)
    };
    if differs(
        config.server.listen,
        sockets.plain.first().and_then(|l| l.local_addr().ok()),
    ) || differs(config.admin.listen, admin.local_addr().ok())
    {
        tracing::warn!(
            "the config names other listen addresses than the predecessor's: a takeover keeps the predecessor's listeners; restart to move them"
        );
    }
    match (&config.server.tls, sockets.tls.is_empty()) {
        (Some(tls), true) => {
            sockets.tls = server::Sockets::bind(tls.listen, None, options.workers)?.plain;
        }
        (None, false) => {
            tracing::warn!(
                "the predecessor had a TLS listener and this config has none: it is closed"
            );
            sockets.tls.clear();
        }
        _ => {}
    }
    Ok((sockets, admin))
}

/// Refuses to start a replica whose name a live replica of its fleet already holds (see
/// [`crate::fleet::presence::check_name`]); on a thread of its own, as the caller may be
/// inside a runtime.
fn check_fleet_name(cluster: &crate::config::Cluster) -> anyhow::Result<()> {
    let cluster = cluster.clone();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(crate::fleet::presence::check_name(&cluster))?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fleet name check stopped"))?
}

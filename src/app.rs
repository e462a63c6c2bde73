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
        if let Some(cluster) = &config.cluster {
            check_fleet_name(cluster)?;
        }
        let mut state = ControlState::new(config.clone(), file_text)?;
        state.set_cert_store(certs.clone());
        let observer = Arc::new(crate::observe::Observer::default());
        state.set_observer(observer.clone());
        let tables = state.tables();
        let token = CancellationToken::new();
        let control_token = CancellationToken::new();

        // std's bind sets SO_REUSEADDR but never SO_REUSEPORT: no other process can share it.
        let admin_listener = std::net::TcpListener::bind(config.admin.listen)
            .map_err(server::in_use)
            .with_context(|| format!("cannot listen on admin.listen {}", config.admin.listen))?;
        admin_listener.set_nonblocking(true)?;
        let admin_addr = admin_listener.local_addr()?;
        let tls_listener = match (&certs, &config.server.tls) {
            (Some(store), Some(tls)) => Some(server::TlsListener {
                addr: tls.listen,
                config: store.server_config()?,
                handshake_timeout: tls.handshake_timeout,
            }),
            _ => None,
        };
        let data = server::start(
            config.server.listen,
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
                    let handle = control::spawn(state, token2.clone());
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

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), and returns.
    pub fn shutdown(self) {
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

/// `switchyard run`: serve until SIGTERM/SIGINT, then drain and return.
pub fn serve(config: &Config, workers: usize) -> anyhow::Result<()> {
    let options = Options {
        workers,
        watch: true,
        sighup: true,
    };
    let signals = crate::shutdown::Terminate::install()?;
    let instance = Instance::start(config, &options)?;
    tracing::info!(
        config = %config.path.display(),
        addr = %instance.addr,
        admin = %instance.admin_addr,
        "switchyard running"
    );
    signals.wait();
    tracing::info!("signal received: draining connections");
    instance.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Refuses to start a replica whose name a live replica of its fleet already holds (see
/// [`crate::fleet::presence::check_name`]); on a thread of its own, as the caller may be
/// inside a runtime.
fn check_fleet_name(cluster: &crate::config::Cluster) -> anyhow::Result<()> {
    let cluster = cluster.clone();
    let checked = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(crate::fleet::presence::check_name(&cluster))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the fleet name check stopped"))?;
    checked.map_err(|e| anyhow::anyhow!(e))
}

//! Assembles a running switchyard from a validated config: routing table, workers, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::router::RoutingTable;
use crate::server;
use crate::upstream::Registry;

/// A running instance: the listeners and the live table.
pub struct Instance {
    pub addr: SocketAddr,
    pub tables: Arc<ArcSwap<RoutingTable>>,
    token: CancellationToken,
    running: server::Running,
}

impl Instance {
    /// Builds the table and starts `workers` data-plane threads.
    pub fn start(config: &Config, workers: usize) -> anyhow::Result<Instance> {
        let mut registry = Registry::new();
        let table = RoutingTable::build(config, &mut registry, 1)?;
        let tables = Arc::new(ArcSwap::from_pointee(table));
        let token = CancellationToken::new();
        let running =
            server::start(config.server.listen, tables.clone(), workers, token.clone())
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        Ok(Instance {
            addr: running.addr,
            tables,
            token,
            running,
        })
    }

    /// A token that, once cancelled, stops the instance gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), and returns.
    pub fn shutdown(self) {
        self.token.cancel();
        self.running.join();
    }
}

/// The default worker count: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `switchyard run`: serve until SIGTERM/SIGINT, then drain and return.
pub fn serve(config: &Config, workers: usize) -> anyhow::Result<()> {
    let instance = Instance::start(config, workers)?;
    tracing::info!(config = %config.path.display(), addr = %instance.addr, "switchyard running");
    wait_for_signal()?;
    tracing::info!("signal received: draining connections");
    instance.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Blocks the calling thread until SIGTERM or SIGINT.
pub fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::shutdown::terminate());
    Ok(())
}

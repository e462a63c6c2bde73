//! Process signals: SIGTERM/SIGINT end the process gracefully.

use tokio::runtime::Runtime;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM/SIGINT handlers, installed before anything announces readiness so a signal sent
/// right after start is never lost to the default action (immediate death).
pub struct Terminate {
    rt: Runtime,
    term: Signal,
    int: Signal,
}

impl Terminate {
    pub fn install() -> std::io::Result<Terminate> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int) = {
            let _guard = rt.enter();
            (
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            )
        };
        Ok(Terminate { rt, term, int })
    }

    /// Runs `work` on this thread until it ends (`Some` of its output) or SIGTERM or SIGINT
    /// comes (`None`).
    pub fn run_until<F: std::future::Future>(&mut self, work: F) -> Option<F::Output> {
        let Terminate { rt, term, int } = self;
        rt.block_on(async {
            tokio::select! {
                out = work => Some(out),
                _ = term.recv() => None,
                _ = int.recv() => None,
            }
        })
    }

    /// Blocks the calling thread until SIGTERM or SIGINT.
    pub fn wait(self) {
        let Terminate {
            rt,
            mut term,
            mut int,
        } = self;
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
    }
}

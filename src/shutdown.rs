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

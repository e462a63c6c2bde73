//! The `switchyard` binary: parse the command line, set up logging, run the command.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser as _;
use switchyard::app;
use switchyard::cli::{self, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

/// jemalloc, not glibc's malloc: after a burst of connections closed, glibc kept their memory
/// (its arenas stay fragmented around the blocks still in use), where jemalloc gives free
/// pages back within a couple of seconds; it also held less per idle connection
/// (docs/performance.md, "Memory per connection").
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `--help` and `--version` are not errors; a `ctl` usage error exits 1, as its
            // exit code 2 means "admin unreachable".
            if e.use_stderr() && cli::is_ctl(std::env::args_os()) {
                return ExitCode::from(switchyard::ctl::REFUSED);
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let (workers, log_format) = cli.command.serving();
    let _log_guard = init_logging(log_format);
    let workers = workers.unwrap_or_else(app::default_workers);
    match cli.command {
        Command::Check { config } => match cli::load(&config) {
            Ok(c) => out(&cli::describe(&c)),
            Err(e) => {
                err(&e.to_string());
                ExitCode::FAILURE
            }
        },
        Command::Route {
            config,
            host,
            path,
            headers,
            cookies,
        } => {
            let c = match cli::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    err(&e.to_string());
                    return ExitCode::FAILURE;
                }
            };
            match cli::explain(&c, host.as_deref(), &path, &headers, &cookies) {
                Ok(text) => out(&text),
                Err(e) => {
                    err(&format!("error: {e:#}\n"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config, takeover, ..
        } => {
            let c = match cli::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    err(&e.to_string());
                    return ExitCode::FAILURE;
                }
            };
            exit(app::serve(&c, workers, takeover))
        }
        Command::Ready { config, timeout } => {
            let c = match switchyard::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    err(&e.to_string());
                    return ExitCode::FAILURE;
                }
            };
            match cli::ready(&c, timeout) {
                Ok(()) => out("ready\n"),
                Err(e) => {
                    err(&format!("not ready: {e}\n"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { listen, admin, .. } => exit(switchyard::demo::run(listen, admin, workers)),
        Command::Ctl(args) => ExitCode::from(switchyard::ctl::run(&args)),
        Command::Completions { shell } => out_bytes(&cli::completions(shell)),
        Command::Manpage { dir: None } => match cli::manpage() {
            Ok(page) => out_bytes(&page),
            Err(e) => {
                err(&format!("error: manpage: {e}\n"));
                ExitCode::FAILURE
            }
        },
        Command::Manpage { dir: Some(dir) } => match cli::write_manpages(&dir) {
            Ok(()) => out(&format!("manual pages written to {}\n", dir.display())),
            Err(e) => {
                err(&format!("error: manpage --dir {}: {e}\n", dir.display()));
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints to stdout. A reader that went away (`switchyard check | head -1`) ends the
/// command quietly, as it does for other command-line tools, instead of a panic.
fn out(text: &str) -> ExitCode {
    out_bytes(text.as_bytes())
}

/// Like [`out`], for bytes.
fn out_bytes(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Prints to stderr, never panicking when it is closed.
fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Once, on stderr (where the log goes too): not once as a log line and again.
        Err(e) => {
            err(&format!("error: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}

/// Log lines waiting for the writer thread; past it, lines are dropped rather than block a
/// worker. The queue's slots are allocated and written at start (32 bytes each): the
/// library's default of 128,000 cost 4 MiB of resident memory before the first request.
/// 16,384 lines is a third of a second of access log at 50,000 requests/s.
const LOG_LINES_QUEUED: usize = 16_384;

/// stderr through a non-blocking writer: the access log must never cost a write syscall
/// per request on the worker threads.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_QUEUED)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // rustls warns once per handshake about clients that send an IP address as SNI (curl and
    // wrk do): noise at any traffic level, so only its errors are shown.
    let filter = match "rustls::msgs=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    guard
}

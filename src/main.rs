//! The `switchyard` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use switchyard::app;
use switchyard::cli::{self, Cli, Command, LogFormat};
use tracing::error;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.log_format);
    let workers = cli.workers.unwrap_or_else(app::default_workers);
    match cli.command {
        Command::Check { config } => match cli::load(&config) {
            Ok(c) => {
                print!("{}", cli::describe(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
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
                    eprint!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match cli::explain(&c, host.as_deref(), &path, &headers, &cookies) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let c = match cli::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            exit(app::serve(&c, workers))
        }
        Command::Demo { listen, admin } => exit(switchyard::demo::run(listen, admin, workers)),
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// stderr through a non-blocking writer: the access log must never cost a write syscall
/// per request on the worker threads.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
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

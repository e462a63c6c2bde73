//! `switchyard ctl`: the operator's client for a running switchyard's admin API. It owns the
//! verbs, their exit codes and what they print; the HTTP is in `client`, the text in `show`,
//! the rollout progress loop in `watch`. It runs in another process than the server, so it
//! may use nothing of the server's but the admin API's types (`api`).
//!
//! Exit codes, for scripts: 0 done, 1 refused (by the server, with its message on stderr; or
//! a usage error: nothing was sent), 2 retry later: the admin API gave no usable answer, or
//! refused for now (503).

mod client;
mod show;
mod watch;

use std::io::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use http::Method;
use indexmap::IndexMap;

use crate::api::{ServiceView, StatusView};

use client::{Admin, CallError, segment};

pub const DONE: u8 = 0;
pub const REFUSED: u8 = 1;
pub const UNREACHABLE: u8 = 2;

/// The token is only read from the environment: on the command line it would show in `ps`
/// and in shell history.
pub const TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The admin API, http://HOST:PORT (plain HTTP only). The token, if the admin needs one,
    /// comes from the SWITCHYARD_ADMIN_TOKEN environment variable.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN",
        default_value = "http://127.0.0.1:9901",
        global = true
    )]
    pub admin: String,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// Refuse the change unless the live generation is GEN (sends `If-Match`).
    #[arg(long, value_name = "GEN", global = true)]
    pub if_match: Option<u64>,
    /// Run every check and show the result, changing nothing (`?dry_run=true`).
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// How long one call may take (a swap runs its prepromotion checks within it).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Services, splits, rollouts and every endpoint, as aligned tables.
    Status,
    /// Set weights (canary, A/B): `weights shop stable=90 canary=10`; pools not named keep
    /// theirs.
    Weights {
        /// The service (a `[services.NAME]` of the config).
        service: String,
        /// A pool and its new weight; repeatable.
        #[arg(required = true, value_name = "POOL=W", value_parser = pool_weight)]
        weights: Vec<(String, u64)>,
    },
    /// Blue-green: make the standby pool active, once its prepromotion checks pass.
    Swap {
        /// The blue-green service.
        service: String,
        /// Skip the prepromotion checks.
        #[arg(long)]
        force: bool,
    },
    /// Restore the split that was live before the last weights change or swap.
    Rollback {
        /// The service.
        service: String,
    },
    /// Send no new requests to an endpoint.
    Drain {
        /// The service.
        service: String,
        /// The endpoint's pool.
        pool: String,
        /// The endpoint, HOST:PORT as the config lists it.
        address: String,
    },
    /// Put a drained endpoint back in rotation.
    Undrain {
        /// The service.
        service: String,
        /// The endpoint's pool.
        pool: String,
        /// The endpoint, HOST:PORT as the config lists it.
        address: String,
    },
    /// Drive the automated canary, or watch it: `watch` exits 0 once promoted, 1 once aborted
    /// or when no rollout is running.
    Rollout {
        /// The service with a `[services.NAME.rollout]` section.
        service: String,
        /// What to do with the rollout.
        action: RolloutVerb,
        /// How often `watch` asks.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        every: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RolloutVerb {
    /// Begin at the first step.
    Start,
    /// Hold the current step until `resume`.
    Pause,
    /// Go on after a pause.
    Resume,
    /// Give the canary all the traffic now.
    Promote,
    /// Give the baseline all the traffic back.
    Abort,
    /// Show the progress until the rollout ends.
    Watch,
}

impl RolloutVerb {
    /// The admin call's action; `None` for `watch`, which only reads.
    fn call(self) -> Option<&'static str> {
        Some(match self {
            RolloutVerb::Start => "start",
            RolloutVerb::Pause => "pause",
            RolloutVerb::Resume => "resume",
            RolloutVerb::Promote => "promote",
            RolloutVerb::Abort => "abort",
            RolloutVerb::Watch => return None,
        })
    }
}

/// `POOL=W`, W a whole number (the server checks its range and the pool).
fn pool_weight(s: &str) -> Result<(String, u64), String> {
    let (pool, weight) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected POOL=WEIGHT, e.g. canary=10"))?;
    if pool.is_empty() {
        return Err(format!("{s:?}: the pool name is missing"));
    }
    let weight = weight
        .parse()
        .map_err(|_| format!("{s:?}: the weight must be a whole number from 0 to 1000000"))?;
    Ok((pool.to_string(), weight))
}

/// Runs one `ctl` command; the exit code.
pub fn run(args: &CtlArgs) -> u8 {
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    let admin = match Admin::new(&args.admin, token, args.timeout) {
        Ok(a) => a,
        Err(e) => {
            err(&format!("error: {e}\n"));
            return REFUSED;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            err(&format!("error: cannot start a runtime: {e}\n"));
            return REFUSED;
        }
    };
    rt.block_on(dispatch(args, &admin))
}

async fn dispatch(args: &CtlArgs, admin: &Admin) -> u8 {
    let reads = matches!(
        args.verb,
        Verb::Status
            | Verb::Rollout {
                action: RolloutVerb::Watch,
                ..
            }
    );
    if reads && (args.if_match.is_some() || args.dry_run) {
        err("error: --if-match and --dry-run apply to changes, not to status or watch\n");
        return REFUSED;
    }
    match &args.verb {
        Verb::Status => status(args, admin).await,
        Verb::Weights { service, weights } => {
            let mut body: IndexMap<String, u64> = IndexMap::new();
            for (pool, w) in weights {
                if body.insert(pool.clone(), *w).is_some() {
                    err(&format!("error: pool {pool:?} is named twice\n"));
                    return REFUSED;
                }
            }
            let path = format!("/admin/services/{}/weights", segment(service));
            change(args, admin, Method::PUT, &path, &[], Some(&body), |v| {
                format!("weights {}", show::split(v))
            })
            .await
        }
        Verb::Swap { service, force } => {
            let path = format!("/admin/services/{}/swap", segment(service));
            let flags: &[&str] = if *force { &["force=true"] } else { &[] };
            change(args, admin, Method::POST, &path, flags, None, |v| {
                format!("swapped, {}", show::split(v))
            })
            .await
        }
        Verb::Rollback { service } => {
            let path = format!("/admin/services/{}/rollback", segment(service));
            change(args, admin, Method::POST, &path, &[], None, |v| {
                format!("rolled back to {}", show::split(v))
            })
            .await
        }
        Verb::Drain {
            service,
            pool,
            address,
        }
        | Verb::Undrain {
            service,
            pool,
            address,
        } => {
            let action = if matches!(args.verb, Verb::Drain { .. }) {
                "drain"
            } else {
                "undrain"
            };
            let path = format!(
                "/admin/services/{}/pools/{}/endpoints/{}/{action}",
                segment(service),
                segment(pool),
                segment(address)
            );
            change(args, admin, Method::POST, &path, &[], None, |v| {
                show::endpoint(v, pool, address)
            })
            .await
        }
        Verb::Rollout {
            service,
            action,
            every,
        } => {
            let Some(action) = action.call() else {
                return watch::run(admin, service, *every, args.json).await;
            };
            let path = format!("/admin/services/{}/rollout/{action}", segment(service));
            change(args, admin, Method::POST, &path, &[], None, |v| {
                let mut what = format!(
                    "rollout {}, weights {}",
                    show::rollout(v.rollout.as_ref()),
                    show::split(v)
                );
                if let Some(reason) = v.rollout.as_ref().and_then(|r| r.reason.as_ref()) {
                    what.push_str(&format!(" ({reason})"));
                }
                what
            })
            .await
        }
    }
}

/// One mutating call: its answer printed (JSON, or `describe` of it), or the refusal.
async fn change(
    args: &CtlArgs,
    admin: &Admin,
    method: Method,
    path: &str,
    flags: &[&str],
    body: Option<&IndexMap<String, u64>>,
    describe: impl Fn(&ServiceView) -> String,
) -> u8 {
    let mut query = flags.to_vec();
    if args.dry_run {
        query.push("dry_run=true");
    }
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    match admin
        .call::<ServiceView>(method, &target, body, args.if_match)
        .await
    {
        Ok(view) => {
            if args.json {
                print_json(&view);
            } else {
                out(&show::change(&describe(&view), &view));
            }
            DONE
        }
        Err(e) => failed(e, args.json, admin),
    }
}

/// `status`: `GET /admin/status`, then each service's state.
async fn status(args: &CtlArgs, admin: &Admin) -> u8 {
    let status = match admin.get::<StatusView>("/admin/status").await {
        Ok(s) => s,
        Err(e) => return failed(e, args.json, admin),
    };
    let names: Vec<String> = status.services.keys().cloned().collect();
    let mut shown = Vec::with_capacity(names.len());
    let mut views = Vec::with_capacity(names.len());
    for name in names {
        match admin
            .get::<ServiceView>(&format!("/admin/services/{}", segment(&name)))
            .await
        {
            Ok(v) => {
                shown.push(name);
                views.push(v);
            }
            // Removed by a reload between the two calls: not there to show.
            Err(CallError::Refused { status, .. }) if status == http::StatusCode::NOT_FOUND => {}
            Err(e) => return failed(e, args.json, admin),
        }
    }
    if args.json {
        #[derive(serde::Serialize)]
        struct Both<'a> {
            status: &'a StatusView,
            services: IndexMap<String, &'a ServiceView>,
        }
        let services = shown.into_iter().zip(views.iter()).collect();
        print_json(&Both {
            status: &status,
            services,
        });
    } else {
        out(&show::status(admin.url(), &status, &views));
    }
    DONE
}

/// Reports a call that did not succeed; the exit code.
fn failed(e: CallError, json: bool, admin: &Admin) -> u8 {
    match e {
        CallError::Refused {
            status,
            message,
            body,
        } => {
            if json {
                print_json(&body);
            }
            if status == http::StatusCode::SERVICE_UNAVAILABLE {
                // Refused for now, not for good (docs/ctl.md): a script may retry.
                err(&format!("unavailable ({status}): {message}\n"));
                return UNREACHABLE;
            }
            if status == http::StatusCode::GATEWAY_TIMEOUT {
                // Neither done nor refused: the change may still apply (docs/ctl.md).
                err(&format!(
                    "{message} ({status}): read the state (status) before trying again\n"
                ));
                return UNREACHABLE;
            }
            let mut text = format!("refused ({status}): {message}\n");
            if status == http::StatusCode::UNAUTHORIZED && !admin.has_token() {
                text.push_str(&format!(
                    "hint: this admin API needs its token in the {TOKEN_ENV} environment variable\n"
                ));
            }
            err(&text);
            REFUSED
        }
        CallError::Unreachable(message) => {
            err(&format!("admin unreachable: {message}\n"));
            UNREACHABLE
        }
    }
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => out(&format!("{text}\n")),
        Err(e) => err(&format!("error: cannot print the answer: {e}\n")),
    }
}

/// stdout, ignoring a reader that went away (`ctl status | head -3`): `print!` would panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_weights() {
        assert_eq!(pool_weight("canary=10"), Ok(("canary".to_string(), 10)));
        assert!(pool_weight("canary").is_err());
        assert!(pool_weight("=10").is_err());
        assert!(pool_weight("canary=-1").is_err());
        assert!(pool_weight("canary=ten").is_err());
    }
}

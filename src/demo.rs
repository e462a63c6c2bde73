//! `switchyard demo`: two small built-in apps (v1, v2) behind the demo config.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Instance};
use crate::config::{self, Config};

/// The demo config, as shipped in `config/demo.toml`.
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");
/// The app addresses written in the demo config, replaced by the real ones at start.
const V1_PLACEHOLDER: &str = "127.0.0.1:18001";
const V2_PLACEHOLDER: &str = "127.0.0.1:18002";

/// Runs the demo until SIGTERM/SIGINT.
pub fn run(listen: SocketAddr, admin: SocketAddr, workers: usize) -> anyhow::Result<()> {
    let signals = crate::shutdown::Terminate::install()?;
    let token = CancellationToken::new();
    let (v1, v2, apps) = start_apps(token.clone())?;
    let config = demo_config(listen, admin, v1, v2)?;
    let options = app::Options {
        workers,
        watch: false,
        sighup: false,
    };
    let instance = Instance::start(&config, &options)?;
    // A closed stdout (piped into `head`, say) must not take the demo down.
    let _ = writeln!(
        std::io::stdout().lock(),
        "{}",
        instructions(instance.addr, instance.admin_addr, v1, v2, &route_command())
    );
    signals.wait();
    instance.shutdown();
    token.cancel();
    let _ = apps.join();
    Ok(())
}

/// The demo config with the apps' real addresses and the given listeners.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    v1: SocketAddr,
    v2: SocketAddr,
) -> anyhow::Result<Config> {
    let mut config = config::parse(DEMO_TOML, Path::new("config/demo.toml"))
        .map_err(|e| anyhow::anyhow!("the built-in demo config is invalid:\n{e}"))?;
    config.server.listen = listen;
    config.admin.listen = admin;
    // Not a file on disk: the demo's config cannot be reloaded (its app ports are live).
    config.path = std::path::PathBuf::from("(built-in demo config)");
    for svc in config.services.values_mut() {
        for pool in svc.pools.values_mut() {
            for ep in &mut pool.endpoints {
                if ep == V1_PLACEHOLDER {
                    *ep = v1.to_string();
                } else if ep == V2_PLACEHOLDER {
                    *ep = v2.to_string();
                }
            }
        }
    }
    Ok(config)
}

fn start_apps(
    token: CancellationToken,
) -> anyhow::Result<(SocketAddr, SocketAddr, std::thread::JoinHandle<()>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (l1, l2) = rt.block_on(async {
        let l1 = TcpListener::bind("127.0.0.1:0").await?;
        let l2 = TcpListener::bind("127.0.0.1:0").await?;
        Ok::<_, std::io::Error>((l1, l2))
    })?;
    let (a1, a2) = (l1.local_addr()?, l2.local_addr()?);
    let handle = std::thread::Builder::new()
        .name("switchyard-demo-apps".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::join!(
                    serve_app(l1, "v1", token.clone()),
                    serve_app(l2, "v2", token.clone())
                );
            })
        })
        .context("cannot start the demo apps")?;
    Ok((a1, a2, handle))
}

/// A tiny app that says which version it is and what switchyard told it.
pub async fn serve_app(listener: TcpListener, version: &'static str, token: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(app_response(version, &req))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn app_response(version: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let body = format!(
        "{version} path={} pool={} user={}\n",
        req.uri().path(),
        header("x-switchyard-pool"),
        header("x-user-id"),
    );
    Response::new(Full::new(Bytes::from(body)))
}

/// How to run `route` from where the user stands: this very binary, and the demo config by
/// an absolute path when it is there (the repository's root), so the line works as printed.
fn route_command() -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "switchyard".to_string());
    let config = std::fs::canonicalize("config/demo.toml")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "<path to>/config/demo.toml".to_string());
    format!("{exe} route --config {config}")
}

fn instructions(
    addr: SocketAddr,
    admin: SocketAddr,
    v1: SocketAddr,
    v2: SocketAddr,
    route: &str,
) -> String {
    format!(
        r#"switchyard demo: proxy on http://{addr}  admin API on http://{admin}
(app v1 on {v1}, app v2 on {v2})

Canary, 90/10 by weight (run it a few times; the first answer sets a sy_bucket cookie):
  for i in $(seq 20); do curl -s http://{addr}/; done | sort | uniq -c
Header override: testers reach the canary at any weight:
  curl -s -H 'x-canary: true' http://{addr}/
Sticky bucket: replay the affinity cookie and stay on one version:
  curl -s -i http://{addr}/ | grep -i set-cookie
  curl -s --cookie 'sy_bucket=95' http://{addr}/
A/B test by md5(user id), the bucket the apps compute themselves:
  for u in alice bob carol dave; do curl -s -H "x-user-id: $u" http://{addr}/ab; done
  {route} --path /ab --header 'x-user-id: alice'
Blue/green: the active pool, and the standby through the preview header:
  curl -s http://{addr}/bg
  curl -s -H 'x-preview: true' http://{addr}/bg
Every answer names its pool in the x-switchyard-pool header:
  curl -s -i http://{addr}/ | grep -i x-switchyard-pool
The admin API: the state, and a weight change (live at once; the demo writes no file):
  curl -s http://{admin}/admin/status
  curl -s -X PUT -d '{{"stable":50,"canary":50}}' http://{admin}/admin/services/shop/weights

Ctrl-C stops the demo."#
    )
}

//! Soak and failure test (issue "Hostile input and deployment"): minutes of load while the
//! config file is rewritten every second, weights change through the admin API, a
//! blue/green swap goes back and forth, an endpoint is killed and restarted and another
//! drained and undrained. Bounded in time; loopback only. Not part of the default run:
//!
//!     SOAK_SECS=180 cargo test --release --test soak -- --ignored --nocapture
//!
//! It asserts zero failed client requests, bounded RSS and descriptors of the proxy
//! process, and per-pool request counters that add up to the requests sent.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

#[allow(clippy::too_many_arguments)] // one call site; the addresses are the test's topology
fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    s: &[SocketAddr; 2],
    c: SocketAddr,
    b: SocketAddr,
    g: SocketAddr,
    canary: u32,
    tick: u64,
) -> String {
    format!(
        "# soak generation {tick}\n[server]\nlisten = \"{listen}\"\nshutdown_grace = \"5s\"\n[admin]\nlisten = \"{admin}\"\npersist = false\n\
         [[routes]]\npath_prefix = \"/web\"\nservice = \"web\"\n[[routes]]\nservice = \"shop\"\n\
         [services.shop]\nstrategy = \"canary\"\nweights = {{ stable = {}, canary = {canary} }}\nhold_timeout = \"5s\"\n\
         [services.shop.pools.stable]\nendpoints = [\"{}\", \"{}\"]\n[services.shop.pools.canary]\nendpoints = [\"{c}\"]\n\
         [services.web]\nstrategy = \"blue-green\"\nactive = \"blue\"\n[services.web.pools.blue]\nendpoints = [\"{b}\"]\n[services.web.pools.green]\nendpoints = [\"{g}\"]\n",
        100 - canary,
        s[0],
        s[1]
    )
}

fn series_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: run explicitly (see the module doc)"]
async fn soak_under_churn() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let s1 = Upstream::start("s1").await;
    let s2 = Upstream::start("s2").await;
    let c1 = Upstream::start("c1").await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    // Fixed ports, so that every rewrite of the file keeps the listeners where they are.
    let (listen, admin_addr) = (free_addr(), free_addr());
    let stable = [s1.addr, s2.addr];
    let sy = ProxyProcess::spawn_with(
        &config(
            listen, admin_addr, &stable, c1.addr, blue.addr, green.addr, 10, 0,
        ),
        &ProcessOptions {
            workers: 2,
            log: "warn,switchyard::server=info",
            echo_warnings: std::env::var_os("SOAK_VERBOSE").is_some(),
        },
    );
    let (pid, path) = (sy.pid(), sy.path.clone());
    let base = format!("http://{}", sy.addr);
    let admin_url = |p: &str| format!("http://{admin_addr}{p}");

    let shop = Load::start(format!("{base}/"), 24, vec![]);
    let web = Load::start(format!("{base}/web"), 8, vec![]);
    // Warm up, then take the baseline of the proxy's resources.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss0, fd0) = (proc::status_kib(pid, "VmRSS"), proc::open_fds(pid));
    let c = client();
    let started = tokio::time::Instant::now();
    let mut tick = 0u64;
    let mut s1 = Some(s1);
    while started.elapsed() < Duration::from_secs(secs) {
        tick += 1;
        // Every second: the file is rewritten (a weight change by file).
        let canary = [5, 10, 25, 50][(tick % 4) as usize];
        std::fs::write(
            &path,
            config(
                listen, admin_addr, &stable, c1.addr, blue.addr, green.addr, canary, tick,
            ),
        )
        .expect("write");
        // And a weight change through the admin API.
        let body = format!(
            "{{\"stable\":{},\"canary\":{}}}",
            100 - canary / 2,
            canary / 2
        );
        let (status, v) = admin(
            &c,
            "PUT",
            &admin_url("/admin/services/shop/weights"),
            &body,
            &[],
        )
        .await;
        assert_eq!(status, 200, "{v}");
        if tick.is_multiple_of(5) {
            // A blue/green swap and back.
            let swap = admin_url("/admin/services/web/swap?force=true");
            assert_eq!(admin(&c, "POST", &swap, "", &[]).await.0, 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Back by a second swap (a file reload in between may already have put it back).
            assert_eq!(admin(&c, "POST", &swap, "", &[]).await.0, 200);
        }
        if tick.is_multiple_of(7) {
            // Drain s2, wait for its in-flight requests, undrain.
            let drain = admin_url(&format!(
                "/admin/services/shop/pools/stable/endpoints/{}/drain",
                s2.addr
            ));
            assert_eq!(admin(&c, "POST", &drain, "", &[]).await.0, 200);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let undrain = admin_url(&format!(
                "/admin/services/shop/pools/stable/endpoints/{}/undrain",
                s2.addr
            ));
            assert_eq!(admin(&c, "POST", &undrain, "", &[]).await.0, 200);
        }
        if tick.is_multiple_of(11) {
            // Kill s1 (it finishes what it has in flight) and bring it back 500 ms later.
            if let Some(up) = s1.take() {
                up.stop();
                drop(up);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            s1 = Some(Upstream::start_at("s1", stable[0]).await);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let mut samples = shop.finish().await;
    samples.extend(web.finish().await);
    let (rss1, fd1) = (proc::status_kib(pid, "VmRSS"), proc::open_fds(pid));
    let failed = failures(&samples);
    let metrics = get(&c, &admin_url("/metrics"), &[]).await.body;
    let counted = series_sum(&metrics, "switchyard_requests_total");
    drop(sy);
    eprintln!(
        "soak: {secs} s, {} requests ({:.0}/s), {} failed; proxy RSS {rss0} -> {rss1} KiB, fds {fd0} -> {fd1}; counters {counted}",
        samples.len(),
        samples.len() as f64 / secs as f64,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        rss1 < rss0 + 32 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    assert!(fd1 <= fd0 + 64, "descriptors grew from {fd0} to {fd1}");
    // Every request sent was counted once (the admin scrape itself is not proxied).
    assert_eq!(
        counted as usize,
        samples.len(),
        "per-pool counters add up to the requests sent"
    );
}

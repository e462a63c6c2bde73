//! The dashboard in a real browser: headless Chromium driven through chromedriver, against a
//! real switchyard with real upstreams and traffic. Skipped (with a message) when Chromium or
//! chromedriver is not installed, unless `SWITCHYARD_REQUIRE_CHROMIUM=1`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::paced::Paced;
use support::*;

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "ui-test-token";

/// One browser at a time: two cores do not start several Chromiums quickly.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tool(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    path.exists().then_some(path)
}

/// chromedriver on a free loopback port, stopped on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver and a Chromium session, or None (the test is skipped) when they are missing.
async fn browser() -> Option<(Driver, Client)> {
    let (Some(chromium), Some(chromedriver)) = (
        tool("SWITCHYARD_CHROMIUM", "/usr/bin/chromium"),
        tool("SWITCHYARD_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        assert!(
            std::env::var("SWITCHYARD_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "SWITCHYARD_REQUIRE_CHROMIUM=1 but /usr/bin/chromium or /usr/bin/chromedriver is missing (Debian: apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: the dashboard tests need Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        );
        return None;
    };
    let port = free_addr().port();
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: tempfile::tempdir().expect("tempdir"),
        chromium,
    };
    wait_for(T, "chromedriver to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let profile = driver._profile.path().display().to_string();
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": driver.chromium,
            // The machine's network is closed: no background fetches to be refused.
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1440,1000",
                format!("--user-data-dir={profile}"),
            ],
        },
        "goog:loggingPrefs": { "browser": "ALL" },
    });
    let Value::Object(caps) = caps else {
        unreachable!("an object")
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    Some((driver, client))
}

/// chromedriver's browser log (console messages, failed loads, CSP violations).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_string()),
        )
    }
}

/// Browser log entries at level SEVERE but those containing one of `expected` (Chromium logs
/// every 4xx answer to a fetch as an error), and the page's own error banner if shown.
async fn page_errors(c: &Client, expected: &[&str]) -> Vec<String> {
    let log = c.issue_cmd(BrowserLog).await.expect("browser log");
    let mut errors: Vec<String> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].to_string())
        .filter(|m| !expected.iter().any(|x| m.contains(x)))
        .collect();
    let banner = c
        .execute(
            "const b = document.getElementById('page-error'); return b && !b.hidden ? b.textContent : null;",
            vec![],
        )
        .await
        .expect("script");
    if let Some(text) = banner.as_str() {
        errors.push(text.to_string());
    }
    errors
}

/// A canary service with an admin token, and a rollout section when `rollout` is given.
fn config(a: &Upstream, b: &Upstream, stable: u32, canary_w: u32, rollout: &str) -> String {
    canary(a, b, stable, canary_w, rollout).replace(
        "persist = false\n",
        &format!("persist = false\ntoken = \"{TOKEN}\"\n"),
    )
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    c.find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()
        .flatten()
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(T)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn type_into(c: &Client, css: &str, value: &str) {
    let e = c
        .wait()
        .at_most(T)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(value).await.expect("type");
}

/// Waits until the element's text contains `want`.
async fn wait_text(c: &Client, css: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let got = text(c, css).await;
        if got.contains(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css}: {got:?} never contained {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open(c: &Client, sy: &Switchyard) {
    c.goto(&sy.admin_url("/ui")).await.expect("the page loads");
    c.wait()
        .at_most(T)
        .for_element(Locator::Css(".pool[data-pool='canary']"))
        .await
        .expect("the service is drawn");
}

async fn enter_token(c: &Client) {
    type_into(c, "#token", TOKEN).await;
    click(c, "#token-use").await;
    wait_text(c, "#mode", "changes enabled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_is_served_safely_and_shows_live_rates_without_errors() {
    let _one = BROWSER.lock().await;
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&config(&a, &b, 70, 30, ""));

    // The headers of every file of the page.
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = get(&client(), &sy.admin_url(path), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with(kind)),
            "{path}: {:?}",
            r.header("content-type")
        );
        assert_eq!(
            r.header("content-security-policy"),
            Some(
                "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
            ),
            "{path}"
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
    assert_eq!(
        get(&client(), &sy.admin_url("/ui/nope.js"), &[])
            .await
            .status,
        404
    );

    let load = Paced::start(sy.url("/"), 4, Duration::from_millis(20));
    open(&c, &sy).await;
    // Read-only without a token: no control is shown.
    let set = c
        .find(Locator::Css("[data-action='set-weights']"))
        .await
        .expect("the weights form");
    assert!(!set.is_displayed().await.expect("displayed?"));
    wait_text(&c, "#live", "live").await;

    // Each pool's req/s on the page against what the test sent to it in the same 5 s.
    for (pool, body) in [("stable", "v1"), ("canary", "v2")] {
        let css = format!("[data-rps='svc/{pool}']");
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let shown = attr(&c, &css, "data-value")
                .await
                .and_then(|v| v.parse::<f64>().ok());
            let now = SystemTime::now();
            let sent = load
                .count(now - Duration::from_secs(5), now, |a| a.body == body)
                .await as f64
                / 5.0;
            if let Some(shown) = shown
                && sent > 10.0
                && (shown - sent).abs() <= 0.2 * sent
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{pool}: the page shows {shown:?} req/s, the test sent {sent:.1} req/s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let errors = page_errors(&c, &[]).await;
    assert!(errors.is_empty(), "errors in the page: {errors:#?}");
    load.stop();
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_set_on_the_page_move_traffic_and_a_stale_edit_is_explained() {
    let _one = BROWSER.lock().await;
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let sy = Switchyard::start(&config(&a, &b, 100, 0, ""));
    let load = Paced::start(sy.url("/"), 2, Duration::from_millis(20));
    open(&c, &sy).await;
    enter_token(&c).await;

    type_into(&c, "[data-weight='svc/stable']", "0").await;
    type_into(&c, "[data-weight='svc/canary']", "100").await;
    click(&c, "[data-action='set-weights']").await;
    wait_text(&c, "[data-msg='svc']", "Weights set").await;
    let v = service_state(&sy, "svc").await;
    assert_eq!(v["weights"], json!({"stable": 0, "canary": 100}));
    // All new traffic goes to the canary.
    let (a0, b0) = (a.traffic(), b.traffic());
    wait_until(T, "traffic on the canary", || b.traffic() >= b0 + 100).await;
    assert!(
        a.traffic() <= a0 + 5,
        "stable still served {}",
        a.traffic() - a0
    );
    let (_, audit) = admin(
        &client(),
        "GET",
        &sy.admin_url("/admin/audit?limit=1"),
        "",
        &[],
    )
    .await;
    assert_eq!(audit[0]["call"], "PUT /admin/services/svc/weights");
    assert_eq!(
        audit[0]["after"],
        serde_json::json!({"weights": {"stable": 0, "canary": 100}})
    );
    assert!(
        audit[0]["caller"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
    // The page lists it.
    wait_text(&c, "#audit tbody tr", "stable=0,canary=100").await;
    wait_text(&c, "#audit tbody tr td.who", "admin (127.0.0.1:").await;

    // An edit made on generation 2 while someone else moves the service to 3: refused, and
    // the page says so plainly.
    type_into(&c, "[data-weight='svc/stable']", "50").await;
    let auth = format!("Bearer {TOKEN}");
    let (status, v) = admin(
        &client(),
        "PUT",
        &sy.admin_url("/admin/services/svc/weights"),
        r#"{"stable":10,"canary":90}"#,
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    type_into(&c, "[data-weight='svc/canary']", "50").await;
    click(&c, "[data-action='set-weights']").await;
    wait_text(
        &c,
        "[data-msg='svc']",
        "Someone else changed this service first (generation 2→3); the view is refreshed, check and retry.",
    )
    .await;
    assert_eq!(
        service_state(&sy, "svc").await["weights"],
        json!({"stable": 10, "canary": 90})
    );
    // The refreshed form shows the live weights.
    assert_eq!(
        attr(&c, "[data-weight='svc/stable']", "value")
            .await
            .as_deref(),
        Some("10")
    );
    let errors = page_errors(&c, &["/admin/services/svc/weights - Failed to load resource: the server responded with a status of 412"]).await;
    assert!(errors.is_empty(), "errors in the page: {errors:#?}");
    load.stop();
    c.close().await.expect("close");
}

/// Where to save a screenshot of the page under load with a rollout in progress (the README's
/// picture): `SWITCHYARD_UI_SCREENSHOT=docs/dashboard.png`.
fn screenshot_path() -> Option<PathBuf> {
    std::env::var_os("SWITCHYARD_UI_SCREENSHOT").map(|p| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_started_and_aborted_from_the_page_stops() {
    let _one = BROWSER.lock().await;
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let rollout = "[services.svc.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\nsteps = [10, 25, 50, 100]\ninterval = \"6s\"\nmin_requests = 20\nmax_error_rate = 0.05\n";
    let sy = Switchyard::start(&config(&a, &b, 100, 0, rollout));
    let load = Paced::start(sy.url("/"), 4, Duration::from_millis(20));
    open(&c, &sy).await;
    enter_token(&c).await;
    click(&c, "[data-rollout='start'][data-service='svc']").await;
    wait_text(&c, "[data-rollout-state='svc']", "progressing").await;
    // The first step is judged and passes; the page shows the judgement.
    wait_for(T, "a passed step", || async {
        service_state(&sy, "svc").await["rollout"]["step"] == 1
    })
    .await;
    wait_text(&c, ".judgements tbody", "passed").await;
    wait_text(&c, "[data-canary-requests='svc']", "≈").await;
    if let Some(path) = screenshot_path() {
        // A moment for the charts to fill.
        wait_for(T, "a few seconds of points", || async {
            points_len(&c).await >= 12
        })
        .await;
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
    }
    click(&c, "[data-rollout='abort'][data-service='svc']").await;
    wait_text(&c, "[data-rollout-state='svc']", "aborted").await;
    let v = service_state(&sy, "svc").await;
    assert_eq!(v["rollout"]["state"], "aborted", "{v}");
    assert_eq!(v["rollout"]["reason"], "aborted by admin");
    assert_eq!(v["weights"], json!({"stable": 100, "canary": 0}));
    let (_, audit) = admin(
        &client(),
        "GET",
        &sy.admin_url("/admin/audit?limit=5"),
        "",
        &[],
    )
    .await;
    assert!(
        audit.as_array().is_some_and(|es| es
            .iter()
            .any(|e| e["call"] == "POST /admin/services/svc/rollout/abort")),
        "{audit:#}"
    );
    let errors = page_errors(&c, &[]).await;
    assert!(errors.is_empty(), "errors in the page: {errors:#?}");
    load.stop();
    c.close().await.expect("close");
}

/// How many points the page holds for the stable pool.
async fn points_len(c: &Client) -> usize {
    c.execute(
        "const l = document.querySelector(\"[data-pool='stable'] .figure.rate polyline\"); return l ? l.getAttribute('points').split(' ').length : 0;",
        vec![],
    )
    .await
    .ok()
    .and_then(|v| v.as_u64())
    .unwrap_or(0) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_from_the_page_shows_the_failed_check_then_forced_goes_through() {
    let _one = BROWSER.lock().await;
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let toml = blue_green(&blue, &green, "prepromotion_checks = [\"/status/503\"]").replace(
        "persist = false\n",
        &format!("persist = false\ntoken = \"{TOKEN}\"\n"),
    );
    let sy = Switchyard::start(&toml);
    c.goto(&sy.admin_url("/ui")).await.expect("the page loads");
    c.wait()
        .at_most(T)
        .for_element(Locator::Css(".pool[data-pool='green']"))
        .await
        .expect("the service is drawn");
    enter_token(&c).await;
    click(&c, "[data-action='swap'][data-service='web']").await;
    wait_text(
        &c,
        "[data-msg='web']",
        "Refused (409): prepromotion check failed",
    )
    .await;
    assert_eq!(service_state(&sy, "web").await["active"], "blue");
    click(&c, "[data-force='web']").await;
    click(&c, "[data-action='swap'][data-service='web']").await;
    wait_text(
        &c,
        "[data-msg='web']",
        "Swapped without checks: green is active.",
    )
    .await;
    assert_eq!(service_state(&sy, "web").await["active"], "green");
    assert_eq!(get(&client(), &sy.url("/"), &[]).await.body, "green");
    let errors = page_errors(
        &c,
        &["/admin/services/web/swap - Failed to load resource: the server responded with a status of 409"],
    )
    .await;
    assert!(errors.is_empty(), "errors in the page: {errors:#?}");
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollouts_checks_and_hooks_are_shown_with_their_state() {
    let _one = BROWSER.lock().await;
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let (a, b) = (Upstream::start("v1").await, Upstream::start("v2").await);
    // Nothing listens at `gone`: the check is inconclusive, the hook fails.
    let gone = free_addr();
    let rollout = format!(
        "[services.svc.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\nsteps = [10, 100]\n\
         interval = \"500ms\"\nprometheus = \"http://{gone}\"\n\
         [[services.svc.rollout.checks]]\nname = \"up\"\nquery = \"up\"\nmin = 1\n\
         [[services.svc.rollout.webhooks]]\nname = \"chat\"\nurl = \"http://{gone}/\"\non = \"event\"\n"
    );
    let sy = Switchyard::start(&config(&a, &b, 100, 0, &rollout));
    open(&c, &sy).await;
    enter_token(&c).await;
    wait_text(&c, "[data-hook='svc/chat']", "not called").await;
    click(&c, "[data-rollout='start'][data-service='svc']").await;
    wait_text(&c, "[data-check='svc/up']", "inconclusive").await;
    wait_text(&c, "[data-check='svc/up']", "Prometheus unreachable").await;
    wait_text(&c, "[data-hook='svc/chat']", "failed").await;
    let errors = page_errors(&c, &[]).await;
    assert!(errors.is_empty(), "errors in the page: {errors:#?}");
}

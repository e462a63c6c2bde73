//! Fuzz target: arbitrary bytes sent to the client port of one in-process switchyard
//! (started once, in front of a tiny upstream that answers 200). Whatever a client sends,
//! the proxy must not panic and must keep serving: after each input a normal request on a
//! new connection must still get an HTTP answer.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchyard::app::{Instance, Options};

/// How long one input's connection is read before it is dropped.
const RUN_TIMEOUT: Duration = Duration::from_millis(200);
/// The liveness probe normally answers in well under a millisecond; the slack is for a loaded
/// CI machine, so a slow answer is not reported as a crash.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy's client address. The instance and the upstream live for the whole process.
fn front() -> SocketAddr {
    // The instance stays reachable from this static (a `mem::forget` would be reported as a
    // leak by LeakSanitizer); the Mutex only makes it `Sync`, nothing ever locks it.
    static FRONT: OnceLock<(SocketAddr, Mutex<Instance>)> = OnceLock::new();
    FRONT
        .get_or_init(|| {
            let upstream = start_upstream();
            let text = format!(
                r#"
[server]
listen = "127.0.0.1:0"
request_timeout = "1s"
connect_timeout = "200ms"
header_read_timeout = "1s"
idle_timeout = "1s"
shutdown_grace = "0s"

[admin]
listen = "127.0.0.1:0"
persist = false

[[routes]]
host = "ab.example"
path_prefix = "/"
service = "ab"

[[routes]]
path_prefix = "/"
service = "app"

[services.app]
strategy = "canary"
weights = {{ stable = 90, canary = 10 }}
affinity_cookie = "sy_bucket"

[[services.app.overrides]]
header = "x-canary"
equals = "true"
pool = "canary"

[services.app.pools.stable]
endpoints = ["{upstream}"]

[services.app.pools.canary]
# Nothing listens here: requests routed to it get a 502 (or fail over).
endpoints = ["127.0.0.1:9"]
min_available = 0

[services.ab]
strategy = "ab"
weights = {{ A = 50, B = 50 }}
hash_key = {{ header = "x-user-id" }}

[services.ab.pools.A]
endpoints = ["{upstream}"]

[services.ab.pools.B]
endpoints = ["{upstream}"]
"#
            );
            let config = switchyard::config::parse(
                &text,
                Path::new("/nonexistent/switchyard-fuzz/front.toml"),
            )
            .unwrap_or_else(|e| panic!("fixed fuzz config must be valid: {e}"));
            let options = Options {
                workers: 1,
                watch: false,
                sighup: false,
            };
            let instance = Instance::start(&config, &options)
                .unwrap_or_else(|e| panic!("switchyard must start: {e:#}"));
            // Runs until the process exits; libFuzzer never returns from its loop.
            (instance.addr, Mutex::new(instance))
        })
        .0
}

/// The demo app on a current-thread runtime in a background thread.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fuzz-upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("upstream runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("upstream listener");
                tx.send(listener.local_addr().expect("upstream addr"))
                    .expect("upstream addr sent");
                let token = tokio_util::sync::CancellationToken::new();
                switchyard::demo::serve_app(listener, "v1", token).await;
            });
        })
        .expect("upstream thread");
    rx.recv().expect("upstream started")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).expect("connect to switchyard");
    // Close with a reset: thousands of runs would otherwise fill the port range with
    // TIME_WAIT sockets.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    let _ = stream.set_nodelay(true);
    stream
}

/// Reads until the peer closes, `stop` says enough, or `timeout` passes.
fn read_until(stream: &mut TcpStream, timeout: Duration, stop: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stop(&got) {
            return got;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return got,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let addr = front();

    let mut conn = connect(addr);
    let _ = conn.set_write_timeout(Some(RUN_TIMEOUT));
    if conn.write_all(data).is_ok() {
        // Half-close: the proxy sees the end of the input at once instead of waiting out
        // header_read_timeout for a head that never completes.
        let _ = conn.shutdown(Shutdown::Write);
        read_until(&mut conn, RUN_TIMEOUT, |_| false);
    }
    drop(conn);

    let mut probe = connect(addr);
    probe
        .set_write_timeout(Some(PROBE_TIMEOUT))
        .expect("write timeout");
    probe
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("switchyard must accept a request after the fuzz input");
    let answer = read_until(&mut probe, PROBE_TIMEOUT, |got| got.len() >= 12);
    assert!(
        answer.starts_with(b"HTTP/1.1 ") && answer.len() >= 12,
        "switchyard stopped answering after the fuzz input: got {:?}",
        String::from_utf8_lossy(&answer)
    );
});

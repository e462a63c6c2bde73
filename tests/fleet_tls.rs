//! Fleet mode against an etcd that asks for more than plain HTTP: TLS with client
//! certificates (a replica with the right CA and certificate joins and commits; one with the
//! wrong CA serves its file and reports the store down) and etcd's user authentication (the
//! right password joins, a wrong one is refused).

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::path::Path;
use std::time::Duration;

use etcd::{Etcd, EtcdTls, etcd_binary};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use serde_json::json;
use support::pki::Pki;
use support::*;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(15);
const PASSWORD_ENV: &str = "SY_TEST_ETCD_PASSWORD";

/// A replica of a canary service `shop` at 10%; `cluster` adds keys to `[cluster]`.
fn replica_config(etcd: &Etcd, prefix: &str, name: &str, up: &Upstream, cluster: &str) -> String {
    format!(
        "{}\n[cluster]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n{cluster}\n\
         [[routes]]\nservice = \"shop\"\n[services.shop]\nstrategy = \"canary\"\n\
         weights = {{ stable = 90, canary = 10 }}\n\
         [services.shop.pools.stable]\nendpoints = [\"{}\"]\n[services.shop.pools.canary]\nendpoints = [\"{}\"]\n",
        server_section(),
        etcd.endpoint(),
        up.addr,
        up.addr
    )
}

async fn put_weights(sy: &Switchyard, canary: u32) -> (u16, serde_json::Value) {
    let body = json!({"stable": 100 - canary, "canary": canary}).to_string();
    let url = sy.admin_url("/admin/services/shop/weights");
    admin(&client(), "PUT", &url, &body, &[]).await
}

async fn store_view(sy: &Switchyard) -> serde_json::Value {
    admin(&client(), "GET", &sy.admin_url("/admin/cluster"), "", &[])
        .await
        .1["store"]
        .clone()
}

/// Waits until the replica's store is down with an error containing one of `words`.
async fn wait_store_down(sy: &Switchyard, words: &[&str]) -> String {
    let deadline = Instant::now() + T;
    loop {
        let store = store_view(sy).await;
        let error = store["error"].as_str().unwrap_or("").to_owned();
        let lower = error.to_lowercase();
        if store["up"] == json!(false) && words.iter().any(|w| lower.contains(w)) {
            return error;
        }
        assert!(
            Instant::now() < deadline,
            "store never down with one of {words:?}: {store}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries until the replica has joined the fleet (a change answers 200, not 503).
async fn put_until_joined(sy: &Switchyard, canary: u32) {
    let deadline = Instant::now() + T;
    loop {
        let (status, v) = put_weights(sy, canary).await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never joined: {status} {v}; store {}",
            store_view(sy).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CA, etcd's server certificate for loopback and a client certificate, as PEM files in
/// `dir`: `ca.pem`, `etcd.pem`/`etcd.key`, `client.pem`/`client.key`.
fn write_pki(dir: &Path) -> Pki {
    let pki = Pki::new();
    std::fs::write(dir.join("ca.pem"), pki.ca_pem()).expect("write ca");
    pki.write_leaf(dir, "etcd", &["127.0.0.1", "localhost"]);
    pki.write_leaf(dir, "client", &["switchyard-replica"]);
    pki
}

/// Copies the client's files into a replica's directory, so that its config names them
/// relative to itself.
fn copy_client_files(from: &Path, to: &Path, ca: &str) {
    std::fs::copy(from.join(ca), to.join("etcd-ca.pem")).expect("copy ca");
    std::fs::copy(from.join("client.pem"), to.join("client.pem")).expect("copy cert");
    std::fs::copy(from.join("client.key"), to.join("client.key")).expect("copy key");
}

const TLS_KEYS: &str = "ca = \"etcd-ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n";

async fn tls_etcd(bin: &str, pki_dir: &Path) -> Etcd {
    Etcd::start_tls(
        bin,
        EtcdTls {
            cert: pki_dir.join("etcd.pem"),
            key: pki_dir.join("etcd.key"),
            client_ca: Some(pki_dir.join("ca.pem")),
        },
    )
    .await
}

fn start_replica(toml: &str, files: &Path, ca: &str) -> Switchyard {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_client_files(files, dir.path(), ca);
    let path = write_config(dir.path(), toml);
    Switchyard::start_at(dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_with_the_ca_and_a_client_certificate_commits_through_a_tls_etcd() {
    let Some(bin) = etcd_binary() else { return };
    let files = tempfile::tempdir().expect("pki dir");
    write_pki(files.path());
    let etcd = tls_etcd(bin, files.path()).await;
    let up = Upstream::start("v1").await;
    let a = start_replica(
        &replica_config(&etcd, "/t/tls", "a", &up, TLS_KEYS),
        files.path(),
        "ca.pem",
    );
    let b = start_replica(
        &replica_config(&etcd, "/t/tls", "b", &up, TLS_KEYS),
        files.path(),
        "ca.pem",
    );
    put_until_joined(&a, 35).await;
    assert_eq!(store_view(&a).await["up"], json!(true));
    // The commit is in etcd, read back over TLS with the same certificates...
    let read = files.path();
    let options = ConnectOptions::new().with_tls(
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(read.join("ca.pem")).expect("ca"),
            ))
            .identity(Identity::from_pem(
                std::fs::read(read.join("client.pem")).expect("cert"),
                std::fs::read(read.join("client.key")).expect("key"),
            )),
    );
    let mut etcd_client = Client::connect([etcd.endpoint()], Some(options))
        .await
        .expect("test client connects over TLS");
    let resp = etcd_client.get("/t/tls/state", None).await.expect("get");
    let kv = resp.kvs().first().expect("the fleet state key");
    let state: serde_json::Value = serde_json::from_slice(kv.value()).expect("json");
    assert_eq!(
        state["services"]["shop"]["weights"],
        json!({"stable": 65, "canary": 35}),
        "{state}"
    );
    // ...and the other replica follows it through its own TLS watch.
    wait_for(T, "replica b to follow the change", || async {
        service_state(&b, "shop").await["weights"] == json!({"stable": 65, "canary": 35})
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_with_the_wrong_ca_serves_its_file_and_reports_the_store_down() {
    let Some(bin) = etcd_binary() else { return };
    let files = tempfile::tempdir().expect("pki dir");
    write_pki(files.path());
    // A CA that did not sign etcd's certificate.
    std::fs::write(files.path().join("other-ca.pem"), Pki::new().ca_pem()).expect("other ca");
    let etcd = tls_etcd(bin, files.path()).await;
    let up = Upstream::start("v1").await;
    let sy = start_replica(
        &replica_config(&etcd, "/t/wrong-ca", "a", &up, TLS_KEYS),
        files.path(),
        "other-ca.pem",
    );
    let error = wait_store_down(&sy, &["certificate", "tls", "issuer"]).await;
    eprintln!("wrong CA: {error}");
    // Traffic is served from the file's state; changes are refused, not lost.
    assert_eq!(get(&client(), &sy.url("/"), &[]).await.status, 200);
    assert_eq!(
        service_state(&sy, "shop").await["weights"],
        json!({"stable": 90, "canary": 10})
    );
    assert_eq!(put_weights(&sy, 50).await.0, 503);
}

/// Turns etcd's authentication on, with a user `sy` (password `password`) that may read and
/// write under `prefix` and nothing else, as an operator would set one up for switchyard.
async fn enable_auth(etcd: &Etcd, prefix: &str, password: &str) {
    let mut c = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect");
    c.user_add("sy", password, None).await.expect("user add");
    c.role_add("sy").await.expect("role add");
    c.role_grant_permission(
        "sy",
        Permission::read_write(format!("{prefix}/")).with_prefix(),
    )
    .await
    .expect("grant permission");
    c.user_grant_role("sy", "sy").await.expect("grant role");
    // etcd refuses to turn authentication on until a `root` user with the `root` role exists.
    c.user_add("root", "root password", None)
        .await
        .expect("root add");
    c.role_add("root").await.expect("root role add");
    c.user_grant_role("root", "root").await.expect("root grant");
    c.auth_enable().await.expect("auth enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_authentication_takes_the_right_password_and_refuses_a_wrong_one() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    enable_auth(&etcd, "/t/auth", "s3cret pass").await;
    let up = Upstream::start("v1").await;
    let keys = format!("username = \"sy\"\npassword_env = \"{PASSWORD_ENV}\"\n");
    let start = |name: &str, password: &'static str| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(
            dir.path(),
            &replica_config(&etcd, "/t/auth", name, &up, &keys),
        );
        let env = move |var: &str| (var == PASSWORD_ENV).then(|| password.to_owned());
        Switchyard::start_at_with_env(dir, path, &env)
    };
    let good = start("good", "s3cret pass");
    put_until_joined(&good, 40).await;
    assert_eq!(store_view(&good).await["up"], json!(true));

    let bad = start("bad", "not the password");
    let error = wait_store_down(&bad, &["authentication"]).await;
    eprintln!("wrong password: {error}");
    assert!(!error.contains("not the password"), "{error}");
    assert_eq!(put_weights(&bad, 50).await.0, 503);
    // The refused replica never joined: it serves its own file's weights, not the fleet's.
    assert_eq!(
        service_state(&bad, "shop").await["weights"],
        json!({"stable": 90, "canary": 10})
    );
}

//! The fleet's shared state in a real etcd: seeding an empty prefix once, compare-and-set
//! commits (two writers, one winner), watches that deliver each commit, and a store that is
//! down answering with an error instead of hanging.

#[path = "support/etcd.rs"]
mod etcd;
mod support;

use std::time::Duration;

use etcd::{Etcd, etcd_binary};
use switchyard::fleet::store::Seen;
use switchyard::fleet::{Commit, SharedState, Store, StoreError};
use tokio::time::{Instant, timeout};

const TIMEOUT: Duration = Duration::from_secs(2);

fn state(generation: u64, canary: u32) -> SharedState {
    let mut s = SharedState {
        generation,
        ..SharedState::default()
    };
    s.services.entry("shop".into()).or_default().weights =
        [("stable".into(), 100 - canary), ("canary".into(), canary)]
            .into_iter()
            .collect();
    s
}

async fn store(etcd: &Etcd, prefix: &str) -> Store {
    match Store::connect(&[etcd.endpoint()], prefix, TIMEOUT).await {
        Ok(s) => s,
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_replica_seeds_and_the_others_join() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let (mut a, mut b) = (store(&etcd, "/sy/a").await, store(&etcd, "/sy/a").await);
    assert_eq!(a.read().await, Ok(None));
    let (first, seeded) = a.load_or_seed(&state(1, 10)).await.expect("seed");
    assert!(seeded);
    assert_eq!(first.state, state(1, 10));
    // The second replica's file says 20%: the fleet's state wins.
    let (joined, seeded) = b.load_or_seed(&state(1, 20)).await.expect("join");
    assert!(!seeded);
    assert_eq!(joined, first);
    // Another prefix is another fleet.
    let mut other = store(&etcd, "/sy/other").await;
    assert_eq!(other.read().await, Ok(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_commits_from_the_same_state_exactly_one_wins() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let (mut a, mut b) = (store(&etcd, "/sy/b").await, store(&etcd, "/sy/b").await);
    let (base, _) = a.load_or_seed(&state(1, 10)).await.expect("seed");
    let (thirty, forty) = (state(2, 30), state(2, 40));
    let (ra, rb) = tokio::join!(
        a.commit(base.revision, &thirty),
        b.commit(base.revision, &forty)
    );
    let outcomes = [ra.expect("commit a"), rb.expect("commit b")];
    let won: Vec<_> = outcomes
        .iter()
        .filter_map(|c| match c {
            Commit::Done(v) => Some(v.clone()),
            Commit::Conflict(_) | Commit::Missing => None,
        })
        .collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    // The loser is told what won.
    for c in &outcomes {
        if let Commit::Conflict(now) = c {
            assert_eq!(now, &won[0]);
        }
    }
    assert_eq!(a.read().await, Ok(Some(won[0].clone())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_every_commit_in_order() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let (mut a, mut b) = (store(&etcd, "/sy/c").await, store(&etcd, "/sy/c").await);
    let (base, _) = a.load_or_seed(&state(1, 0)).await.expect("seed");
    let mut watch = b.watch(base.revision).await.expect("watch");
    let mut revision = base.revision;
    let started = Instant::now();
    for (generation, canary) in [(2, 5), (3, 10), (4, 25)] {
        match a.commit(revision, &state(generation, canary)).await {
            Ok(Commit::Done(v)) => revision = v.revision,
            other => panic!("{other:?}"),
        }
    }
    for (generation, canary) in [(2, 5), (3, 10), (4, 25)] {
        let seen = timeout(Duration::from_secs(1), watch.next())
            .await
            .expect("a commit within 1 s")
            .expect("watch")
            .expect("open");
        match seen {
            Seen::Put(v) => assert_eq!(v.state, state(generation, canary)),
            other => panic!("{other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_is_an_error_within_the_timeout() {
    let Some(bin) = etcd_binary() else { return };
    let mut etcd = Etcd::start(bin).await;
    let mut a = store(&etcd, "/sy/d").await;
    a.load_or_seed(&state(1, 10)).await.expect("seed");
    etcd.kill();
    let started = Instant::now();
    let outcome = timeout(Duration::from_secs(10), a.read())
        .await
        .expect("an answer, not a hang");
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() < TIMEOUT * 3, "{:?}", started.elapsed());
    let message = outcome.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.starts_with("cluster store unavailable: "),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_reads_the_state_again() {
    let Some(bin) = etcd_binary() else { return };
    let etcd = Etcd::start(bin).await;
    let (mut a, mut b) = (
        store(&etcd, "/sy/compact").await,
        store(&etcd, "/sy/compact").await,
    );
    let (base, _) = a.load_or_seed(&state(1, 0)).await.expect("seed");
    let mut revision = base.revision;
    for (generation, canary) in [(2, 5), (3, 10)] {
        match a.commit(revision, &state(generation, canary)).await {
            Ok(Commit::Done(v)) => revision = v.revision,
            other => panic!("{other:?}"),
        }
    }
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd client");
    client.compact(revision, None).await.expect("compact");
    // The history a replica was away for is gone: the store says so…
    let mut watch = b.watch(base.revision).await.expect("watch");
    let got = timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("an answer");
    assert!(matches!(got, Err(StoreError::Compacted(_))), "{got:?}");
    // …and a replica's watch from there reads the whole state, then follows new commits.
    let cluster = switchyard::config::Cluster {
        etcd: vec![etcd.endpoint()],
        prefix: "/sy/compact".into(),
        name: "r".into(),
        lease_ttl: TIMEOUT,
        auth: None,
        tls: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(switchyard::fleet::link::watch(cluster, base.revision, tx));
    let mut next_state = async || loop {
        match timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(
                switchyard::fleet::link::Event::State(v) | switchyard::fleet::link::Event::Read(v),
            )) => return v.state,
            Ok(Some(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(next_state().await, state(3, 10));
    let Ok(Commit::Done(_)) = a.commit(revision, &state(4, 25)).await else {
        panic!("commit")
    };
    assert_eq!(next_state().await, state(4, 25));
    task.abort();
}

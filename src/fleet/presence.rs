//! A replica's presence in its fleet: a lease kept alive, its member key under the lease, the
//! leader key claimed under it whenever the key is free, and the replica's rollout window
//! figures under it. A replica silent for `lease_ttl` loses all three, and the next replica
//! to look claims the leadership.

use std::time::{Duration, SystemTime};

use indexmap::IndexMap;
use tokio::sync::watch;
use tokio::time::Instant;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::link::Event;
use super::store::{StoreError, connect, unavailable};
use crate::config::Cluster;
use crate::control::command::MemberView as Member;
use crate::control::state::WindowId;
use crate::stats::Snapshot;

/// How often the lease is renewed, the member key refreshed and the leader key looked at.
const TICK: Duration = Duration::from_millis(500);

/// The live replicas, the leader and every replica's rollout figures, as etcd has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    pub members: Vec<Member>,
    pub leader: Option<String>,
    pub figures: Vec<Figures>,
    /// When this was read: a leader judges only on figures read moments ago.
    pub read_at: Option<Instant>,
}

impl Roster {
    /// The fleet's baseline and canary figures for `service`'s rollout window `window`:
    /// the sum over the replicas that count that window.
    pub fn window(&self, service: &str, window: WindowId) -> (Snapshot, Snapshot) {
        let mut sum = (Snapshot::default(), Snapshot::default());
        for w in self.figures.iter().filter_map(|f| f.services.get(service)) {
            if w.window == window {
                sum = (sum.0.plus(&w.baseline), sum.1.plus(&w.canary));
            }
        }
        sum
    }
}

/// One replica's traffic to each progressing rollout's pools since the rollout's current
/// window opened (as the replica saw it open).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub services: IndexMap<String, WindowFigures>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowFigures {
    pub window: WindowId,
    pub baseline: Snapshot,
    pub canary: Snapshot,
}

/// Keeps this replica present and reports the roster after every tick; reconnects while the
/// store is away. Ends when `tx` closes.
pub async fn run(cluster: Cluster, tx: mpsc::Sender<Event>, figures: watch::Receiver<Figures>) {
    loop {
        if let Err(e) = present(&cluster, &tx, &figures).await {
            warn!(error = %e, "fleet membership interrupted; retrying");
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn present(
    cluster: &Cluster,
    tx: &mpsc::Sender<Event>,
    figures: &watch::Receiver<Figures>,
) -> Result<(), StoreError> {
    let mut client = connect(cluster).await?;
    let ttl = cluster.lease_ttl.as_secs_f64().ceil() as i64;
    let lease = client
        .lease_grant(ttl, None)
        .await
        .map_err(unavailable)?
        .id();
    let (mut keeper, mut answers): (LeaseKeeper, LeaseKeepAliveStream) =
        client.lease_keep_alive(lease).await.map_err(unavailable)?;
    let keys = Keys::of(cluster);
    let mut was_leader = false;
    let mut published = false;
    loop {
        keeper.keep_alive().await.map_err(unavailable)?;
        match answers.message().await.map_err(unavailable)? {
            Some(answer) if answer.ttl() > 0 => {}
            // The lease expired (the replica was cut off longer than its ttl): start over.
            _ => return Err(StoreError::Unavailable("the fleet lease expired".into())),
        }
        let member = Member {
            name: cluster.name.clone(),
            seen: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let value = serde_json::to_string(&member).unwrap_or_default();
        claim_name(&mut client, &keys.me, value, lease, cluster).await?;
        // The leader key is free when its holder's lease ended: the first to ask takes it.
        let free = Compare::create_revision(keys.leader.as_str(), CompareOp::Equal, 0);
        put_leader(&mut client, &keys.leader, cluster, lease, free).await?;
        let mine = figures.borrow().clone();
        publish_figures(&mut client, &keys.my_figures, &mine, lease, &mut published).await?;
        let (roster, held) =
            roster(&mut client, &keys.members, &keys.leader, &keys.all_figures).await?;
        // A leader key that no live replica's lease backs (written by hand, or left by a
        // lease-less put) would keep the fleet leaderless for good: take it over.
        if let Some(held) = held
            && !held.backed
        {
            let unchanged =
                Compare::mod_revision(keys.leader.as_str(), CompareOp::Equal, held.mod_revision);
            if put_leader(&mut client, &keys.leader, cluster, lease, unchanged).await? {
                warn!(
                    held_by = %roster.leader.as_deref().unwrap_or("-"),
                    "the fleet's leader key was not backed by a live replica: taken over"
                );
            }
        }
        let leading = roster.leader.as_deref() == Some(cluster.name.as_str());
        if leading != was_leader {
            info!(leader = leading, "fleet leadership changed");
            was_leader = leading;
        }
        if tx.send(Event::Roster(roster)).await.is_err() {
            let _ = client.lease_revoke(lease).await;
            return Ok(());
        }
        tokio::time::sleep(TICK).await;
    }
}

/// This replica's keys under the fleet's prefix.
struct Keys {
    members: String,
    leader: String,
    me: String,
    all_figures: String,
    my_figures: String,
}

impl Keys {
    fn of(cluster: &Cluster) -> Keys {
        let prefix = cluster.prefix.trim_end_matches('/');
        Keys {
            members: format!("{prefix}/members/"),
            leader: format!("{prefix}/leader"),
            me: format!("{prefix}/members/{}", cluster.name),
            all_figures: format!("{prefix}/figures/"),
            my_figures: format!("{prefix}/figures/{}", cluster.name),
        }
    }
}

/// Puts this replica's name in the leader key under its lease if `when` holds; whether it
/// did.
async fn put_leader(
    client: &mut Client,
    leader: &str,
    cluster: &Cluster,
    lease: i64,
    when: Compare,
) -> Result<bool, StoreError> {
    let put = TxnOp::put(
        leader,
        cluster.name.as_str(),
        Some(PutOptions::new().with_lease(lease)),
    );
    let txn = Txn::new().when([when]).and_then([put]);
    Ok(client.txn(txn).await.map_err(unavailable)?.succeeded())
}

/// This replica's rollout figures: put (under its lease) while a rollout progresses,
/// removed after.
async fn publish_figures(
    client: &mut Client,
    key: &str,
    mine: &Figures,
    lease: i64,
    published: &mut bool,
) -> Result<(), StoreError> {
    if !mine.services.is_empty() {
        let value = serde_json::to_string(mine).unwrap_or_default();
        let with_lease = Some(PutOptions::new().with_lease(lease));
        client
            .put(key, value, with_lease)
            .await
            .map_err(unavailable)?;
        *published = true;
    } else if *published {
        client.delete(key, None).await.map_err(unavailable)?;
        *published = false;
    }
    Ok(())
}

/// The leader key as read: whether a live member's lease backs it, and its revision.
struct Held {
    backed: bool,
    mod_revision: i64,
}

async fn roster(
    client: &mut Client,
    members: &str,
    leader: &str,
    figures: &str,
) -> Result<(Roster, Option<Held>), StoreError> {
    // The leader key first, then the members: a replica puts its member key before it
    // claims the leadership, so a leader read here has its member key in the list below.
    let leader_kv = client
        .get(leader, None)
        .await
        .map_err(unavailable)?
        .kvs()
        .first()
        .cloned();
    let listed = client
        .get(members, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(unavailable)?;
    let mut members: Vec<Member> = listed
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let held = leader_kv.as_ref().map(|kv| Held {
        backed: kv.lease() != 0 && listed.kvs().iter().any(|m| m.lease() == kv.lease()),
        mod_revision: kv.mod_revision(),
    });
    let leader = leader_kv
        .as_ref()
        .and_then(|kv| kv.value_str().ok().map(str::to_owned));
    let figures = client
        .get(figures, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(unavailable)?
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    let roster = Roster {
        members,
        leader,
        figures,
        read_at: Some(Instant::now()),
    };
    Ok((roster, held))
}

/// Puts this replica's member key under its lease, unless another live lease holds it: a
/// second replica with the same name would overwrite the first's presence, figures and
/// leadership.
async fn claim_name(
    client: &mut Client,
    me: &str,
    value: String,
    lease: i64,
    cluster: &Cluster,
) -> Result<(), StoreError> {
    let put = || TxnOp::put(me, value.clone(), Some(PutOptions::new().with_lease(lease)));
    let mine = Txn::new()
        .when([Compare::lease(me, CompareOp::Equal, lease)])
        .and_then([put()]);
    if client.txn(mine).await.map_err(unavailable)?.succeeded() {
        return Ok(());
    }
    let free = Txn::new()
        .when([Compare::create_revision(me, CompareOp::Equal, 0)])
        .and_then([put()]);
    if client.txn(free).await.map_err(unavailable)?.succeeded() {
        return Ok(());
    }
    Err(StoreError::Unavailable(name_in_use(cluster).to_string()))
}

/// A live replica of the fleet already holds this replica's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "replica name {name:?} is already in use under prefix {prefix:?}: another live replica holds it (give this one another [cluster] name, or stop the other)"
)]
pub struct NameInUse {
    pub name: String,
    pub prefix: String,
}

fn name_in_use(cluster: &Cluster) -> NameInUse {
    NameInUse {
        name: cluster.name.clone(),
        prefix: cluster.prefix.clone(),
    }
}

/// At start: waits up to `lease_ttl` + 1 s for the name to be free (a replica of the same
/// name that just died holds it until its lease ends), and refuses to start if a live
/// replica still holds it. When etcd cannot be reached, nothing can be known: the start goes
/// on, and the replica does not put its presence while the name is held.
pub async fn check_name(cluster: &Cluster) -> Result<(), NameInUse> {
    let Ok(mut client) = connect(cluster).await else {
        return Ok(());
    };
    let key = format!(
        "{}/members/{}",
        cluster.prefix.trim_end_matches('/'),
        cluster.name
    );
    let deadline = Instant::now() + cluster.lease_ttl + Duration::from_secs(1);
    loop {
        let Ok(found) = client.get(key.as_str(), None).await else {
            return Ok(());
        };
        if found.kvs().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(name_in_use(cluster));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

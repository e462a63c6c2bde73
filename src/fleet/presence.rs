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
    let prefix = cluster.prefix.trim_end_matches('/');
    let (members, leader) = (format!("{prefix}/members/"), format!("{prefix}/leader"));
    let me = format!("{members}{}", cluster.name);
    let (all_figures, my_figures) = (
        format!("{prefix}/figures/"),
        format!("{prefix}/figures/{}", cluster.name),
    );
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
        let with_lease = || Some(PutOptions::new().with_lease(lease));
        client
            .put(me.as_str(), value, with_lease())
            .await
            .map_err(unavailable)?;
        // The leader key is free when its holder's lease ended: the first to ask takes it.
        let claim = Txn::new()
            .when([Compare::create_revision(
                leader.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                leader.as_str(),
                cluster.name.as_str(),
                with_lease(),
            )]);
        client.txn(claim).await.map_err(unavailable)?;
        // This replica's rollout figures: put while a rollout progresses, removed after.
        let mine = figures.borrow().clone();
        if !mine.services.is_empty() {
            let value = serde_json::to_string(&mine).unwrap_or_default();
            client
                .put(my_figures.as_str(), value, with_lease())
                .await
                .map_err(unavailable)?;
            published = true;
        } else if published {
            client
                .delete(my_figures.as_str(), None)
                .await
                .map_err(unavailable)?;
            published = false;
        }
        let roster = roster(&mut client, &members, &leader, &all_figures).await?;
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

async fn roster(
    client: &mut Client,
    members: &str,
    leader: &str,
    figures: &str,
) -> Result<Roster, StoreError> {
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
    let leader = client
        .get(leader, None)
        .await
        .map_err(unavailable)?
        .kvs()
        .first()
        .and_then(|kv| kv.value_str().ok().map(str::to_owned));
    let figures = client
        .get(figures, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(unavailable)?
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    Ok(Roster {
        members,
        leader,
        figures,
        read_at: Some(Instant::now()),
    })
}

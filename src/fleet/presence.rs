//! A replica's presence in its fleet: a lease kept alive, its member key under the lease, and
//! the leader key claimed under it whenever the key is free. A replica silent for `lease_ttl`
//! loses both, and the next replica to look claims the leadership.

use std::time::{Duration, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::link::Event;
use super::store::{StoreError, connect, unavailable};
use crate::config::Cluster;
use crate::control::command::MemberView as Member;

/// How often the lease is renewed, the member key refreshed and the leader key looked at.
const TICK: Duration = Duration::from_millis(500);

/// The live replicas and the leader, as etcd has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Roster {
    pub members: Vec<Member>,
    pub leader: Option<String>,
}

/// Keeps this replica present and reports the roster after every tick; reconnects while the
/// store is away. Ends when `tx` closes.
pub async fn run(cluster: Cluster, tx: mpsc::Sender<Event>) {
    loop {
        if let Err(e) = present(&cluster, &tx).await {
            warn!(error = %e, "fleet membership interrupted; retrying");
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn present(cluster: &Cluster, tx: &mpsc::Sender<Event>) -> Result<(), StoreError> {
    let mut client = connect(&cluster.etcd, cluster.lease_ttl).await?;
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
    let mut was_leader = false;
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
        let roster = roster(&mut client, &members, &leader).await?;
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

async fn roster(client: &mut Client, members: &str, leader: &str) -> Result<Roster, StoreError> {
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
    Ok(Roster { members, leader })
}

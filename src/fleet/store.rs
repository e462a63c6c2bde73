//! The fleet's shared state in etcd: one key, `{prefix}/state`, holding [`SharedState`] as
//! JSON. One key makes every change one compare-and-set: a commit names the revision it was
//! computed from and succeeds only if the key is still at it, so two replicas changing the
//! state at once cannot both win.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, Identity, TlsOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};

use super::shared::SharedState;
use crate::config::Cluster;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// etcd did not answer (down, unreachable, no quorum) or refused the call.
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    /// The key holds something that is not a shared state (written by something else).
    #[error("the fleet state at {key} is not readable: {reason}")]
    Unreadable { key: String, reason: String },
    /// A watch started from a revision etcd has compacted away: read the state again.
    #[error("etcd compacted the history up to revision {0}; read the state again")]
    Compacted(i64),
}

/// The shared state and the etcd revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub state: SharedState,
    /// The key's `mod_revision`: what a commit compares.
    pub revision: i64,
}

/// The answer to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    Done(Versioned),
    /// Someone committed first; this is what the key holds now.
    Conflict(Versioned),
}

pub struct Store {
    client: Client,
    key: String,
}

impl Store {
    /// Connects to the etcd `endpoints` (`http://host:port`) with neither TLS nor
    /// credentials; `timeout` bounds every call, so an unreachable store is an error, never a
    /// hang.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let options = ConnectOptions::new();
        Ok(Store::new(open(endpoints, options, timeout).await?, prefix))
    }

    /// Connects to the fleet's etcd as `[cluster]` says: its endpoints, TLS and credentials,
    /// every call bounded by `lease_ttl`.
    pub async fn open(cluster: &Cluster) -> Result<Store, StoreError> {
        Ok(Store::new(connect(cluster).await?, &cluster.prefix))
    }

    fn new(client: Client, prefix: &str) -> Store {
        Store {
            client,
            key: format!("{}/state", prefix.trim_end_matches('/')),
        }
    }

    /// The shared state, or `None` under an empty prefix.
    pub async fn read(&mut self) -> Result<Option<Versioned>, StoreError> {
        let resp = self
            .client
            .get(self.key.as_str(), None)
            .await
            .map_err(unavailable)?;
        resp.kvs()
            .first()
            .map(|kv| self.decode(kv.value(), kv.mod_revision()))
            .transpose()
    }

    /// The shared state; under an empty prefix, `seed` becomes it first (if two replicas seed
    /// at once, one wins and both get its state). `true` when this call seeded.
    pub async fn load_or_seed(
        &mut self,
        seed: &SharedState,
    ) -> Result<(Versioned, bool), StoreError> {
        let key = self.key.as_str();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, self.encode(seed)?, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.txn(txn).await.map_err(unavailable)?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            let state = seed.clone();
            return Ok((Versioned { state, revision }, true));
        }
        Ok((self.current(resp.op_responses())?, false))
    }

    /// Writes `next` if the state is still at `revision`; otherwise says what it is now.
    pub async fn commit(
        &mut self,
        revision: i64,
        next: &SharedState,
    ) -> Result<Commit, StoreError> {
        let key = self.key.as_str();
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::put(key, self.encode(next)?, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.txn(txn).await.map_err(unavailable)?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            let state = next.clone();
            return Ok(Commit::Done(Versioned { state, revision }));
        }
        Ok(Commit::Conflict(self.current(resp.op_responses())?))
    }

    /// Every new version of the state after `revision`, as they are committed.
    pub async fn watch(&mut self, revision: i64) -> Result<Watch, StoreError> {
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let stream = self
            .client
            .watch(self.key.as_str(), Some(options))
            .await
            .map_err(unavailable)?;
        Ok(Watch {
            stream,
            key: self.key.clone(),
            pending: Vec::new(),
        })
    }

    fn encode(&self, state: &SharedState) -> Result<String, StoreError> {
        serde_json::to_string(state).map_err(|e| StoreError::Unreadable {
            key: self.key.clone(),
            reason: e.to_string(),
        })
    }

    fn decode(&self, value: &[u8], revision: i64) -> Result<Versioned, StoreError> {
        decode(&self.key, value, revision)
    }

    /// The state from a failed transaction's `get`.
    fn current(&self, ops: Vec<TxnOpResponse>) -> Result<Versioned, StoreError> {
        for op in ops {
            if let TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
            {
                return self.decode(kv.value(), kv.mod_revision());
            }
        }
        Err(StoreError::Unreadable {
            key: self.key.clone(),
            reason: "the key vanished during a transaction".into(),
        })
    }
}

/// New versions of the shared state, oldest first.
pub struct Watch {
    stream: WatchStream,
    key: String,
    pending: Vec<Versioned>,
}

impl Watch {
    /// The next version; `None` when etcd closed the watch (reconnect and read again).
    pub async fn next(&mut self) -> Result<Option<Versioned>, StoreError> {
        loop {
            if !self.pending.is_empty() {
                return Ok(Some(self.pending.remove(0)));
            }
            let Some(resp) = self.stream.message().await.map_err(unavailable)? else {
                return Ok(None);
            };
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted(resp.compact_revision()));
            }
            if resp.canceled() {
                return Ok(None);
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => {
                        let v = decode(&self.key, kv.value(), kv.mod_revision())?;
                        self.pending.push(v);
                    }
                    // Someone deleted the fleet's state: nothing to apply; the replicas keep
                    // theirs, and the next commit fails its compare and reads again.
                    EventType::Delete => {}
                }
            }
        }
    }
}

fn decode(key: &str, value: &[u8], revision: i64) -> Result<Versioned, StoreError> {
    let state = serde_json::from_slice(value).map_err(|e| StoreError::Unreadable {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Versioned { state, revision })
}

/// An etcd client for `cluster`: its TLS and credentials, every call bounded by `lease_ttl`.
/// With credentials, connecting logs in, so a wrong password is an error here.
pub(super) async fn connect(cluster: &Cluster) -> Result<Client, StoreError> {
    let mut options = ConnectOptions::new();
    if let Some(auth) = &cluster.auth {
        options = options.with_user(auth.username.as_str(), auth.password.0.as_str());
    }
    if let Some(tls) = &cluster.tls {
        // A `ca` replaces the public roots, as for upstreams: etcd's certificate is then
        // trusted only if that CA signed it.
        let mut config = match &tls.ca {
            Some(ca) => TlsOptions::new().ca_certificate(Certificate::from_pem(ca)),
            None => TlsOptions::new().with_webpki_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, &key.0));
        }
        options = options.with_tls(config);
    }
    open(&cluster.etcd, options, cluster.lease_ttl).await
}

async fn open(
    endpoints: &[String],
    options: ConnectOptions,
    timeout: Duration,
) -> Result<Client, StoreError> {
    let options = options.with_connect_timeout(timeout).with_timeout(timeout);
    Client::connect(endpoints, Some(options))
        .await
        .map_err(unavailable)
}

pub(super) fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

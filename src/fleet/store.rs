//! The fleet's shared state in etcd: one key, `{prefix}/state`, holding [`SharedState`] as
//! JSON. One key makes every change one compare-and-set: a commit names the revision it was
//! computed from and succeeds only if the key is still at it, so two replicas changing the
//! state at once cannot both win.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, Identity, TlsOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};

use super::shared::{InvalidState, SharedState};
use crate::config::Cluster;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// etcd could not be reached, so the call was never sent (or it was a read).
    #[error("cluster store unavailable: {0}")]
    Unavailable(String),
    /// A write was sent and no answer came (etcd paused, a connection cut mid-call, a
    /// proposal that timed out inside etcd): it may or may not have been committed.
    #[error("the cluster store did not answer: {0}")]
    Unknown(String),
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
    /// Why the key's value is not a state this replica may apply (not JSON of a shared
    /// state, or one that fails validation); `state` is then empty. The next commit
    /// compares on `revision` and so replaces it.
    pub invalid: Option<Box<InvalidState>>,
}

impl Versioned {
    pub fn new(state: SharedState, revision: i64) -> Versioned {
        let invalid = state.validate().err().map(Box::new);
        Versioned {
            state,
            revision,
            invalid,
        }
    }

    fn invalid(revision: i64, reason: InvalidState) -> Versioned {
        Versioned {
            state: SharedState::default(),
            revision,
            invalid: Some(Box::new(reason)),
        }
    }
}

/// The answer to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    Done(Versioned),
    /// Someone committed first; this is what the key holds now.
    Conflict(Versioned),
    /// The key is gone (deleted, or etcd wiped): nothing to compare with; re-seed it.
    Missing,
}

/// The key was not there.
struct Missing;

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
        Ok(self.read_at().await?.0)
    }

    /// The shared state (or `None`), and the store's revision when it was read.
    pub async fn read_at(&mut self) -> Result<(Option<Versioned>, i64), StoreError> {
        let resp = self
            .client
            .get(self.key.as_str(), None)
            .await
            .map_err(unavailable)?;
        let at = resp.header().map_or(0, |h| h.revision());
        let found = resp
            .kvs()
            .first()
            .map(|kv| decode(&self.key, kv.value(), kv.mod_revision()));
        Ok((found, at))
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
            return Ok((Versioned::new(seed.clone(), revision), true));
        }
        match self.current(resp.op_responses()) {
            Ok(now) => Ok((now, false)),
            // Deleted between the compare and the get: try again.
            Err(Missing) => Err(StoreError::Unavailable(
                "the fleet's state was deleted while it was read".into(),
            )),
        }
    }

    /// Writes `next` if the state is still at `revision`; otherwise says what it is now.
    pub async fn commit(
        &mut self,
        revision: i64,
        next: &SharedState,
    ) -> Result<Commit, StoreError> {
        let when = Compare::mod_revision(self.key.as_str(), CompareOp::Equal, revision);
        self.write_if(when, next).await
    }

    /// Writes `state` where the key is missing (deleted, or etcd wiped): the fleet's state
    /// again, from a replica's live one. `Conflict` when another replica re-seeded first.
    pub async fn reseed(&mut self, state: &SharedState) -> Result<Commit, StoreError> {
        let when = Compare::create_revision(self.key.as_str(), CompareOp::Equal, 0);
        self.write_if(when, state).await
    }

    /// Writes `next` in one transaction if `when` holds; otherwise reads what is there.
    async fn write_if(&mut self, when: Compare, next: &SharedState) -> Result<Commit, StoreError> {
        let key = self.key.as_str();
        let txn = Txn::new()
            .when([when])
            .and_then([TxnOp::put(key, self.encode(next)?, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.txn(txn).await.map_err(sent)?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            return Ok(Commit::Done(Versioned::new(next.clone(), revision)));
        }
        match self.current(resp.op_responses()) {
            Ok(now) => Ok(Commit::Conflict(now)),
            Err(Missing) => Ok(Commit::Missing),
        }
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

    /// The state from a failed transaction's `get`: a conflict with a readable state or an
    /// unreadable one, or nothing there.
    fn current(&self, ops: Vec<TxnOpResponse>) -> Result<Versioned, Missing> {
        for op in ops {
            if let TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
            {
                return Ok(decode(&self.key, kv.value(), kv.mod_revision()));
            }
        }
        Err(Missing)
    }
}

/// What the watch saw happen to the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A new version (perhaps an invalid one).
    Put(Versioned),
    /// The key was deleted at this revision.
    Deleted(i64),
}

/// New versions of the shared state, oldest first.
pub struct Watch {
    stream: WatchStream,
    key: String,
    pending: Vec<Seen>,
}

impl Watch {
    /// The next version; `None` when etcd closed the watch (reconnect and read again).
    pub async fn next(&mut self) -> Result<Option<Seen>, StoreError> {
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
                        let v = decode(&self.key, kv.value(), kv.mod_revision());
                        self.pending.push(Seen::Put(v));
                    }
                    // Someone deleted the fleet's state: the replicas keep serving theirs,
                    // and one of them seeds the key again from it.
                    EventType::Delete => self.pending.push(Seen::Deleted(kv.mod_revision())),
                }
            }
        }
    }
}

/// The key's value as a version of the state: an invalid one when it is not JSON of a
/// shared state or fails validation.
fn decode(key: &str, value: &[u8], revision: i64) -> Versioned {
    match serde_json::from_slice::<SharedState>(value) {
        Ok(state) => Versioned::new(state, revision),
        Err(e) => Versioned::invalid(
            revision,
            InvalidState::Unreadable {
                key: key.to_string(),
                error: e.to_string(),
            },
        ),
    }
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

/// A failed call that was a read, or a write etcd never received.
pub(super) fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(describe(&e))
}

/// A failed write: unavailable when it provably never reached etcd (no connection could be
/// made), otherwise its outcome is unknown.
pub(super) fn sent(e: etcd_client::Error) -> StoreError {
    let text = describe(&e);
    if never_sent(&e) {
        StoreError::Unavailable(text)
    } else {
        StoreError::Unknown(text)
    }
}

/// Whether the call failed to connect, so nothing was sent.
fn never_sent(e: &etcd_client::Error) -> bool {
    let all = format!("{e:?}").to_ascii_lowercase();
    all.contains("connecterror") || all.contains("connection refused")
}

/// One readable line for an etcd client error, whose own text nests a gRPC status around a
/// transport error around an I/O error in debug form: `cannot connect to 127.0.0.1:2379
/// (connection refused)`, `no answer within the timeout`, or etcd's own message.
pub fn describe(e: &etcd_client::Error) -> String {
    let debug = format!("{e:?}");
    let lower = debug.to_ascii_lowercase();
    // The innermost cause: an I/O error's own words, when there is one.
    let mut cause: Option<String> = None;
    let mut innermost: Option<String> = None;
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = next {
        match err.downcast_ref::<std::io::Error>() {
            // An I/O error's kind reads plainly; its text may be another nested dump (a TLS
            // failure travels inside one).
            Some(io) if io.get_ref().is_none() => cause = Some(io.kind().to_string()),
            _ => innermost = Some(err.to_string()),
        }
        next = err.source();
    }
    let cause = cause.or(innermost.filter(|t| !t.is_empty() && t.len() < 200 && !t.contains('(')));
    let mut cause = cause;
    if cause.is_none() {
        for (needle, words) in [
            ("connectionrefused", "connection refused"),
            ("connection refused", "connection refused"),
            ("connectionreset", "connection reset"),
            ("timedout", "timed out"),
            ("dns error", "name not resolved"),
            ("unknownissuer", "certificate from an unknown issuer"),
            ("invalid peer certificate", "invalid peer certificate"),
            ("certificate", "certificate rejected"),
            ("handshake", "TLS handshake failed"),
        ] {
            if lower.contains(needle) {
                cause = Some(words.to_string());
                break;
            }
        }
    }
    if lower.contains("connecterror") || lower.contains("connect error") {
        let at = address_in(&debug)
            .map(|a| format!(" to {a}"))
            .unwrap_or_default();
        let why = cause.map(|c| format!(" ({c})")).unwrap_or_default();
        return format!("cannot connect{at}{why}");
    }
    if lower.contains("timeout expired") || lower.contains("deadline") || lower.contains("elapsed")
    {
        return "no answer within the timeout".to_string();
    }
    match e {
        etcd_client::Error::GRpcStatus(status) => match cause {
            Some(c) => format!("{} ({c})", status.message()),
            None => status.message().to_string(),
        },
        other => {
            let text = other.to_string();
            text.lines().next().unwrap_or_default().to_string()
        }
    }
}

/// The first `host:port` an error's text names (`127.0.0.1:2379`, `[::1]:2379`).
fn address_in(text: &str) -> Option<&str> {
    static ADDR: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    ADDR.get_or_init(|| regex::Regex::new(r"(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d+").ok())
        .as_ref()?
        .find(text)
        .map(|m| m.as_str())
}

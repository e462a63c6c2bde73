//! TLS termination: rustls server config with ALPN h2 and http/1.1, certificates chosen by
//! SNI among the configured pairs (the first is the default), reloaded when their files
//! change. A broken replacement keeps the certificates that work.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::CertPair;

/// How often certificate files are checked for changes (a renewal is live within this).
const POLL: Duration = Duration::from_millis(500);

/// The crypto provider: ring (no C toolchain needed beyond what `ring` builds).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loaded certificates, in config order.
#[derive(Debug)]
pub struct Certs {
    keys: Vec<Arc<CertifiedKey>>,
}

/// Reads every pair; errors name the key path and the file (one line each).
pub fn load(pairs: &[CertPair]) -> Result<Certs, Vec<String>> {
    let provider = provider();
    let mut keys = Vec::with_capacity(pairs.len());
    let mut errors = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        match load_pair(pair, &provider) {
            Ok(key) => keys.push(Arc::new(key)),
            Err(e) => errors.push(format!("server.tls.certs[{i}]: {e}")),
        }
    }
    if errors.is_empty() && keys.is_empty() {
        errors.push("server.tls.certs: no certificate".to_string());
    }
    if errors.is_empty() {
        Ok(Certs { keys })
    } else {
        Err(errors)
    }
}

fn load_pair(pair: &CertPair, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| format!("{}: cannot read certificates: {e}", pair.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", pair.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE in the file",
            pair.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| {
        format!(
            "{}: cannot read a private key (PKCS#8, RSA or EC PEM): {e}",
            pair.key.display()
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{} and {}: key does not fit the certificate or is unsupported: {e}",
            pair.cert.display(),
            pair.key.display()
        )
    })
}

/// The live certificates, swapped whole on a reload; resolves SNI for rustls.
#[derive(Debug)]
pub struct CertStore {
    certs: ArcSwap<Certs>,
    pairs: ArcSwap<Vec<CertPair>>,
}

impl CertStore {
    pub fn new(pairs: Vec<CertPair>, certs: Certs) -> Arc<Self> {
        Arc::new(CertStore {
            certs: ArcSwap::from_pointee(certs),
            pairs: ArcSwap::from_pointee(pairs),
        })
    }

    /// Replaces the pairs and their certificates (after a config reload that loaded them).
    pub fn replace(&self, pairs: Vec<CertPair>, certs: Certs) {
        self.pairs.store(Arc::new(pairs));
        self.certs.store(Arc::new(certs));
    }

    pub fn pairs(&self) -> Arc<Vec<CertPair>> {
        self.pairs.load_full()
    }

    /// The rustls server config: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Session tickets let returning clients resume without a full handshake (as NGINX
        // does by default); the ticket keys live in memory and rotate.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Arc::new(config))
    }

    /// Reloads from the files; on failure the current certificates stay.
    pub fn reload(&self) -> Result<(), Vec<String>> {
        let pairs = self.pairs();
        let certs = load(&pairs)?;
        self.certs.store(Arc::new(certs));
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let by_name = hello.server_name().and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            certs.keys.iter().find(|key| {
                key.end_entity_cert().ok().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
        });
        by_name.or_else(|| certs.keys.first()).cloned()
    }
}

/// What identifies a version of a file: its modification time and size (following
/// symlinks, so Kubernetes secret swaps are seen).
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn stamps(pairs: &[CertPair]) -> Vec<Option<(SystemTime, u64)>> {
    pairs
        .iter()
        .flat_map(|p| [stamp(&p.cert), stamp(&p.key)])
        .collect()
}

/// Polls the certificate files and reloads them when they change, until `token` is
/// cancelled. Polling (not inotify) sees renames, symlink swaps and in-place writes alike.
pub fn watch(store: Arc<CertStore>, token: CancellationToken) {
    tokio::spawn(async move {
        let mut seen = stamps(&store.pairs());
        let mut failed_at: Option<Vec<Option<(SystemTime, u64)>>> = None;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let now = stamps(&store.pairs());
            if now == seen || failed_at.as_ref() == Some(&now) {
                continue;
            }
            match store.reload() {
                Ok(()) => {
                    info!("TLS certificates reloaded");
                    seen = now;
                    failed_at = None;
                }
                Err(errors) => {
                    // Often a half-written renewal: try again when the files change again.
                    for e in errors {
                        warn!(error = %e, "TLS certificate reload failed; the previous certificates stay");
                    }
                    failed_at = Some(now);
                }
            }
        }
    });
}

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
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::CertPair;

/// How often certificate files are checked for changes (a renewal is live within this).
const POLL: Duration = Duration::from_millis(500);

/// The crypto provider: aws-lc-rs (full handshakes measured faster than with ring here).
/// Its default suites, reordered so that SHA-256 suites come first: x86 CPUs with the SHA
/// extensions hash SHA-256 in hardware but SHA-384 in software, and the TLS 1.3 key
/// schedule is a few dozen HMACs; with AES-256-GCM-SHA384 (OpenSSL clients list it first)
/// SHA-512 compression was the largest item of a handshake's profile (22%).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // A stable sort: the SHA-384 suites move last, the rest keep their order.
    provider.cipher_suites.sort_by_key(|suite| {
        matches!(
            suite.suite(),
            C::TLS13_AES_256_GCM_SHA384
                | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    Arc::new(provider)
}

/// Loaded certificates, in config order, each with the DNS names it is for (worked out once
/// at load, so choosing a certificate for a handshake parses nothing).
#[derive(Debug)]
pub struct Certs {
    keys: Vec<(Arc<CertifiedKey>, Vec<String>)>,
}

/// The DNS names of a certificate's subject alternative names, lowercase (`*.` wildcards kept).
fn dns_names(key: &CertifiedKey) -> Vec<String> {
    let Ok(der) = key.end_entity_cert() else {
        return Vec::new();
    };
    match webpki::EndEntityCert::try_from(der) {
        Ok(cert) => cert
            .valid_dns_names()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Does the certificate name `pattern` (exact, or `*.` covering exactly one label) cover
/// `sni` (lowercase)? The client verifies the certificate; this only picks which to show.
fn covers(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => sni
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == sni,
    }
}

/// Reads every pair; errors name the key path and the file (one line each).
pub fn load(pairs: &[CertPair]) -> Result<Certs, Vec<String>> {
    let provider = provider();
    let mut keys = Vec::with_capacity(pairs.len());
    let mut errors = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        match load_pair(pair, &provider) {
            Ok(key) => {
                let names = dns_names(&key);
                keys.push((Arc::new(key), names));
            }
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
        // Our order (SHA-256 suites first, see `provider`) over the client's: every suite
        // offered is a strong AEAD, and the SHA-256 ones cost less per handshake.
        config.ignore_client_order = true;
        // Session tickets let returning clients resume without a full handshake (as NGINX
        // does by default); the ticket keys live in memory and rotate.
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
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
        let by_name = hello.server_name().and_then(|sni| {
            let sni = sni.trim_end_matches('.');
            // rustls hands SNI over lowercase already; a mixed-case one is rare.
            let lower;
            let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = sni.to_ascii_lowercase();
                lower.as_str()
            } else {
                sni
            };
            certs
                .keys
                .iter()
                .find(|(_, names)| names.iter().any(|n| covers(n, sni)))
        });
        by_name
            .or_else(|| certs.keys.first())
            .map(|(key, _)| key.clone())
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

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn names_cover_exact_and_one_label_wildcards() {
        assert!(covers("api.example.com", "api.example.com"));
        assert!(!covers("api.example.com", "www.example.com"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", ".example.com"));
    }
}

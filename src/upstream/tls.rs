//! How a pool's endpoints are reached: the wire protocol and client TLS, built once per pool.
//!
//! The rustls `ClientConfig` (roots from the pool's `ca` bundle or the webpki roots, ALPN) is
//! made when the routing table is built, so a bad CA fails the build (and so the reload) and
//! a connect only clones an `Arc`. The bundle itself was read with the config: building opens
//! no file.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use http::uri::Scheme;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{CaBundle, Protocol};

/// What switchyard speaks on a connection to the pool's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

/// A pool's upstream protocol: HTTP/1.1 or HTTP/2, over TCP or TLS.
#[derive(Debug)]
pub struct UpstreamProtocol {
    pub wire: Wire,
    pub tls: Option<UpstreamTls>,
    /// Identifies these settings (wire, TLS, CA contents, SNI): a pooled connection made with
    /// other settings (before a reload changed them) is not reused.
    pub fingerprint: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ca {}: not a valid PEM certificate bundle: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("ca {}: holds no certificate", path.display())]
    EmptyCa { path: PathBuf },
    #[error("sni {0:?} is not a valid DNS name or IP address")]
    Sni(String),
    #[error("TLS client setup failed: {0}")]
    Setup(rustls::Error),
}

impl UpstreamProtocol {
    /// Plain HTTP/1.1 over TCP, the default.
    pub fn http1() -> Self {
        UpstreamProtocol {
            wire: Wire::Http1,
            tls: None,
            fingerprint: 0,
        }
    }

    /// From a pool's `protocol`, `tls`, `ca` and `sni` (`protocol = "h2"` implies `tls`).
    pub fn build(
        protocol: Protocol,
        tls: bool,
        ca: Option<&CaBundle>,
        sni: Option<&str>,
    ) -> Result<Self, TlsError> {
        let wire = match protocol {
            Protocol::Http1 => Wire::Http1,
            Protocol::H2c | Protocol::H2 => Wire::Http2,
        };
        if !tls && protocol != Protocol::H2 {
            let fingerprint = match wire {
                Wire::Http1 => 0,
                Wire::Http2 => 1,
            };
            return Ok(UpstreamProtocol {
                wire,
                tls: None,
                fingerprint,
            });
        }
        let alpn: &[u8] = match wire {
            Wire::Http1 => b"http/1.1",
            Wire::Http2 => b"h2",
        };
        let mut hasher = std::hash::DefaultHasher::new();
        (wire == Wire::Http2, alpn, sni).hash(&mut hasher);
        let roots = match ca {
            Some(ca) => {
                ca.pem.hash(&mut hasher);
                Arc::new(roots_from_pem(&ca.path, &ca.pem)?)
            }
            None => webpki_roots(),
        };
        let sni = sni
            .map(|s| ServerName::try_from(s.to_owned()).map_err(|_| TlsError::Sni(s.to_owned())))
            .transpose()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(UpstreamProtocol {
            wire,
            tls: Some(UpstreamTls {
                connector: TlsConnector::from(Arc::new(config)),
                sni,
            }),
            // Never 0 or 1, the plain protocols' fingerprints.
            fingerprint: hasher.finish() | 2,
        })
    }

    /// `http` or `https`, for the absolute URI of an HTTP/2 request.
    pub fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

/// A pool's client TLS: the connector (its `ClientConfig`) and the `sni` override.
pub struct UpstreamTls {
    connector: TlsConnector,
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The TLS handshake on a connected socket; the server certificate is verified for the
    /// `sni` name, or else for the host part of `address` (an IP address as an IP name).
    pub async fn connect(&self, address: &str, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let name = match &self.sni {
            Some(name) => name.clone(),
            None => server_name(address)?,
        };
        self.connector.connect(name, tcp).await
    }
}

/// The server name of `host:port` (`[v6]:port` too).
fn server_name(address: &str) -> io::Result<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name"),
        )
    })
}

fn roots_from_pem(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let bad = |reason: String| TlsError::BadCa {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::EmptyCa {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// The webpki (Mozilla) roots, made into a store once per process.
fn webpki_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            Arc::new(RootCertStore::from_iter(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
            ))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert!(matches!(
            server_name("app.internal:443"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1:8443"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:8443"),
            Ok(ServerName::IpAddress(_))
        ));
    }

    #[test]
    fn a_bad_ca_names_the_file() {
        let ca = CaBundle {
            path: PathBuf::from("/etc/switchyard/ca.pem"),
            pem: Arc::from(&b"not a certificate\n"[..]),
        };
        let err = UpstreamProtocol::build(Protocol::H2, true, Some(&ca), None).expect_err("bad CA");
        assert!(err.to_string().contains("/etc/switchyard/ca.pem"), "{err}");
    }

    #[test]
    fn plain_pools_need_no_tls() {
        let p = UpstreamProtocol::build(Protocol::H2c, false, None, None).expect("h2c");
        assert_eq!(p.wire, Wire::Http2);
        assert!(p.tls.is_none());
        assert_eq!(p.scheme(), Scheme::HTTP);
        let p = UpstreamProtocol::build(Protocol::Http1, true, None, Some("app.internal"))
            .expect("http1 + tls");
        assert_eq!(p.scheme(), Scheme::HTTPS);
        assert_ne!(p.fingerprint, UpstreamProtocol::http1().fingerprint);
    }
}

//! Mutual TLS for peer connections, with rustls.
//!
//! Every node has a certificate and key signed by the cluster's CA, and
//! trusts only that CA: a connecting node checks the accepting node's
//! certificate against the CA and the host it dialled (so certificates
//! carry the node's peer address, an IP or DNS name, as a subject
//! alternative name), and the accepting node requires a client certificate
//! signed by the CA. The ringleader handshake then runs inside the
//! encrypted stream, so cluster state and proofs are not readable on the
//! wire. `docs/security.md` shows how to make a CA and node certificates
//! with `openssl`.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

/// The largest PEM file read (certificates, keys, CA bundles).
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// What goes wrong loading TLS material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or is too large.
    #[error("{setting}: {path}: {reason}")]
    File {
        /// The setting naming the file (`tls-cert`, `tls-key`, `tls-ca`).
        setting: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The PEM held nothing usable, or rustls refused it.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The setting at fault.
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

impl TlsError {
    /// The setting at fault.
    pub fn setting(&self) -> &'static str {
        match self {
            TlsError::File { setting, .. } | TlsError::Invalid { setting, .. } => setting,
        }
    }
}

/// Both sides of mutual TLS for one node.
#[derive(Clone)]
pub struct TlsConfig {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig(..)")
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = |reason: String| TlsError::File {
        setting,
        path: path.display().to_string(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| file(e.to_string()))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(file(format!(
            "{len} bytes is over the {MAX_PEM_BYTES}-byte limit"
        )));
    }
    std::fs::read(path).map_err(|e| file(e.to_string()))
}

fn invalid(setting: &'static str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        setting,
        reason: reason.to_string(),
    }
}

fn certs(setting: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(setting, e))?;
    if certs.is_empty() {
        return Err(invalid(setting, "no PEM certificate found"));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Loads a node's certificate chain, its private key and the cluster
    /// CA from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        Self::from_pem(
            &read("tls-cert", cert)?,
            &read("tls-key", key)?,
            &read("tls-ca", ca)?,
        )
    }

    /// Builds both sides from PEM bytes: the node's certificate chain, its
    /// private key (PKCS#8, PKCS#1 or SEC1) and the cluster CA.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TlsError> {
        let chain = certs("tls-cert", cert)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("tls-key", e))?;
        let mut roots = RootCertStore::empty();
        for ca_cert in certs("tls-ca", ca)? {
            roots.add(ca_cert).map_err(|e| invalid("tls-ca", e))?;
        }
        let roots = Arc::new(roots);
        // rustls 0.23.48 deprecated the ring provider for lacking
        // post-quantum key exchange; aws-lc-rs has it but needs cmake and a
        // much longer build. Peer links are inside one deployment.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| invalid("tls-ca", e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls-cert", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| invalid("tls-cert", e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls-cert", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid("tls-cert", e))?;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// The connecting side.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }

    /// The accepting side.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}

/// The name a dialled address's certificate must carry: its host, an IP
/// address or a DNS name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| invalid("tls", format!("{addr}: not a host name: {e}")))
}

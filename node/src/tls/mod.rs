//! Transport security: TLS on both public ports, mutual TLS between nodes.
//!
//! A node loads three PEM files (its certificate chain, its private key, the cluster CA) into
//! [`Material`], held by [`Tls`], which [`Tls::reload`] replaces as a whole on SIGHUP: every
//! connection accepted or dialled after a reload uses the new material, connections already
//! open keep theirs, and a reload whose files are bad changes nothing.
//!
//! - Accepting ([`accept`]): both ports speak TLS 1.3/1.2 with the node's certificate. A client
//!   certificate is optional, but one that is presented must chain to the cluster CA, or the
//!   handshake fails. Every connection carries a [`PeerInfo`] (tonic's `Connected`), which
//!   request handlers read from the request extensions: the Raft service admits only a peer
//!   whose verified certificate names a member node of this cluster ([`identity`]).
//! - Dialling ([`Dialer`]): a node presents its certificate to its peers and accepts a peer only
//!   if the peer's chain ends at the cluster CA and names the node id it dialled (host names
//!   are not checked between nodes: addresses change, the identity does not).
//!
//! `--insecure` replaces all of this with plaintext: then nothing is authenticated.
//!
//! Architecture invariant: the node's own certificate always names this node of this cluster
//! and chains to the CA it loaded with it; material that does not is never installed.

mod accept;
mod dial;
pub mod identity;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

pub use accept::{Conn, HttpListener, PeerInfo, Port, Transport, incoming, incoming_admitted};
pub use dial::Dialer;
pub use identity::{IdentityError, NodeIdentity};

/// Largest certificate, key or CA file read, in bytes.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;
/// How long a client may take to complete the TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once on one port; further connections wait to be accepted.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

/// Metric names of this module.
pub mod names {
    /// Counter: certificate reloads, label `result` = `ok` | `error`.
    pub const TLS_RELOADS_TOTAL: &str = "switchboard_tls_reloads_total";
    /// Gauge: the not-after time of the node's certificate in use, Unix seconds.
    pub const TLS_CERT_NOT_AFTER_SECONDS: &str = "switchboard_tls_cert_not_after_seconds";
    /// Counter: inbound TLS handshakes that failed or timed out, label `port` = `grpc` | `http`.
    pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "switchboard_tls_handshake_failures_total";
}

/// The files of a node's TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The node's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The cluster CA certificate(s) (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The files `switchboard certs init --dir DIR` writes for node `node_id`.
    pub fn in_dir(dir: &Path, node_id: u64) -> Self {
        Self {
            cert: dir.join(cert_file_name(node_id)),
            key: dir.join(key_file_name(node_id)),
            ca: dir.join(CA_FILE),
        }
    }
}

/// Name of the CA certificate in a certificate directory.
pub const CA_FILE: &str = "ca.pem";
/// Name of the CA key in a certificate directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Name of node `node_id`'s certificate in a certificate directory.
pub fn cert_file_name(node_id: u64) -> String {
    format!("node-{node_id}.pem")
}

/// Name of node `node_id`'s key in a certificate directory.
pub fn key_file_name(node_id: u64) -> String {
    format!("node-{node_id}-key.pem")
}

/// Why TLS material could not be loaded; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {len} bytes, over the bound of {max} bytes")]
    TooLarge { path: PathBuf, len: u64, max: u64 },
    #[error("{path} holds no PEM {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{path} is not valid PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: the CA certificate is not usable")]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{path}: the certificate does not chain to the CA in {ca} (or is expired)")]
    Chain {
        path: PathBuf,
        ca: PathBuf,
        #[source]
        source: webpki::Error,
    },
    #[error("{path}: the certificate's node identity is unreadable")]
    Identity {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
    #[error("{path} names no node identity; this node is {expected}")]
    NoIdentity {
        path: PathBuf,
        expected: NodeIdentity,
    },
    #[error("{path} was issued to {found}, but this node is {expected}")]
    WrongIdentity {
        path: PathBuf,
        found: NodeIdentity,
        expected: NodeIdentity,
    },
    #[error("{cert} and {key} do not form a usable key pair")]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The crypto provider of every TLS connection: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file, bounded by [`PEM_FILE_BYTES_MAX`].
pub fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
            len,
            max: PEM_FILE_BYTES_MAX,
        });
    }
    std::fs::read(path).map_err(read_error)
}

/// Every certificate of a PEM file, in order; at least one.
pub fn certs_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The trust anchors of a CA PEM file.
pub fn roots_from_pem(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(path, pem)? {
        roots.add(cert).map_err(|source| TlsError::Ca {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// One generation of a node's TLS material, with the server configurations built from it.
pub struct Material {
    identity: NodeIdentity,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// Serial number of the node's certificate, hex.
    serial: String,
    /// Not-after time of the node's certificate, Unix seconds.
    not_after_unix: i64,
    /// The same, as the certificate writes it, for logs.
    not_after: String,
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Loads and checks the files: the certificate chains to the CA, names `expected` and
    /// matches the key.
    pub fn load(files: &TlsFiles, expected: &NodeIdentity) -> Result<Self, TlsError> {
        let provider = provider();
        let certs = certs_from_pem(&files.cert, &read_pem_file(&files.cert)?)?;
        let key_pem = read_pem_file(&files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::Missing {
                path: files.key.clone(),
                what: "private key",
            },
            source => TlsError::Pem {
                path: files.key.clone(),
                source,
            },
        })?;
        let roots = Arc::new(roots_from_pem(&files.ca, &read_pem_file(&files.ca)?)?);

        let leaf = &certs[0];
        let end_entity =
            webpki::EndEntityCert::try_from(leaf).map_err(|source| TlsError::Chain {
                path: files.cert.clone(),
                ca: files.ca.clone(),
                source,
            })?;
        end_entity
            .verify_for_usage(
                provider.signature_verification_algorithms.all,
                &roots.roots,
                &certs[1..],
                UnixTime::now(),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|source| TlsError::Chain {
                path: files.cert.clone(),
                ca: files.ca.clone(),
                source,
            })?;
        let identity = NodeIdentity::from_cert(leaf)
            .map_err(|source| TlsError::Identity {
                path: files.cert.clone(),
                source,
            })?
            .ok_or_else(|| TlsError::NoIdentity {
                path: files.cert.clone(),
                expected: expected.clone(),
            })?;
        if &identity != expected {
            return Err(TlsError::WrongIdentity {
                path: files.cert.clone(),
                found: identity,
                expected: expected.clone(),
            });
        }
        let (serial, not_after_unix, not_after) =
            serial_and_not_after(leaf).map_err(|source| TlsError::Identity {
                path: files.cert.clone(),
                source,
            })?;

        let key_pair = |source| TlsError::KeyPair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        };
        let server = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, TlsError> {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Ca {
                        path: files.ca.clone(),
                        source: rustls::Error::General(e.to_string()),
                    })?;
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(key_pair)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs.clone(), key.clone_key())
                .map_err(key_pair)?;
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        let grpc = server(&[b"h2"])?;
        let http = server(&[b"http/1.1"])?;
        Ok(Self {
            identity,
            certs,
            key,
            roots,
            provider,
            serial,
            not_after_unix,
            not_after,
            grpc,
            http,
        })
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Serial number of the node's certificate, lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Not-after time of the node's certificate, Unix seconds.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix
    }
}

/// Serial number (hex) and not-after time (Unix seconds, and as text) of a DER certificate.
pub fn serial_and_not_after(der: &[u8]) -> Result<(String, i64, String), IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Parse)?;
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let not_after = cert.validity().not_after;
    Ok((serial, not_after.timestamp(), not_after.to_string()))
}

/// A node's TLS material, replaceable while the node runs.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    expected: NodeIdentity,
    current: RwLock<Arc<Material>>,
}

impl Tls {
    /// Loads the files; the node refuses to start when this fails.
    pub fn load(files: TlsFiles, expected: NodeIdentity) -> Result<Arc<Self>, TlsError> {
        let material = Material::load(&files, &expected)?;
        record(&material);
        Ok(Arc::new(Self {
            files,
            expected,
            current: RwLock::new(Arc::new(material)),
        }))
    }

    /// The material new connections use.
    pub fn current(&self) -> Arc<Material> {
        // Only ever replaced whole: a poisoned lock still holds a complete value.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and, when they are good, puts them in use for new connections.
    /// When they are not, the material in use stays and the error says which file is bad.
    pub fn reload(&self) -> Result<Arc<Material>, TlsError> {
        match Material::load(&self.files, &self.expected) {
            Ok(material) => {
                let material = Arc::new(material);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = material.clone();
                record(&material);
                metrics::counter!(names::TLS_RELOADS_TOTAL, "result" => "ok").increment(1);
                Ok(material)
            }
            Err(error) => {
                metrics::counter!(names::TLS_RELOADS_TOTAL, "result" => "error").increment(1);
                Err(error)
            }
        }
    }
}

fn record(material: &Material) {
    // Unix seconds as a gauge: exact for any date before the year 285 million.
    metrics::gauge!(names::TLS_CERT_NOT_AFTER_SECONDS).set(material.not_after_unix as f64);
}

/// Reloads `tls` on every SIGHUP until `shutdown`.
pub async fn reload_on_sighup(
    tls: Arc<Tls>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            received = hangup.recv() => if received.is_none() {
                return Ok(());
            },
        }
        match tls.reload() {
            Ok(material) => tracing::info!(
                cert = %tls.files.cert.display(),
                serial = %material.serial,
                not_after = %material.not_after,
                "reloaded the tls certificate, key and ca on SIGHUP"
            ),
            Err(error) => tracing::error!(
                error = %crate::transport::chain(&error),
                "failed to reload tls material on SIGHUP; still using the previous certificate"
            ),
        }
    }
}

/// How a node secures its ports and its connections to peers.
#[derive(Debug, Clone)]
pub enum Security {
    /// `--insecure`: plaintext, nothing authenticated.
    Insecure,
    /// TLS with these files (mutual between nodes).
    Tls(TlsFiles),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::certs::{CommonArgs, InitArgs, NodeArgs};

    /// A CA and certificates for nodes 1..=3 of cluster "c1" in a new directory.
    pub(crate) fn certs_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::certs::init(&InitArgs {
            common: common(dir.path(), false),
            nodes: vec![1, 2, 3],
            if_missing: false,
        })
        .expect("certs");
        dir
    }

    fn common(dir: &Path, force: bool) -> CommonArgs {
        CommonArgs {
            dir: dir.to_path_buf(),
            cluster_id: "c1".to_owned(),
            hosts: Vec::new(),
            days: 1,
            force,
            owner: None,
        }
    }

    #[test]
    fn a_reload_puts_rotated_files_in_use_and_a_bad_file_keeps_the_old_material() {
        let dir = certs_dir();
        let tls =
            Tls::load(TlsFiles::in_dir(dir.path(), 1), NodeIdentity::new("c1", 1)).expect("load");
        let first = tls.current().serial().to_owned();

        crate::certs::node(&NodeArgs {
            common: common(dir.path(), true),
            node_id: 1,
        })
        .expect("rotate");
        let rotated = tls.reload().expect("reload").serial().to_owned();
        assert_ne!(rotated, first);
        assert_eq!(tls.current().serial(), rotated);

        let key = dir.path().join(key_file_name(1));
        std::fs::write(&key, b"not a key").expect("break the key");
        let error = tls.reload().expect_err("a broken key");
        assert!(error.to_string().contains("node-1-key.pem"), "{error}");
        assert_eq!(tls.current().serial(), rotated, "the old material stays");

        // Another node's certificate with this node's key is refused too.
        std::fs::copy(dir.path().join(key_file_name(2)), &key).expect("copy");
        std::fs::copy(
            dir.path().join(cert_file_name(2)),
            dir.path().join(cert_file_name(1)),
        )
        .expect("copy");
        let error = tls.reload().expect_err("node 2's certificate");
        assert!(matches!(error, TlsError::WrongIdentity { .. }), "{error}");
        assert_eq!(tls.current().serial(), rotated);
    }

    #[test]
    fn a_certificate_of_another_ca_does_not_load() {
        let ours = certs_dir();
        let theirs = certs_dir();
        let files = TlsFiles {
            ca: ours.path().join(CA_FILE),
            ..TlsFiles::in_dir(theirs.path(), 1)
        };
        let error = Material::load(&files, &NodeIdentity::new("c1", 1)).expect_err("other CA");
        assert!(matches!(error, TlsError::Chain { .. }), "{error}");
    }
}

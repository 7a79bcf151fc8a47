//! Dialling a peer node: mutual TLS, the peer's certificate checked against the cluster CA and
//! the node id that was dialled.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::{Material, NodeIdentity, Tls};

/// The name sent in SNI when dialling a peer: peers are checked by the identity in their
/// certificate, not by a host name.
const PEER_SERVER_NAME: &str = "switchboard-node";

/// How this node opens connections to its peers (Raft, read index).
#[derive(Debug, Clone)]
pub enum Dialer {
    /// `--insecure`: plaintext.
    Plain,
    /// Mutual TLS with the node's current material.
    Tls(Arc<Tls>),
}

impl Dialer {
    /// A lazily connecting channel to `endpoint` (an `http://` URI: TLS is this dialer's, not
    /// tonic's). With TLS, the peer must present a certificate of this node's cluster naming
    /// node `expected` (any node of the cluster when `None`).
    pub fn channel(&self, endpoint: Endpoint, expected: Option<u64>) -> Channel {
        match self {
            Dialer::Plain => endpoint.connect_lazy(),
            Dialer::Tls(tls) => endpoint.connect_with_connector_lazy(PeerConnector {
                tls: tls.clone(),
                expected,
            }),
        }
    }
}

/// tonic's connector for a TLS connection to one peer.
#[derive(Debug, Clone)]
struct PeerConnector {
    tls: Arc<Tls>,
    expected: Option<u64>,
}

impl tower::Service<Uri> for PeerConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let material = self.tls.current();
        let expected = self.expected;
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the uri"))?;
            let port = authority.port_u16().unwrap_or(80);
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let config = client_config(&material, expected).map_err(io::Error::other)?;
            let name = ServerName::try_from(PEER_SERVER_NAME)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The client configuration of one connection to a peer: this node's certificate, and a
/// verifier that wants node `expected` of this node's cluster.
fn client_config(
    material: &Material,
    expected: Option<u64>,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = PeerVerifier {
        roots: material.roots.clone(),
        provider: material.provider.clone(),
        cluster_id: material.identity.cluster_id.clone(),
        expected,
    };
    let mut config = ClientConfig::builder_with_provider(material.provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(material.certs.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts a peer whose chain ends at the cluster CA and whose certificate names the expected
/// node of this cluster. Host names are not checked.
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) cluster_id: String,
    pub(crate) expected: Option<u64>,
}

/// Why a peer's certificate was refused after its chain was verified.
#[derive(Debug, thiserror::Error)]
enum PeerRefused {
    #[error("the peer's certificate names no node identity")]
    NoIdentity,
    #[error("the peer's certificate has an unreadable node identity")]
    Identity(#[source] super::IdentityError),
    #[error("the peer's certificate belongs to another cluster")]
    OtherCluster,
    #[error("dialled node {expected} but the peer's certificate names node {found}")]
    OtherNode { expected: u64, found: u64 },
}

fn refused(error: PeerRefused) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(error))))
}

impl PeerVerifier {
    /// Checks the identity `leaf` names against this verifier's cluster and expected node.
    pub(crate) fn check_identity(&self, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let identity: NodeIdentity = NodeIdentity::from_cert(leaf)
            .map_err(|e| refused(PeerRefused::Identity(e)))?
            .ok_or_else(|| refused(PeerRefused::NoIdentity))?;
        if identity.cluster_id != self.cluster_id {
            return Err(refused(PeerRefused::OtherCluster));
        }
        if let Some(expected) = self.expected
            && identity.node_id != expected
        {
            return Err(refused(PeerRefused::OtherNode {
                expected,
                found: identity.node_id,
            }));
        }
        Ok(())
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        self.check_identity(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tls::tests::certs_dir;
    use crate::tls::{Material, NodeIdentity, TlsFiles};

    /// Node `dialler` dials node 1 expecting node `expected`: whether the handshake succeeds.
    async fn handshake(dir: &std::path::Path, dialler: u64, expected: Option<u64>) -> bool {
        let server =
            Material::load(&TlsFiles::in_dir(dir, 1), &NodeIdentity::new("c1", 1)).expect("node 1");
        let client = Material::load(
            &TlsFiles::in_dir(dir, dialler),
            &NodeIdentity::new("c1", dialler),
        )
        .expect("dialler");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(server.grpc.clone());
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            match acceptor.accept(tcp).await {
                Ok(mut stream) => {
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await.is_ok()
                }
                Err(_) => false,
            }
        });
        let config = client_config(&client, expected).expect("client config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(PEER_SERVER_NAME).expect("name");
        let dialled = match tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
        {
            Ok(mut stream) => stream.write_all(b"x").await.is_ok() && stream.flush().await.is_ok(),
            Err(_) => false,
        };
        let accepted = accept.await.expect("accept task");
        dialled && accepted
    }

    #[tokio::test]
    async fn a_peer_is_accepted_only_as_the_node_that_was_dialled() {
        let dir = certs_dir();
        assert!(
            handshake(dir.path(), 2, Some(1)).await,
            "node 2 dials node 1"
        );
        assert!(
            handshake(dir.path(), 2, None).await,
            "any node of the cluster"
        );
        assert!(
            !handshake(dir.path(), 2, Some(3)).await,
            "node 1 answered where node 3 was dialled"
        );
    }

    #[tokio::test]
    async fn a_peer_of_another_ca_is_refused() {
        let ours = certs_dir();
        let theirs = certs_dir();
        // Node 1 of the other CA, dialled by node 2 of ours.
        let server = Material::load(
            &TlsFiles {
                cert: theirs.path().join(crate::tls::cert_file_name(1)),
                key: theirs.path().join(crate::tls::key_file_name(1)),
                ca: theirs.path().join(crate::tls::CA_FILE),
            },
            &NodeIdentity::new("c1", 1),
        )
        .expect("their node 1");
        let client = Material::load(
            &TlsFiles::in_dir(ours.path(), 2),
            &NodeIdentity::new("c1", 2),
        )
        .expect("our node 2");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(server.grpc.clone());
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            acceptor.accept(tcp).await.is_ok()
        });
        let config = client_config(&client, Some(1)).expect("client config");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(PEER_SERVER_NAME).expect("name");
        let dialled = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await;
        assert!(dialled.is_err(), "a node of another CA was accepted");
        let _ = accept.await;
    }
}

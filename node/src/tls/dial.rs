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

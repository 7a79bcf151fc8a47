//! A node's identity in its certificate: one URI subject alternative name
//! `switchboard://CLUSTER_ID/node/NODE_ID`, the cluster id percent-encoded (every byte outside
//! `A-Z a-z 0-9 - . _ ~` becomes `%XX`), so that any cluster id of at most
//! [`crate::transport::CLUSTER_ID_BYTES_MAX`] bytes fits an IA5 string.
//!
//! A certificate with no such name is a client's, never a node's; one with two is refused.

use std::fmt;

use x509_parser::extensions::GeneralName;

/// Scheme of the identity URI.
pub const IDENTITY_SCHEME: &str = "switchboard";

/// The node a certificate was issued to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    pub cluster_id: String,
    pub node_id: u64,
}

/// Why a certificate's identity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse as X.509")]
    Parse,
    #[error("certificate has an invalid subject alternative name extension")]
    Extension,
    #[error("certificate names more than one node identity")]
    Ambiguous,
    #[error("certificate has a malformed node identity {uri:?}")]
    Malformed { uri: String },
}

impl NodeIdentity {
    pub fn new(cluster_id: impl Into<String>, node_id: u64) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            node_id,
        }
    }

    /// The URI subject alternative name of this identity.
    pub fn uri(&self) -> String {
        let mut cluster = String::with_capacity(self.cluster_id.len());
        for byte in self.cluster_id.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                cluster.push(char::from(byte));
            } else {
                cluster.push_str(&format!("%{byte:02X}"));
            }
        }
        format!("{IDENTITY_SCHEME}://{cluster}/node/{}", self.node_id)
    }

    /// Parses a URI of [`NodeIdentity::uri`]'s form; `None` for a URI of another scheme.
    pub fn parse_uri(uri: &str) -> Result<Option<Self>, IdentityError> {
        let Some(rest) = uri
            .strip_prefix(IDENTITY_SCHEME)
            .and_then(|r| r.strip_prefix("://"))
        else {
            return Ok(None);
        };
        let malformed = || IdentityError::Malformed {
            uri: uri.chars().take(256).collect(),
        };
        let (cluster, node) = rest.split_once("/node/").ok_or_else(malformed)?;
        let node_id: u64 = node.parse().map_err(|_| malformed())?;
        if node_id == 0 || cluster.is_empty() {
            return Err(malformed());
        }
        let mut bytes = Vec::with_capacity(cluster.len());
        let mut input = cluster.bytes();
        while let Some(byte) = input.next() {
            if byte == b'%' {
                let hex = [input.next(), input.next()];
                let [Some(high), Some(low)] = hex else {
                    return Err(malformed());
                };
                let text = [high, low];
                let text = std::str::from_utf8(&text).map_err(|_| malformed())?;
                bytes.push(u8::from_str_radix(text, 16).map_err(|_| malformed())?);
            } else {
                bytes.push(byte);
            }
        }
        let cluster_id = String::from_utf8(bytes).map_err(|_| malformed())?;
        Ok(Some(Self::new(cluster_id, node_id)))
    }

    /// The node identity a DER certificate names, if any.
    pub fn from_cert(der: &[u8]) -> Result<Option<Self>, IdentityError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Parse)?;
        let Some(names) = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::Extension)?
        else {
            return Ok(None);
        };
        let mut found = None;
        for name in &names.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(identity) = Self::parse_uri(uri)?
            {
                if found.is_some() {
                    return Err(IdentityError::Ambiguous);
                }
                found = Some(identity);
            }
        }
        Ok(found)
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} of cluster {:?}", self.node_id, self.cluster_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_its_uri_whatever_the_cluster_id() {
        for cluster in ["harness", "switchboard-dev", "a b/c%d", "名前", "x.y_z~"] {
            let identity = NodeIdentity::new(cluster, 42);
            let uri = identity.uri();
            assert!(uri.is_ascii(), "{uri}");
            assert_eq!(NodeIdentity::parse_uri(&uri), Ok(Some(identity)));
        }
        assert_eq!(
            NodeIdentity::new("harness", 3).uri(),
            "switchboard://harness/node/3"
        );
    }

    #[test]
    fn other_schemes_are_not_identities_and_bad_ones_are_refused() {
        assert_eq!(
            NodeIdentity::parse_uri("https://example.com/node/1"),
            Ok(None)
        );
        for bad in [
            "switchboard://c/node/",
            "switchboard://c/node/0",
            "switchboard://c/node/x",
            "switchboard:///node/1",
            "switchboard://c%2/node/1",
            "switchboard://c%zz/node/1",
            "switchboard://c",
        ] {
            assert!(
                matches!(
                    NodeIdentity::parse_uri(bad),
                    Err(IdentityError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }
}

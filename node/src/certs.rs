//! `switchboard certs init` and `switchboard certs node`: a development CA and per-node
//! certificates (ECDSA P-256, ring), laid out as `--tls-dir` expects:
//!
//! ```text
//! DIR/ca.pem            the CA certificate (give it to clients: --ca / SWITCHBOARD_CA)
//! DIR/ca-key.pem        the CA key (0600): keep it off the nodes in production
//! DIR/node-N.pem        node N's certificate: server and client auth
//! DIR/node-N-key.pem    node N's key (0600)
//! ```
//!
//! A node certificate names `localhost`, `127.0.0.1`, `::1`, every `--hosts` entry and the
//! node's identity (`switchboard://CLUSTER_ID/node/N`, see [`crate::tls::identity`]). Existing
//! files are never overwritten without `--force`.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::tls::{self, NodeIdentity};

/// Longest validity `--days` accepts.
pub const CERT_DAYS_MAX: u32 = 3650;
/// Most nodes one `certs init` issues for.
pub const CERT_NODES_MAX: usize = 64;
/// Most `--hosts` entries.
pub const CERT_HOSTS_MAX: usize = 64;
/// Validity starts this long before now, so that a peer whose clock is a little behind
/// accepts a fresh certificate.
const NOT_BEFORE_SLACK: Duration = Duration::hours(1);

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a development CA and one certificate per node in DIR.
    Init(InitArgs),
    /// Issue one more node certificate from the CA in DIR (for a node being added, or to
    /// rotate a node's certificate with --force).
    Node(NodeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Directory of the certificates (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Cluster id the node certificates are bound to (must match `serve --cluster-id`).
    #[arg(long, default_value = "switchboard")]
    pub cluster_id: String,
    /// Further host names or IP addresses the node certificates are valid for.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Give the written files to this owner, `UID:GID` (as root: e.g. an init container
    /// writing certificates for nodes that run as another user).
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
}

fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected UID:GID, e.g. 10001:10001"))?;
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("{text:?}: expected UID:GID, e.g. 10001:10001"))
    };
    Ok((number(uid)?, number(gid)?))
}

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Node ids to issue certificates for.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub nodes: Vec<u64>,
    /// Do nothing when DIR already holds a CA (for an init step that runs on every start).
    #[arg(long, conflicts_with = "force")]
    pub if_missing: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The node to issue a certificate for.
    #[arg(long)]
    pub node_id: u64,
}

/// What `certs` can fail on.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("--{option} {value:?} is invalid: {reason}")]
    Invalid {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error("{path} exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the CA")]
    ReadCa(#[source] tls::TlsError),
    #[error("failed to issue {what}")]
    Issue {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

fn invalid(option: &'static str, value: impl ToString, reason: impl Into<String>) -> CertsError {
    CertsError::Invalid {
        option,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl CommonArgs {
    fn validate(&self) -> Result<(), CertsError> {
        if self.cluster_id.is_empty()
            || self.cluster_id.len() > crate::transport::CLUSTER_ID_BYTES_MAX
        {
            return Err(invalid(
                "cluster-id",
                &self.cluster_id,
                format!(
                    "must be 1 to {} bytes",
                    crate::transport::CLUSTER_ID_BYTES_MAX
                ),
            ));
        }
        if !(1..=CERT_DAYS_MAX).contains(&self.days) {
            return Err(invalid(
                "days",
                self.days,
                format!("must be from 1 to {CERT_DAYS_MAX}"),
            ));
        }
        if self.hosts.len() > CERT_HOSTS_MAX {
            return Err(invalid(
                "hosts",
                self.hosts.join(","),
                format!("lists more than {CERT_HOSTS_MAX} names"),
            ));
        }
        for host in &self.hosts {
            san(host)?;
        }
        Ok(())
    }
}

/// A host name or IP address as a subject alternative name.
fn san(host: &str) -> Result<SanType, CertsError> {
    let host = host.trim();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'));
    if !valid {
        return Err(invalid("hosts", host, "not a host name or IP address"));
    }
    host.try_into()
        .map(SanType::DnsName)
        .map_err(|_| invalid("hosts", host, "not a host name or IP address"))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - NOT_BEFORE_SLACK;
    params.not_after = now + Duration::days(i64::from(days));
}

/// A random positive serial number.
fn serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::now_v7().as_bytes();
    // The low bytes of a v7 uuid are random; a leading zero bit keeps the integer positive.
    bytes.reverse();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn issue_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let what = what.into();
    move |source| CertsError::Issue { what, source }
}

/// Writes `contents` to `path`, with `mode` (and `owner`); refuses to overwrite unless `force`.
fn write_file(
    path: &Path,
    contents: &str,
    mode: u32,
    common: &CommonArgs,
) -> Result<(), CertsError> {
    let force = common.force;
    let write_error = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertsError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            write_error(e)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    if let Some((uid, gid)) = common.owner {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|errno| write_error(errno.into()))?;
    }
    Ok(())
}

fn refuse_existing(paths: &[PathBuf], force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(path) => Err(CertsError::Exists { path: path.clone() }),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Issues node `node_id`'s certificate with `issuer`; returns (certificate, key) PEM.
fn issue_node(
    common: &CommonArgs,
    node_id: u64,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, String), CertsError> {
    let what = format!("the certificate of node {node_id}");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("switchboard node {node_id}"));
    let identity = NodeIdentity::new(common.cluster_id.clone(), node_id);
    let uri = identity
        .uri()
        .try_into()
        .map_err(issue_error(what.clone()))?;
    params.subject_alt_names = vec![
        SanType::URI(uri),
        SanType::DnsName("localhost".try_into().map_err(issue_error(what.clone()))?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ];
    for host in &common.hosts {
        let name = san(host)?;
        if !params.subject_alt_names.contains(&name) {
            params.subject_alt_names.push(name);
        }
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    validity(&mut params, common.days);
    let key = KeyPair::generate().map_err(issue_error(what.clone()))?;
    let cert = params.signed_by(&key, issuer).map_err(issue_error(what))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_node(
    common: &CommonArgs,
    node_id: u64,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(), CertsError> {
    let (cert, key) = issue_node(common, node_id, issuer)?;
    let dir = &common.dir;
    write_file(&dir.join(tls::key_file_name(node_id)), &key, 0o600, common)?;
    write_file(
        &dir.join(tls::cert_file_name(node_id)),
        &cert,
        0o644,
        common,
    )?;
    Ok(())
}

/// `certs init`: a new CA and a certificate per node.
pub fn init(args: &InitArgs) -> Result<(), CertsError> {
    let common = &args.common;
    common.validate()?;
    if args.nodes.is_empty() || args.nodes.len() > CERT_NODES_MAX {
        return Err(invalid(
            "nodes",
            format!("{:?}", args.nodes),
            format!("must list 1 to {CERT_NODES_MAX} node ids"),
        ));
    }
    if args.nodes.contains(&0) {
        return Err(invalid("nodes", "0", "node ids are positive"));
    }
    let dir = &common.dir;
    if args.if_missing && dir.join(tls::CA_FILE).exists() {
        return Ok(());
    }
    let mut paths = vec![dir.join(tls::CA_FILE), dir.join(tls::CA_KEY_FILE)];
    for id in &args.nodes {
        paths.push(dir.join(tls::cert_file_name(*id)));
        paths.push(dir.join(tls::key_file_name(*id)));
    }
    refuse_existing(&paths, common.force)?;
    create_dir(dir)?;

    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("switchboard CA of cluster {}", common.cluster_id),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial());
    validity(&mut params, common.days);
    let ca_key = KeyPair::generate().map_err(issue_error("the CA"))?;
    let ca_cert = params.self_signed(&ca_key).map_err(issue_error("the CA"))?;
    write_file(
        &dir.join(tls::CA_KEY_FILE),
        &ca_key.serialize_pem(),
        0o600,
        common,
    )?;
    write_file(&dir.join(tls::CA_FILE), &ca_cert.pem(), 0o644, common)?;
    let issuer = Issuer::new(params, ca_key);
    for id in &args.nodes {
        write_node(common, *id, &issuer)?;
    }
    Ok(())
}

/// `certs node`: one node certificate from the CA already in the directory.
pub fn node(args: &NodeArgs) -> Result<(), CertsError> {
    let common = &args.common;
    common.validate()?;
    if args.node_id == 0 {
        return Err(invalid("node-id", 0, "node ids are positive"));
    }
    let dir = &common.dir;
    refuse_existing(
        &[
            dir.join(tls::cert_file_name(args.node_id)),
            dir.join(tls::key_file_name(args.node_id)),
        ],
        common.force,
    )?;
    let ca_path = dir.join(tls::CA_FILE);
    let key_path = dir.join(tls::CA_KEY_FILE);
    let ca_pem = tls::read_pem_file(&ca_path).map_err(CertsError::ReadCa)?;
    let key_pem = tls::read_pem_file(&key_path).map_err(CertsError::ReadCa)?;
    let text = |path: &Path, bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| {
            CertsError::ReadCa(tls::TlsError::Missing {
                path: path.to_path_buf(),
                what: "text",
            })
        })
    };
    let key = KeyPair::from_pem(&text(&key_path, key_pem)?).map_err(issue_error(format!(
        "node {}: the CA key in {} does not parse",
        args.node_id,
        key_path.display()
    )))?;
    let issuer =
        Issuer::from_ca_cert_pem(&text(&ca_path, ca_pem)?, key).map_err(issue_error(format!(
            "node {}: the CA certificate in {} does not parse",
            args.node_id,
            ca_path.display()
        )))?;
    write_node(common, args.node_id, &issuer)
}

/// Runs a `certs` subcommand; prints what it wrote.
pub fn run(command: &CertsCommand) -> Result<(), CertsError> {
    match command {
        CertsCommand::Init(args) => {
            init(args)?;
            println!(
                "wrote a CA and certificates for nodes {:?} of cluster {:?} in {}",
                args.nodes,
                args.common.cluster_id,
                args.common.dir.display()
            );
        }
        CertsCommand::Node(args) => {
            node(args)?;
            println!(
                "wrote the certificate of node {} of cluster {:?} in {}",
                args.node_id,
                args.common.cluster_id,
                args.common.dir.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls::{Material, TlsFiles};

    fn common(dir: &Path) -> CommonArgs {
        CommonArgs {
            dir: dir.to_path_buf(),
            cluster_id: "c1".into(),
            hosts: vec!["10.0.0.7".into(), "node7.example".into()],
            days: 2,
            force: false,
            owner: None,
        }
    }

    #[test]
    fn init_writes_a_ca_and_node_certs_that_load_as_each_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = InitArgs {
            common: common(dir.path()),
            nodes: vec![1, 2],
            if_missing: false,
        };
        init(&args).expect("init");
        for id in [1, 2] {
            let material = Material::load(
                &TlsFiles::in_dir(dir.path(), id),
                &NodeIdentity::new("c1", id),
            )
            .expect("a node cert loads as its node");
            assert_eq!(material.identity(), &NodeIdentity::new("c1", id));
            let mode = std::fs::metadata(dir.path().join(tls::key_file_name(id)))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mode = std::fs::metadata(dir.path().join(tls::CA_KEY_FILE))
            .expect("ca key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Node 1's certificate is not node 2's, nor another cluster's node 1.
        let files = TlsFiles::in_dir(dir.path(), 1);
        for wrong in [NodeIdentity::new("c1", 2), NodeIdentity::new("c2", 1)] {
            let error = Material::load(&files, &wrong).expect_err("wrong identity");
            assert!(
                matches!(error, tls::TlsError::WrongIdentity { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = InitArgs {
            common: common(dir.path()),
            nodes: vec![1],
            if_missing: false,
        };
        init(&args).expect("init");
        let before = std::fs::read(dir.path().join(tls::CA_FILE)).expect("ca");
        let error = init(&args).expect_err("files exist");
        assert!(matches!(error, CertsError::Exists { .. }), "{error}");
        assert_eq!(
            std::fs::read(dir.path().join(tls::CA_FILE)).expect("ca"),
            before
        );
        args.common.force = true;
        init(&args).expect("forced");
        assert_ne!(
            std::fs::read(dir.path().join(tls::CA_FILE)).expect("ca"),
            before
        );
    }

    #[test]
    fn a_node_added_later_gets_a_cert_from_the_same_ca_with_a_new_serial_on_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(&InitArgs {
            common: common(dir.path()),
            nodes: vec![1],
            if_missing: false,
        })
        .expect("init");
        let mut args = NodeArgs {
            common: common(dir.path()),
            node_id: 4,
        };
        node(&args).expect("issue node 4");
        let files = TlsFiles::in_dir(dir.path(), 4);
        let first = Material::load(&files, &NodeIdentity::new("c1", 4)).expect("node 4 loads");
        assert!(matches!(node(&args), Err(CertsError::Exists { .. })));
        args.common.force = true;
        node(&args).expect("rotate node 4");
        let second = Material::load(&files, &NodeIdentity::new("c1", 4)).expect("rotated");
        assert_ne!(first.serial(), second.serial());
    }

    #[test]
    fn bad_arguments_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bad = common(dir.path());
        bad.days = 0;
        assert!(
            bad.validate()
                .expect_err("days")
                .to_string()
                .contains("--days")
        );
        let mut bad = common(dir.path());
        bad.hosts = vec!["not a host".into()];
        assert!(
            bad.validate()
                .expect_err("hosts")
                .to_string()
                .contains("--hosts")
        );
        let error = init(&InitArgs {
            common: common(dir.path()),
            nodes: vec![0],
            if_missing: false,
        })
        .expect_err("node 0");
        assert!(error.to_string().contains("--nodes"), "{error}");
    }
}

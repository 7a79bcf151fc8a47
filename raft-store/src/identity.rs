//! Data directory identity: which cluster and node a directory belongs to, in which format.
//!
//! Written once, atomically, when a fresh directory is first used; checked before RocksDB is
//! opened on every later start, so a refusal leaves the directory exactly as it was.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The on-disk format this binary reads and writes. Version 2: every stored value carries its
/// record format byte and log entries carry versioned proposals (`codec`); a version-1
/// directory is refused (rejoin the node from a snapshot of the cluster). Version 3 adds the
/// Raft marks file (`marks`); a version-2 directory is upgraded in place when it opens cleanly.
pub const FORMAT_VERSION: u32 = 3;
/// The older format this binary upgrades in place.
pub const UPGRADABLE_FORMAT_VERSION: u32 = 2;
pub const IDENTITY_FILE: &str = "IDENTITY";
const IDENTITY_FILE_BYTES_MAX: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format_version: u32,
    pub cluster_id: String,
    pub node_id: u64,
    /// Set by `switchboard node reset --rejoin` on the wiped directory: the node starts empty,
    /// never bootstraps a cluster, and waits to be caught up by the leader.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejoin: bool,
}

impl Identity {
    pub fn new(cluster_id: impl Into<String>, node_id: u64) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            cluster_id: cluster_id.into(),
            node_id,
            rejoin: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("data directory {dir} belongs to cluster {found:?}, not to cluster {expected:?}")]
    OtherCluster {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("data directory {dir} belongs to node {found}, not to node {expected}")]
    OtherNode {
        dir: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("data directory {dir} has format version {found}; this binary reads version {known}")]
    UnknownFormat {
        dir: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("data directory {dir} has a corrupt identity file {file}: {reason}")]
    Corrupt {
        dir: PathBuf,
        file: &'static str,
        reason: String,
    },
    #[error(
        "data directory {dir} is not empty and has no identity file {file}: refusing to use it"
    )]
    Foreign { dir: PathBuf, file: &'static str },
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether the directory was just claimed or was already ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Empty until now: this node may bootstrap the cluster.
    Fresh,
    /// Ours, in this binary's format.
    Existing,
    /// Ours, in [`UPGRADABLE_FORMAT_VERSION`]: upgraded once it opens cleanly.
    Upgrade,
    /// Wiped by `switchboard node reset --rejoin`: starts empty and never bootstraps.
    Rejoining,
}

impl Claim {
    /// Whether the store must be created (nothing of it exists yet).
    pub fn creates(self) -> bool {
        matches!(self, Claim::Fresh | Claim::Rejoining)
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io { op, path, source }
}

/// Reads the identity of `dir`, if it has one.
pub fn read(dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let file = dir.join(IDENTITY_FILE);
    let corrupt = |reason: String| IdentityError::Corrupt {
        dir: dir.to_path_buf(),
        file: IDENTITY_FILE,
        reason,
    };
    let metadata = match fs::metadata(&file) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("stat", &file)(e)),
    };
    if metadata.len() > IDENTITY_FILE_BYTES_MAX {
        return Err(corrupt(format!(
            "{} bytes, over the bound of {IDENTITY_FILE_BYTES_MAX}",
            metadata.len()
        )));
    }
    let bytes = fs::read(&file).map_err(io("read", &file))?;
    let identity: Identity = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok(Some(identity))
}

/// Checks that `dir` belongs to `expected`, or claims it when it is empty or missing.
pub fn claim(dir: &Path, expected: &Identity) -> Result<Claim, IdentityError> {
    if let Some(found) = read(dir)? {
        if found.format_version != FORMAT_VERSION
            && found.format_version != UPGRADABLE_FORMAT_VERSION
        {
            return Err(IdentityError::UnknownFormat {
                dir: dir.to_path_buf(),
                found: found.format_version,
                known: FORMAT_VERSION,
            });
        }
        if found.cluster_id != expected.cluster_id {
            return Err(IdentityError::OtherCluster {
                dir: dir.to_path_buf(),
                found: found.cluster_id,
                expected: expected.cluster_id.clone(),
            });
        }
        if found.node_id != expected.node_id {
            return Err(IdentityError::OtherNode {
                dir: dir.to_path_buf(),
                found: found.node_id,
                expected: expected.node_id,
            });
        }
        return Ok(if found.rejoin {
            Claim::Rejoining
        } else if found.format_version == UPGRADABLE_FORMAT_VERSION {
            Claim::Upgrade
        } else {
            Claim::Existing
        });
    }

    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut entries = fs::read_dir(dir).map_err(io("list", dir))?;
    if entries.next().is_some() {
        return Err(IdentityError::Foreign {
            dir: dir.to_path_buf(),
            file: IDENTITY_FILE,
        });
    }

    write(dir, expected)?;
    Ok(Claim::Fresh)
}

/// Writes `identity` as the identity of `dir`, replacing any: write-then-rename, so that a crash
/// leaves either the old identity or the new one, whole.
pub fn write(dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let expected = identity;
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let file = dir.join(IDENTITY_FILE);
    let bytes = serde_json::to_vec_pretty(expected).expect("identity serializes to memory");
    let mut out = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    out.write_all(&bytes).map_err(io("write", &tmp))?;
    out.sync_all().map_err(io("sync", &tmp))?;
    drop(out);
    fs::rename(&tmp, &file).map_err(io("rename", &tmp))?;
    sync_dir(dir)
}

/// Makes a rename or file creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = fs::read_dir(dir)
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_fresh_directory_is_claimed_then_recognised() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("n1");
        let me = Identity::new("c1", 1);
        assert_eq!(claim(&dir, &me).expect("claim"), Claim::Fresh);
        assert_eq!(claim(&dir, &me).expect("reclaim"), Claim::Existing);
    }

    #[test]
    fn another_nodes_directory_is_refused_and_left_untouched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        claim(dir, &Identity::new("c1", 1)).expect("claim");
        let before = listing(dir);

        let err = claim(dir, &Identity::new("c1", 2)).expect_err("other node");
        assert!(matches!(
            err,
            IdentityError::OtherNode {
                found: 1,
                expected: 2,
                ..
            }
        ));
        assert!(err.to_string().contains(&dir.display().to_string()));

        let err = claim(dir, &Identity::new("c2", 1)).expect_err("other cluster");
        assert!(matches!(err, IdentityError::OtherCluster { .. }));
        assert_eq!(listing(dir), before);
    }

    #[test]
    fn corrupt_or_unknown_identity_is_refused_and_left_untouched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        fs::write(dir.join(IDENTITY_FILE), b"\x00\x01garbage").expect("write");
        let before = listing(dir);
        let err = claim(dir, &Identity::new("c1", 1)).expect_err("corrupt");
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(listing(dir), before);

        let future = Identity {
            format_version: FORMAT_VERSION + 1,
            ..Identity::new("c1", 1)
        };
        fs::write(
            dir.join(IDENTITY_FILE),
            serde_json::to_vec(&future).expect("json"),
        )
        .expect("write");
        let err = claim(dir, &Identity::new("c1", 1)).expect_err("unknown format");
        assert!(matches!(err, IdentityError::UnknownFormat { .. }), "{err}");
    }

    #[test]
    fn a_non_empty_directory_without_identity_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("precious.txt"), b"keep me").expect("write");
        let err = claim(tmp.path(), &Identity::new("c1", 1)).expect_err("foreign");
        assert!(matches!(err, IdentityError::Foreign { .. }));
        assert_eq!(listing(tmp.path()).len(), 1);
    }
}

//! The one error type of the store.

use std::path::PathBuf;

use crate::identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open rocksdb at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("rocksdb {op} failed: {source}")]
    Rocks {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("corrupt {what} under key {key}")]
    Corrupt {
        what: &'static str,
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error(
        "{what} under key {key} has record format {found}; this binary reads format {known}: \
         the data directory was written by a newer release"
    )]
    UnknownFormat {
        what: &'static str,
        key: String,
        found: u8,
        known: u8,
    },
    #[error("missing {what} under key {key}")]
    Missing { what: &'static str, key: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("i/o failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {path} is invalid: {reason}")]
    BadSnapshot { path: PathBuf, reason: String },
    #[error("log sync thread has stopped")]
    SyncStopped,
    /// The data directory lost or garbled state this node acknowledged. Never recovered from in
    /// place: the node must be rejoined from the cluster.
    #[error(
        "storage damaged: {what}. The node refuses to start so that it never serves or votes with \
         state older than it acknowledged; nothing was changed on disk. Rejoin it from the \
         cluster: `switchboard node reset --rejoin --data-dir {dir} --endpoints <the other \
         nodes>` wipes this node's data and re-adds it as a learner that catches up from a \
         snapshot; then start it again"
    )]
    Damaged { dir: PathBuf, what: String },
}

impl Error {
    pub fn damaged(dir: impl Into<PathBuf>, what: impl Into<String>) -> Error {
        Error::Damaged {
            dir: dir.into(),
            what: what.into(),
        }
    }

    /// Whether this error means the data directory is damaged (the node must be rejoined).
    pub fn is_damaged(&self) -> bool {
        match self {
            Error::Damaged { .. } => true,
            Error::Open { source, .. } | Error::Rocks { source, .. } => is_corruption(source),
            Error::Corrupt { .. } => true,
            _ => false,
        }
    }

    pub fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
        move |source| Error::Rocks { op, source }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        std::io::Error::other(error)
    }
}

/// Whether RocksDB reports corruption (a checksum mismatch, a truncated or garbled file).
pub fn is_corruption(error: &rocksdb::Error) -> bool {
    error.kind() == rocksdb::ErrorKind::Corruption
}

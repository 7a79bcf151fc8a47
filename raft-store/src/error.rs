//! The one error type of the store.

use std::path::PathBuf;

use crate::identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open rocksdb at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("rocksdb {op} failed")]
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
}

impl Error {
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

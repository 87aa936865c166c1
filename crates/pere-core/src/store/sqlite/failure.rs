//! Why the SQLite store failed: [`Failure`], carried in [`StoreError::Backend`], and which of
//! SQLite's errors say the file is damaged ([`is_damage`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::StoreError;

/// Why the SQLite store failed; carried in [`StoreError::Backend`].
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// The store at `path` could not be opened.
    Open {
        path: PathBuf,
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// SQLite would not use WAL there (some network file systems), which readers need.
    NoWal { path: PathBuf, mode: String },
    /// A write batch was rolled back: none of its writes happened.
    Batch(Arc<rusqlite::Error>),
    /// The writer has stopped: the store was closed.
    Closed,
    /// The database file was replaced (another file now has its path): what the writer would
    /// commit would go to a file nobody opens again, so nothing is committed.
    Replaced { path: PathBuf },
}

impl Failure {
    pub(super) fn open(
        path: &Path,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::backend(Failure::Open {
            path: path.to_owned(),
            source: Arc::new(source),
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Open { path, source } => {
                write!(f, "cannot open the store at {}: {source}", path.display())
            }
            Failure::NoWal { path, mode } => {
                write!(
                    f,
                    "{} cannot use WAL journaling (SQLite chose {mode:?})",
                    path.display()
                )
            }
            Failure::Batch(err) => write!(f, "write rolled back: {err}"),
            Failure::Closed => f.write_str("the store is closed"),
            Failure::Replaced { path } => write!(
                f,
                "{} was replaced by another file while the server ran; restart the server to use it",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Open { source, .. } => Some(source.as_ref()),
            Failure::Batch(err) => Some(err.as_ref()),
            Failure::NoWal { .. } | Failure::Closed | Failure::Replaced { .. } => None,
        }
    }
}

pub(super) fn closed() -> StoreError {
    StoreError::backend(Failure::Closed)
}

/// The error a write meets once the database file was replaced.
pub(super) fn replaced(path: &Path) -> StoreError {
    StoreError::Changed {
        detail: Failure::Replaced {
            path: path.to_owned(),
        }
        .to_string(),
    }
}

/// Which file a path names now (device and inode): a file put in its place is another.
pub(super) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether SQLite's error says the file is damaged or not a database at all.
pub(super) fn is_damage(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

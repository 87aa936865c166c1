//! The core's error type: storage failures ([`StoreError`]).

use std::fmt;
use std::sync::Arc;

use pere_proto::event::Event;
use pere_proto::receipt::Receipt;

/// A failure of the storage backend.
#[derive(Debug)]
pub enum StoreError {
    /// The event id names no event that was ever published on the channel.
    UnknownEvent {
        /// The id that was asked for.
        id: u64,
    },
    /// The backend cannot serve the request (I/O, corruption, a closed writer...).
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The store was opened on data it cannot use (for instance a newer schema).
    Incompatible(String),
    /// An event's idempotency key is not 1 to 255 visible ASCII characters; nothing was stored.
    InvalidIdempotencyKey,
    /// The database file is damaged (found at open by a bounded integrity check, or by SQLite
    /// reading a page it cannot make sense of).
    Damaged {
        /// The database file.
        path: std::path::PathBuf,
        /// What the check found, on one line.
        detail: String,
    },
    /// A batch held an event whose idempotency key the channel already holds for an event with
    /// another body or type; nothing of the batch was stored.
    IdempotencyConflict {
        /// The stored event holding the key; `None` when an earlier event of the same batch
        /// carries it.
        id: Option<u64>,
        /// The key.
        key: String,
    },
    /// The TLS connection to the store's server failed in a way that retrying does not mend:
    /// its certificate is not one this client trusts or names another host, it does not speak
    /// TLS, or it refused this client's certificate.
    Tls(Box<dyn std::error::Error + Send + Sync>),
    /// Recorded by the store's primary, but fewer of its replicas than asked for confirmed it
    /// in time: a failover now may lose it. What was recorded comes along, so that the hub
    /// applies it like any recorded change; a retry with the same idempotency key finds it, or
    /// records it again if a failover lost it.
    Unreplicated {
        /// How many replicas confirmed it.
        confirmed: usize,
        /// How many were asked for.
        wanted: usize,
        /// What the primary recorded.
        recorded: Unconfirmed,
    },
    /// The store holds the event but cannot read it back as it was written (a damaged file):
    /// it is never served.
    EventDamaged {
        /// The event's id.
        id: u64,
    },
    /// The store changed under this node (it came back empty, it is another store, or it
    /// went back in time): nothing was written. The node adopts it ([`Store::adopt`]) before
    /// writing again, so that no id is given twice.
    ///
    /// [`Store::adopt`]: crate::store::Store::adopt
    Changed {
        /// What was found, on one line.
        detail: String,
    },
    /// Another PERE process (a server, or `pere-server check`) holds the data directory's lock.
    Locked {
        /// The data directory.
        dir: std::path::PathBuf,
    },
}

/// What a write the replicas did not confirm recorded on the primary (see
/// [`StoreError::Unreplicated`]).
#[derive(Debug, Clone)]
pub enum Unconfirmed {
    /// The new events of an append (none when every event was answered from its key).
    Events(Vec<Arc<Event>>),
    /// A new receipt.
    Receipt(Box<Receipt>),
    /// The new receipts of a batch (none when every line was answered from its key).
    Receipts(Vec<Receipt>),
    /// Nothing new: a receipt answered from its key.
    Nothing,
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(err))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::UnknownEvent { id } => write!(f, "no event with id {id} on this channel"),
            StoreError::Backend(err) => write!(f, "storage failure: {err}"),
            StoreError::Incompatible(msg) => write!(f, "incompatible store: {msg}"),
            StoreError::Tls(err) => write!(f, "TLS with the store's server failed: {err}"),
            StoreError::Damaged { path, detail } => write!(
                f,
                "{} is damaged ({detail}); restore it from a backup, or move it aside to start with an empty store",
                path.display()
            ),
            StoreError::EventDamaged { id } => {
                write!(f, "event {id} is damaged in the store and cannot be read")
            }
            StoreError::Changed { detail } => write!(f, "the store changed under this node: {detail}"),
            StoreError::Locked { dir } => write!(
                f,
                "{} is in use by another PERE server (or by pere-server check); stop that one, or give this one its own --data-dir",
                dir.display()
            ),
            StoreError::Unreplicated {
                confirmed, wanted, ..
            } => write!(
                f,
                "recorded by the primary, but {confirmed} of the {wanted} replicas asked for confirmed it in time"
            ),
            StoreError::InvalidIdempotencyKey => {
                f.write_str("an idempotency key must be 1 to 255 visible ASCII characters")
            }
            StoreError::IdempotencyConflict { id: Some(id), key } => {
                write!(f, "idempotency key {key} already used for event {id} with another body or type")
            }
            StoreError::IdempotencyConflict { id: None, key } => {
                write!(f, "idempotency key {key} given twice in one batch, with different bodies or types")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Backend(err) | StoreError::Tls(err) => Some(err.as_ref()),
            _ => None,
        }
    }
}

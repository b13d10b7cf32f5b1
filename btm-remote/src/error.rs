//! What can go wrong with an offsite copy, by what the caller can do about it. Every variant
//! carries a sentence that says what happened and what to do; the variant is for programs (the
//! agent's exit codes, retries, alerts).
use btm_log::LogError;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL or the store's settings (scheme, credentials, endpoint) are wrong.
    #[error("{0}")]
    Config(String),
    /// A request to the store failed (network, permissions, the server): often worth a retry.
    #[error("{message}")]
    Store {
        message: String,
        #[source]
        source: Option<object_store::Error>,
    },
    /// An object the chain needs is not on the store.
    #[error("{0}")]
    Missing(String),
    /// An object is there but is not what its name or its place says: damage, or a forgery.
    #[error("{0}")]
    Damaged(String),
    /// Another push or prune holds the remote's lock.
    #[error("{0}")]
    Locked(String),
    /// Refused to protect data: the volume name belongs to another log, a push would remove
    /// most of the remote's heights, a volume name that is not safe.
    #[error("{0}")]
    Refused(String),
    /// The store and the remote key do not go together: an encrypted store without its key, a
    /// plaintext store with one, or another key than the store's.
    #[error("{0}")]
    KeyMismatch(String),
    /// Nothing to restore: no volume, no heights, or not the height asked for.
    #[error("{0}")]
    NotFound(String),
    /// The local log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Local files: the cache, the log's offsite identity.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

impl From<object_store::Error> for RemoteError {
    fn from(e: object_store::Error) -> Self {
        RemoteError::Store {
            message: e.to_string(),
            source: Some(e),
        }
    }
}

impl From<tokio::task::JoinError> for RemoteError {
    fn from(e: tokio::task::JoinError) -> Self {
        RemoteError::Store {
            message: format!("a request task failed: {e}"),
            source: None,
        }
    }
}

/// `Err(RemoteError::<Kind>(format!(...)))` from the calling function.
macro_rules! fail {
    ($kind:ident, $($fmt:tt)*) => {
        return Err($crate::error::RemoteError::$kind(format!($($fmt)*)))
    };
}
pub(crate) use fail;

/// Attaches what was being done to a local I/O error.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RemoteError {
    let context = context.into();
    move |source| RemoteError::Io { context, source }
}

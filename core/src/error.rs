//! Library-level errors. The api crate maps them to HTTP answers in one place.

use thiserror::Error;

/// A failure of a storage, queue or log backend.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The storage could not take the write: the disk (or the configured size limit) is full,
    /// or it fails with I/O errors. Readiness reports it until a later write succeeds.
    #[error("storage full or failing: {0}")]
    Full(String),
    #[error("backend error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            e if is_storage_fault(&e) => StoreError::Full(e.to_string()),
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// A write failed because the disk or the size limit is full, or the file gives I/O errors.
pub(crate) fn is_storage_fault(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
    )
}

/// An input that breaks a rule of the domain; `field` names the offending field.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A failure of a management operation (create, read, update, delete of subscriptions).
#[derive(Debug, Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Error::Conflict(m),
            other => Error::Store(other),
        }
    }
}

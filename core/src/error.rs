//! Library-level errors. The api crate maps them to HTTP answers in one place.

use thiserror::Error;

/// The cause of a backend failure, kept so that logs show the driver's own error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure of a storage, queue or log backend. Driver errors are converted in their backend
/// modules, which keep the driver's error as the `source`.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend cannot be reached or refused the operation for now; a retry may succeed.
    #[error("backend unavailable: {0}")]
    Unavailable(String, #[source] Option<Cause>),
    /// The storage could not take the write: the disk (or the configured size limit) is full,
    /// or it fails with I/O errors. Readiness reports it until a later write succeeds.
    #[error("storage full or failing: {0}")]
    Full(String, #[source] Option<Cause>),
    #[error("backend error: {0}")]
    Backend(String, #[source] Option<Cause>),
    /// The store refused this write for good: the same write fails the same way every time
    /// (a document over the store's size limit, a value it cannot hold). Retrying it cannot
    /// help; the writer must set the item aside so that it does not block the others.
    #[error("refused by the store: {0}")]
    Rejected(String, #[source] Option<Cause>),
}

impl StoreError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable(message.into(), None)
    }

    pub fn backend(message: impl Into<String>) -> Self {
        StoreError::Backend(message.into(), None)
    }

    pub fn full(message: impl Into<String>) -> Self {
        StoreError::Full(message.into(), None)
    }

    /// `Unavailable`, keeping `cause` as the source.
    pub fn unavailable_by(message: impl Into<String>, cause: impl Into<Cause>) -> Self {
        StoreError::Unavailable(message.into(), Some(cause.into()))
    }

    /// `Rejected`, keeping `cause` as the source.
    pub fn rejected_by(message: impl Into<String>, cause: impl Into<Cause>) -> Self {
        StoreError::Rejected(message.into(), Some(cause.into()))
    }

    /// Whether repeating the same write can never succeed ([`StoreError::Rejected`]).
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::Rejected(..))
    }

    /// `Backend`, keeping `cause` as the source.
    pub fn backend_by(message: impl Into<String>, cause: impl Into<Cause>) -> Self {
        StoreError::Backend(message.into(), Some(cause.into()))
    }

    /// The message with every cause (see [`chain`]).
    pub fn chain(&self) -> String {
        chain(self).to_string()
    }
}

/// `error` and each of its causes, joined by ": ": how every log line shows an error, so that
/// a driver's own message (kept as the `source`) is never lost on the way.
pub fn chain<'a>(error: &'a (dyn std::error::Error + 'a)) -> Chain<'a> {
    Chain(error)
}

/// The [`Display`](std::fmt::Display) of an error with its causes (see [`chain`]).
pub struct Chain<'a>(&'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_every_cause_in_order() {
        let driver = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = StoreError::unavailable_by("MongoDB is unavailable: reading", driver);
        assert_eq!(
            chain(&e).to_string(),
            "backend unavailable: MongoDB is unavailable: reading: refused"
        );
        assert_eq!(e.chain(), chain(&e).to_string());
        assert_eq!(chain(&StoreError::NotFound).to_string(), "not found");
    }
}

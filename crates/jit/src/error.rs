//! What can go wrong asking the broker for something, shaped so the admin API
//! can map each case to one HTTP status.

use portcullis_records::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// The request itself is wrong (bad duration, empty reason...).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (not an approver, own request...).
    #[error("{0}")]
    Forbidden(String),
    /// No grant or approval with that id.
    #[error("{0}")]
    NotFound(String),
    /// The object is not in a state that allows this (already decided...).
    #[error("{0}")]
    Conflict(String),
    /// The caller asked too often; it may try again after `retry_after`.
    #[error("{message}")]
    TooMany {
        message: String,
        retry_after: std::time::Duration,
    },
    /// The change could not be recorded, so it did not happen.
    #[error("not recorded, so not done: {0}")]
    Store(#[from] StoreError),
}

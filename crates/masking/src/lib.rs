//! Finding and masking sensitive values in query results.
//!
//! Policies say `mask: { columns: [...], detect: [...] }`. This crate is the
//! part of that which needs no protocol knowledge, so it can be tested (and
//! fuzzed) on its own and reused by every protocol driver:
//! - [`detect`](mod@detect): where sensitive values are in a piece of text
//!   (cards, emails, IBANs, SSNs, phones, IPs, JWTs, secrets);
//! - [`mask`](mod@mask): what to put in their place (`redact`, `partial`,
//!   `hash`);
//! - [`pgtype`](mod@pgtype): how to mask a PostgreSQL value so it stays valid
//!   for its type (text, JSON, text arrays), or say that it cannot be;
//! - [`rules`](mod@rules): the `mask:` settings of the policies that apply
//!   to a principal, compiled once per session.
//!
//! Everything here is a pure function of its inputs and the masking key.

pub mod detect;
pub mod mask;
pub mod pgtype;
pub mod rules;

pub use detect::{find, find_into, Detector, Finding, UnknownDetector};
pub use mask::{DetectorCounts, MaskBuf, Masker, Method, UnknownMethod, REDACTED};
pub use pgtype::{type_class, Outcome, Scope, TypeClass, Written};
pub use rules::{ColumnRule, Expressions, MaskRules, SourceColumn};

/// Errors building a [`Masker`].
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// A short key makes the keyed hash guessable offline.
    #[error("masking key is {len} bytes; at least {min} are required")]
    KeyTooShort { len: usize, min: usize },
}

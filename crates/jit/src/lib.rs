//! Just-in-time access: time-boxed grants and statements held for a human.
//!
//! The [`Broker`] is the one place that knows which grants exist and which
//! statements are waiting for an approver. Protocol drivers ask it whether a
//! principal holds a grant ([`Broker::lease`]) and hand it statements their
//! policy decision held ([`Broker::hold`]); the admin API calls it on behalf
//! of approvers and workloads. Policy stays pure: it says *hold*, the broker
//! does the waiting.
//!
//! Every change is an audit record first and a state change second: the
//! record (kind `grant` or `approval`) carries the whole object after the
//! change, so the grant book is rebuilt from the store on start and a change
//! whose record cannot be written does not happen (fail closed).

mod approvals;
mod broker;
pub mod duration;
mod error;
mod grants;
mod limits;
mod notify;
mod timefmt;
pub mod wording;

#[cfg(test)]
mod tests;

pub use approvals::{Approval, ApprovalStatus, Held, HoldRequest, Outcome, MAX_WINDOW};
pub use broker::{Broker, BrokerSettings};
pub use error::JitError;
pub use grants::{Grant, GrantLease, GrantStatus};
pub use limits::{ANNOUNCED_REQUESTS, GRANT_REQUESTS};
pub use notify::{Event, Notifier};
pub use timefmt::format as format_time;

/// The longest reason a grant request, denial or revocation may give, in
/// characters: reasons are stored in every record of the grant and shown
/// in every approver's list, so their size is the requester's to bound.
pub const MAX_REASON_CHARS: usize = 1000;

/// `text` trimmed, if it is a usable reason: not empty, at most
/// [`MAX_REASON_CHARS`].
pub fn reason(text: &str) -> Result<String, JitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(JitError::Invalid("a reason is required".into()));
    }
    let chars = text.chars().count();
    if chars > MAX_REASON_CHARS {
        return Err(JitError::Invalid(format!(
            "the reason is {chars} characters long; at most {MAX_REASON_CHARS} are allowed"
        )));
    }
    Ok(text.to_string())
}

/// An approver's optional note (why denied or revoked), bounded like a
/// reason; blank means none.
pub fn note(text: Option<String>) -> Result<Option<String>, JitError> {
    match text {
        Some(t) if !t.trim().is_empty() => reason(&t).map(Some),
        _ => Ok(None),
    }
}

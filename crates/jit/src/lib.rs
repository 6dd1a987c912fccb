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
mod error;
mod grants;
mod notify;
mod timefmt;
pub mod wording;

#[cfg(test)]
mod tests;

pub use approvals::{Approval, ApprovalStatus, Held, HoldRequest, Outcome, MAX_WINDOW};
pub use broker::{Broker, BrokerSettings};
pub use error::JitError;
pub use grants::{Grant, GrantLease, GrantStatus};
pub use notify::{Event, Notifier};
pub use timefmt::format as format_time;

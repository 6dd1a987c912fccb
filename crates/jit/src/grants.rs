//! Grants: one principal, one connection, a bounded time, given by a human
//! (or at once under `approval: auto`) and never extended by the grantee.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::timefmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    /// Asked for; no access yet.
    Pending,
    /// Approved and not yet expired: the principal may connect.
    Active,
    Denied,
    Revoked,
    Expired,
}

impl GrantStatus {
    /// Still open: a second request for the same principal and connection
    /// would amount to extending this one.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }
}

/// A grant as stored in its records and answered by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub principal: String,
    pub connection: String,
    pub reason: String,
    /// How long access lasts once approved.
    pub duration_secs: u64,
    /// `required` or `auto`, as the policy said when it was requested.
    pub approval: String,
    pub status: GrantStatus,
    #[serde(with = "timefmt")]
    pub requested_at: SystemTime,
    /// Who approved, denied or revoked it (`auto` for automatic grants).
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default, with = "timefmt::option")]
    pub decided_at: Option<SystemTime>,
    #[serde(default, with = "timefmt::option")]
    pub expires_at: Option<SystemTime>,
    /// Why it was denied or revoked, in the approver's words.
    #[serde(default)]
    pub note: Option<String>,
}

impl Grant {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_secs)
    }

    /// Active with time left at `now`.
    pub fn in_force(&self, now: SystemTime) -> bool {
        self.status == GrantStatus::Active && self.expires_at.is_some_and(|e| e > now)
    }

    /// The sentence a session cut by this grant's end shows its client.
    pub fn end_reason(&self) -> String {
        match self.status {
            GrantStatus::Expired => format!(
                "grant {} expired at {}",
                self.id,
                self.expires_at.map(timefmt::format).unwrap_or_default()
            ),
            GrantStatus::Revoked => format!(
                "grant {} was revoked by {}{}",
                self.id,
                self.decided_by.as_deref().unwrap_or("an approver"),
                self.note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            ),
            status => format!("grant {} is {status:?}", self.id),
        }
    }
}

/// What a session admitted under a grant holds: the grant's id and end, and
/// a line from the broker that says when it ends early.
#[derive(Debug, Clone)]
pub struct GrantLease {
    pub id: String,
    pub expires_at: SystemTime,
    pub(crate) changes: watch::Receiver<Grant>,
}

impl GrantLease {
    /// Resolves when the grant stops being in force (expiry or revocation),
    /// with the reason to give the client. Does not depend on the broker's
    /// expiry sweep: the lease knows its own deadline.
    pub async fn ended(&mut self) -> String {
        let left = self
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let deadline = tokio::time::Instant::now() + left;
        loop {
            let current = self.changes.borrow_and_update().clone();
            if current.status != GrantStatus::Active {
                return current.end_reason();
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let mut expired = current;
                    expired.status = GrantStatus::Expired;
                    return expired.end_reason();
                }
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        // The broker dropped the grant's channel: it no longer
                        // vouches for it, so the session must not go on.
                        return format!("grant {} is no longer known to the gateway", self.id);
                    }
                }
            }
        }
    }
}

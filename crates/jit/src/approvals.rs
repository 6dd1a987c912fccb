//! Held statements: a policy said `hold`, so the statement waits here until
//! an approver says yes (it runs once), no, or nobody answers in time.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::timefmt;
use crate::Broker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    TimedOut,
    /// The session went away (or the gateway restarted) before a decision.
    Abandoned,
}

/// A held statement as stored in its records and answered by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub session_id: String,
    pub principal: String,
    pub connection: String,
    /// The full statement text, as the client sent it.
    pub statement: String,
    pub policy: Option<String>,
    pub rule: String,
    /// Why policy held it.
    pub reason: String,
    /// The grant the session runs under, if any.
    #[serde(default)]
    pub grant: Option<String>,
    pub status: ApprovalStatus,
    #[serde(with = "timefmt")]
    pub requested_at: SystemTime,
    /// When the statement is refused if nobody decides.
    #[serde(with = "timefmt")]
    pub deadline: SystemTime,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default, with = "timefmt::option")]
    pub decided_at: Option<SystemTime>,
    #[serde(default)]
    pub note: Option<String>,
    /// Set by an approver who approved "this exact statement for the next N
    /// minutes": until then the same principal's identical statement on the
    /// same connection runs without being held again.
    #[serde(default, with = "timefmt::option")]
    pub covers_until: Option<SystemTime>,
    /// The earlier approval whose window let this one through at once.
    #[serde(default)]
    pub covered_by: Option<String>,
}

/// What a driver hands the broker when policy holds a statement.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub session_id: String,
    pub principal: String,
    pub connection: String,
    pub statement: String,
    pub policy: Option<String>,
    pub rule: String,
    pub reason: String,
    pub grant: Option<String>,
}

/// How a hold ended, as the session acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        by: String,
    },
    Denied {
        by: String,
        note: Option<String>,
    },
    TimedOut,
    /// The broker forgot the approval (it cannot happen while the session
    /// waits, but if it did the statement must not run).
    Lost,
}

/// A statement waiting for its decision. Dropping it before the decision
/// (client gone, shutdown, grant ended) records the approval as abandoned,
/// so no approver later "approves" a statement that will never run.
pub struct Held {
    pub approval: Approval,
    pub(crate) decision: Option<oneshot::Receiver<Outcome>>,
    pub(crate) broker: Arc<Broker>,
    pub(crate) settled: bool,
}

impl Held {
    /// Waits for the approver or the deadline, whichever comes first. Cancel
    /// safe: dropping the future leaves the hold pending until `Held` drops.
    pub async fn outcome(&mut self) -> Outcome {
        let left = self
            .approval
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + left;
        let decided = match self.decision.as_mut() {
            Some(rx) => tokio::select! {
                decided = rx => decided.ok(),
                _ = tokio::time::sleep_until(deadline) => None,
            },
            None => None,
        };
        let outcome = match decided {
            Some(outcome) => outcome,
            // The deadline passed, or the sender vanished: ask the broker,
            // which settles races with a decision arriving just now.
            None => self.broker.time_out(&self.approval.id).await,
        };
        self.decision = None;
        self.settled = true;
        outcome
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let broker = self.broker.clone();
        let id = self.approval.id.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { broker.abandon(&id).await });
        }
    }
}

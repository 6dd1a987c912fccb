//! Held statements: a policy said `hold`, so the statement waits here until
//! an approver says yes (it runs once), no, or nobody answers in time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_identity::Principal;
use portcullis_records::{NewRecord, RecordKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::broker::{find, new_id, State};
use crate::notify::Event;
use crate::timefmt;
use crate::{Broker, JitError};

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

impl ApprovalStatus {
    /// The name people and the API see (`timed_out`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TimedOut => "timed_out",
            Self::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A held statement as stored in its records and answered by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub session_id: String,
    pub principal: String,
    /// The issuer of the principal's token (empty in records written before it was recorded).
    #[serde(default)]
    pub issuer: String,
    pub connection: String,
    /// The full statement text, as the client sent it. Shown to people
    /// only through `portcullis_records::untrusted`.
    pub statement: String,
    /// The statement classes the gateway found in it (`read`, `write`...),
    /// so an approver need not trust the text alone; empty on SSH.
    #[serde(default)]
    pub classes: Vec<String>,
    /// The tables and views it touches, as written; empty on SSH.
    #[serde(default)]
    pub relations: Vec<String>,
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
    /// The issuer that vouched for the principal.
    pub issuer: String,
    pub connection: String,
    pub statement: String,
    /// What classification found: statement classes and relations.
    pub classes: Vec<String>,
    pub relations: Vec<String>,
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

/// Held statements: registered by drivers, decided by approvers, given up
/// by their sessions.
impl Broker {
    /// Registers a held statement and tells approvers; the caller waits on
    /// the returned [`Held`]. Fails (and nothing is held) if it cannot be
    /// recorded.
    pub async fn hold(self: &Arc<Self>, request: HoldRequest) -> Result<Held, JitError> {
        let now = SystemTime::now();
        let approval = Approval {
            id: new_id("a"),
            session_id: request.session_id,
            principal: request.principal,
            issuer: request.issuer,
            connection: request.connection,
            statement: request.statement,
            classes: request.classes,
            relations: request.relations,
            policy: request.policy,
            rule: request.rule,
            reason: request.reason,
            grant: request.grant,
            status: ApprovalStatus::Pending,
            requested_at: now,
            deadline: now + self.settings.approval_timeout,
            decided_by: None,
            decided_at: None,
            note: None,
            covers_until: None,
            covered_by: None,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock().await;
            if let Some(window) = covering(&state, &approval, now) {
                let mut approval = approval;
                approval.status = ApprovalStatus::Approved;
                approval.decided_by = window.decided_by.clone();
                approval.decided_at = Some(now);
                approval.covered_by = Some(window.id.clone());
                self.record_approval(&approval, "approved", None).await?;
                let by = approval.decided_by.clone().unwrap_or_default();
                tracing::info!(approval = %approval.id, covered_by = %window.id, "held statement approved by an earlier approval's window");
                state
                    .approvals
                    .insert(approval.id.clone(), approval.clone());
                let _ = tx.send(Outcome::Approved { by });
                return Ok(Held {
                    approval,
                    decision: Some(rx),
                    broker: self.clone(),
                    settled: false,
                });
            }
            self.record_approval(&approval, "requested", None).await?;
            state
                .approvals
                .insert(approval.id.clone(), approval.clone());
            state.waiting.insert(approval.id.clone(), tx);
        }
        self.notifier
            .notify(Event::ApprovalRequested(approval.clone()));
        tracing::info!(approval = %approval.id, session = %approval.session_id, principal = %approval.principal, "statement held for approval");
        Ok(Held {
            approval,
            decision: Some(rx),
            broker: self.clone(),
            settled: false,
        })
    }

    /// Lets the held statement run once; with `window`, identical
    /// statements of the same principal on the same connection also run
    /// without a new hold until it has passed (at most [`MAX_WINDOW`]).
    pub async fn approve(
        &self,
        id: &str,
        approver: &Principal,
        window: Option<Duration>,
    ) -> Result<Approval, JitError> {
        if let Some(w) = window {
            crate::duration::check(w).map_err(|why| JitError::Invalid(why.into()))?;
            if w > MAX_WINDOW {
                return Err(JitError::Invalid(format!(
                    "the re-run window {} is longer than the max of {}",
                    crate::duration::describe(w),
                    crate::duration::describe(MAX_WINDOW)
                )));
            }
        }
        self.decide(id, approver, None, ApprovalStatus::Approved, window)
            .await
    }

    pub async fn deny(
        &self,
        id: &str,
        approver: &Principal,
        note: Option<String>,
    ) -> Result<Approval, JitError> {
        self.decide(id, approver, note, ApprovalStatus::Denied, None)
            .await
    }

    async fn decide(
        &self,
        id: &str,
        approver: &Principal,
        note: Option<String>,
        to: ApprovalStatus,
        window: Option<Duration>,
    ) -> Result<Approval, JitError> {
        self.require_approver(approver)?;
        let note = crate::note(note)?;
        let mut state = self.state.lock().await;
        let mut approval = find(&state.approvals, id, "approval")?.clone();
        if approval.principal == approver.name && approval.issuer == approver.issuer {
            return Err(JitError::Forbidden(
                "an approver cannot decide on their own statement".into(),
            ));
        }
        if approval.status != ApprovalStatus::Pending {
            return Err(JitError::Conflict(format!(
                "approval {id} is already {}; only a pending one can be decided",
                approval.status
            )));
        }
        approval.status = to;
        approval.decided_by = Some(approver.name.clone());
        approval.decided_at = Some(SystemTime::now());
        approval.note = note.clone();
        approval.covers_until = window.map(|w| SystemTime::now() + w);
        let event = if to == ApprovalStatus::Approved {
            "approved"
        } else {
            "denied"
        };
        self.record_approval(&approval, event, Some(approver))
            .await?;
        state
            .approvals
            .insert(approval.id.clone(), approval.clone());
        let outcome = match to {
            ApprovalStatus::Approved => Outcome::Approved {
                by: approver.name.clone(),
            },
            _ => Outcome::Denied {
                by: approver.name.clone(),
                note,
            },
        };
        if let Some(tx) = state.waiting.remove(id) {
            // A session that went away meanwhile has dropped its receiver;
            // its abandon call finds the approval already decided.
            let _ = tx.send(outcome);
        }
        tracing::info!(approval = %id, approver = %approver.name, event, "held statement decided");
        Ok(approval)
    }

    /// Called by the waiting session at its deadline: times the approval
    /// out unless a decision got in first, and says which happened.
    pub(crate) async fn time_out(&self, id: &str) -> Outcome {
        let mut state = self.state.lock().await;
        state.waiting.remove(id);
        let Some(mut approval) = state.approvals.get(id).cloned() else {
            return Outcome::Lost;
        };
        match approval.status {
            ApprovalStatus::Pending => {}
            ApprovalStatus::Approved => {
                return Outcome::Approved {
                    by: approval.decided_by.unwrap_or_default(),
                }
            }
            ApprovalStatus::Denied => {
                return Outcome::Denied {
                    by: approval.decided_by.unwrap_or_default(),
                    note: approval.note,
                }
            }
            ApprovalStatus::TimedOut | ApprovalStatus::Abandoned => return Outcome::TimedOut,
        }
        approval.status = ApprovalStatus::TimedOut;
        approval.decided_at = Some(SystemTime::now());
        if let Err(e) = self.record_approval(&approval, "timed_out", None).await {
            // The statement is refused either way; only the record is missing.
            tracing::error!(approval = %id, error = %e, "cannot record approval timeout");
        }
        state.approvals.insert(approval.id.clone(), approval);
        Outcome::TimedOut
    }

    /// The waiting session is gone before a decision.
    pub(crate) async fn abandon(&self, id: &str) {
        let mut state = self.state.lock().await;
        state.waiting.remove(id);
        let Some(mut approval) = state.approvals.get(id).cloned() else {
            return;
        };
        if approval.status != ApprovalStatus::Pending {
            return;
        }
        approval.status = ApprovalStatus::Abandoned;
        approval.decided_at = Some(SystemTime::now());
        approval.note = Some("the session ended before a decision".into());
        if let Err(e) = self.record_approval(&approval, "abandoned", None).await {
            tracing::error!(approval = %id, error = %e, "cannot record abandoned approval");
        }
        state.approvals.insert(approval.id.clone(), approval);
    }

    /// Held statements, newest last (approvers only).
    pub async fn approvals(&self, caller: &Principal) -> Result<Vec<Approval>, JitError> {
        self.require_approver(caller)?;
        let state = self.state.lock().await;
        let mut out: Vec<Approval> = state.approvals.values().cloned().collect();
        out.sort_by_key(|a| a.requested_at);
        Ok(out)
    }

    pub async fn approval(&self, id: &str, caller: &Principal) -> Result<Approval, JitError> {
        self.require_approver(caller)?;
        let state = self.state.lock().await;
        Ok(find(&state.approvals, id, "approval")?.clone())
    }

    pub(crate) async fn record_approval(
        &self,
        approval: &Approval,
        event: &str,
        actor: Option<&Principal>,
    ) -> Result<i64, JitError> {
        let mut record = NewRecord::new(RecordKind::Approval)
            .session_id(approval.session_id.clone())
            .principal(approval.principal.clone())
            .connection(approval.connection.clone())
            .decision(event)
            .rule(approval.rule.clone())
            .detail(json!({
                "id": approval.id,
                "statement": approval.statement,
                "grant": approval.grant,
                "approval": approval,
                "by": actor.map(|a| a.name.clone()),
                "token": actor.map(|a| a.token_fingerprint.clone()),
            }));
        if let Some(p) = &approval.policy {
            record = record.policy(p.clone());
        }
        Ok(self.store.append(record).await?)
    }
}

/// The longest "this exact statement for the next N minutes" window.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// An approval whose re-run window covers `held` at `now`: approved, same
/// principal, connection and statement text, window not yet over.
fn covering<'a>(state: &'a State, held: &Approval, now: SystemTime) -> Option<&'a Approval> {
    state.approvals.values().find(|a| {
        a.status == ApprovalStatus::Approved
            && a.covers_until.is_some_and(|until| until > now)
            && a.principal == held.principal
            && a.issuer == held.issuer
            && a.connection == held.connection
            && a.statement == held.statement
    })
}

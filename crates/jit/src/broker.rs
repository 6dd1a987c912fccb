//! The broker's state and every way it changes. One async mutex guards it,
//! held across the audit append of each change: grant and approval changes
//! are rare next to statements, and holding it makes "recorded, then
//! applied" atomic with respect to a concurrent approve/deny/revoke.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_config::{ApproversConfig, JitApproval};
use portcullis_identity::Principal;
use portcullis_policy::PolicySet;
use portcullis_records::{NewRecord, Record, RecordKind, Store};
use serde_json::json;
use tokio::sync::{oneshot, watch, Mutex};

use crate::approvals::{Approval, ApprovalStatus, Held, HoldRequest, Outcome};
use crate::grants::{Grant, GrantLease, GrantStatus};
use crate::notify::{Event, Notifier};
use crate::JitError;

/// The parts of the config the broker needs.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub approvers: ApproversConfig,
    pub approval_timeout: Duration,
    /// Base of the admin API's URL, for links in notices and webhooks.
    pub base_url: String,
}

pub struct Broker {
    store: Store,
    policies: Arc<PolicySet>,
    settings: BrokerSettings,
    notifier: Notifier,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    grants: HashMap<String, Grant>,
    /// One channel per active grant; sessions under it hold receivers.
    watchers: HashMap<String, watch::Sender<Grant>>,
    approvals: HashMap<String, Approval>,
    /// The waiting session of each pending approval.
    waiting: HashMap<String, oneshot::Sender<Outcome>>,
}

impl Broker {
    /// Rebuilds the grant book from the store's `grant` records, and closes
    /// approvals left pending by a previous run (their sessions are gone).
    pub async fn open(
        store: Store,
        policies: Arc<PolicySet>,
        settings: BrokerSettings,
        notifier: Notifier,
    ) -> Result<Arc<Broker>, JitError> {
        let records = store.records_of_kinds(&[RecordKind::Grant, RecordKind::Approval])?;
        let mut state = State::default();
        for record in &records {
            replay(&mut state, record);
        }
        let broker = Arc::new(Broker {
            store,
            policies,
            settings,
            notifier,
            state: Mutex::new(State::default()),
        });
        let stale: Vec<Approval> = state
            .approvals
            .values()
            .filter(|a| a.status == ApprovalStatus::Pending)
            .cloned()
            .collect();
        for mut approval in stale {
            approval.status = ApprovalStatus::Abandoned;
            approval.note = Some("the gateway restarted while it was pending".into());
            broker.record_approval(&approval, "abandoned", None).await?;
            state.approvals.insert(approval.id.clone(), approval);
        }
        for grant in state.grants.values() {
            if grant.status == GrantStatus::Active {
                let (tx, _) = watch::channel(grant.clone());
                state.watchers.insert(grant.id.clone(), tx);
            }
        }
        *broker.state.lock().await = state;
        broker.expire_due().await?;
        Ok(broker)
    }

    /// Ends grants whose time is up, every `every`, until the broker is dropped.
    pub fn spawn_expiry(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(broker) = weak.upgrade() else { return };
                if let Err(e) = broker.expire_due().await {
                    // Sessions still end at the deadline (their lease knows
                    // it); only the record waits for the next sweep.
                    tracing::error!(error = %e, "cannot record grant expiry; will retry");
                }
            }
        })
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    /// Whether `principal` may approve, deny and revoke.
    pub fn is_approver(&self, principal: &Principal) -> bool {
        let a = &self.settings.approvers;
        a.principals.contains(&principal.name)
            || principal.groups.iter().any(|g| a.groups.contains(g))
    }

    fn require_approver(&self, principal: &Principal) -> Result<(), JitError> {
        if self.is_approver(principal) {
            Ok(())
        } else {
            Err(JitError::Forbidden(format!(
                "{} is not an approver (identity.approvers)",
                principal.name
            )))
        }
    }

    // ---- grants ----

    /// A workload asks for access to a `jit` connection, for itself.
    pub async fn request_grant(
        &self,
        principal: &Principal,
        connection: &str,
        duration: Duration,
        reason: &str,
    ) -> Result<Grant, JitError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(JitError::Invalid("a reason is required".into()));
        }
        if duration.is_zero() {
            return Err(JitError::Invalid(
                "duration must be longer than zero".into(),
            ));
        }
        let terms = self
            .policies
            .applicable(principal, connection)
            .jit_terms()
            .ok_or_else(|| {
                JitError::Forbidden(format!(
                    "no just-in-time policy lets {} request access to connection {connection:?}",
                    principal.name
                ))
            })?;
        if duration > terms.max.0 {
            return Err(JitError::Invalid(format!(
                "duration {}s is longer than the policy's max of {}s",
                duration.as_secs(),
                terms.max.0.as_secs()
            )));
        }
        let mut state = self.state.lock().await;
        if let Some(open) = state.grants.values().find(|g| {
            g.principal == principal.name
                && g.connection == connection
                && g.status.is_open()
                && g.expires_at.is_none_or(|e| e > SystemTime::now())
        }) {
            // A second grant while one is open would extend it, which the
            // grantee must not be able to do.
            return Err(JitError::Conflict(format!(
                "{} already has grant {} ({:?}) on {connection:?}",
                principal.name, open.id, open.status
            )));
        }
        let auto = terms.approval == JitApproval::Auto;
        let mut grant = Grant {
            id: new_id("g"),
            principal: principal.name.clone(),
            connection: connection.to_string(),
            reason: reason.to_string(),
            duration_secs: duration.as_secs().max(1),
            approval: if auto { "auto" } else { "required" }.into(),
            status: GrantStatus::Pending,
            requested_at: SystemTime::now(),
            decided_by: None,
            decided_at: None,
            expires_at: None,
            note: None,
        };
        self.record_grant(&grant, "requested", Some(principal))
            .await?;
        if auto {
            activate(&mut grant, "auto");
            let recorded = self.record_grant(&grant, "approved", None).await;
            if let Err(e) = recorded {
                // The request stands, unapproved: an approver can still act.
                let mut pending = grant.clone();
                pending.status = GrantStatus::Pending;
                pending.decided_by = None;
                pending.decided_at = None;
                pending.expires_at = None;
                state.grants.insert(pending.id.clone(), pending);
                return Err(e);
            }
            let (tx, _) = watch::channel(grant.clone());
            state.watchers.insert(grant.id.clone(), tx);
        } else {
            self.notifier.notify(Event::GrantRequested(grant.clone()));
        }
        state.grants.insert(grant.id.clone(), grant.clone());
        tracing::info!(grant = %grant.id, principal = %grant.principal, connection = %grant.connection, status = ?grant.status, "grant requested");
        Ok(grant)
    }

    pub async fn approve_grant(&self, id: &str, approver: &Principal) -> Result<Grant, JitError> {
        self.require_approver(approver)?;
        let mut state = self.state.lock().await;
        let mut grant = find(&state.grants, id, "grant")?.clone();
        if grant.principal == approver.name {
            return Err(JitError::Forbidden(
                "an approver cannot approve their own request".into(),
            ));
        }
        if grant.status != GrantStatus::Pending {
            return Err(JitError::Conflict(format!(
                "grant {id} is {:?}, not pending",
                grant.status
            )));
        }
        activate(&mut grant, &approver.name);
        self.record_grant(&grant, "approved", Some(approver))
            .await?;
        let (tx, _) = watch::channel(grant.clone());
        state.watchers.insert(grant.id.clone(), tx);
        state.grants.insert(grant.id.clone(), grant.clone());
        tracing::info!(grant = %id, approver = %approver.name, "grant approved");
        Ok(grant)
    }

    pub async fn deny_grant(
        &self,
        id: &str,
        approver: &Principal,
        note: Option<String>,
    ) -> Result<Grant, JitError> {
        self.end_grant(id, approver, note, GrantStatus::Denied)
            .await
    }

    /// Ends a pending or active grant now; sessions under it end at once.
    pub async fn revoke_grant(
        &self,
        id: &str,
        approver: &Principal,
        note: Option<String>,
    ) -> Result<Grant, JitError> {
        self.end_grant(id, approver, note, GrantStatus::Revoked)
            .await
    }

    async fn end_grant(
        &self,
        id: &str,
        approver: &Principal,
        note: Option<String>,
        to: GrantStatus,
    ) -> Result<Grant, JitError> {
        self.require_approver(approver)?;
        let mut state = self.state.lock().await;
        let mut grant = find(&state.grants, id, "grant")?.clone();
        let allowed = match to {
            GrantStatus::Denied => grant.status == GrantStatus::Pending,
            _ => grant.status.is_open(),
        };
        if !allowed {
            return Err(JitError::Conflict(format!(
                "grant {id} is {:?}; cannot make it {to:?}",
                grant.status
            )));
        }
        if to == GrantStatus::Denied && grant.principal == approver.name {
            return Err(JitError::Forbidden(
                "an approver cannot decide their own request".into(),
            ));
        }
        grant.status = to;
        grant.decided_by = Some(approver.name.clone());
        grant.decided_at = Some(SystemTime::now());
        grant.note = note;
        let event = if to == GrantStatus::Denied {
            "denied"
        } else {
            "revoked"
        };
        self.record_grant(&grant, event, Some(approver)).await?;
        publish(&mut state, &grant);
        tracing::info!(grant = %id, approver = %approver.name, event, "grant ended");
        Ok(grant)
    }

    /// Records and applies the expiry of every active grant past its end,
    /// and forgets what is long settled (see [`KEEP_CLOSED_GRANTS`]).
    pub async fn expire_due(&self) -> Result<(), JitError> {
        let now = SystemTime::now();
        let mut state = self.state.lock().await;
        prune(&mut state, now);
        let due: Vec<Grant> = state
            .grants
            .values()
            .filter(|g| g.status == GrantStatus::Active && !g.in_force(now))
            .cloned()
            .collect();
        for mut grant in due {
            grant.status = GrantStatus::Expired;
            self.record_grant(&grant, "expired", None).await?;
            publish(&mut state, &grant);
            tracing::info!(grant = %grant.id, "grant expired");
        }
        Ok(())
    }

    /// The grant in force for `principal` on `connection`, as a lease a
    /// session can watch.
    pub async fn lease(&self, principal: &str, connection: &str) -> Option<GrantLease> {
        let now = SystemTime::now();
        let state = self.state.lock().await;
        let grant = state
            .grants
            .values()
            .find(|g| g.principal == principal && g.connection == connection && g.in_force(now))?;
        let changes = state.watchers.get(&grant.id)?.subscribe();
        Some(GrantLease {
            id: grant.id.clone(),
            expires_at: grant.expires_at?,
            changes,
        })
    }

    /// Approvers see every grant; anyone else their own.
    pub async fn grants(&self, caller: &Principal) -> Vec<Grant> {
        let approver = self.is_approver(caller);
        let state = self.state.lock().await;
        let mut out: Vec<Grant> = state
            .grants
            .values()
            .filter(|g| approver || g.principal == caller.name)
            .cloned()
            .collect();
        out.sort_by_key(|g| g.requested_at);
        out
    }

    pub async fn grant(&self, id: &str, caller: &Principal) -> Result<Grant, JitError> {
        let state = self.state.lock().await;
        let grant = find(&state.grants, id, "grant")?;
        if grant.principal != caller.name && !self.is_approver(caller) {
            return Err(JitError::Forbidden(format!(
                "grant {id} belongs to someone else"
            )));
        }
        Ok(grant.clone())
    }

    async fn record_grant(
        &self,
        grant: &Grant,
        event: &str,
        actor: Option<&Principal>,
    ) -> Result<i64, JitError> {
        let record = NewRecord::new(RecordKind::Grant)
            .principal(grant.principal.clone())
            .connection(grant.connection.clone())
            .decision(event)
            .detail(json!({
                "id": grant.id,
                "grant": grant,
                "by": actor.map(|a| a.name.clone()),
                "token": actor.map(|a| a.token_fingerprint.clone()),
            }));
        Ok(self.store.append(record).await?)
    }

    // ---- held statements ----

    /// Registers a held statement and tells approvers; the caller waits on
    /// the returned [`Held`]. Fails (and nothing is held) if it cannot be
    /// recorded.
    pub async fn hold(self: &Arc<Self>, request: HoldRequest) -> Result<Held, JitError> {
        let now = SystemTime::now();
        let approval = Approval {
            id: new_id("a"),
            session_id: request.session_id,
            principal: request.principal,
            connection: request.connection,
            statement: request.statement,
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
        if window.is_some_and(|w| w.is_zero() || w > MAX_WINDOW) {
            return Err(JitError::Invalid(format!(
                "the re-run window must be between 1s and {}s",
                MAX_WINDOW.as_secs()
            )));
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
        let mut state = self.state.lock().await;
        let mut approval = find(&state.approvals, id, "approval")?.clone();
        if approval.principal == approver.name {
            return Err(JitError::Forbidden(
                "an approver cannot decide on their own statement".into(),
            ));
        }
        if approval.status != ApprovalStatus::Pending {
            return Err(JitError::Conflict(format!(
                "approval {id} is {:?}, not pending",
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

    async fn record_approval(
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

/// How long closed grants stay listed (and in memory); their records stay
/// in the store for good.
pub const KEEP_CLOSED_GRANTS: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long settled approvals stay listed, counted from the decision or the
/// end of their re-run window, whichever is later.
pub const KEEP_SETTLED_APPROVALS: Duration = Duration::from_secs(24 * 3600);

/// Drops long-settled grants and approvals, so a gateway that runs for
/// months does not hold every approval it ever saw.
fn prune(state: &mut State, now: SystemTime) {
    let older_than = |t: Option<SystemTime>, keep: Duration| {
        t.and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > keep)
    };
    state.grants.retain(|_, g| {
        g.status.is_open() || !older_than(g.decided_at.or(g.expires_at), KEEP_CLOSED_GRANTS)
    });
    state.approvals.retain(|_, a| {
        let settled_at = a.covers_until.max(a.decided_at);
        a.status == ApprovalStatus::Pending || !older_than(settled_at, KEEP_SETTLED_APPROVALS)
    });
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
            && a.connection == held.connection
            && a.statement == held.statement
    })
}

fn activate(grant: &mut Grant, by: &str) {
    let now = SystemTime::now();
    grant.status = GrantStatus::Active;
    grant.decided_by = Some(by.to_string());
    grant.decided_at = Some(now);
    grant.expires_at = Some(now + grant.duration());
}

/// Stores the grant's new state and tells its sessions.
fn publish(state: &mut State, grant: &Grant) {
    state.grants.insert(grant.id.clone(), grant.clone());
    if let Some(tx) = state.watchers.remove(&grant.id) {
        let _ = tx.send(grant.clone());
    }
}

fn find<'a, T>(map: &'a HashMap<String, T>, id: &str, what: &str) -> Result<&'a T, JitError> {
    map.get(id)
        .ok_or_else(|| JitError::NotFound(format!("no {what} {id:?}")))
}

fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &hex[..16])
}

/// Applies one stored record to the state being rebuilt. Records that do
/// not parse are skipped with a warning: they are still in the chain, and
/// one bad record must not lock everyone out.
fn replay(state: &mut State, record: &Record) {
    let result = match record.kind {
        RecordKind::Grant => {
            serde_json::from_value::<Grant>(record.detail["grant"].clone()).map(|g| {
                state.grants.insert(g.id.clone(), g);
            })
        }
        RecordKind::Approval => {
            serde_json::from_value::<Approval>(record.detail["approval"].clone()).map(|a| {
                state.approvals.insert(a.id.clone(), a);
            })
        }
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(record = record.id, error = %e, "cannot replay record");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, status: GrantStatus, decided_at: SystemTime) -> Grant {
        Grant {
            id: id.into(),
            principal: "ci".into(),
            connection: "db".into(),
            reason: "r".into(),
            duration_secs: 60,
            approval: "required".into(),
            status,
            requested_at: decided_at,
            decided_by: Some("alice".into()),
            decided_at: Some(decided_at),
            expires_at: None,
            note: None,
        }
    }

    fn approval(id: &str, status: ApprovalStatus, decided_at: SystemTime) -> Approval {
        Approval {
            id: id.into(),
            session_id: "s".into(),
            principal: "ci".into(),
            connection: "db".into(),
            statement: "UPDATE t".into(),
            policy: None,
            rule: "write".into(),
            reason: "r".into(),
            grant: None,
            status,
            requested_at: decided_at,
            deadline: decided_at,
            decided_by: None,
            decided_at: Some(decided_at),
            note: None,
            covers_until: None,
            covered_by: None,
        }
    }

    #[test]
    fn prune_forgets_only_what_is_long_settled() {
        let now = SystemTime::now();
        let old = now - KEEP_CLOSED_GRANTS - Duration::from_secs(1);
        let mut state = State::default();
        for g in [
            grant("g-old-denied", GrantStatus::Denied, old),
            grant("g-old-pending", GrantStatus::Pending, old),
            grant("g-new-revoked", GrantStatus::Revoked, now),
        ] {
            state.grants.insert(g.id.clone(), g);
        }
        let mut windowed = approval("a-window", ApprovalStatus::Approved, old);
        windowed.covers_until = Some(now + Duration::from_secs(60));
        for a in [
            approval("a-old-denied", ApprovalStatus::Denied, old),
            approval("a-old-pending", ApprovalStatus::Pending, old),
            approval("a-new", ApprovalStatus::Approved, now),
            windowed,
        ] {
            state.approvals.insert(a.id.clone(), a);
        }
        prune(&mut state, now);
        let mut grants: Vec<&str> = state.grants.keys().map(String::as_str).collect();
        grants.sort();
        assert_eq!(grants, ["g-new-revoked", "g-old-pending"]);
        let mut approvals: Vec<&str> = state.approvals.keys().map(String::as_str).collect();
        approvals.sort();
        assert_eq!(approvals, ["a-new", "a-old-pending", "a-window"]);
    }
}

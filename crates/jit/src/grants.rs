//! Grants: one principal, one connection, a bounded time, given by a human
//! (or at once under `approval: auto`) and never extended by the grantee.

use std::time::{Duration, SystemTime};

use portcullis_config::JitApproval;
use portcullis_identity::Principal;
use portcullis_records::{NewRecord, RecordKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::broker::{find, new_id, prune, State};
use crate::notify::Event;
use crate::timefmt;
use crate::{Broker, JitError};

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
    /// The name people and the API see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Denied => "denied",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }

    /// Still open: a second request for the same principal and connection
    /// would amount to extending this one.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }
}

impl std::fmt::Display for GrantStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A grant as stored in its records and answered by the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub principal: String,
    /// The issuer of the principal's tokens: the same name from another issuer is someone else.
    /// Empty in records written before issuers were recorded (see `Broker::open`).
    #[serde(default)]
    pub issuer: String,
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
    /// Whether `principal` is the grantee.
    pub fn is_for(&self, principal: &Principal) -> bool {
        self.principal == principal.name && self.issuer == principal.issuer
    }

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
            status => format!("grant {} is {status}", self.id),
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

/// Grants: requested by workloads, decided by approvers, ended by time or
/// revocation.
impl Broker {
    /// A workload asks for access to a `jit` connection, for itself.
    pub async fn request_grant(
        &self,
        principal: &Principal,
        connection: &str,
        duration: Duration,
        reason: &str,
    ) -> Result<Grant, JitError> {
        self.count_request(principal)?;
        let reason = crate::reason(reason)?;
        crate::duration::check(duration).map_err(|why| JitError::Invalid(why.into()))?;
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
                "duration {} is longer than the policy's max of {}",
                crate::duration::describe(duration),
                crate::duration::describe(terms.max.0)
            )));
        }
        let mut state = self.state.lock().await;
        if let Some(open) = state.grants.values().find(|g| {
            g.is_for(principal)
                && g.connection == connection
                && g.status.is_open()
                && g.expires_at.is_none_or(|e| e > SystemTime::now())
        }) {
            // A second grant while one is open would extend it, which the
            // grantee must not be able to do.
            return Err(JitError::Conflict(format!(
                "{} already has {} grant {} on connection {connection:?}; grants cannot be extended",
                principal.name,
                if open.status == GrantStatus::Active { "an active" } else { "a pending" },
                open.id
            )));
        }
        let auto = terms.approval == JitApproval::Auto;
        let mut grant = Grant {
            id: new_id("g"),
            principal: principal.name.clone(),
            issuer: principal.issuer.clone(),
            connection: connection.to_string(),
            reason,
            duration_secs: duration.as_secs(),
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
            let pending = grant.clone();
            activate(&mut grant, "auto");
            if let Err(e) = self.record_grant(&grant, "approved", None).await {
                // The recorded request stands, unapproved: an approver can
                // still act on it.
                state.grants.insert(pending.id.clone(), pending);
                return Err(e);
            }
            let (tx, _) = watch::channel(grant.clone());
            state.watchers.insert(grant.id.clone(), tx);
        } else if self.may_announce(&grant.principal) {
            self.notifier.notify(Event::GrantRequested(grant.clone()));
        } else {
            tracing::info!(grant = %grant.id, principal = %grant.principal, "grant request not announced: its principal's requests already paged approvers often");
        }
        state.grants.insert(grant.id.clone(), grant.clone());
        tracing::info!(grant = %grant.id, principal = %grant.principal, connection = %grant.connection, status = ?grant.status, "grant requested");
        Ok(grant)
    }

    pub async fn approve_grant(&self, id: &str, approver: &Principal) -> Result<Grant, JitError> {
        self.require_approver(approver)?;
        let mut state = self.state.lock().await;
        let mut grant = find(&state.grants, id, "grant")?.clone();
        if grant.is_for(approver) {
            return Err(JitError::Forbidden(
                "an approver cannot approve their own request".into(),
            ));
        }
        if grant.status != GrantStatus::Pending {
            return Err(JitError::Conflict(format!(
                "grant {id} is already {}; only a pending grant can be approved",
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
        let note = crate::note(note)?;
        let mut state = self.state.lock().await;
        let mut grant = find(&state.grants, id, "grant")?.clone();
        let allowed = match to {
            GrantStatus::Denied => grant.status == GrantStatus::Pending,
            _ => grant.status.is_open(),
        };
        if !allowed {
            let only = if to == GrantStatus::Denied {
                "only a pending grant can be denied"
            } else {
                "only a pending or active grant can be revoked"
            };
            return Err(JitError::Conflict(format!(
                "grant {id} is already {}; {only}",
                grant.status
            )));
        }
        if to == GrantStatus::Denied && grant.is_for(approver) {
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
    /// and forgets what is long settled (grants closed over 7 days, approvals settled over a day).
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
    pub async fn lease(&self, principal: &Principal, connection: &str) -> Option<GrantLease> {
        let now = SystemTime::now();
        let state = self.state.lock().await;
        let grant = state
            .grants
            .values()
            .find(|g| g.is_for(principal) && g.connection == connection && g.in_force(now))?;
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
            .filter(|g| approver || g.is_for(caller))
            .cloned()
            .collect();
        out.sort_by_key(|g| g.requested_at);
        out
    }

    pub async fn grant(&self, id: &str, caller: &Principal) -> Result<Grant, JitError> {
        let state = self.state.lock().await;
        let grant = find(&state.grants, id, "grant")?;
        if !grant.is_for(caller) && !self.is_approver(caller) {
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

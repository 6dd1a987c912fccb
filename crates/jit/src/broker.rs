//! The broker: its state, how it is rebuilt from the store, who may approve,
//! and how long settled things are kept. The changes themselves live beside
//! their types (`grants.rs`, `approvals.rs`).
//!
//! One async mutex guards the state, held across the audit append of each
//! change: grant and approval changes are rare next to statements, and
//! holding it makes "recorded, then applied" atomic with respect to a
//! concurrent approve/deny/revoke.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_config::ApproversConfig;
use portcullis_identity::Principal;
use portcullis_policy::PolicySet;
use portcullis_records::{Record, RecordKind, Store};
use tokio::sync::{oneshot, watch, Mutex};

use crate::approvals::{Approval, ApprovalStatus, Outcome};
use crate::grants::{Grant, GrantStatus};
use crate::limits::PerKey;
use crate::notify::Notifier;
use crate::JitError;

/// The parts of the config the broker needs.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub approvers: ApproversConfig,
    pub approval_timeout: Duration,
    /// Base of the admin API's URL, for links in notices and webhooks.
    pub base_url: String,
    /// The one configured issuer, if there is exactly one: grants and approvals recorded before
    /// records named the issuer are taken to be of it (with several, they match no one).
    pub sole_issuer: Option<String>,
}

pub struct Broker {
    pub(crate) store: Store,
    pub(crate) policies: Arc<PolicySet>,
    pub(crate) settings: BrokerSettings,
    pub(crate) notifier: Notifier,
    pub(crate) state: Mutex<State>,
    pub(crate) limits: std::sync::Mutex<RequestLimits>,
}

/// Per-principal limits on grant requests and on the webhooks they cause.
#[derive(Debug)]
pub(crate) struct RequestLimits {
    pub(crate) requests: PerKey,
    pub(crate) announced: PerKey,
}

impl Default for RequestLimits {
    fn default() -> Self {
        let (max, window) = crate::GRANT_REQUESTS;
        let (announced, announced_window) = crate::ANNOUNCED_REQUESTS;
        Self {
            requests: PerKey::new(max, window),
            announced: PerKey::new(announced, announced_window),
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) grants: HashMap<String, Grant>,
    /// One channel per active grant; sessions under it hold receivers.
    pub(crate) watchers: HashMap<String, watch::Sender<Grant>>,
    pub(crate) approvals: HashMap<String, Approval>,
    /// The waiting session of each pending approval.
    pub(crate) waiting: HashMap<String, oneshot::Sender<Outcome>>,
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
        if let Some(issuer) = &settings.sole_issuer {
            adopt_unnamed_issuer(&mut state, issuer);
        }
        let broker = Arc::new(Broker {
            store,
            policies,
            settings,
            notifier,
            state: Mutex::new(State::default()),
            limits: Default::default(),
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

    /// Whether `principal` may approve, deny and revoke: named (with its issuer, when the
    /// config ties the name to one) or in a named group of its issuer.
    pub fn is_approver(&self, principal: &Principal) -> bool {
        let a = &self.settings.approvers;
        let issuer = principal.issuer.as_str();
        a.principals.iter().any(|p| p.is(issuer, &principal.name))
            || principal
                .groups
                .iter()
                .any(|g| a.groups.iter().any(|entry| entry.is(issuer, g)))
    }

    /// Counts a grant request of `principal`; refused past
    /// [`crate::GRANT_REQUESTS`].
    pub(crate) fn count_request(&self, principal: &Principal) -> Result<(), JitError> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        limits
            .requests
            .take(&principal.name, now)
            .map_err(|retry_after| {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                JitError::TooMany {
                    message: format!(
                        "too many grant requests from {} ({}); try again in {secs} s",
                        principal.name,
                        limits.requests.describe()
                    ),
                    retry_after,
                }
            })
    }

    /// Whether a new request of `principal` may page the approvers, within
    /// [`crate::ANNOUNCED_REQUESTS`].
    pub(crate) fn may_announce(&self, principal: &str) -> bool {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .announced
            .take(principal, std::time::Instant::now())
            .is_ok()
    }

    /// Refused with [`JitError::Forbidden`] unless `principal` is an approver.
    pub fn require_approver(&self, principal: &Principal) -> Result<(), JitError> {
        if self.is_approver(principal) {
            Ok(())
        } else {
            Err(JitError::Forbidden(format!(
                "{} is not an approver (identity.approvers)",
                principal.name
            )))
        }
    }
}

fn adopt_unnamed_issuer(state: &mut State, issuer: &str) {
    let grants = state.grants.values_mut().map(|g| &mut g.issuer);
    let approvals = state.approvals.values_mut().map(|a| &mut a.issuer);
    for unnamed in grants.chain(approvals).filter(|i| i.is_empty()) {
        *unnamed = issuer.to_string();
    }
}

/// How long closed grants stay listed (and in memory); their records stay
/// in the store for good.
pub(crate) const KEEP_CLOSED_GRANTS: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long settled approvals stay listed, counted from the decision or the
/// end of their re-run window, whichever is later.
pub(crate) const KEEP_SETTLED_APPROVALS: Duration = Duration::from_secs(24 * 3600);

/// Drops long-settled grants and approvals, so a gateway that runs for
/// months does not hold every approval it ever saw.
pub(crate) fn prune(state: &mut State, now: SystemTime) {
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

pub(crate) fn find<'a, T>(
    map: &'a HashMap<String, T>,
    id: &str,
    what: &str,
) -> Result<&'a T, JitError> {
    map.get(id)
        .ok_or_else(|| JitError::NotFound(format!("no {what} {id:?}")))
}

pub(crate) fn new_id(prefix: &str) -> String {
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
            issuer: "https://issuer.test".into(),
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
            issuer: "https://issuer.test".into(),
            connection: "db".into(),
            statement: "UPDATE t".into(),
            classes: vec!["write".into()],
            relations: vec!["t".into()],
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

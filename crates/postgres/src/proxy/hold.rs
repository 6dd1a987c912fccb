//! What the relay says about a statement held for approval: the NOTICE the
//! client sees while it waits, and the decision and error once it is
//! settled. Pure, so the wording is tested here rather than through psql.

use portcullis_jit::{Approval, Outcome};
use portcullis_policy::decide::{Decision, Verdict};

use crate::codec::backend::{sqlstate, ErrorFields, Severity};

/// `NOTICE: awaiting approval a-…, see <url>`, with the policy's reason and
/// the deadline.
pub(crate) fn notice(approval: &Approval, base_url: &str, reason: &str) -> ErrorFields {
    ErrorFields {
        severity: Severity::Notice,
        code: "00000",
        message: format!(
            "awaiting approval {}, see {base_url}/v1/approvals/{}",
            approval.id, approval.id
        ),
        detail: Some(reason.to_string()),
        hint: Some(format!(
            "an approver runs `portcullis approvals approve {}`; the statement is refused if nobody does by {}",
            approval.id,
            portcullis_jit::format_time(approval.deadline)
        )),
    }
}

/// The decision a held statement ends with, and the error the client gets
/// when it is not run. `outcome` is `None` when the client cancelled.
pub(crate) fn settled(
    held: &Decision,
    id: &str,
    outcome: Option<&Outcome>,
) -> (Decision, Option<ErrorFields>) {
    let message = match outcome {
        Some(Outcome::Approved { by }) => {
            let decision = Decision {
                verdict: Verdict::Allow,
                reason: format!("{}; approved by {by} (approval {id})", held.reason),
                ..held.clone()
            };
            return (decision, None);
        }
        Some(Outcome::Denied { by, note }) => format!(
            "approval {id} was denied by {by}{}",
            note.as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ),
        Some(Outcome::TimedOut) => format!("approval {id} timed out: no approver answered in time"),
        Some(Outcome::Lost) => format!("approval {id} was lost by the gateway"),
        None => format!("canceling statement due to user request (approval {id} abandoned)"),
    };
    let code = match outcome {
        None => sqlstate::QUERY_CANCELED,
        Some(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
    };
    let decision = Decision {
        verdict: Verdict::Deny,
        reason: format!("{}; {message}", held.reason),
        ..held.clone()
    };
    let error = ErrorFields::error(code, message)
        .with_detail(held.reason.clone())
        .with_hint("Portcullis refused this statement; the session is still usable.");
    (decision, Some(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Decision {
        Decision {
            verdict: Verdict::Hold,
            policy: Some("p".into()),
            rule: "write".into(),
            reason: "statement \"UPDATE\" matches require_approval rule \"write\"".into(),
            statement_index: None,
        }
    }

    #[test]
    fn approval_allows_under_the_same_rule_and_names_the_approver() {
        let outcome = Outcome::Approved { by: "alice".into() };
        let (d, error) = settled(&held(), "a-1", Some(&outcome));
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!((d.policy.as_deref(), d.rule.as_str()), (Some("p"), "write"));
        assert!(
            d.reason.ends_with("; approved by alice (approval a-1)"),
            "{}",
            d.reason
        );
        assert!(error.is_none());
    }

    #[test]
    fn refusals_name_the_approval_and_why() {
        let denied = Outcome::Denied {
            by: "alice".into(),
            note: Some("freeze".into()),
        };
        let cases = [
            (
                Some(&denied),
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "approval a-1 was denied by alice: freeze",
            ),
            (
                Some(&Outcome::TimedOut),
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "approval a-1 timed out: no approver answered in time",
            ),
            (
                Some(&Outcome::Lost),
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "approval a-1 was lost by the gateway",
            ),
            (
                None,
                sqlstate::QUERY_CANCELED,
                "canceling statement due to user request (approval a-1 abandoned)",
            ),
        ];
        for (outcome, code, message) in cases {
            let (d, error) = settled(&held(), "a-1", outcome);
            let error = error.expect("refused");
            assert_eq!(d.verdict, Verdict::Deny);
            assert_eq!((error.code, error.message.as_str()), (code, message));
            assert!(d.reason.ends_with(message), "{}", d.reason);
        }
    }

    #[test]
    fn the_notice_points_at_the_approval() {
        let now = std::time::SystemTime::now();
        let approval = Approval {
            id: "a-1".into(),
            session_id: "s".into(),
            principal: "ci".into(),
            connection: "db".into(),
            statement: "UPDATE t SET x = 1".into(),
            policy: None,
            rule: "write".into(),
            reason: "r".into(),
            grant: None,
            status: portcullis_jit::ApprovalStatus::Pending,
            requested_at: now,
            deadline: now,
            decided_by: None,
            decided_at: None,
            note: None,
            covers_until: None,
            covered_by: None,
        };
        let n = notice(&approval, "http://gw:8080", "why");
        assert_eq!(n.severity, Severity::Notice);
        assert_eq!(
            n.message,
            "awaiting approval a-1, see http://gw:8080/v1/approvals/a-1"
        );
        assert_eq!(n.detail.as_deref(), Some("why"));
    }
}

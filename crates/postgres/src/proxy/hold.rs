//! What the relay says about a statement held for approval: the NOTICE the
//! client sees while it waits, and the decision and error once it is
//! settled. The sentences are `portcullis_jit::wording` (shared with SSH);
//! here they become PostgreSQL messages.

use portcullis_jit::{wording, Approval, Outcome};
use portcullis_policy::decide::Decision;

use crate::codec::backend::{sqlstate, ErrorFields, Severity};

/// `NOTICE: awaiting approval a-…, see <url>`, with the policy's reason and
/// the deadline.
pub(crate) fn notice(approval: &Approval, base_url: &str, reason: &str) -> ErrorFields {
    ErrorFields {
        severity: Severity::Notice,
        code: "00000",
        message: wording::awaiting(approval, base_url),
        detail: Some(reason.to_string()),
        hint: Some(wording::deadline_hint(approval, "statement")),
    }
}

/// The decision a held statement ends with, and the error the client gets
/// when it is not run. `outcome` is `None` when the client cancelled.
pub(crate) fn settled(
    held: &Decision,
    id: &str,
    outcome: Option<&Outcome>,
) -> (Decision, Option<ErrorFields>) {
    let (decision, message, code) = match outcome {
        Some(outcome) => {
            let (decision, message) = wording::settled(held, id, outcome);
            (decision, message, sqlstate::INSUFFICIENT_PRIVILEGE)
        }
        None => {
            let message =
                format!("canceling statement due to user request (approval {id} abandoned)");
            let decision = wording::refused(held, &message);
            (decision, Some(message), sqlstate::QUERY_CANCELED)
        }
    };
    let error = message.map(|message| {
        ErrorFields::error(code, message)
            .with_detail(held.reason.clone())
            .with_hint("Portcullis refused this statement; the session is still usable.")
    });
    (decision, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::decide::Verdict;

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
    fn approval_runs_the_statement_without_an_error() {
        let outcome = Outcome::Approved { by: "alice".into() };
        let (d, error) = settled(&held(), "a-1", Some(&outcome));
        assert_eq!(d.verdict, Verdict::Allow);
        assert!(error.is_none());
    }

    #[test]
    fn refusals_carry_their_sqlstate() {
        let (d, error) = settled(&held(), "a-1", Some(&Outcome::TimedOut));
        let error = error.expect("refused");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(error.code, sqlstate::INSUFFICIENT_PRIVILEGE);
        assert!(error.message.starts_with("approval a-1 timed out"));
        let (d, error) = settled(&held(), "a-1", None);
        let error = error.expect("refused");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            (error.code, error.message.as_str()),
            (
                sqlstate::QUERY_CANCELED,
                "canceling statement due to user request (approval a-1 abandoned)"
            )
        );
        assert!(
            d.reason.ends_with("(approval a-1 abandoned)"),
            "{}",
            d.reason
        );
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

//! What every protocol tells its client about a held request: where to look
//! while it waits, and how it was settled. One wording for PostgreSQL and
//! SSH, so approvers and clients read the same sentences whichever way a
//! request came in; each driver only wraps it (a NOTICE, a stderr line).

use portcullis_policy::decide::{Decision, Verdict};

use crate::{Approval, Outcome};

/// `awaiting approval a-…, see <url>`: the line a client sees while its
/// request waits.
pub fn awaiting(approval: &Approval, base_url: &str) -> String {
    format!(
        "awaiting approval {}, see {base_url}/v1/approvals/{}",
        approval.id, approval.id
    )
}

/// Who can release it and until when.
pub fn deadline_hint(approval: &Approval, what: &str) -> String {
    format!(
        "an approver runs `portcullis approvals approve {}`; the {what} is refused if nobody does by {}",
        approval.id,
        crate::format_time(approval.deadline)
    )
}

/// The decision a held request ends with once its approval is settled, and
/// the sentence naming the approval when it is not run.
pub fn settled(held: &Decision, id: &str, outcome: &Outcome) -> (Decision, Option<String>) {
    let message = match outcome {
        Outcome::Approved { by } => {
            let decision = Decision {
                verdict: Verdict::Allow,
                reason: format!("{}; approved by {by} (approval {id})", held.reason),
                ..held.clone()
            };
            return (decision, None);
        }
        Outcome::Denied { by, note } => format!(
            "approval {id} was denied by {by}{}",
            note.as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ),
        Outcome::TimedOut => format!("approval {id} timed out: no approver answered in time"),
        Outcome::Lost => format!("approval {id} was lost by the gateway"),
    };
    (refused(held, &message), Some(message))
}

/// The held decision turned into a refusal for `message`, under the same
/// policy and rule.
pub fn refused(held: &Decision, message: &str) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        reason: format!("{}; {message}", held.reason),
        ..held.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApprovalStatus;

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
        let (d, message) = settled(&held(), "a-1", &outcome);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!((d.policy.as_deref(), d.rule.as_str()), (Some("p"), "write"));
        assert!(
            d.reason.ends_with("; approved by alice (approval a-1)"),
            "{}",
            d.reason
        );
        assert!(message.is_none());
    }

    #[test]
    fn refusals_name_the_approval_and_why() {
        let denied = Outcome::Denied {
            by: "alice".into(),
            note: Some("freeze".into()),
        };
        let cases = [
            (denied, "approval a-1 was denied by alice: freeze"),
            (
                Outcome::TimedOut,
                "approval a-1 timed out: no approver answered in time",
            ),
            (Outcome::Lost, "approval a-1 was lost by the gateway"),
        ];
        for (outcome, expected) in cases {
            let (d, message) = settled(&held(), "a-1", &outcome);
            assert_eq!(d.verdict, Verdict::Deny);
            assert_eq!(message.as_deref(), Some(expected));
            assert!(d.reason.ends_with(expected), "{}", d.reason);
            assert_eq!(d.rule, "write");
        }
    }

    #[test]
    fn the_waiting_line_points_at_the_approval() {
        let now = std::time::SystemTime::now();
        let approval = Approval {
            id: "a-1".into(),
            session_id: "s".into(),
            principal: "ci".into(),
            issuer: "https://issuer.test".into(),
            connection: "db".into(),
            statement: "UPDATE t SET x = 1".into(),
            classes: vec!["write".into()],
            relations: vec!["t".into()],
            policy: None,
            rule: "write".into(),
            reason: "r".into(),
            grant: None,
            status: ApprovalStatus::Pending,
            requested_at: now,
            deadline: now,
            decided_by: None,
            decided_at: None,
            note: None,
            covers_until: None,
            covered_by: None,
        };
        assert_eq!(
            awaiting(&approval, "http://gw:8080"),
            "awaiting approval a-1, see http://gw:8080/v1/approvals/a-1"
        );
        let hint = deadline_hint(&approval, "command");
        assert!(
            hint.starts_with("an approver runs `portcullis approvals approve a-1`; the command is refused if nobody does by "),
            "{hint}"
        );
    }
}

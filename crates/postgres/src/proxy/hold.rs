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
        position: None,
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

    /// The sentences are tested in `portcullis_jit::wording`; here, what
    /// PostgreSQL adds: the SQLSTATE of each refusal, and the cancel.
    #[test]
    fn refusals_carry_their_sqlstate_and_approval_has_none() {
        let held = Decision {
            verdict: Verdict::Hold,
            policy: None,
            rule: "write".into(),
            reason: "held".into(),
            statement_index: None,
        };
        let approved = Outcome::Approved { by: "alice".into() };
        let (d, error) = settled(&held, "a-1", Some(&approved));
        assert_eq!((d.verdict, error.is_none()), (Verdict::Allow, true));
        let (d, error) = settled(&held, "a-1", Some(&Outcome::TimedOut));
        let error = error.expect("refused");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(error.code, sqlstate::INSUFFICIENT_PRIVILEGE);
        assert!(error.message.starts_with("approval a-1 timed out"));
        let (d, error) = settled(&held, "a-1", None);
        let error = error.expect("refused");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            (error.code, error.message.as_str()),
            (
                sqlstate::QUERY_CANCELED,
                "canceling statement due to user request (approval a-1 abandoned)"
            )
        );
    }
}

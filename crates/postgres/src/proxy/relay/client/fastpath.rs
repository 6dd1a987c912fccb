//! Fastpath function calls (the `F` message: libpq's large-object API,
//! psql's `\lo_import` and `\lo_export`).
//!
//! A call names its function only by oid. The catalog gives its schema and
//! name, and the call is decided exactly as `SELECT schema.name()` would be:
//! large-object writes and server-side file access by the built-in lists,
//! functions outside `pg_catalog` by what the catalog says they are. Its
//! record names the function; the argument bytes (file contents, for
//! `lowrite`) appear only as a fingerprint.
//!
//! Two things a SQL call could have and a fastpath call cannot: a hold (the
//! call is a single message inside libpq's large-object loop, which cannot
//! wait for an approver; it is refused naming the rule that would have held
//! it), and masking (the result is raw bytes outside any row description,
//! so a principal with mask rules gets no fastpath at all).

use std::fmt::Write as _;
use std::sync::Arc;

use portcullis_policy::classify::Classification;
use portcullis_policy::decide::{Decision, Verdict};
use portcullis_records::NewRecord;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::codec::backend::{sqlstate, ErrorFields};
use crate::codec::Frame;
use crate::proxy::relay::{Expect, Tracker};

use super::{store_error, ClientSide, Via};

/// One fastpath call as the client sent it.
pub(super) struct Call<'m> {
    pub oid: u32,
    pub args: usize,
    pub arguments: &'m [u8],
}

impl ClientSide<'_> {
    /// Decides, records and forwards (or refuses) one fastpath call.
    pub(super) async fn function_call(&mut self, frame: &Frame, call: Call<'_>) {
        let function = self
            .gw
            .catalog
            .function_name(&self.gw.upstream, call.oid)
            .await;
        let (schema, name) = match function {
            Ok(Some(found)) => found,
            Ok(None) => return self.refuse_unknown_oid(&call).await,
            Err(e) => {
                let reason = format!(
                    "the catalog could not be asked which function oid {} is: {e}",
                    call.oid
                );
                return self.refuse_unnamed(&call, reason).await;
            }
        };
        let (classification, decision, _) = self.decide(&as_select(&schema, &name)).await;
        let decision = self.fastpath_decision(decision);
        let text = format!("fastpath {schema}.{name}({} arguments)", call.args);
        let mut record = self.statement_record(
            &text,
            &classification,
            &decision,
            Via::Fastpath { args: call.args },
        );
        record.detail["fastpath"] = fastpath_detail(&call, Some((&schema, &name)));
        self.statements += 1;
        if decision.verdict != Verdict::Allow {
            self.denied += 1;
            return self.refuse_recorded(record, &decision, None).await;
        }
        self.record_then_forward_call(frame, record, classification)
            .await;
    }

    /// What may not happen on this path turns an allow or a hold into a refusal.
    fn fastpath_decision(&self, decision: Decision) -> Decision {
        if decision.verdict == Verdict::Allow && self.mask.is_some() {
            return Decision {
                verdict: Verdict::Deny,
                reason: "a fastpath call's result is raw bytes the gateway cannot mask, and this principal has mask rules; call the function with SELECT".into(),
                rule: "fastpath".into(),
                policy: None,
                statement_index: None,
            };
        }
        if decision.verdict == Verdict::Hold {
            return Decision {
                verdict: Verdict::Deny,
                reason: format!(
                    "{}; a fastpath call cannot wait for an approval: call the function with SELECT",
                    decision.reason
                ),
                ..decision
            };
        }
        decision
    }

    /// PostgreSQL's own answer to an oid no function has.
    async fn refuse_unknown_oid(&mut self, call: &Call<'_>) {
        let reason = format!("no function has oid {}", call.oid);
        let native = ErrorFields::error(
            sqlstate::UNDEFINED_FUNCTION,
            format!("function with OID {} does not exist", call.oid),
        );
        self.refuse_unnamed_with(call, reason, Some(native)).await;
    }

    async fn refuse_unnamed(&mut self, call: &Call<'_>, reason: String) {
        self.refuse_unnamed_with(call, reason, None).await;
    }

    async fn refuse_unnamed_with(
        &mut self,
        call: &Call<'_>,
        reason: String,
        native: Option<ErrorFields>,
    ) {
        let decision = Decision {
            verdict: Verdict::Deny,
            policy: None,
            rule: "fastpath".into(),
            reason,
            statement_index: None,
        };
        let text = format!("fastpath oid {}({} arguments)", call.oid, call.args);
        let empty = Classification { statements: vec![] };
        let mut record =
            self.statement_record(&text, &empty, &decision, Via::Fastpath { args: call.args });
        record.detail["fastpath"] = fastpath_detail(call, None);
        self.statements += 1;
        self.denied += 1;
        self.refuse_recorded(record, &decision, native).await;
    }

    /// Forwarded only once its record is committed, like a simple Query;
    /// the upstream answers with FunctionCallResponse (or an error) and
    /// ReadyForQuery, and leaves the unnamed statement and portal alone.
    async fn record_then_forward_call(
        &mut self,
        frame: &Frame,
        record: NewRecord,
        classification: Arc<Classification>,
    ) {
        match self.gw.store.append(record).await {
            Ok(record_id) => {
                self.expect(Expect::Statement(Tracker::new(
                    record_id,
                    true,
                    None,
                    Some(classification),
                    Vec::new(),
                )));
                self.sync_point(false);
                frame.encode_into(&mut self.batch);
            }
            Err(e) => self.refuse_simple(store_error(&e)),
        }
    }
}

/// The call as SQL, for the classifier: quoted, so the name is taken as
/// the catalog spells it.
fn as_select(schema: &str, name: &str) -> String {
    format!("SELECT {}.{}()", quote_ident(schema), quote_ident(name))
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn fastpath_detail(call: &Call<'_>, function: Option<(&str, &str)>) -> serde_json::Value {
    json!({
        "oid": call.oid,
        "function": function.map(|(schema, name)| format!("{schema}.{name}")),
        "args": call.args,
        "args_sha256": fingerprint(call.arguments),
    })
}

/// Identifies the arguments (the same bytes written twice match) without
/// keeping them: they may be a file's contents.
fn fingerprint(arguments: &[u8]) -> String {
    let digest = Sha256::digest(arguments);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use portcullis_policy::classify::{classify, StatementClass};

    use super::*;

    fn class_of(schema: &str, name: &str) -> Option<StatementClass> {
        classify(&as_select(schema, name)).unwrap().class()
    }

    #[test]
    fn large_object_calls_are_classed_as_their_sql_calls() {
        for read in [
            "lo_open",
            "loread",
            "lo_lseek",
            "lo_lseek64",
            "lo_tell",
            "lo_close",
        ] {
            assert_eq!(
                class_of("pg_catalog", read),
                Some(StatementClass::Read),
                "{read}"
            );
        }
        for write in [
            "lowrite",
            "lo_creat",
            "lo_create",
            "lo_unlink",
            "lo_truncate",
        ] {
            assert_eq!(
                class_of("pg_catalog", write),
                Some(StatementClass::Write),
                "{write}"
            );
        }
        for admin in ["lo_import", "lo_export"] {
            assert_eq!(
                class_of("pg_catalog", admin),
                Some(StatementClass::Admin),
                "{admin}"
            );
        }
    }

    #[test]
    fn names_are_quoted_whatever_they_contain() {
        assert_eq!(
            as_select("my \"schema\"", "f(); drop table t; --"),
            r#"SELECT "my ""schema"""."f(); drop table t; --"()"#
        );
        assert_eq!(
            classify(&as_select("s", "x\"; DROP TABLE t; --"))
                .unwrap()
                .statements
                .len(),
            1
        );
    }

    #[test]
    fn arguments_leave_only_a_fingerprint() {
        let detail = fastpath_detail(
            &Call {
                oid: 955,
                args: 2,
                arguments: b"secret file contents",
            },
            Some(("pg_catalog", "lowrite")),
        );
        let text = detail.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(detail["function"], "pg_catalog.lowrite");
        assert_eq!(detail["args_sha256"].as_str().map(str::len), Some(64));
    }
}

//! The record types: what the gateway hands in ([`NewRecord`]) and what readers get back
//! ([`Record`]).
//!
//! Only the fields every record shares are columns (so sessions can be listed and filtered
//! cheaply); everything kind-specific lives in `detail`, so adding a field to one kind of record
//! needs no schema change and does not alter how the chain is hashed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A client tried to connect (allowed or denied, with the reason).
    ConnectionAttempt,
    /// An authenticated session began; `detail.client_addr` names the client.
    SessionStart,
    /// A session ended.
    SessionEnd,
    /// A statement / command / request and the decision on it; written before it is forwarded.
    Statement,
    /// How a forwarded statement turned out (duration, rows, error).
    StatementResult,
    /// A just-in-time grant changed state; `decision` names the event (`requested`, `approved`,
    /// `denied`, `revoked`, `expired`) and `detail` holds the whole grant after it, so the
    /// grant book can be rebuilt from these records alone.
    Grant,
    /// A held statement changed state; `decision` names the event (`requested`, `approved`,
    /// `denied`, `timed_out`, `abandoned`) and `detail` holds the whole approval after it.
    Approval,
    /// A webhook could not be delivered after its retries.
    Notification,
    /// An admin API request the gateway refused (`decision: deny`): a missing, bad or expired
    /// token (401), a caller not allowed to do it (403), an address over the failed-login limit
    /// (429). `detail` names the method, path, status, client address and reason. Accepted
    /// requests are recorded by the `grant` and `approval` records they cause.
    AdminRequest,
    /// Something went wrong outside a statement. Also the default, only so that
    /// `NewRecord { kind: .., ..Default::default() }` works: always set `kind`.
    #[default]
    Error,
}

impl RecordKind {
    /// Every kind, in declaration order.
    pub const ALL: [RecordKind; 10] = [
        RecordKind::ConnectionAttempt,
        RecordKind::SessionStart,
        RecordKind::SessionEnd,
        RecordKind::Statement,
        RecordKind::StatementResult,
        RecordKind::Grant,
        RecordKind::Approval,
        RecordKind::Notification,
        RecordKind::AdminRequest,
        RecordKind::Error,
    ];

    /// The name stored in the database and used in exports (same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::ConnectionAttempt => "connection_attempt",
            RecordKind::SessionStart => "session_start",
            RecordKind::SessionEnd => "session_end",
            RecordKind::Statement => "statement",
            RecordKind::StatementResult => "statement_result",
            RecordKind::Grant => "grant",
            RecordKind::Approval => "approval",
            RecordKind::Notification => "notification",
            RecordKind::AdminRequest => "admin_request",
            RecordKind::Error => "error",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`RecordKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown record kind {0:?}")]
pub struct UnknownKind(pub String);

impl FromStr for RecordKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RecordKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// A record as the gateway submits it; the store adds id, time and hashes.
#[derive(Debug, Clone, Default)]
pub struct NewRecord {
    pub kind: RecordKind,
    pub session_id: Option<String>,
    pub principal: Option<String>,
    pub connection: Option<String>,
    /// "allow" | "deny" | "hold" | "ok" | "fail"
    pub decision: Option<String>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    /// Kind-specific: statement text, class, parameter count, duration_us, rows, error, client
    /// address, reason. Never tokens or passwords.
    pub detail: serde_json::Value,
}

impl NewRecord {
    /// A record of `kind` with every other field empty and `detail` null.
    pub fn new(kind: RecordKind) -> Self {
        NewRecord {
            kind,
            ..NewRecord::default()
        }
    }

    pub fn session_id(mut self, value: impl Into<String>) -> Self {
        self.session_id = Some(value.into());
        self
    }

    pub fn principal(mut self, value: impl Into<String>) -> Self {
        self.principal = Some(value.into());
        self
    }

    pub fn connection(mut self, value: impl Into<String>) -> Self {
        self.connection = Some(value.into());
        self
    }

    pub fn decision(mut self, value: impl Into<String>) -> Self {
        self.decision = Some(value.into());
        self
    }

    pub fn policy(mut self, value: impl Into<String>) -> Self {
        self.policy = Some(value.into());
        self
    }

    pub fn rule(mut self, value: impl Into<String>) -> Self {
        self.rule = Some(value.into());
        self
    }

    pub fn detail(mut self, value: serde_json::Value) -> Self {
        self.detail = value;
        self
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain: 1, 2, 3… in commit order, without gaps.
    pub id: i64,
    /// When the writer committed it: RFC 3339 UTC with microseconds, `2024-05-01T12:00:00.000123Z`.
    pub time: String,
    pub kind: RecordKind,
    pub session_id: Option<String>,
    pub principal: Option<String>,
    pub connection: Option<String>,
    pub decision: Option<String>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub detail: serde_json::Value,
    /// Hash of the previous record (64 zeros for record 1).
    pub prev_hash: String,
    /// SHA-256 (lowercase hex) over this record's fields and `prev_hash`; see the crate docs.
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip_and_match_serde() {
        for kind in RecordKind::ALL {
            assert_eq!(kind.as_str().parse::<RecordKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(
            "sesion_start".parse::<RecordKind>(),
            Err(UnknownKind("sesion_start".into()))
        );
    }

    #[test]
    fn builder_sets_fields() {
        let r = NewRecord::new(RecordKind::Statement)
            .session_id("s1")
            .principal("alice")
            .decision("deny")
            .detail(serde_json::json!({"sql": "DROP TABLE t"}));
        assert_eq!(r.kind, RecordKind::Statement);
        assert_eq!(r.session_id.as_deref(), Some("s1"));
        assert_eq!(r.principal.as_deref(), Some("alice"));
        assert_eq!(r.decision.as_deref(), Some("deny"));
        assert_eq!(r.connection, None);
        assert_eq!(r.detail["sql"], "DROP TABLE t");
    }
}

//! Prepared statements and portals as the upstream holds them.
//!
//! A name means what the server confirmed, never what the gateway forwarded:
//! a Parse takes effect at its ParseComplete, a Bind at BindComplete, a
//! Close at CloseComplete, SQL `PREPARE` / `DEALLOCATE` / `DISCARD ALL` at
//! their CommandComplete. A Parse the server refuses (a name already in
//! use: 42P05) changes nothing, so the statement that runs under the name
//! is still the one decided for it.
//!
//! The client half decides messages before the server has answered the
//! ones before them. Inside one Sync group that is sound: if a change
//! fails, the server skips the rest of the group, so the group's own
//! changes ([`Pending`]) are read as if they had succeeded. A name the
//! group did not touch is read from [`Names`] once every earlier group that
//! changed names has been answered (the client half waits for that).

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_policy::classify::Classification;
use portcullis_policy::decide::Decision;

/// A statement as decided when it was prepared; Bind and Execute reuse it.
#[derive(Debug)]
pub(super) struct Prepared {
    pub text: String,
    pub classification: Arc<Classification>,
    pub decision: Decision,
    /// The text itself uses or changes named statements (SQL `EXECUTE`,
    /// `PREPARE`...): it is decided again at each Execute, against the
    /// names of that moment.
    pub uses_names: bool,
}

/// A portal: the statement it runs and how many parameters were bound.
#[derive(Debug, Clone)]
pub(super) struct Portal {
    pub prepared: Arc<Prepared>,
    pub params: usize,
}

/// One change to the server's names, applied when the server confirms it.
#[derive(Debug, Clone)]
pub(super) enum Change {
    /// Parse or SQL `PREPARE`.
    Prepare {
        name: String,
        prepared: Arc<Prepared>,
    },
    Bind {
        portal: String,
        bound: Portal,
    },
    /// Close of a statement, or SQL `DEALLOCATE name`.
    CloseStatement(String),
    ClosePortal(String),
    /// SQL `DEALLOCATE ALL` or `DISCARD ALL`.
    DeallocateAll,
}

impl Change {
    /// Whether a CommandComplete with `tag` confirms this SQL-level change.
    pub fn confirmed_by_tag(&self, tag: &str) -> bool {
        match self {
            Self::Prepare { .. } => tag == "PREPARE",
            Self::CloseStatement(_) => tag == "DEALLOCATE",
            Self::DeallocateAll => tag == "DEALLOCATE ALL" || tag == "DISCARD ALL",
            Self::Bind { .. } | Self::ClosePortal(_) => false,
        }
    }

    /// The protocol message that confirms this change: ParseComplete,
    /// BindComplete or CloseComplete.
    pub fn confirmed_by_message(&self) -> Option<u8> {
        match self {
            Self::Prepare { .. } => Some(b'1'),
            Self::Bind { .. } => Some(b'2'),
            Self::CloseStatement(_) | Self::ClosePortal(_) => Some(b'3'),
            Self::DeallocateAll => None,
        }
    }
}

/// The names the server has confirmed.
#[derive(Debug, Default)]
pub(super) struct Names {
    statements: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, Portal>,
}

impl Names {
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Prepare { name, prepared } => {
                self.statements.insert(name, prepared);
            }
            Change::Bind { portal, bound } => {
                self.portals.insert(portal, bound);
            }
            Change::CloseStatement(name) => {
                self.statements.remove(&name);
            }
            Change::ClosePortal(name) => {
                self.portals.remove(&name);
            }
            // Portals keep their plans; DISCARD ALL, which also closes
            // them, cannot run inside a transaction, where portals live.
            Change::DeallocateAll => self.statements.clear(),
        }
    }

    /// A simple Query drops the unnamed statement and portal before it runs.
    pub fn simple_query_ran(&mut self) {
        self.statements.remove("");
        self.portals.remove("");
    }

    /// Portals live until their transaction ends (cursors declared WITH
    /// HOLD are not portals the gateway bound).
    pub fn transaction_ended(&mut self) {
        self.portals.clear();
    }

    pub fn statement(&self, name: &str) -> Option<Arc<Prepared>> {
        self.statements.get(name).cloned()
    }

    pub fn portal(&self, name: &str) -> Option<Portal> {
        self.portals.get(name).cloned()
    }
}

/// What the current group's changes say about a name.
#[derive(Debug)]
pub(super) enum Seen<T> {
    /// The group made it.
    Made(T),
    /// The group removed it.
    Removed,
    /// The group did not touch it: ask the server's confirmed names.
    Untouched,
}

/// The changes forwarded in the current Sync group, in order.
#[derive(Debug, Default)]
pub(super) struct Pending {
    changes: Vec<Change>,
}

impl Pending {
    pub fn push(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// Whether the group changed any name (and so must be answered before
    /// a later group reads names it did not touch itself).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn clear(&mut self) {
        self.changes.clear();
    }

    pub fn statement(&self, name: &str) -> Seen<Arc<Prepared>> {
        for change in self.changes.iter().rev() {
            match change {
                Change::Prepare { name: n, prepared } if n == name => {
                    return Seen::Made(prepared.clone())
                }
                Change::CloseStatement(n) if n == name => return Seen::Removed,
                Change::DeallocateAll => return Seen::Removed,
                _ => {}
            }
        }
        Seen::Untouched
    }

    pub fn portal(&self, name: &str) -> Seen<Portal> {
        for change in self.changes.iter().rev() {
            match change {
                Change::Bind { portal, bound } if portal == name => {
                    return Seen::Made(bound.clone())
                }
                Change::ClosePortal(n) if n == name => return Seen::Removed,
                _ => {}
            }
        }
        Seen::Untouched
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portcullis_policy::classify::Classification;
    use portcullis_policy::decide::{Decision, Verdict};

    use super::{Change, Names, Pending, Portal, Prepared, Seen};

    fn prepared(text: &str) -> Arc<Prepared> {
        Arc::new(Prepared {
            text: text.into(),
            classification: Arc::new(Classification { statements: vec![] }),
            decision: Decision {
                verdict: Verdict::Allow,
                policy: None,
                rule: "test".into(),
                reason: String::new(),
                statement_index: None,
            },
            uses_names: false,
        })
    }

    fn prepare(name: &str, text: &str) -> Change {
        Change::Prepare {
            name: name.into(),
            prepared: prepared(text),
        }
    }

    #[test]
    fn the_latest_change_in_a_group_wins() {
        let mut group = Pending::default();
        group.push(prepare("s", "DELETE FROM t"));
        group.push(Change::CloseStatement("s".into()));
        assert!(matches!(group.statement("s"), Seen::Removed));
        group.push(prepare("s", "SELECT 1"));
        assert!(matches!(group.statement("s"), Seen::Made(p) if p.text == "SELECT 1"));
        assert!(matches!(group.statement("other"), Seen::Untouched));
    }

    #[test]
    fn deallocate_all_removes_statements_and_leaves_portals() {
        let mut names = Names::default();
        names.apply(prepare("s", "SELECT 1"));
        names.apply(Change::Bind {
            portal: "p".into(),
            bound: Portal {
                prepared: prepared("SELECT 1"),
                params: 0,
            },
        });
        names.apply(Change::DeallocateAll);
        assert!(names.statement("s").is_none() && names.portal("p").is_some());
    }

    #[test]
    fn a_simple_query_drops_only_the_unnamed_statement() {
        let mut names = Names::default();
        names.apply(prepare("", "DELETE FROM t"));
        names.apply(prepare("s", "SELECT 1"));
        names.simple_query_ran();
        assert!(names.statement("").is_none());
        assert!(names.statement("s").is_some());
    }

    #[test]
    fn sql_changes_are_confirmed_only_by_their_own_tag() {
        assert!(prepare("s", "SELECT 1").confirmed_by_tag("PREPARE"));
        assert!(!prepare("s", "SELECT 1").confirmed_by_tag("PREPARE TRANSACTION"));
        assert!(Change::CloseStatement("s".into()).confirmed_by_tag("DEALLOCATE"));
        assert!(Change::DeallocateAll.confirmed_by_tag("DISCARD ALL"));
        assert!(!Change::DeallocateAll.confirmed_by_tag("DISCARD PLANS"));
    }
}

//! The class and command tag each kind of statement has on its own.
//!
//! This is the table a reviewer checks when asking "what is `X` classified
//! as?". Things found deeper in the statement (side-effect functions, a
//! `DELETE` in a CTE) may raise the class further; see `walk`. Anything not
//! listed here is `admin`, so a statement kind added to PostgreSQL later
//! fails closed until someone classifies it.

use pg_query::protobuf::{
    self, AlterTableStmt, AlterTableType, CopyStmt, CreateSchemaStmt, ObjectType, SelectStmt,
    TransactionStmt, TransactionStmtKind, VariableSetKind, VariableSetStmt,
};
use pg_query::NodeEnum as N;

use super::functions::is_privileged_setting;
use super::StatementClass::{self, Admin, Ddl, Read, Session, Write};

/// A statement's own class, before anything inside it is considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kind {
    pub class: StatementClass,
    pub command: String,
    /// Set when the class is stronger than the command suggests.
    pub why: Option<String>,
    /// The class depends on a literal's value (see `walk::Facts`).
    pub literal_sensitive: bool,
}

fn kind(class: StatementClass, command: impl Into<String>) -> Kind {
    Kind {
        class,
        command: command.into(),
        why: None,
        literal_sensitive: false,
    }
}

fn raised(class: StatementClass, command: impl Into<String>, why: &str) -> Kind {
    Kind {
        why: Some(why.to_owned()),
        ..kind(class, command)
    }
}

/// Classifies one statement node by what it is.
pub(crate) fn kind_of(node: &N) -> Kind {
    dml_or_query(node)
        .or_else(|| session(node))
        .or_else(|| admin(node))
        .or_else(|| ddl(node))
        .unwrap_or_else(|| {
            raised(
                Admin,
                "UNKNOWN",
                "not a statement kind the gateway knows; treated as admin to fail closed",
            )
        })
}

fn dml_or_query(node: &N) -> Option<Kind> {
    Some(match node {
        N::SelectStmt(s) => select(s),
        N::InsertStmt(_) => kind(Write, "INSERT"),
        N::UpdateStmt(_) => kind(Write, "UPDATE"),
        N::DeleteStmt(_) => kind(Write, "DELETE"),
        N::MergeStmt(_) => kind(Write, "MERGE"),
        N::CopyStmt(c) => copy(c),
        N::ExplainStmt(e) => wrapped("EXPLAIN", e.query.as_deref()),
        N::PrepareStmt(p) => wrapped("PREPARE", p.query.as_deref()),
        N::DeclareCursorStmt(d) => wrapped("DECLARE", d.query.as_deref()),
        N::FetchStmt(f) => kind(Read, if f.ismove { "MOVE" } else { "FETCH" }),
        N::ExecuteStmt(_) => raised(
            Write,
            "EXECUTE",
            "runs a prepared statement whose text is not part of this query",
        ),
        N::NotifyStmt(_) => kind(Write, "NOTIFY"),
        N::CallStmt(_) => kind(Write, "CALL"),
        N::LockStmt(_) => kind(Write, "LOCK TABLE"),
        _ => return None,
    })
}

fn select(s: &SelectStmt) -> Kind {
    if s.into_clause.is_some() {
        raised(Ddl, "SELECT INTO", "SELECT INTO creates a table")
    } else {
        kind(Read, "SELECT")
    }
}

fn copy(c: &CopyStmt) -> Kind {
    let decided = copy_direction(c);
    // `COPY t FROM ''` has an empty file name, which the tree cannot tell
    // from STDIN; only a parse of the actual text can classify it, so no
    // COPY without a file name is answered from the cache.
    Kind {
        literal_sensitive: c.filename.is_empty() && !c.is_program,
        ..decided
    }
}

fn copy_direction(c: &CopyStmt) -> Kind {
    let direction = if c.is_from { "COPY FROM" } else { "COPY TO" };
    if c.is_program {
        raised(
            Admin,
            direction,
            "COPY ... PROGRAM runs a shell command on the database server",
        )
    } else if !c.filename.is_empty() {
        raised(
            Admin,
            direction,
            "COPY with a file name reads or writes a file on the database server",
        )
    } else if c.is_from {
        kind(Write, direction)
    } else {
        kind(Read, direction)
    }
}

/// `EXPLAIN q`, `PREPARE p AS q`, `DECLARE c CURSOR FOR q`: the class of `q`
/// (`EXPLAIN ANALYZE` runs it, the others run it later).
fn wrapped(outer: &str, inner: Option<&protobuf::Node>) -> Kind {
    match inner.and_then(|n| n.node.as_ref()) {
        Some(inner) => {
            let inner = kind_of(inner);
            Kind {
                command: format!("{outer} {}", inner.command),
                ..inner
            }
        }
        None => raised(Admin, outer, "has no statement inside; treated as admin"),
    }
}

fn session(node: &N) -> Option<Kind> {
    Some(match node {
        N::TransactionStmt(t) => transaction(t),
        N::VariableSetStmt(v) => set(v),
        N::VariableShowStmt(_) => kind(Session, "SHOW"),
        N::DiscardStmt(_) => kind(Session, "DISCARD"),
        N::DeallocateStmt(_) => kind(Session, "DEALLOCATE"),
        N::ListenStmt(_) => kind(Session, "LISTEN"),
        N::UnlistenStmt(_) => kind(Session, "UNLISTEN"),
        N::ClosePortalStmt(_) => kind(Session, "CLOSE"),
        N::ConstraintsSetStmt(_) => kind(Session, "SET CONSTRAINTS"),
        _ => return None,
    })
}

fn transaction(t: &TransactionStmt) -> Kind {
    use TransactionStmtKind as T;
    let command = match TransactionStmtKind::try_from(t.kind) {
        Ok(T::TransStmtBegin) => "BEGIN",
        Ok(T::TransStmtStart) => "START TRANSACTION",
        Ok(T::TransStmtCommit) => "COMMIT",
        Ok(T::TransStmtRollback) => "ROLLBACK",
        Ok(T::TransStmtSavepoint) => "SAVEPOINT",
        Ok(T::TransStmtRelease) => "RELEASE",
        Ok(T::TransStmtRollbackTo) => "ROLLBACK TO SAVEPOINT",
        Ok(T::TransStmtPrepare) => "PREPARE TRANSACTION",
        Ok(T::TransStmtCommitPrepared) => {
            return raised(Admin, "COMMIT PREPARED", PREPARED_XACT);
        }
        Ok(T::TransStmtRollbackPrepared) => {
            return raised(Admin, "ROLLBACK PREPARED", PREPARED_XACT);
        }
        Ok(T::Undefined) | Err(_) => {
            return raised(Admin, "TRANSACTION", "unknown transaction command");
        }
    };
    kind(Session, command)
}

const PREPARED_XACT: &str = "finishes a prepared transaction that may belong to another session";

fn set(v: &VariableSetStmt) -> Kind {
    let kind_of_set = VariableSetKind::try_from(v.kind).unwrap_or(VariableSetKind::Undefined);
    let command = match kind_of_set {
        VariableSetKind::VarReset | VariableSetKind::VarResetAll => "RESET",
        _ => "SET",
    };
    match v.name.to_ascii_lowercase().as_str() {
        "role" | "session_authorization" => raised(Admin, command, "changes the session's role"),
        // Their values are checked by `model` (through `walk`): any other
        // value is refused for everyone, so what reaches here is harmless.
        "client_encoding" | "standard_conforming_strings" => kind(Session, command),
        "backslash_quote" => raised(
            Admin,
            command,
            "changes which string literals the server accepts, which the gateway's lexer relies on",
        ),
        name if is_privileged_setting(name) => raised(
            Admin,
            command,
            "changes a setting reserved to administrators",
        ),
        _ => kind(Session, command),
    }
}

fn admin(node: &N) -> Option<Kind> {
    let command = match node {
        N::GrantStmt(g) => return Some(kind(Admin, if g.is_grant { "GRANT" } else { "REVOKE" })),
        N::GrantRoleStmt(g) => {
            return Some(kind(
                Admin,
                if g.is_grant {
                    "GRANT ROLE"
                } else {
                    "REVOKE ROLE"
                },
            ))
        }
        N::VacuumStmt(v) => {
            return Some(kind(
                Admin,
                if v.is_vacuumcmd { "VACUUM" } else { "ANALYZE" },
            ))
        }
        N::CheckPointStmt(_) => "CHECKPOINT",
        N::LoadStmt(_) => "LOAD",
        N::DoStmt(_) => "DO",
        N::AlterSystemStmt(_) => "ALTER SYSTEM",
        N::CreateRoleStmt(_) => "CREATE ROLE",
        N::AlterRoleStmt(_) => "ALTER ROLE",
        N::AlterRoleSetStmt(_) => "ALTER ROLE SET",
        N::DropRoleStmt(_) => "DROP ROLE",
        N::DropOwnedStmt(_) => "DROP OWNED",
        N::ReassignOwnedStmt(_) => "REASSIGN OWNED",
        N::AlterDefaultPrivilegesStmt(_) => "ALTER DEFAULT PRIVILEGES",
        N::AlterOwnerStmt(o) => {
            return Some(kind(Admin, format!("ALTER {}", object_name(o.object_type))))
        }
        N::CreatedbStmt(_) => "CREATE DATABASE",
        N::AlterDatabaseStmt(_)
        | N::AlterDatabaseSetStmt(_)
        | N::AlterDatabaseRefreshCollStmt(_) => "ALTER DATABASE",
        N::DropdbStmt(_) => "DROP DATABASE",
        N::CreateTableSpaceStmt(_) => "CREATE TABLESPACE",
        N::DropTableSpaceStmt(_) => "DROP TABLESPACE",
        N::AlterTableSpaceOptionsStmt(_) => "ALTER TABLESPACE",
        N::AlterTableMoveAllStmt(_) => "ALTER TABLE ALL IN TABLESPACE",
        N::CreateExtensionStmt(_) => "CREATE EXTENSION",
        N::AlterExtensionStmt(_) | N::AlterExtensionContentsStmt(_) => "ALTER EXTENSION",
        N::CreateFdwStmt(_) => "CREATE FOREIGN DATA WRAPPER",
        N::AlterFdwStmt(_) => "ALTER FOREIGN DATA WRAPPER",
        N::CreateForeignServerStmt(_) => "CREATE SERVER",
        N::AlterForeignServerStmt(_) => "ALTER SERVER",
        N::CreateUserMappingStmt(_) => "CREATE USER MAPPING",
        N::AlterUserMappingStmt(_) => "ALTER USER MAPPING",
        N::DropUserMappingStmt(_) => "DROP USER MAPPING",
        N::ImportForeignSchemaStmt(_) => "IMPORT FOREIGN SCHEMA",
        N::CreateAmStmt(_) => "CREATE ACCESS METHOD",
        N::CreateEventTrigStmt(_) => "CREATE EVENT TRIGGER",
        N::AlterEventTrigStmt(_) => "ALTER EVENT TRIGGER",
        N::CreatePlangStmt(_) => "CREATE LANGUAGE",
        N::CreatePolicyStmt(_) => "CREATE POLICY",
        N::AlterPolicyStmt(_) => "ALTER POLICY",
        N::SecLabelStmt(_) => "SECURITY LABEL",
        N::CreatePublicationStmt(_) => "CREATE PUBLICATION",
        N::AlterPublicationStmt(_) => "ALTER PUBLICATION",
        N::CreateSubscriptionStmt(_) => "CREATE SUBSCRIPTION",
        N::AlterSubscriptionStmt(_) => "ALTER SUBSCRIPTION",
        N::DropSubscriptionStmt(_) => "DROP SUBSCRIPTION",
        N::ClusterStmt(_) => "CLUSTER",
        N::ReindexStmt(_) => "REINDEX",
        _ => return None,
    };
    Some(kind(Admin, command))
}

fn ddl(node: &N) -> Option<Kind> {
    let command = match node {
        N::DropStmt(d) => return Some(object_ddl("DROP", d.remove_type)),
        N::RenameStmt(r) => return Some(object_ddl("ALTER", r.rename_type)),
        N::AlterObjectSchemaStmt(a) => return Some(object_ddl("ALTER", a.object_type)),
        N::CommentStmt(c) => return Some(object_ddl("COMMENT ON", c.objtype)),
        N::DefineStmt(d) => return Some(object_ddl("CREATE", d.kind)),
        N::AlterTableStmt(a) => return Some(alter_table(a)),
        N::CreateTableAsStmt(c) => match ObjectType::try_from(c.objtype) {
            Ok(ObjectType::ObjectMatview) => "CREATE MATERIALIZED VIEW",
            _ => "CREATE TABLE AS",
        },
        N::CreateFunctionStmt(f) if f.is_procedure => "CREATE PROCEDURE",
        N::CreateFunctionStmt(_) => "CREATE FUNCTION",
        N::CreateStmt(_) => "CREATE TABLE",
        N::CreateForeignTableStmt(_) => "CREATE FOREIGN TABLE",
        N::CreateSchemaStmt(c) => return Some(create_schema(c)),
        N::ViewStmt(_) => "CREATE VIEW",
        N::IndexStmt(_) => "CREATE INDEX",
        N::TruncateStmt(_) => "TRUNCATE",
        N::RefreshMatViewStmt(_) => "REFRESH MATERIALIZED VIEW",
        N::CreateSeqStmt(_) => "CREATE SEQUENCE",
        N::AlterSeqStmt(_) => "ALTER SEQUENCE",
        N::CreateTrigStmt(_) => "CREATE TRIGGER",
        N::RuleStmt(_) => "CREATE RULE",
        N::CreateDomainStmt(_) => "CREATE DOMAIN",
        N::AlterDomainStmt(_) => "ALTER DOMAIN",
        N::CompositeTypeStmt(_) | N::CreateEnumStmt(_) | N::CreateRangeStmt(_) => "CREATE TYPE",
        N::AlterEnumStmt(_) | N::AlterTypeStmt(_) => "ALTER TYPE",
        N::CreateOpClassStmt(_) => "CREATE OPERATOR CLASS",
        N::CreateOpFamilyStmt(_) => "CREATE OPERATOR FAMILY",
        N::AlterOpFamilyStmt(_) => "ALTER OPERATOR FAMILY",
        N::AlterOperatorStmt(_) => "ALTER OPERATOR",
        N::CreateStatsStmt(_) => "CREATE STATISTICS",
        N::AlterStatsStmt(_) => "ALTER STATISTICS",
        N::AlterFunctionStmt(_) => "ALTER FUNCTION",
        N::AlterObjectDependsStmt(_) => "ALTER EXTENSION DEPENDS",
        N::AlterCollationStmt(_) => "ALTER COLLATION",
        N::CreateConversionStmt(_) => "CREATE CONVERSION",
        N::CreateCastStmt(_) => "CREATE CAST",
        N::CreateTransformStmt(_) => "CREATE TRANSFORM",
        N::AlterTsdictionaryStmt(_) => "ALTER TEXT SEARCH DICTIONARY",
        N::AlterTsconfigurationStmt(_) => "ALTER TEXT SEARCH CONFIGURATION",
        N::ReplicaIdentityStmt(_) => "ALTER TABLE",
        _ => return None,
    };
    Some(kind(Ddl, command))
}

/// `CREATE SCHEMA s GRANT ... CREATE TABLE ...` runs each element as the
/// statement it is, so the strongest element decides.
fn create_schema(c: &CreateSchemaStmt) -> Kind {
    let strongest = c
        .schema_elts
        .iter()
        .filter_map(|e| e.node.as_ref())
        .map(kind_of)
        .max_by_key(|k| k.class)
        .filter(|k| k.class > Ddl);
    match strongest {
        Some(element) => Kind {
            why: Some(format!("runs {} as a schema element", element.command)),
            ..kind(element.class, "CREATE SCHEMA")
        },
        None => kind(Ddl, "CREATE SCHEMA"),
    }
}

/// Object kinds whose creation or removal is administration, not schema
/// work: roles, databases, extensions, foreign servers, security policies.
fn is_admin_object(object: ObjectType) -> bool {
    use ObjectType as O;
    matches!(
        object,
        O::ObjectRole
            | O::ObjectDatabase
            | O::ObjectTablespace
            | O::ObjectExtension
            | O::ObjectFdw
            | O::ObjectForeignServer
            | O::ObjectEventTrigger
            | O::ObjectLanguage
            | O::ObjectPolicy
            | O::ObjectPublication
            | O::ObjectPublicationNamespace
            | O::ObjectPublicationRel
            | O::ObjectSubscription
            | O::ObjectAccessMethod
            | O::ObjectUserMapping
            | O::ObjectParameterAcl
    )
}

fn object_ddl(verb: &str, object_type: i32) -> Kind {
    let command = format!("{verb} {}", object_name(object_type));
    match ObjectType::try_from(object_type) {
        Ok(o) if is_admin_object(o) => kind(Admin, command),
        Ok(_) => kind(Ddl, command),
        Err(_) => raised(Admin, command, "unknown object type; treated as admin"),
    }
}

/// `OBJECT_FOREIGN_TABLE` → `FOREIGN TABLE`, as the SQL spells it.
fn object_name(object_type: i32) -> String {
    let Ok(object) = ObjectType::try_from(object_type) else {
        return "OBJECT".into();
    };
    let raw = object.as_str_name().trim_start_matches("OBJECT_");
    match raw {
        "MATVIEW" => "MATERIALIZED VIEW".into(),
        "FDW" => "FOREIGN DATA WRAPPER".into(),
        "FOREIGN_SERVER" => "SERVER".into(),
        "TABCONSTRAINT" | "DOMCONSTRAINT" => "CONSTRAINT".into(),
        "STATISTIC_EXT" => "STATISTICS".into(),
        "LARGEOBJECT" => "LARGE OBJECT".into(),
        "OPCLASS" => "OPERATOR CLASS".into(),
        "OPFAMILY" => "OPERATOR FAMILY".into(),
        "TSCONFIGURATION" => "TEXT SEARCH CONFIGURATION".into(),
        "TSDICTIONARY" => "TEXT SEARCH DICTIONARY".into(),
        "TSPARSER" => "TEXT SEARCH PARSER".into(),
        "TSTEMPLATE" => "TEXT SEARCH TEMPLATE".into(),
        other => other.replace('_', " "),
    }
}

/// `ALTER TABLE` is schema work, except the subcommands that change who
/// owns the table or who may see its rows.
fn alter_table(a: &AlterTableStmt) -> Kind {
    use AlterTableType as T;
    let command = format!("ALTER {}", object_name(a.objtype));
    let privileged = a.cmds.iter().any(|cmd| match &cmd.node {
        Some(N::AlterTableCmd(c)) => matches!(
            AlterTableType::try_from(c.subtype),
            Ok(T::AtChangeOwner
                | T::AtEnableRowSecurity
                | T::AtDisableRowSecurity
                | T::AtForceRowSecurity
                | T::AtNoForceRowSecurity)
        ),
        _ => false,
    });
    if privileged {
        raised(
            Admin,
            command,
            "changes the owner or row-level security of a table",
        )
    } else {
        kind(Ddl, command)
    }
}

/// Relations a `DROP` names: they are plain name lists in the tree, not
/// relation references, so the walk does not see them.
pub(crate) fn dropped_relations(node: &N) -> Vec<String> {
    use ObjectType as O;
    let N::DropStmt(drop) = node else {
        return Vec::new();
    };
    let relation_like = matches!(
        ObjectType::try_from(drop.remove_type),
        Ok(O::ObjectTable
            | O::ObjectView
            | O::ObjectMatview
            | O::ObjectForeignTable
            | O::ObjectSequence
            | O::ObjectIndex)
    );
    if !relation_like {
        return Vec::new();
    }
    drop.objects
        .iter()
        .filter_map(|object| match &object.node {
            Some(N::List(list)) => Some(
                list.items
                    .iter()
                    .filter_map(|item| match &item.node {
                        Some(N::String(s)) => Some(s.sval.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("."),
            ),
            _ => None,
        })
        .collect()
}

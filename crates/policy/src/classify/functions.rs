//! Built-in functions whose call is not a read.
//!
//! A `SELECT` is only a read if nothing it calls changes state: a policy that
//! allows `read` must not thereby allow `SELECT pg_terminate_backend(pid)` or
//! `SELECT lo_export(...)`. Names are matched on their last component
//! (`pg_catalog.nextval` is `nextval`), conservatively: a user function that
//! shadows one of these names is treated like the built-in.
//!
//! The lists were checked against every volatile function in `pg_catalog`
//! (and the stable ones that assign a transaction id, `txid_current` and
//! `pg_current_xact_id`); the volatile built-ins not listed only read or
//! touch the calling session (`random`, `clock_timestamp`, `pg_sleep`,
//! `lo_get`, `currval`, `pg_stat_clear_snapshot`), and `lo_open`, which
//! even in write mode only opens a descriptor: every write through it is a
//! `lowrite` or `lo_truncate`, listed here.
//!
//! Functions outside `pg_catalog` are judged by what the database's catalog
//! says about them (see [`super::facts`]), not by this list.

use super::StatementClass;

/// Functions that act on the server itself, its files, other sessions, or
/// run a query string we never see.
const ADMIN: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_promote",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "pg_stat_file",
    "pg_logdir_ls",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_show_all_file_settings",
    "pg_extension_config_dump",
    "pg_nextoid",
    "pg_stop_making_pinned_objects",
    "lo_import",
    "lo_export",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

/// Prefixes of admin function families.
const ADMIN_PREFIXES: &[&str] = &[
    "dblink",
    "pg_read_",
    "pg_file_",
    "pg_rotate_logfile",
    "pg_ls_",
    "pg_stat_reset",
    "pg_replication_origin_",
    "pg_logical_slot_",
    "binary_upgrade_",
];

/// Functions that change data or session-visible state.
const WRITE: &[&str] = &[
    // Both assign the calling transaction an id, as a write would.
    "txid_current",
    "pg_current_xact_id",
    "nextval",
    "setval",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "lowrite",
    "pg_notify",
    "pg_logical_emit_message",
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brin_desummarize_range",
    "gin_clean_pending_list",
];

/// Settings whose change is an admin act: they switch identity, bypass
/// triggers, or change how the server lexes string literals (which would
/// desynchronise the cache key from what the server runs).
pub(crate) const PRIVILEGED_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "standard_conforming_strings",
    "backslash_quote",
    "client_encoding",
    "session_replication_role",
    "allow_system_table_mods",
];

/// The class a call to `name` forces on its statement, if any.
pub(crate) fn side_effect(name: &str) -> Option<StatementClass> {
    let base = name.rsplit('.').next().unwrap_or(name);
    if is_admin(base) {
        Some(StatementClass::Admin)
    } else if is_write(base) {
        Some(StatementClass::Write)
    } else {
        None
    }
}

fn is_admin(base: &str) -> bool {
    ADMIN.contains(&base)
        || ADMIN_PREFIXES.iter().any(|p| base.starts_with(p))
        || base.contains("replication_slot")
}

fn is_write(base: &str) -> bool {
    WRITE.contains(&base)
        || base.starts_with("pg_advisory_")
        || base.starts_with("pg_try_advisory_")
}

/// Whether `setting` (as `SET` or `set_config` names it) is privileged.
pub(crate) fn is_privileged_setting(setting: &str) -> bool {
    let setting = setting.trim().to_ascii_lowercase();
    PRIVILEGED_SETTINGS.contains(&setting.as_str())
}

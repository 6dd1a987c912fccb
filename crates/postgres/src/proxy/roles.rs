//! Which upstream role a session logs in as. With `upstream.users:` a
//! session logs in as the role of the highest access level its policies
//! allow (`Applicable::level`), so PostgreSQL's own grants back every
//! decision: were the gateway to misjudge a write as a read, a read-only
//! principal's session still could not write.
//!
//! The role is chosen once, at login, from the policies the session is
//! admitted under (a grant's `jit` policies included when one is in force).
//! Nothing later raises it: a grant that starts afterwards applies to new
//! sessions, and a statement held for approval whose class is above the
//! session's level is refused at once rather than held (see
//! [`SessionRole::refuses_hold`]), since no approval could make the
//! session's role run it.

use std::fmt;

use portcullis_config::LevelUsers;
use portcullis_policy::classify::{Classification, StatementClass};
use portcullis_policy::decide::{Decision, Verdict};

use super::upstream::UpstreamTarget;

/// One level's role and its resolved password.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
}

impl fmt::Debug for Login {
    // Hand-written so the password can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The connection's `users:`, passwords resolved; empty when not configured.
#[derive(Debug, Clone, Default)]
pub struct LevelRoles {
    /// Weakest level first.
    levels: Vec<(StatementClass, Login)>,
}

impl LevelRoles {
    /// Resolves every listed role's password (at start, so a missing
    /// secret stops `serve` rather than a session).
    pub fn from_config(users: &LevelUsers) -> Result<Self, String> {
        let levels = users
            .entries()
            .map(|(level, entry)| {
                let password = entry
                    .password_source()
                    .resolve()
                    .map_err(|e| format!("users.{level}: {e}"))?;
                let class = StatementClass::from_name(level)
                    .ok_or_else(|| format!("users.{level}: not an access level"))?;
                let login = Login {
                    user: entry.user.clone(),
                    password,
                };
                Ok((class, login))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { levels })
    }

    /// The target a session at `level` logs in to, and the role it runs as.
    /// The role of the weakest listed level at or above `level`; above every
    /// listed level, the connection's `user`. Without `users:`, always `user`.
    pub fn session_target(
        &self,
        base: &UpstreamTarget,
        level: StatementClass,
    ) -> (UpstreamTarget, SessionRole) {
        if self.levels.is_empty() {
            return (base.clone(), SessionRole::single(&base.user));
        }
        let mut target = base.clone();
        if let Some((_, login)) = self.levels.iter().find(|(l, _)| *l >= level) {
            target.user = login.user.clone();
            target.password = login.password.clone();
        }
        let role = SessionRole {
            user: target.user.clone(),
            level: Some(level),
        };
        (target, role)
    }
}

/// The upstream role a session runs as, for its records and its holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRole {
    pub user: String,
    /// The access level the role was chosen for; `None` when the connection
    /// has a single `user` for every session.
    pub level: Option<StatementClass>,
}

impl SessionRole {
    fn single(user: &str) -> Self {
        Self {
            user: user.to_string(),
            level: None,
        }
    }

    /// A hold for a statement above the session's level becomes a denial:
    /// an approver would be asked for something the session's role cannot
    /// run, and the role is never raised mid-session (fail closed).
    pub fn refuses_hold(&self, held: &Decision, c: &Classification) -> Option<Decision> {
        let level = self.level?;
        if held.verdict != Verdict::Hold {
            return None;
        }
        let above = c.statements.iter().map(|s| s.class).find(|&x| x > level)?;
        Some(Decision {
            verdict: Verdict::Deny,
            policy: held.policy.clone(),
            rule: "upstream role".into(),
            reason: format!(
                "{}; but this session logs in upstream as \"{}\", the role for {level} access, and an approval does not change a session's role, so this {above} statement cannot run in it: open a session whose policies (or grant) allow {above}",
                held.reason, self.user
            ),
            statement_index: held.statement_index,
        })
    }
}

#[cfg(test)]
mod tests {
    use portcullis_config::{ChannelBindingMode, LevelUser, UpstreamTls};
    use portcullis_policy::classify::classify;

    use super::*;
    use crate::proxy::upstream::UpstreamAddr;

    fn base() -> UpstreamTarget {
        UpstreamTarget {
            addr: UpstreamAddr::Unix("/run/postgresql/.s.PGSQL.5432".into()),
            database: "orders".into(),
            user: "app_owner".into(),
            password: Some("owner-secret".into()),
            tls: UpstreamTls::Prefer,
            tls_config: crate::proxy::stream::upstream_tls_config(None),
            channel_binding: ChannelBindingMode::Prefer,
            insecure_password_auth: false,
        }
    }

    fn entry(user: &str, password: &str) -> Option<LevelUser> {
        Some(LevelUser {
            user: user.into(),
            password_env: None,
            password_file: None,
            password: Some(password.into()),
        })
    }

    fn roles(read: bool, write: bool) -> LevelRoles {
        let users = LevelUsers {
            read: entry("app_ro", "ro-secret").filter(|_| read),
            write: entry("app_rw", "rw-secret").filter(|_| write),
            ddl: None,
            admin: None,
        };
        LevelRoles::from_config(&users).expect("inline passwords resolve")
    }

    /// The user and password a session at `level` logs in with.
    fn login(roles: &LevelRoles, level: StatementClass) -> (String, Option<String>) {
        let (target, role) = roles.session_target(&base(), level);
        assert_eq!(role.user, target.user);
        (target.user, target.password)
    }

    fn pair(user: &str, password: &str) -> (String, Option<String>) {
        (user.to_string(), Some(password.to_string()))
    }

    #[test]
    fn a_level_logs_in_as_the_weakest_listed_role_at_or_above_it() {
        use StatementClass::*;
        let both = roles(true, true);
        assert_eq!(login(&both, Read), pair("app_ro", "ro-secret"));
        assert_eq!(login(&both, Write), pair("app_rw", "rw-secret"));
        assert_eq!(login(&both, Ddl), pair("app_owner", "owner-secret"));
        let write_only = roles(false, true);
        assert_eq!(login(&write_only, Read), pair("app_rw", "rw-secret"));
        let single = LevelRoles::default();
        assert_eq!(login(&single, Read), pair("app_owner", "owner-secret"));
        assert_eq!(single.session_target(&base(), Read).1.level, None);
    }

    #[test]
    fn a_hold_above_the_sessions_level_is_refused_and_says_why() {
        let held = Decision {
            verdict: Verdict::Hold,
            policy: Some("ci".into()),
            rule: "write".into(),
            reason: "statement \"DELETE\" matches require_approval rule".into(),
            statement_index: Some(0),
        };
        let delete = classify("DELETE FROM orders WHERE id = 1").unwrap();
        let select = classify("SELECT 1").unwrap();
        let (_, read) = roles(true, true).session_target(&base(), StatementClass::Read);
        let refused = read.refuses_hold(&held, &delete).expect("refused");
        assert_eq!(
            (refused.verdict, refused.rule.as_str()),
            (Verdict::Deny, "upstream role")
        );
        assert!(
            refused
                .reason
                .contains("\"app_ro\", the role for read access"),
            "{}",
            refused.reason
        );
        assert_eq!(read.refuses_hold(&held, &select), None);
        let (_, write) = roles(true, true).session_target(&base(), StatementClass::Write);
        assert_eq!(write.refuses_hold(&held, &delete), None);
        let (_, single) = LevelRoles::default().session_target(&base(), StatementClass::Read);
        assert_eq!(
            single.refuses_hold(&held, &delete),
            None,
            "no users: nothing changes"
        );
    }
}

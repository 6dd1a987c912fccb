//! The server settings the gateway's decisions rest on, as the server
//! reports them (ParameterStatus): at login, and whenever they change.
//!
//! Statements are parsed as UTF-8 with `standard_conforming_strings` on and
//! decided for the login role. The classifier refuses every statement it
//! can see moving these (see `portcullis_policy::classify::model`), but some
//! routes it cannot see: a function body calling `set_config`, a trigger, a
//! rule, `UPDATE pg_settings` by a principal allowed `admin`. The server
//! reports the result, so this is where the gateway learns of it; a session
//! whose state has left the gateway's model ends (fail closed), because
//! every later decision would be about text the server reads differently or
//! on behalf of a different role.

use portcullis_policy::classify::is_utf8_encoding;

/// What the session must keep reporting, taken from the login.
#[derive(Debug, Clone, Default)]
pub(crate) struct Watched {
    /// The role the session logged in as, as the server reported it; `None`
    /// when the server did not report it (it then cannot report a change
    /// either).
    session_authorization: Option<String>,
}

impl Watched {
    pub(crate) fn at_login(parameters: &[(String, String)]) -> Self {
        Self {
            session_authorization: parameters
                .iter()
                .find(|(k, _)| k == "session_authorization")
                .map(|(_, v)| v.clone()),
        }
    }

    /// Why the session must end after the server reported `name` = `value`,
    /// or `None` when the gateway's model still holds.
    pub(crate) fn departure(&self, name: &str, value: &str) -> Option<String> {
        match name {
            "session_authorization" => self
                .session_authorization
                .as_deref()
                .filter(|login| *login != value)
                .map(|login| {
                    format!(
                        "the server reports session_authorization \"{value}\" for a session that \
                         logged in as \"{login}\"; the gateway decides statements for the login role"
                    )
                }),
            _ => reading_departure(name, value),
        }
    }
}

/// Why a session whose server reported these parameters at login cannot be
/// relayed (a role or database default the gateway cannot follow).
pub(crate) fn login_refusal(parameters: &[(String, String)]) -> Option<String> {
    parameters
        .iter()
        .find_map(|(name, value)| reading_departure(name, value))
}

/// The settings that decide how the server reads a query's bytes.
fn reading_departure(name: &str, value: &str) -> Option<String> {
    match name {
        "client_encoding" if !is_utf8_encoding(value) => Some(format!(
            "the server's client_encoding is \"{value}\"; the gateway reads statements only as UTF-8"
        )),
        "standard_conforming_strings" if value != "on" => Some(format!(
            "the server's standard_conforming_strings is \"{value}\"; the gateway reads string \
             literals only as with it on"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> Vec<(String, String)> {
        [
            ("client_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
            ("session_authorization", "app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn the_model_holds_while_the_server_reports_what_it_assumes() {
        let watched = Watched::at_login(&login());
        assert_eq!(login_refusal(&login()), None);
        assert_eq!(watched.departure("client_encoding", "UTF8"), None);
        assert_eq!(watched.departure("session_authorization", "app"), None);
        assert_eq!(watched.departure("DateStyle", "German, DMY"), None);
    }

    #[test]
    fn a_changed_encoding_lexing_or_role_ends_the_session() {
        let watched = Watched::at_login(&login());
        for (name, value) in [
            ("client_encoding", "SJIS"),
            ("standard_conforming_strings", "off"),
            ("session_authorization", "postgres"),
        ] {
            let why = watched.departure(name, value).expect(name);
            assert!(why.contains(name) && why.contains(value), "{why}");
        }
    }

    #[test]
    fn a_login_outside_the_model_is_refused() {
        let mut parameters = login();
        parameters[1].1 = "off".into();
        assert!(login_refusal(&parameters).is_some());
    }
}

//! Checks serde cannot express: cross references, uniqueness, unsafe combinations.

use std::collections::HashSet;

use crate::{
    is_loopback_listen, sql_rule, Access, ChannelBindingMode, Config, ConnectionConfig, MaskConfig,
    UpstreamTls, SSH_WORDS,
};

const DETECTORS: [&str; 8] = [
    "credit_card",
    "email",
    "iban",
    "ssn",
    "phone",
    "ip",
    "jwt",
    "secret",
];

pub(crate) struct Violation {
    pub field: String,
    pub message: String,
    /// Text near the offending value, used to find its line.
    pub anchor: String,
    /// Text the anchor follows, for anchors such as `tls:` that occur in
    /// many places: the search starts at the first line holding it.
    pub after: Option<String>,
}

impl Violation {
    fn new(field: String, message: String, anchor: &str) -> Self {
        Self {
            field,
            message,
            anchor: anchor.to_string(),
            after: None,
        }
    }

    fn after(mut self, scope: String) -> Self {
        self.after = Some(scope);
        self
    }

    /// Line of the first occurrence of the anchor in the file (1 when absent),
    /// since serde_norway keeps no positions once values are deserialized.
    pub fn locate_in(&self, text: &str) -> usize {
        if self.anchor.is_empty() {
            return 1;
        }
        let start = self
            .after
            .as_ref()
            .and_then(|scope| text.lines().position(|l| l.contains(scope.as_str())))
            .unwrap_or(0);
        let find_from = |start: usize| {
            text.lines()
                .skip(start)
                .position(|l| l.contains(&self.anchor))
                .map(|i| start + i + 1)
        };
        find_from(start).or_else(|| find_from(0)).unwrap_or(1)
    }
}

pub(crate) fn validate(config: &Config) -> Result<(), Violation> {
    validate_admin(config)?;
    validate_identity(config)?;
    validate_connections(config)?;
    validate_policies(config)
}

fn validate_admin(config: &Config) -> Result<(), Violation> {
    let admin = &config.admin;
    if admin.listen.parse::<std::net::SocketAddr>().is_err()
        && !admin.listen.starts_with("localhost:")
    {
        return Err(Violation::new(
            "admin.listen".into(),
            format!("{:?} is not HOST:PORT", admin.listen),
            &admin.listen,
        ));
    }
    if !admin.tls && !admin.insecure_plaintext && !is_loopback_listen(&admin.listen) {
        return Err(Violation::new(
            "admin.listen".into(),
            format!(
                "{} is not a loopback address and the admin API would speak plain HTTP: bearer tokens would cross the network in clear text; set admin.tls: true (or, behind a TLS proxy, admin.insecure_plaintext: true)",
                admin.listen
            ),
            &admin.listen,
        ));
    }
    if let Some(url) = &admin.public_url {
        if !is_http_url(url) {
            return Err(Violation::new(
                "admin.public_url".into(),
                format!("{url:?} is not an http(s) URL"),
                url,
            ));
        }
    }
    if admin.approval_timeout.0.is_zero() {
        return Err(Violation::new(
            "admin.approval_timeout".into(),
            "must be longer than zero (every held statement would be refused at once)".into(),
            "approval_timeout",
        ));
    }
    for (i, hook) in admin.webhooks.iter().enumerate() {
        if !is_http_url(&hook.url) {
            return Err(Violation::new(
                format!("admin.webhooks[{i}].url"),
                format!("{:?} is not an http(s) URL", hook.url),
                &hook.url,
            ));
        }
    }
    Ok(())
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

fn validate_identity(config: &Config) -> Result<(), Violation> {
    for (i, issuer) in config.identity.oidc.iter().enumerate() {
        if !is_http_url(&issuer.issuer) {
            return Err(Violation::new(
                format!("identity.oidc[{i}].issuer"),
                format!("{:?} is not an http(s) URL", issuer.issuer),
                &issuer.issuer,
            ));
        }
        if issuer.audience.is_empty() {
            return Err(Violation::new(
                format!("identity.oidc[{i}].audience"),
                "must not be empty".into(),
                "audience",
            ));
        }
    }
    let approvers = &config.identity.approvers;
    for (list, names) in [
        ("principals", &approvers.principals),
        ("groups", &approvers.groups),
    ] {
        for (i, entry) in names.iter().enumerate() {
            check_issuer(
                config,
                format!("identity.approvers.{list}[{i}]"),
                entry.issuer.as_deref(),
                &entry.name,
                &format!("write it {{ issuer: URL, name: {} }}", entry.name),
            )?;
        }
    }
    Ok(())
}

/// A name tied to an issuer must name a configured one, and with several configured, every name
/// must be tied to one: otherwise `alice` of one issuer would stand for `alice` of any.
fn check_issuer(
    config: &Config,
    field: String,
    issuer: Option<&str>,
    anchor: &str,
    fix: &str,
) -> Result<(), Violation> {
    let issuers = &config.identity.oidc;
    match issuer {
        Some(url) if !issuers.iter().any(|o| o.issuer == url) => Err(Violation::new(
            field,
            format!("{url:?} is not a configured issuer (identity.oidc[].issuer)"),
            url,
        )),
        None if issuers.len() > 1 => Err(Violation::new(
            field,
            format!(
                "several issuers are configured, and each names its principals independently: say which issuer's ({fix})"
            ),
            anchor,
        )),
        _ => Ok(()),
    }
}

fn validate_connections(config: &Config) -> Result<(), Violation> {
    let mut names = HashSet::new();
    let mut listens = HashSet::new();
    for (i, conn) in config.connections.iter().enumerate() {
        let field = |f: &str| format!("connections[{i}].{f}");
        if !names.insert(conn.name()) {
            return Err(Violation::new(
                field("name"),
                format!("duplicate connection name {:?}", conn.name()),
                conn.name(),
            ));
        }
        if !listens.insert(conn.listen()) {
            return Err(Violation::new(
                field("listen"),
                format!("address {} is used by two connections", conn.listen()),
                conn.listen(),
            ));
        }
        if conn.listen().parse::<std::net::SocketAddr>().is_err()
            && !conn.listen().starts_with("localhost:")
        {
            return Err(Violation::new(
                field("listen"),
                format!("{:?} is not HOST:PORT", conn.listen()),
                conn.listen(),
            ));
        }
        if let ConnectionConfig::Ssh(ssh) = conn {
            let mut parts = ssh.upstream.known_host_key.split_whitespace();
            let (Some(_algorithm), Some(_key)) = (parts.next(), parts.next()) else {
                return Err(Violation::new(
                    field("upstream.known_host_key"),
                    "must be a public key as in known_hosts: \"ssh-ed25519 AAAA...\" (ssh-keyscan prints it)".into(),
                    "known_host_key",
                ));
            };
        }
        if let ConnectionConfig::Postgres(pg) = conn {
            if pg.insecure_plaintext && !is_loopback_listen(&pg.listen) {
                return Err(Violation::new(
                    field("insecure_plaintext"),
                    "only allowed on a loopback listener: tokens would cross the network in clear text".into(),
                    "insecure_plaintext",
                ));
            }
            let up = &pg.upstream;
            if up.password_source().count() > 1 {
                return Err(Violation::new(
                    field("upstream"),
                    "give at most one of password_env, password_file, password".into(),
                    "password",
                ));
            }
            validate_level_users(pg, &field)?;
            let needs_tls = match up.tls {
                UpstreamTls::Require => Some("require"),
                UpstreamTls::VerifyFull => Some("verify-full"),
                UpstreamTls::Disable | UpstreamTls::Prefer => None,
            };
            if let (Some(socket), Some(mode)) = (up.unix_socket(), needs_tls) {
                return Err(Violation::new(
                    field("upstream.tls"),
                    format!(
                        "tls: {mode} cannot be met over the Unix socket {}: PostgreSQL never offers TLS on a Unix socket; use tls: prefer or disable (the socket is local and plain), or a TCP host",
                        socket.display()
                    ),
                    "tls:",
                )
                .after(format!("name: {}", pg.name)));
            }
            let plain = up.tls == UpstreamTls::Disable || up.unix_socket().is_some();
            if up.channel_binding == ChannelBindingMode::Require && plain {
                return Err(Violation::new(
                    field("upstream.channel_binding"),
                    "require needs TLS to bind to, and this upstream is reached without it (tls: disable or a Unix socket)".into(),
                    "channel_binding",
                )
                .after(format!("name: {}", pg.name)));
            }
            validate_functions(pg, &field)?;
        }
    }
    Ok(())
}

/// `upstream.users:` entries name a role and at most one password source.
fn validate_level_users(
    pg: &crate::PostgresConnection,
    field: &dyn Fn(&str) -> String,
) -> Result<(), Violation> {
    for (level, entry) in pg.upstream.users.entries() {
        let at = |f: &str| field(&format!("upstream.users.{level}.{f}"));
        // A role name can be any short word, so the line is found by its level.
        let anchor = format!("{level}:");
        let scope = format!("name: {}", pg.name);
        if entry.user.trim().is_empty() {
            return Err(
                Violation::new(at("user"), "must name a role".into(), &anchor).after(scope),
            );
        }
        if entry.password_source().count() > 1 {
            return Err(Violation::new(
                at("password"),
                "give at most one of password_env, password_file, password".into(),
                &anchor,
            )
            .after(scope));
        }
    }
    Ok(())
}

/// `functions:` names: `name` or `schema.name` as PostgreSQL folds them,
/// nothing in `pg_catalog`, each in one list only.
fn validate_functions(
    pg: &crate::PostgresConnection,
    field: &dyn Fn(&str) -> String,
) -> Result<(), Violation> {
    let mut seen = HashSet::new();
    for (class, name) in pg.functions.entries() {
        // A name can be any short word, so the line is found by its list.
        let violation = |message: String| {
            Violation::new(
                field(&format!("functions.{class}")),
                message,
                &format!("{class}:"),
            )
            .after(format!("name: {}", pg.name))
        };
        let parts: Vec<&str> = name.split('.').collect();
        let well_formed = parts.len() <= 2
            && parts.iter().all(|p| {
                !p.is_empty() && !p.contains(|c: char| c.is_whitespace() || c == '"' || c == '(')
            });
        if !well_formed {
            return Err(violation(format!(
                "{name:?} is not a function name: write `name` or `schema.name`, without quotes or arguments"
            )));
        }
        if parts.len() == 2 && parts[0] == "pg_catalog" {
            return Err(violation(format!(
                "{name:?} is a built-in: the gateway classifies pg_catalog functions itself"
            )));
        }
        if !seen.insert(name) {
            return Err(violation(format!("{name:?} is listed twice")));
        }
    }
    Ok(())
}

fn validate_policies(config: &Config) -> Result<(), Violation> {
    let mut names = HashSet::new();
    for (i, policy) in config.policies.iter().enumerate() {
        let field = |f: &str| format!("policies[{i}].{f}");
        if !names.insert(policy.name.as_str()) {
            return Err(Violation::new(
                field("name"),
                format!("duplicate policy name {:?}", policy.name),
                &policy.name,
            ));
        }
        if config.connection(&policy.connection).is_none() {
            return Err(Violation::new(
                field("connection"),
                format!("no connection named {:?}", policy.connection),
                &policy.connection,
            ));
        }
        if let Access::Jit(jit) = &policy.access {
            if jit.max.0.is_zero() {
                return Err(Violation::new(
                    field("access.jit.max"),
                    "must be longer than zero".into(),
                    "max:",
                ));
            }
        }
        let m = &policy.matcher;
        check_issuer(
            config,
            field("match.issuer"),
            m.issuer.as_deref(),
            &policy.name,
            "match: { issuer: URL, ... }",
        )?;
        if m.claims.is_empty() && m.groups.is_empty() && m.principals.is_empty() {
            return Err(Violation::new(
                field("match"),
                "must name claims, groups or principals (an empty match would admit every token)"
                    .into(),
                &policy.name,
            ));
        }
        let ssh = matches!(
            config.connection(&policy.connection),
            Some(ConnectionConfig::Ssh(_))
        );
        for (list, rules) in [
            ("allow", &policy.allow),
            ("require_approval", &policy.require_approval),
            ("deny", &policy.deny),
        ] {
            for rule in rules {
                if rule.trim().is_empty() {
                    return Err(Violation::new(
                        field(list),
                        "empty rule".into(),
                        &policy.name,
                    ));
                }
                if ssh {
                    check_ssh_rule(rule).map_err(|m| Violation::new(field(list), m, rule))?;
                } else if let Err(e) = sql_rule::parse(rule) {
                    return Err(Violation::new(field(list), format!("{rule:?}: {e}"), rule));
                }
            }
        }
        if let Some(mask) = &policy.mask {
            validate_mask(mask, &field)?;
        }
    }
    Ok(())
}

fn check_ssh_rule(rule: &str) -> Result<(), String> {
    let lower = rule.trim().to_ascii_lowercase();
    let looks_like_word = !lower.contains(' ') && !lower.contains('*');
    if looks_like_word && !SSH_WORDS.contains(&lower.as_str()) {
        return Err(format!(
            "{rule:?} is neither an SSH word ({}) nor a command pattern such as \"git *\" (a one-word command: \"uptime*\")",
            SSH_WORDS.join(", ")
        ));
    }
    Ok(())
}

const MASK_METHODS: [&str; 3] = ["redact", "partial", "hash"];
const MASK_EXPRESSIONS: [&str; 2] = ["detect", "mask"];

fn validate_mask(mask: &MaskConfig, field: &dyn Fn(&str) -> String) -> Result<(), Violation> {
    for column in &mask.columns {
        let parts: Vec<&str> = column.split('.').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(Violation::new(
                field("mask.columns"),
                format!("{column:?} is not table.column or schema.table.column (* matches any table or schema)"),
                column,
            ));
        }
    }
    if let Some(method) = &mask.method {
        if !MASK_METHODS.contains(&method.as_str()) {
            return Err(Violation::new(
                field("mask.method"),
                format!(
                    "unknown masking method {method:?}; known: {}",
                    MASK_METHODS.join(", ")
                ),
                method,
            ));
        }
    }
    if let Some(mode) = &mask.expressions {
        if !MASK_EXPRESSIONS.contains(&mode.as_str()) {
            return Err(Violation::new(
                field("mask.expressions"),
                format!(
                    "unknown value {mode:?}; known: {}",
                    MASK_EXPRESSIONS.join(", ")
                ),
                mode,
            ));
        }
    }
    for d in &mask.detect {
        if !DETECTORS.contains(&d.as_str()) {
            return Err(Violation::new(
                field("mask.detect"),
                format!("unknown detector {d:?}; known: {}", DETECTORS.join(", ")),
                d,
            ));
        }
    }
    Ok(())
}

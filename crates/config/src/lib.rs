//! The configuration users write (`portcullis.yaml`), as typed structs.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere) because a misspelt
//! `deny:` that silently vanished would open access. Every error names the
//! file, the line and the field, so `portcullis check-config` can point at it.

mod duration;
pub mod sql_rule;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use duration::HumanDuration;

/// What policies on SSH connections may name besides command patterns
/// (the policy crate gives them meaning; the validator checks spelling).
pub const SSH_WORDS: [&str; 6] = [
    "shell",
    "scp",
    "sftp",
    "port_forward",
    "agent_forward",
    "x11",
];

/// A configuration error, already formatted as `file:line: field: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Admin API and web console.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where records, grants and approvals live: `sqlite://PATH` (embedded default).
    #[serde(default = "default_store")]
    pub store: String,
    /// Directory for generated state: dev TLS certificate, SSH host key, audit signing key.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Ed25519 key that signs the audit chain's checkpoints (`audit-checkpoints.jsonl` goes
    /// beside it); `data_dir/audit-signing.key` when omitted, created on first start. Keep it
    /// where whoever can write the store cannot.
    #[serde(default)]
    pub audit_signing_key: Option<PathBuf>,
    /// Threads that relay sessions; omitted means one per CPU. Fewer leave CPUs to what else
    /// runs on the host (a co-located database); one thread serves many sessions.
    #[serde(default)]
    pub workers: Option<std::num::NonZeroUsize>,
    /// Certificate for client-facing listeners; omitted means a generated dev certificate.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Who may connect (OIDC issuers) and who may approve.
    pub identity: IdentityConfig,
    /// Listeners and the upstreams they front.
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
    /// Who may do what on which connection. Nothing matches = no access.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin API (plain HTTP).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Serve the admin API over TLS, with the certificate of the
    /// client-facing listeners (`tls:`, or the generated dev certificate).
    #[serde(default)]
    pub tls: bool,
    /// Serve the plain-HTTP admin API on a non-loopback address: approvers'
    /// bearer tokens cross that network in clear text, so only behind a
    /// TLS-terminating proxy on a network you trust.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Base URL approvers reach the admin API at, used in notices and webhook
    /// links; `http://<listen>` when omitted (wrong behind a proxy, hence settable).
    #[serde(default)]
    pub public_url: Option<String>,
    /// How long a held statement waits for an approver before it is refused.
    #[serde(default = "default_approval_timeout")]
    pub approval_timeout: HumanDuration,
    /// Where new grant requests and held statements are announced.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            tls: false,
            insecure_plaintext: false,
            public_url: None,
            approval_timeout: default_approval_timeout(),
            webhooks: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// The base of links to the admin API, without a trailing slash.
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None if self.tls => format!("https://{}", self.listen),
            None => format!("http://{}", self.listen),
        }
    }
}

/// One notification endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// `json`: the event as a JSON object; `slack`: a Slack incoming-webhook
    /// message (`{"text": ...}`).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Attempts after the first failed one, with doubling delays.
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trusted OIDC issuers; a token from any other issuer is refused.
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    /// Principals and groups allowed to approve grants and held commands.
    #[serde(default)]
    pub approvers: ApproversConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Issuer URL; must equal the token's `iss` and the discovery document's `issuer`.
    pub issuer: String,
    /// Required `aud` value.
    pub audience: String,
    /// Claim that names the principal.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Claim holding the principal's groups (array of strings or one string).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Clock skew tolerated on `exp` / `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// JWKS URL, when the issuer publishes no discovery document.
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproversConfig {
    /// Principals that may approve: a name, or `{ issuer: URL, name: N }` (the issuer is
    /// required when several are configured, since each names its principals independently).
    #[serde(default)]
    pub principals: Vec<IssuedName>,
    /// Groups whose members may approve, written like `principals`.
    #[serde(default)]
    pub groups: Vec<IssuedName>,
}

/// A principal or group name as one issuer's tokens state it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "IssuedNameRepr")]
pub struct IssuedName {
    /// The issuer whose tokens carry the name; `None` only with a single issuer.
    pub issuer: Option<String>,
    pub name: String,
}

impl IssuedName {
    /// Whether a token of `issuer` naming `name` is this one.
    pub fn is(&self, issuer: &str, name: &str) -> bool {
        self.name == name && self.issuer.as_deref().is_none_or(|i| i == issuer)
    }
}

impl From<&str> for IssuedName {
    fn from(name: &str) -> Self {
        IssuedName {
            issuer: None,
            name: name.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IssuedNameRepr {
    Name(String),
    Qualified(QualifiedName),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QualifiedName {
    issuer: String,
    name: String,
}

impl From<IssuedNameRepr> for IssuedName {
    fn from(repr: IssuedNameRepr) -> Self {
        match repr {
            IssuedNameRepr::Name(name) => IssuedName { issuer: None, name },
            IssuedNameRepr::Qualified(q) => IssuedName {
                issuer: Some(q.issuer),
                name: q.name,
            },
        }
    }
}

/// One listener and the upstream it fronts, by protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ConnectionConfig {
    Postgres(PostgresConnection),
    Ssh(SshConnection),
    Kubernetes(HttpConnection),
    Http(HttpConnection),
}

impl ConnectionConfig {
    pub fn name(&self) -> &str {
        match self {
            Self::Postgres(c) => &c.name,
            Self::Ssh(c) => &c.name,
            Self::Kubernetes(c) | Self::Http(c) => &c.name,
        }
    }

    pub fn listen(&self) -> &str {
        match self {
            Self::Postgres(c) => &c.listen,
            Self::Ssh(c) => &c.listen,
            Self::Kubernetes(c) | Self::Http(c) => &c.listen,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Ssh(_) => "ssh",
            Self::Kubernetes(_) => "kubernetes",
            Self::Http(_) => "http",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConnection {
    /// Name used by policies, grants and records.
    pub name: String,
    /// Address clients connect to.
    pub listen: String,
    /// Accept clients without TLS. Only allowed on a loopback listener; tokens
    /// otherwise cross the network in clear text.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The real database and the credential the gateway holds for it.
    pub upstream: PostgresUpstream,
    /// Statement classes declared for functions outside `pg_catalog`, for
    /// when the catalog's judgement (volatile or `SECURITY DEFINER`: not a
    /// read) is wrong for this database.
    #[serde(default)]
    pub functions: FunctionClasses,
}

/// One value per statement class, as config keys: `functions:` lists
/// names per class, `upstream.users:` a role per access level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "T: Deserialize<'de> + Default")
)]
pub struct PerClass<T> {
    /// For `read`: returns data and changes nothing.
    #[serde(default)]
    pub read: T,
    /// For `write`: changes rows or other data.
    #[serde(default)]
    pub write: T,
    /// For `ddl`: changes the schema.
    #[serde(default)]
    pub ddl: T,
    /// For `admin`: acts on roles, privileges, the server or other sessions.
    #[serde(default)]
    pub admin: T,
}

impl<T> PerClass<T> {
    /// Each class word with its value, weakest class first.
    pub fn by_class(&self) -> [(&'static str, &T); 4] {
        [
            ("read", &self.read),
            ("write", &self.write),
            ("ddl", &self.ddl),
            ("admin", &self.admin),
        ]
    }
}

/// `functions: { read: [app.price_of], write: [queue.enqueue] }`: what a
/// call to each listed function is, whatever the catalog says (`read`:
/// only reads although the catalog says volatile or `SECURITY DEFINER`).
/// Names are `schema.name`, or a bare `name` for that name in every
/// schema; they are matched as PostgreSQL folds them (unquoted names are
/// lower case). Built-ins (`pg_catalog`) cannot be listed: the gateway
/// classifies them.
pub type FunctionClasses = PerClass<Vec<String>>;

impl FunctionClasses {
    /// Every listed name with the class word of its list.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.by_class()
            .into_iter()
            .flat_map(|(class, names)| names.iter().map(move |n| (class, n.as_str())))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresUpstream {
    /// Host name or address; a value starting with `/` is instead the
    /// directory holding the server's Unix-domain socket (libpq's convention),
    /// for a gateway running on the database host.
    pub host: String,
    /// TCP port, or the number in the socket's name (`.s.PGSQL.5432`).
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database the gateway logs in to.
    pub database: String,
    /// Role the gateway logs in as: for every session when `users` is
    /// omitted; with `users`, for levels above every listed one, and always
    /// for the gateway's own catalog connection.
    pub user: String,
    /// A role per access level, so the database's own grants back the
    /// gateway's decisions: a session logs in as the role of the highest
    /// level its policies allow (`users.read` for `allow: [read]`).
    #[serde(default)]
    pub users: Box<LevelUsers>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Inline password: for trials only.
    #[serde(default)]
    pub password: Option<String>,
    /// TLS towards the upstream. A Unix-socket host takes only `prefer` or
    /// `disable` (both plain): PostgreSQL never offers TLS on its socket.
    #[serde(default)]
    pub tls: UpstreamTls,
    /// CA bundle for `verify-full`; the system roots when omitted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SCRAM channel binding (libpq's `channel_binding`): `prefer` binds the
    /// login to the server's TLS certificate whenever the server offers
    /// SCRAM-SHA-256-PLUS; `require` accepts no other login (it needs TLS).
    #[serde(default)]
    pub channel_binding: ChannelBindingMode,
    /// Answer a server that asks for the password in clear text or as md5
    /// although nothing authenticates that server (plain TCP, or TLS under
    /// `prefer`/`require`, which check no certificate). Off by default: such a
    /// server, or whoever sits in between, would learn the password or could
    /// replay the md5 answer. `verify-full` TLS and Unix sockets never need it.
    #[serde(default)]
    pub insecure_password_auth: bool,
}

/// `users: { read: { user: app_ro, password_file: ... }, write: ... }`:
/// the role for sessions whose policies allow at most that level. A level
/// without an entry logs in as the next higher level's role, and above
/// every entry as the connection's `user`.
pub type LevelUsers = PerClass<Option<LevelUser>>;

impl LevelUsers {
    /// The listed roles with their level's word, weakest level first.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &LevelUser)> {
        self.by_class()
            .into_iter()
            .filter_map(|(level, user)| user.as_ref().map(|u| (level, u)))
    }

    pub fn is_empty(&self) -> bool {
        self.entries().next().is_none()
    }
}

/// One level's upstream role and its password. A password is never taken
/// from another entry: one role's secret is not sent in another's login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelUser {
    /// Role the level's sessions log in as.
    pub user: String,
    /// Environment variable holding its password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding its password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Inline password: for trials only.
    #[serde(default)]
    pub password: Option<String>,
}

impl LevelUser {
    pub fn password_source(&self) -> PasswordSource<'_> {
        PasswordSource {
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
            inline: self.password.as_deref(),
        }
    }
}

/// Where a password comes from: at most one of an environment variable, a
/// file and an inline value (the validator refuses more).
#[derive(Debug, Clone, Copy)]
pub struct PasswordSource<'a> {
    env: Option<&'a str>,
    file: Option<&'a Path>,
    inline: Option<&'a str>,
}

impl PasswordSource<'_> {
    /// How many sources are given; more than one is ambiguous.
    pub fn count(&self) -> usize {
        [
            self.env.is_some(),
            self.file.is_some(),
            self.inline.is_some(),
        ]
        .iter()
        .filter(|given| **given)
        .count()
    }

    /// Reads the password; `None` when no source is given.
    pub fn resolve(&self) -> Result<Option<String>, String> {
        if let Some(var) = self.env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable {var} is not set"));
        }
        if let Some(path) = self.file {
            return std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("cannot read password_file {}: {e}", path.display()));
        }
        Ok(self.inline.map(str::to_string))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBindingMode {
    #[default]
    Prefer,
    Require,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConnection {
    pub name: String,
    pub listen: String,
    pub upstream: SshUpstream,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshUpstream {
    pub host: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub user: String,
    pub private_key_file: PathBuf,
    /// The upstream's host key, as in `known_hosts` (`ssh-ed25519 AAAA...`).
    pub known_host_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnection {
    pub name: String,
    pub listen: String,
    pub upstream: HttpUpstream,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUpstream {
    pub server: String,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Named in decisions and records, so a denial says which policy spoke.
    pub name: String,
    /// Which principals this policy is about.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// The connection it governs.
    pub connection: String,
    /// Standing access, or just-in-time through grants.
    #[serde(default)]
    pub access: Access,
    /// Statement classes (`read`, `write`, `ddl`, `admin`) or `ACTION on RELATION`
    /// rules allowed (see [`sql_rule`]); on SSH, SSH words or command patterns.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Classes or rules held for a human approver.
    #[serde(default)]
    pub require_approval: Vec<String>,
    /// Classes or rules always refused; deny wins over allow.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Values hidden from results.
    #[serde(default)]
    pub mask: Option<MaskConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Only tokens of this issuer (its `identity.oidc[].issuer` URL). Required when several
    /// issuers are configured: the same `sub` from two issuers is two principals.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Claim name → expected value (`*` globs allowed); all must match.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Any of these groups matches.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Any of these principal names matches (`*` globs allowed).
    #[serde(default)]
    pub principals: Vec<String>,
}

/// `access: standing` or `access: { jit: { max: 1h, approval: required } }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AccessRepr")]
pub enum Access {
    #[default]
    Standing,
    Jit(JitAccess),
}

/// serde_norway (like serde_yaml before it) spells enum variants as YAML tags; users write a plain word
/// or a one-key map, so parse that shape and convert.
#[derive(Deserialize)]
#[serde(untagged)]
enum AccessRepr {
    Word(String),
    Jit { jit: JitAccess },
}

impl TryFrom<AccessRepr> for Access {
    type Error = String;

    fn try_from(repr: AccessRepr) -> Result<Self, String> {
        match repr {
            AccessRepr::Word(w) if w == "standing" => Ok(Access::Standing),
            AccessRepr::Word(w) => Err(format!(
                "access must be `standing` or `{{ jit: {{ max: 1h, approval: required|auto }} }}`, not {w:?}"
            )),
            AccessRepr::Jit { jit } => Ok(Access::Jit(jit)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitAccess {
    /// Longest grant an approver can give.
    pub max: HumanDuration,
    /// `required`: a human approves each grant; `auto`: granted at once, still recorded.
    #[serde(default)]
    pub approval: JitApproval,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JitApproval {
    #[default]
    Required,
    Auto,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// Columns to mask: `table.column`, `schema.table.column`, `*.column`.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Content detectors: credit_card, email, iban, ssn, phone, ip, jwt, secret.
    #[serde(default)]
    pub detect: Vec<String>,
    /// How values are masked: `redact` (default), `partial` or `hash`.
    #[serde(default)]
    pub method: Option<String>,
    /// Result fields that are not a plain table column (expressions,
    /// function results) cannot be traced to a declared column: `detect`
    /// (default) scans them with the detectors like any other field; `mask`
    /// masks them whole.
    #[serde(default)]
    pub expressions: Option<String>,
}

fn default_store() -> String {
    "sqlite://data/portcullis.db".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_admin_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_approval_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}
fn default_webhook_retries() -> u32 {
    4
}
fn default_principal_claim() -> String {
    "sub".into()
}
fn default_leeway() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
fn default_pg_port() -> u16 {
    5432
}
fn default_ssh_port() -> u16 {
    22
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates config text; `file` only labels errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_norway::from_str(text).map_err(|e| ConfigError::Invalid {
            file: file.to_string(),
            line: e.location().map(|l| l.line()).unwrap_or(1),
            message: e.to_string().replace(" at line", ", at line"),
        })?;
        validate::validate(&config).map_err(|v| ConfigError::Invalid {
            file: file.to_string(),
            line: v.locate_in(text),
            message: format!("{}: {}", v.field, v.message),
        })?;
        Ok(config)
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name() == name)
    }

    /// Where the audit signing key is (and beside it, the signed checkpoints).
    pub fn audit_signing_key(&self) -> PathBuf {
        self.audit_signing_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-signing.key"))
    }

    /// Path of the SQLite file when the store is `sqlite://PATH`.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.store.strip_prefix("sqlite://").map(PathBuf::from)
    }
}

impl PostgresUpstream {
    /// The Unix-domain socket libpq would use for this host and port, when
    /// `host` names a socket directory rather than a TCP host.
    pub fn unix_socket(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// Where the password of `user` comes from.
    pub fn password_source(&self) -> PasswordSource<'_> {
        PasswordSource {
            env: self.password_env.as_deref(),
            file: self.password_file.as_deref(),
            inline: self.password.as_deref(),
        }
    }
}

/// True when `addr` only accepts connections from this machine.
pub fn is_loopback_listen(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr.starts_with("localhost:"),
    }
}

#[cfg(test)]
mod tests;

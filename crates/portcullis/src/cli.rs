//! The command line, as DESIGN.md promises it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Identity-aware access gateway for automation"
)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway: every configured listener.
    Serve {
        #[arg(long, default_value = "portcullis.yaml")]
        config: PathBuf,
    },
    /// Validate a config file; exit 2 on error.
    CheckConfig { file: PathBuf },
    /// A local OIDC issuer for trials and tests. Development only.
    DevIdp {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Signing algorithm: RS256, ES256 or EdDSA.
        #[arg(long, default_value = "RS256")]
        alg: String,
    },
    /// Ask the dev issuer for a token; prints the JWT alone.
    Token {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        sub: String,
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long, default_value = "portcullis")]
        audience: String,
        #[arg(long, default_value = "10m")]
        ttl: humantime::Duration,
    },
    /// Recorded sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Replay one session in order; SSH terminal output is played back.
    Replay {
        session: String,
        /// Play SSH terminal output with its original timing (pauses capped at 1 s).
        #[arg(long)]
        play: bool,
        /// Print the SSH channel's terminal recording as an asciicast v2 file
        /// (`portcullis replay S --asciicast > s.cast; asciinema play s.cast`).
        #[arg(long, conflicts_with = "play")]
        asciicast: bool,
        /// Which channel's recording `--asciicast` prints (default: the first).
        #[arg(long)]
        channel: Option<u64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Just-in-time grants, through the running gateway's admin API.
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Statements held for approval, through the running gateway's admin API.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
}

#[derive(Subcommand)]
pub enum GrantsCommand {
    /// Ask for time-boxed access to a connection, for the caller itself.
    Request {
        #[arg(long)]
        connection: String,
        /// How long access lasts once approved (at most the policy's max).
        #[arg(long)]
        duration: humantime::Duration,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Grants the caller may see: all for approvers, their own otherwise.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Approve a pending request (not your own).
    Approve {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deny a pending request.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End a grant now; sessions under it are cut.
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Held statements, pending and decided.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let a held statement run (once).
    Approve {
        id: String,
        /// Also let this exact statement re-run without approval for this
        /// long (same principal and connection), e.g. `10m`.
        #[arg(long = "for")]
        window: Option<humantime::Duration>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Refuse a held statement.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Live-state commands talk to the running gateway as the caller, whose
/// token is in `PORTCULLIS_TOKEN`.
#[derive(Args)]
pub struct AdminArgs {
    /// The gateway's admin API.
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN",
        default_value = "http://127.0.0.1:8080"
    )]
    pub admin: String,
    /// PEM certificate to trust for an `https://` admin API besides the
    /// system roots (e.g. the gateway's generated dev certificate).
    #[arg(long, env = "PORTCULLIS_ADMIN_CA")]
    pub admin_ca: Option<std::path::PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    List {
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        /// Only sessions started within this long ago (e.g. 1h, 30m).
        #[arg(long)]
        since: Option<humantime::Duration>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; names the first broken record.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Export records for a SIEM.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        #[arg(long)]
        since: Option<humantime::Duration>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Ocsf,
    Cef,
}

/// Record-reading commands open the store named by the config directly,
/// so they work with the gateway stopped.
#[derive(Args)]
pub struct StoreArgs {
    #[arg(long, default_value = "portcullis.yaml")]
    pub config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

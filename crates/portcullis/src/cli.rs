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

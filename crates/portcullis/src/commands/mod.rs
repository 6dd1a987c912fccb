//! One module per family of subcommands.

mod idp;
mod records;
mod serve;

use std::process::ExitCode;

use crate::cli::{AuditCommand, Command, SessionsCommand};

pub async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config } => serve::run(&config).await,
        Command::CheckConfig { file } => Ok(check_config(&file)),
        Command::DevIdp { listen, alg } => idp::dev_idp(&listen, &alg).await,
        Command::Token {
            issuer,
            sub,
            groups,
            audience,
            ttl,
        } => idp::token(&issuer, sub, groups, audience, ttl.into()).await,
        Command::Sessions {
            command:
                SessionsCommand::List {
                    principal,
                    connection,
                    since,
                    store,
                },
        } => records::sessions(&store, principal, connection, since.map(Into::into)),
        Command::Replay {
            session,
            play,
            asciicast,
            channel,
            store,
        } => {
            let mode = match (asciicast, play) {
                (true, _) => records::ReplayMode::Asciicast { channel },
                (false, true) => records::ReplayMode::Play,
                (false, false) => records::ReplayMode::Text,
            };
            records::replay(&store, &session, mode)
        }
        Command::Audit {
            command: AuditCommand::Verify { store },
        } => records::verify(&store),
        Command::Audit {
            command:
                AuditCommand::Export {
                    format,
                    since,
                    store,
                },
        } => records::export(&store, format, since.map(Into::into)),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match portcullis_config::Config::load(file) {
        Ok(config) => {
            println!(
                "{}: ok ({}, {})",
                file.display(),
                plural(config.connections.len(), "connection", "connections"),
                plural(config.policies.len(), "policy", "policies")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Loads config for commands that need it, exiting 2 with the located error.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<portcullis_config::Config> {
    portcullis_config::Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

//! One module per family of subcommands.

mod access;
mod idp;
mod records;
pub(crate) mod serve;

use std::process::ExitCode;

use crate::cli::{ApprovalsCommand, AuditCommand, Command, GrantsCommand, SessionsCommand};

pub async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { .. } => unreachable!("main runs serve on a runtime sized from its config"),
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
        Command::Grants { command } => grants(command).await,
        Command::Approvals { command } => approvals(command).await,
    }
}

async fn grants(command: GrantsCommand) -> anyhow::Result<ExitCode> {
    use access::Call;
    let (admin, call) = match command {
        GrantsCommand::Request {
            connection,
            duration,
            reason,
            admin,
        } => (
            admin,
            Call::post(
                "/v1/grants".into(),
                serde_json::json!({
                    "connection": connection,
                    "duration": duration.to_string(),
                    "reason": reason,
                }),
            ),
        ),
        GrantsCommand::List { admin } => (admin, Call::get("/v1/grants".into())),
        GrantsCommand::Approve { id, admin } => (admin, Call::act("grants", &id, "approve", None)),
        GrantsCommand::Deny { id, reason, admin } => {
            (admin, Call::act("grants", &id, "deny", reason))
        }
        GrantsCommand::Revoke { id, reason, admin } => {
            (admin, Call::act("grants", &id, "revoke", reason))
        }
    };
    access::run(&admin, call).await
}

async fn approvals(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    use access::Call;
    let (admin, call) = match command {
        ApprovalsCommand::List { admin } => (admin, Call::get("/v1/approvals".into())),
        ApprovalsCommand::Approve { id, window, admin } => {
            let body = match window {
                Some(w) => serde_json::json!({ "for": w.to_string() }),
                None => serde_json::json!({}),
            };
            (
                admin,
                Call::post(format!("/v1/approvals/{id}/approve"), body),
            )
        }
        ApprovalsCommand::Deny { id, reason, admin } => {
            (admin, Call::act("approvals", &id, "deny", reason))
        }
    };
    access::run(&admin, call).await
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

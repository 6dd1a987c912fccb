//! Commands that read records: `sessions list`, `replay`, `audit verify`,
//! `audit export`. They open the store read-only, so they work whether or
//! not the gateway is running.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use portcullis_records::{Record, RecordKind, SessionFilter, Store};
use serde_json::Value;

use crate::cli::{ExportFormat, StoreArgs};

fn open(args: &StoreArgs) -> anyhow::Result<Store> {
    let config = super::load_config(&args.config)?;
    Store::open_read_only(&config.store)
        .with_context(|| format!("cannot open store {}", config.store))
}

fn since(ago: Option<Duration>) -> Option<SystemTime> {
    ago.and_then(|d| SystemTime::now().checked_sub(d))
}

pub fn sessions(
    args: &StoreArgs,
    principal: Option<String>,
    connection: Option<String>,
    ago: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let store = open(args)?;
    let filter = SessionFilter {
        principal,
        connection,
        since: since(ago),
    };
    let sessions = store.sessions(&filter)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<24}  {:<14}  {:<26}  {:>5}  {:>6}  CLIENT",
        "SESSION", "PRINCIPAL", "CONNECTION", "STARTED", "STMTS", "DENIED"
    );
    for s in sessions {
        println!(
            "{:<36}  {:<24}  {:<14}  {:<26}  {:>5}  {:>6}  {}",
            s.session_id,
            s.principal.as_deref().unwrap_or("-"),
            s.connection.as_deref().unwrap_or("-"),
            s.started,
            s.statements,
            s.denied,
            s.client_addr.as_deref().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replay(args: &StoreArgs, session: &str) -> anyhow::Result<ExitCode> {
    let store = open(args)?;
    let records = store.session_records(session)?;
    if records.is_empty() {
        eprintln!("no session {session:?} in {}", args.config.display());
        return Ok(ExitCode::from(1));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    let results = results_by_statement(&records);
    for record in &records {
        if let Some(line) = replay_line(record, &results) {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Statement results arrive batched per session (`{"results": [...]}`);
/// index them by the statement record they describe.
fn results_by_statement(records: &[Record]) -> HashMap<i64, &Value> {
    records
        .iter()
        .filter(|r| r.kind == RecordKind::StatementResult)
        .filter_map(|r| r.detail.get("results").and_then(Value::as_array))
        .flatten()
        .filter_map(|res| {
            res.get("statement")
                .and_then(Value::as_i64)
                .map(|id| (id, res))
        })
        .collect()
}

fn replay_line(r: &Record, results: &HashMap<i64, &Value>) -> Option<String> {
    let d = &r.detail;
    let text = |key: &str| d.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let who = r.principal.as_deref().unwrap_or("-");
    let line = match r.kind {
        RecordKind::ConnectionAttempt => format!(
            "connect {} by {who} from {}{}",
            r.decision.as_deref().unwrap_or("?"),
            text("client_addr"),
            d.get("reason")
                .and_then(Value::as_str)
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        ),
        RecordKind::SessionStart => format!(
            "session start on {} ({})",
            r.connection.as_deref().unwrap_or("-"),
            text("protocol")
        ),
        RecordKind::SessionEnd => format!("session end: {}", text("reason")),
        RecordKind::Statement => statement_line(r, results.get(&r.id).copied()),
        RecordKind::Grant => format!(
            "grant {} {}",
            text("id"),
            r.decision.as_deref().unwrap_or("?")
        ),
        RecordKind::Approval => format!(
            "approval {} {}: {}",
            text("id"),
            r.decision.as_deref().unwrap_or("?"),
            text("statement")
        ),
        RecordKind::Notification => format!("notification failed: {}", text("error")),
        RecordKind::Error => format!("error: {}", d),
        RecordKind::StatementResult => return None,
    };
    Some(format!("{}  {line}", r.time))
}

fn statement_line(r: &Record, result: Option<&Value>) -> String {
    let d = &r.detail;
    let decision = r.decision.as_deref().unwrap_or("?").to_uppercase();
    let classes: Vec<String> = d
        .get("classes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let rule = match (&r.policy, &r.rule) {
        (Some(p), Some(rule)) => format!("policy {p:?}, rule {rule:?}"),
        (None, Some(rule)) => format!("rule {rule:?}"),
        _ => String::new(),
    };
    let mut line = format!(
        "{decision:<5} [{}] {} ({rule})",
        classes.join(","),
        d.get("text").and_then(Value::as_str).unwrap_or("")
    );
    if let Some(rd) = result {
        let ms = rd.get("duration_us").and_then(Value::as_u64).unwrap_or(0) as f64 / 1000.0;
        match rd.get("error").and_then(Value::as_str) {
            Some(err) => line.push_str(&format!(" -> error: {err} ({ms:.2} ms)")),
            None => line.push_str(&format!(
                " -> {} rows, {} bytes, {ms:.2} ms",
                rd.get("rows").and_then(Value::as_u64).unwrap_or(0),
                rd.get("bytes").and_then(Value::as_u64).unwrap_or(0)
            )),
        }
        if let Some(masked) = rd.get("masked") {
            line.push_str(&format!(" [masked: {masked}]"));
        }
        if let Some(output) = rd.get("output") {
            push_output(&mut line, output);
        }
    } else if r.decision.as_deref() != Some("allow") {
        if let Some(reason) = d.get("reason").and_then(Value::as_str) {
            line.push_str(&format!(" -> refused: {reason}"));
        }
    }
    line
}

/// The recorded first rows, indented under their statement, as `psql -A`
/// would print them (cells joined by `|`, NULL empty).
fn push_output(line: &mut String, output: &Value) {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|cells| {
                cells
                    .iter()
                    .map(|c| c.as_str().map(str::to_string).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    };
    let columns = strings(&output["columns"]);
    if !columns.is_empty() {
        line.push_str(&format!("\n      {}", columns.join("|")));
    }
    for row in output["rows"].as_array().into_iter().flatten() {
        line.push_str(&format!("\n      {}", strings(row).join("|")));
    }
    if output["truncated"] == Value::Bool(true) {
        line.push_str("\n      ...");
    }
}

pub fn verify(args: &StoreArgs) -> anyhow::Result<ExitCode> {
    let store = open(args)?;
    let report = store.verify()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &report.first_broken {
            None => println!(
                "audit chain ok: {} records, head {}",
                report.checked,
                report.head.as_deref().unwrap_or("(empty)")
            ),
            Some(b) => println!("audit chain BROKEN at record {}: {}", b.id, b.reason),
        }
    }
    Ok(if report.first_broken.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn export(
    args: &StoreArgs,
    format: ExportFormat,
    ago: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let store = open(args)?;
    let records = store.records(since(ago))?;
    match format {
        ExportFormat::Jsonl => {
            for r in records {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        ExportFormat::Ocsf | ExportFormat::Cef => {
            anyhow::bail!("export format not implemented yet; use --format jsonl")
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! Commands that read records: `sessions list`, `replay`, `audit verify`,
//! `audit export`. They open the store read-only, so they work whether or
//! not the gateway is running.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use portcullis_config::Config;
use portcullis_records::untrusted::escape;
use portcullis_records::{Record, RecordKind, SessionFilter, Store};
use serde_json::Value;

use crate::cli::{ExportFormat, StoreArgs};

fn open(args: &StoreArgs) -> anyhow::Result<Store> {
    open_with_config(args).map(|(store, _)| store)
}

fn open_with_config(args: &StoreArgs) -> anyhow::Result<(Store, Config)> {
    let config = super::load_config(&args.config)?;
    let store = Store::open_read_only(&config.store)
        .with_context(|| format!("cannot open store {}", config.store))?;
    Ok((store, config))
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
        let text = serde_json::to_string_pretty(&sessions)?;
        println!(
            "{}",
            portcullis_records::untrusted::json_for_terminal(&text)
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<24}  {:<14}  {:<26}  {:>5}  {:>6}  CLIENT",
        "SESSION", "PRINCIPAL", "CONNECTION", "STARTED", "STMTS", "DENIED"
    );
    for s in sessions {
        println!(
            "{:<36}  {:<24}  {:<14}  {:<26}  {:>5}  {:>6}  {}",
            escape(&s.session_id),
            escape(s.principal.as_deref().unwrap_or("-")),
            escape(s.connection.as_deref().unwrap_or("-")),
            s.started,
            s.statements,
            s.denied,
            escape(s.client_addr.as_deref().unwrap_or("-")),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How `replay` shows a session.
pub enum ReplayMode {
    /// Every record as a line; SSH terminal output printed in place.
    Text,
    /// Like `Text`, with terminal output at its recorded pace.
    Play,
    /// One channel's recording, verbatim, for `asciinema play`.
    Asciicast { channel: Option<u64> },
}

pub fn replay(args: &StoreArgs, session: &str, mode: ReplayMode) -> anyhow::Result<ExitCode> {
    let (store, config) = open_with_config(args)?;
    let records = store.session_records(session)?;
    if records.is_empty() {
        eprintln!("no session {session:?} in {}", args.config.display());
        return Ok(ExitCode::from(1));
    }
    if let ReplayMode::Asciicast { channel } = mode {
        return export_asciicast(&records, &config, channel);
    }
    if args.json {
        let text = serde_json::to_string_pretty(&records)?;
        println!(
            "{}",
            portcullis_records::untrusted::json_for_terminal(&text)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let results = results_by_statement(&records);
    let mut intact = true;
    for record in &records {
        if let Some(line) = replay_line(record, &results) {
            println!("{line}");
        }
        let recording = results
            .get(&record.id)
            .and_then(|r| r.get("recording"))
            .filter(|_| record.kind == RecordKind::Statement);
        if let Some(recording) = recording {
            intact &= play_recording(recording, &config, matches!(mode, ReplayMode::Play))?;
        }
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The recording a result record describes, if its file still matches the
/// hash the record holds (`None`, with a warning, when it does not).
fn verified_recording(recording: &Value, config: &Config) -> anyhow::Result<Option<String>> {
    let file = recording.get("file").and_then(Value::as_str).unwrap_or("");
    let sha = recording
        .get("sha256")
        .and_then(Value::as_str)
        .unwrap_or("");
    let path = config.data_dir.join(file);
    let text = portcullis_ssh::recording::read_verified(&path, sha)
        .with_context(|| format!("cannot read recording {}", path.display()))?;
    if text.is_none() {
        eprintln!(
            "warning: recording {} does not match the SHA-256 in its audit record: it was altered",
            path.display()
        );
        return Ok(None);
    }
    if let Some(binary) = recording.get("binary").filter(|b| b.is_object()) {
        let file = binary.get("file").and_then(Value::as_str).unwrap_or("");
        let sha = binary.get("sha256").and_then(Value::as_str).unwrap_or("");
        let path = config.data_dir.join(file);
        let intact = portcullis_ssh::recording::file_matches(&path, sha)
            .with_context(|| format!("cannot read recording {}", path.display()))?;
        if !intact {
            eprintln!(
                "warning: binary output {} does not match the SHA-256 in its audit record: it was altered",
                path.display()
            );
            return Ok(None);
        }
    }
    Ok(text)
}

/// Prints a terminal recording's output in place; false if it was altered.
fn play_recording(recording: &Value, config: &Config, paced: bool) -> anyhow::Result<bool> {
    let Some(text) = verified_recording(recording, config)? else {
        println!("    [terminal recording altered; not shown]");
        return Ok(false);
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "---- terminal ({}) ----",
        recording["file"].as_str().unwrap_or("")
    )?;
    let mut last = 0.0;
    for event in text
        .lines()
        .filter_map(portcullis_ssh::recording::parse_event)
    {
        if event.kind != "o" {
            continue;
        }
        if paced {
            out.flush()?;
            let pause = (event.seconds - last).clamp(0.0, 1.0);
            std::thread::sleep(Duration::from_secs_f64(pause));
            last = event.seconds;
        }
        out.write_all(event.data.as_bytes())?;
    }
    writeln!(out, "\n---- end of terminal ----")?;
    Ok(true)
}

fn export_asciicast(
    records: &[Record],
    config: &Config,
    channel: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let recordings = results_by_statement(records)
        .into_values()
        .filter(|r| channel.is_none() || r.get("channel").and_then(Value::as_u64) == channel)
        .filter_map(|r| Some((r.get("statement")?.as_i64()?, r.get("recording")?)))
        .collect::<std::collections::BTreeMap<_, _>>();
    let Some((_, recording)) = recordings.into_iter().next() else {
        eprintln!(
            "this session has no terminal recording{}",
            match channel {
                Some(c) => format!(" on channel {c}"),
                None => String::new(),
            }
        );
        return Ok(ExitCode::from(1));
    };
    match verified_recording(recording, config)? {
        Some(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        None => Ok(ExitCode::from(1)),
    }
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
    // Everything recorded from a client is shown escaped: a replay must not
    // let a recorded statement redraw the lines around it.
    let text = |key: &str| escape(d.get(key).and_then(Value::as_str).unwrap_or("")).into_owned();
    let who = escape(r.principal.as_deref().unwrap_or("-"));
    let line = match r.kind {
        RecordKind::ConnectionAttempt => format!(
            "connect {} by {who} from {}{}",
            r.decision.as_deref().unwrap_or("?"),
            text("client_addr"),
            d.get("reason")
                .and_then(Value::as_str)
                .map(|x| format!(": {}", escape(x)))
                .unwrap_or_default()
        ),
        RecordKind::SessionStart => format!(
            "session start on {} ({})",
            escape(r.connection.as_deref().unwrap_or("-")),
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
        RecordKind::AdminRequest => format!(
            "admin request {} {} refused ({}) for {who} from {}: {}",
            text("method"),
            text("path"),
            d.get("status").and_then(Value::as_u64).unwrap_or(0),
            text("client_addr"),
            text("reason")
        ),
        RecordKind::Error => format!("error: {}", escape(&d.to_string())),
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
        escape(&classes.join(",")),
        escape(d.get("text").and_then(Value::as_str).unwrap_or(""))
    );
    if let Some(rd) = result
        .filter(|rd| d.get("protocol").and_then(Value::as_str) == Some("ssh") && rd.is_object())
    {
        line.push_str(&ssh_result(rd));
    } else if let Some(rd) = result {
        let ms = rd.get("duration_us").and_then(Value::as_u64).unwrap_or(0) as f64 / 1000.0;
        match rd.get("error").and_then(Value::as_str) {
            Some(err) => line.push_str(&format!(" -> error: {} ({ms:.2} ms)", escape(err))),
            None => line.push_str(&format!(
                " -> {} rows, {} bytes, {ms:.2} ms",
                rd.get("rows").and_then(Value::as_u64).unwrap_or(0),
                rd.get("bytes").and_then(Value::as_u64).unwrap_or(0)
            )),
        }
        if let Some(masked) = rd.get("masked") {
            line.push_str(&format!(" [masked: {}]", escape(&masked.to_string())));
        }
        if let Some(output) = rd.get("output") {
            push_output(&mut line, output);
        }
    } else if r.decision.as_deref() != Some("allow") {
        if let Some(reason) = d.get("reason").and_then(Value::as_str) {
            line.push_str(&format!(" -> refused: {}", escape(reason)));
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
                    .map(|c| {
                        c.as_str()
                            .map(|c| escape(c).into_owned())
                            .unwrap_or_default()
                    })
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

/// ` -> exit 0, 12 B out, 0 B err, 3.10 ms` and the files an scp moved.
fn ssh_result(rd: &Value) -> String {
    let n = |key: &str| rd.get(key).and_then(Value::as_u64).unwrap_or(0);
    let ms = n("duration_us") as f64 / 1000.0;
    let end = match (
        rd.get("exit_status").and_then(Value::as_u64),
        rd.get("exit_signal").and_then(Value::as_str),
    ) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by {signal}"),
        (None, None) => "no exit status".to_string(),
    };
    let mut text = format!(
        " -> {end}, {} B out, {} B err, {} B in, {ms:.2} ms",
        n("stdout_bytes"),
        n("stderr_bytes"),
        n("input_bytes")
    );
    if let Some(files) = rd.get("files").and_then(Value::as_array) {
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                format!(
                    "{} ({} B)",
                    escape(f.get("name").and_then(Value::as_str).unwrap_or("?")),
                    f.get("size").and_then(Value::as_u64).unwrap_or(0)
                )
            })
            .collect();
        text.push_str(&format!("; files: {}", names.join(", ")));
    }
    text
}

pub fn verify(args: &StoreArgs) -> anyhow::Result<ExitCode> {
    let (store, config) = open_with_config(args)?;
    let report = portcullis_records::verify_signed(&store, &config.audit_signing_key())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &report.first_broken {
            None => println!(
                "audit chain ok: {} records, head {}; {} signed checkpoints (key {}), signed through record {}",
                report.checked,
                report.head.as_deref().unwrap_or("(empty)"),
                report.checkpoints,
                report.signing_key.as_deref().unwrap_or("-"),
                report.signed_through.map_or("-".into(), |id| id.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: RecordKind, decision: &str, detail: Value) -> Record {
        Record {
            id: 7,
            time: "2030-01-01T00:00:00.000000Z".into(),
            kind,
            session_id: Some("s".into()),
            principal: Some("bob\n2030-01-01 INFO fake".into()),
            connection: Some("db".into()),
            decision: Some(decision.into()),
            policy: Some("p".into()),
            rule: Some("write".into()),
            detail,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn replayed_text_cannot_redraw_the_terminal() {
        let sql = "delete from t where x = '\u{1b}[2K\r\u{1b}[1Aselect 1\n'";
        let statement = record(
            RecordKind::Statement,
            "deny",
            serde_json::json!({ "text": sql, "classes": ["write"], "reason": "no\rpe" }),
        );
        let attempt = record(
            RecordKind::ConnectionAttempt,
            "deny",
            serde_json::json!({ "client_addr": "1.2.3.4:5", "reason": "bad\u{202e}token" }),
        );
        for r in [statement, attempt] {
            let line = replay_line(&r, &HashMap::new()).unwrap();
            assert!(
                !line.contains(['\n', '\r', '\u{1b}', '\u{202e}']),
                "{line:?}"
            );
        }
    }
}

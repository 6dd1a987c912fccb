//! `grants` and `approvals`: thin clients of the admin API. They act as the
//! caller (token in `PORTCULLIS_TOKEN`) and print what the gateway answers,
//! as a table or, with `--json`, as the API's JSON.

use std::process::ExitCode;

use anyhow::{bail, Context};
use portcullis_records::untrusted;
use serde_json::Value;

use crate::cli::AdminArgs;

pub struct Call {
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
}

impl Call {
    pub fn get(path: String) -> Self {
        Self {
            method: reqwest::Method::GET,
            path,
            body: None,
        }
    }

    pub fn post(path: String, body: Value) -> Self {
        Self {
            method: reqwest::Method::POST,
            path,
            body: Some(body),
        }
    }

    /// `POST /v1/{noun}/{id}/{verb}` with an optional reason.
    pub fn act(noun: &str, id: &str, verb: &str, reason: Option<String>) -> Self {
        let body = match reason {
            Some(r) => serde_json::json!({ "reason": r }),
            None => serde_json::json!({}),
        };
        Self::post(format!("/v1/{noun}/{id}/{verb}"), body)
    }
}

pub async fn run(admin: &AdminArgs, call: Call) -> anyhow::Result<ExitCode> {
    let token = match std::env::var("PORTCULLIS_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => bail!("PORTCULLIS_TOKEN is not set: put your OIDC token in it"),
    };
    let url = format!("{}{}", admin.admin.trim_end_matches('/'), call.path);
    let mut client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(path) = &admin.admin_ca {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
        client = client.add_root_certificate(cert);
    }
    let client = client.build()?;
    let mut request = client.request(call.method, &url).bearer_auth(token);
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", admin.admin))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        if admin.json {
            println!("{}", untrusted::json_for_terminal(&value.to_string()));
        }
        eprintln!(
            "error: {} (HTTP {})",
            untrusted::escape(&message),
            status.as_u16()
        );
        return Ok(ExitCode::FAILURE);
    }
    if admin.json {
        let text = serde_json::to_string_pretty(&value)?;
        println!("{}", untrusted::json_for_terminal(&text));
    } else {
        print_human(&value);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(value: &Value) {
    match value {
        Value::Array(items) if items.is_empty() => println!("(none)"),
        Value::Array(items) => items.iter().for_each(|i| println!("{}", line(i))),
        other => println!("{}", line(other)),
    }
}

/// How much of a statement a list line shows; `--json` has all of it.
const STATEMENT_CHARS: usize = 400;
/// How much of any other text (names, reasons) a list line shows.
const TEXT_CHARS: usize = 200;

/// One line per grant or approval: id, status, who, where, and the gist.
/// Everything in it but the gateway's own ids and times came from a
/// workload, so it goes through `untrusted` and cannot move the cursor,
/// start a new line or reorder what the approver reads.
fn line(v: &Value) -> String {
    let raw = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-");
    let s = |k: &str| untrusted::shorten(raw(k), TEXT_CHARS);
    if v.get("statement").is_some() {
        let list = |k: &str| {
            let items: Vec<&str> = v
                .get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            untrusted::shorten(&items.join(", "), TEXT_CHARS)
        };
        let (classes, relations) = (list("classes"), list("relations"));
        let what = if classes.is_empty() {
            String::new()
        } else if relations.is_empty() {
            format!("[{classes}] ")
        } else {
            format!("[{classes} on {relations}] ")
        };
        format!(
            "{}  {:<9} {} on {}  {what}{}  (deadline {})",
            s("id"),
            s("status"),
            s("principal"),
            s("connection"),
            untrusted::shorten(raw("statement"), STATEMENT_CHARS),
            s("deadline")
        )
    } else {
        let until = match v.get("expires_at").and_then(Value::as_str) {
            Some(e) => format!("until {}", untrusted::escape(e)),
            None => format!(
                "for {}s",
                v.get("duration_secs").and_then(Value::as_u64).unwrap_or(0)
            ),
        };
        format!(
            "{}  {:<8} {} on {} {}  {}",
            s("id"),
            s("status"),
            s("principal"),
            s("connection"),
            until,
            s("reason")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_id_status_and_subject() {
        let grant = serde_json::json!({
            "id": "g-1", "status": "pending", "principal": "ci", "connection": "db",
            "duration_secs": 900, "reason": "incident 7"
        });
        assert_eq!(line(&grant), "g-1  pending  ci on db for 900s  incident 7");
        let held = serde_json::json!({
            "id": "a-1", "status": "pending", "principal": "ci", "connection": "db",
            "statement": "UPDATE t SET x = 1", "deadline": "2030-01-01T00:00:00Z",
            "classes": ["write"], "relations": ["t"]
        });
        assert_eq!(
            line(&held),
            "a-1  pending   ci on db  [write on t] UPDATE t SET x = 1  (deadline 2030-01-01T00:00:00Z)"
        );
    }

    #[test]
    fn workload_text_cannot_redraw_the_line() {
        let held = serde_json::json!({
            "id": "a-1", "status": "pending", "principal": "bob\r", "connection": "db",
            "statement": "delete from customers where email = '\u{1b}[2K\r\u{1b}[1A\u{1b}[2Ka-0 bob select 1 -- harmless\n'",
            "deadline": "2030-01-01T00:00:00Z", "classes": ["write"], "relations": ["customers"]
        });
        let shown = line(&held);
        assert_eq!(
            shown,
            "a-1  pending   bob\\r on db  [write on customers] delete from customers where email = '\\u{1b}[2K\\r\\u{1b}[1A\\u{1b}[2Ka-0 bob select 1 -- harmless\\n'  (deadline 2030-01-01T00:00:00Z)"
        );
        let grant = serde_json::json!({
            "id": "g-1", "status": "pending", "principal": "ci", "connection": "db",
            "duration_secs": 900, "reason": format!("{}\r\u{1b}[2K", "x".repeat(300))
        });
        assert!(line(&grant).ends_with("… (305 chars)"), "{}", line(&grant));
    }
}

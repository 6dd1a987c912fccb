//! Webhooks announcing new grant requests and held statements. Delivery runs
//! on its own tasks behind a bounded queue: a slow or dead receiver delays
//! nobody's statement, and an event that cannot be delivered after its
//! retries becomes a `notification` record instead.

use std::time::Duration;

use portcullis_config::{WebhookConfig, WebhookFormat};
use portcullis_records::{NewRecord, RecordKind, Store};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use portcullis_records::untrusted;

use crate::{Approval, Grant};

const QUEUE: usize = 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Something approvers should hear about.
#[derive(Debug, Clone)]
pub enum Event {
    GrantRequested(Grant),
    ApprovalRequested(Approval),
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Self::GrantRequested(_) => "grant_requested",
            Self::ApprovalRequested(_) => "approval_requested",
        }
    }

    fn id(&self) -> &str {
        match self {
            Self::GrantRequested(g) => &g.id,
            Self::ApprovalRequested(a) => &a.id,
        }
    }

    /// The admin API path of the object, and the CLI noun for it.
    fn route(&self) -> (&'static str, &'static str) {
        match self {
            Self::GrantRequested(_) => ("grants", "grants"),
            Self::ApprovalRequested(_) => ("approvals", "approvals"),
        }
    }

    /// The generic JSON payload: the object as the API answers it (raw
    /// text, for programs), and `text`, the same summary people see in
    /// Slack, escaped for display.
    pub fn json(&self, base_url: &str) -> Value {
        let (path, noun) = self.route();
        let id = self.id();
        let object = match self {
            Self::GrantRequested(g) => json!(g),
            Self::ApprovalRequested(a) => json!(a),
        };
        json!({
            "event": self.name(),
            "id": id,
            path.trim_end_matches('s'): object,
            "text": self.summary(&|t| untrusted::shorten(t, SHOWN_CHARS)),
            "url": format!("{base_url}/v1/{path}/{id}"),
            "approve": { "method": "POST", "url": format!("{base_url}/v1/{path}/{id}/approve") },
            "deny": { "method": "POST", "url": format!("{base_url}/v1/{path}/{id}/deny") },
            "cli": format!("portcullis {noun} approve {id} --admin {base_url}"),
        })
    }

    /// A Slack incoming-webhook message: `text` is all Slack requires, with
    /// a `<url|label>` link. Workload text sits in code spans, escaped so it
    /// can neither close them nor plant links or mentions.
    pub fn slack(&self, base_url: &str) -> Value {
        let (path, noun) = self.route();
        let id = self.id();
        let what = self.summary(&slack_code);
        json!({
            "text": format!(
                "{what}\n<{base_url}/v1/{path}/{id}|{id}> · approve: `portcullis {noun} approve {id} --admin {base_url}`"
            ),
        })
    }

    /// Who asks for what, every piece of workload-supplied text passed
    /// through `shown`.
    fn summary(&self, shown: &dyn Fn(&str) -> String) -> String {
        match self {
            Self::GrantRequested(g) => format!(
                "{} requests {} of access to {}: {}",
                shown(&g.principal),
                crate::duration::describe(g.duration()),
                shown(&g.connection),
                shown(&g.reason)
            ),
            Self::ApprovalRequested(a) => {
                let classes = if a.classes.is_empty() {
                    "held".to_string()
                } else {
                    shown(&a.classes.join(", "))
                };
                let relations = if a.relations.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", shown(&a.relations.join(", ")))
                };
                format!(
                    "{} on {} is waiting for approval of a {classes} statement{relations}: {} (why held: {})",
                    shown(&a.principal),
                    shown(&a.connection),
                    shown(&a.statement),
                    shown(&a.reason)
                )
            }
        }
    }
}

/// How much of one piece of workload text a notification shows.
const SHOWN_CHARS: usize = 500;

/// Workload text as a Slack code span: escaped for display and shortened,
/// backticks escaped so the span cannot be closed early, and `&`, `<`, `>`
/// as the entities Slack's mrkdwn requires, so no `<url|label>` link or
/// `<!channel>` mention survives.
fn slack_code(text: &str) -> String {
    let shown = untrusted::shorten(text, SHOWN_CHARS);
    let mut out = String::with_capacity(shown.len() + 2);
    out.push('`');
    for c in shown.chars() {
        match c {
            '`' => out.push_str("\\u{60}"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

/// Hands events to the delivery task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Event>>,
    store: Option<Store>,
}

impl Notifier {
    /// Delivers nothing (no webhooks configured).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            store: None,
        }
    }

    /// Starts the delivery task; must run inside a tokio runtime.
    pub fn start(hooks: Vec<WebhookConfig>, base_url: String, store: Store) -> Self {
        if hooks.is_empty() {
            return Self::disabled();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        tokio::spawn(deliver_all(rx, hooks, base_url, client, store.clone()));
        Self {
            tx: Some(tx),
            store: Some(store),
        }
    }

    /// Queues an event without waiting.
    pub fn notify(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(event) {
            let event = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            tracing::warn!(
                event = event.name(),
                id = event.id(),
                "webhook queue full; event dropped"
            );
            if let Some(store) = &self.store {
                store.append_detached(failure(&event, "-", "webhook queue full", 0));
            }
        }
    }
}

async fn deliver_all(
    mut rx: mpsc::Receiver<Event>,
    hooks: Vec<WebhookConfig>,
    base_url: String,
    client: reqwest::Client,
    store: Store,
) {
    while let Some(event) = rx.recv().await {
        for hook in &hooks {
            let body = match hook.format {
                WebhookFormat::Json => event.json(&base_url),
                WebhookFormat::Slack => event.slack(&base_url),
            };
            // One task per delivery, so a receiver that is down and being
            // retried does not hold up the others.
            tokio::spawn(deliver(
                client.clone(),
                hook.clone(),
                body,
                event.clone(),
                store.clone(),
            ));
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    hook: WebhookConfig,
    body: Value,
    event: Event,
    store: Store,
) {
    let target = redacted(&hook.url);
    let mut delay = FIRST_RETRY;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match client.post(&hook.url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(event = event.name(), id = event.id(), webhook = %target, attempts, "webhook delivered");
                return;
            }
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => without_url(&e),
        };
        if attempts > hook.retries {
            tracing::warn!(event = event.name(), id = event.id(), webhook = %target, attempts, %error, "webhook failed");
            store.append_detached(failure(&event, &target, &error, attempts));
            return;
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
    }
}

fn failure(event: &Event, target: &str, error: &str, attempts: u32) -> NewRecord {
    NewRecord::new(RecordKind::Notification)
        .decision("fail")
        .detail(json!({
            "event": event.name(),
            "id": event.id(),
            "webhook": target,
            "attempts": attempts,
            "error": error,
        }))
}

/// Scheme and host only: incoming-webhook URLs carry their secret in the
/// path, and records and logs must not hold secrets.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    format!("{scheme}://{host}/…")
}

/// reqwest errors name the URL; keep only the cause.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut deepest = None;
    while let Some(s) = source {
        deepest = Some(s.to_string());
        source = s.source();
    }
    match deepest {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(
            redacted("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redacted("http://127.0.0.1:9/x?token=1"),
            "http://127.0.0.1:9/…"
        );
    }

    #[test]
    fn slack_code_spans_cannot_be_closed_or_carry_links() {
        let planted = "x` <https://evil.example|click> <!channel> & \u{1b}[2K\rok\n";
        assert_eq!(
            slack_code(planted),
            "`x\\u{60} &lt;https://evil.example|click&gt; &lt;!channel&gt; &amp; \\u{1b}[2K\\rok\\n`"
        );
    }
}

//! Webhooks announcing new grant requests and held statements. Delivery runs
//! on its own tasks behind a bounded queue: a slow or dead receiver delays
//! nobody's statement, and an event that cannot be delivered after its
//! retries becomes a `notification` record instead.

use std::time::Duration;

use portcullis_config::{WebhookConfig, WebhookFormat};
use portcullis_records::{NewRecord, RecordKind, Store};
use serde_json::{json, Value};
use tokio::sync::mpsc;

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

    /// The generic JSON payload.
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
            "url": format!("{base_url}/v1/{path}/{id}"),
            "approve": { "method": "POST", "url": format!("{base_url}/v1/{path}/{id}/approve") },
            "deny": { "method": "POST", "url": format!("{base_url}/v1/{path}/{id}/deny") },
            "cli": format!("portcullis {noun} approve {id} --admin {base_url}"),
        })
    }

    /// A Slack incoming-webhook message: `text` is all Slack requires, with
    /// `<url|label>` links.
    pub fn slack(&self, base_url: &str) -> Value {
        let (path, noun) = self.route();
        let id = self.id();
        let what = match self {
            Self::GrantRequested(g) => format!(
                "*{}* requests {} of access to *{}*: {}",
                g.principal,
                humanize(g.duration_secs),
                g.connection,
                g.reason
            ),
            Self::ApprovalRequested(a) => format!(
                "*{}* on *{}* is waiting for approval of:\n```{}```\n{}",
                a.principal, a.connection, a.statement, a.reason
            ),
        };
        json!({
            "text": format!(
                "{what}\n<{base_url}/v1/{path}/{id}|{id}> · approve: `portcullis {noun} approve {id} --admin {base_url}`"
            ),
        })
    }
}

fn humanize(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
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
    fn humanized_durations() {
        assert_eq!(humanize(3600), "1h");
        assert_eq!(humanize(900), "15m");
        assert_eq!(humanize(90), "90s");
    }
}

//! One session channel, from its first request to its close.
//!
//! The client's `exec`, `shell` or `subsystem` request is decided once by
//! policy and recorded before it reaches the upstream; a refusal becomes a
//! message on stderr and exit status 126. One that policy holds waits for an
//! approver (the client is told where on stderr) and is then run once or
//! refused the same way. Once running, each side is
//! drained as soon as messages arrive (within a byte budget, see [`drain`])
//! and each direction is written by its own loop, since each write waits for
//! its peer's window and one loop could wait for the client's window while
//! the client's own data (and with it the window update) queues behind it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portcullis_identity::Principal;
use portcullis_jit::{wording, ApprovalStatus, HoldRequest};
use portcullis_policy::decide::{parse_scp, Decision, ScpDirection, SshRequest, Verdict};
use portcullis_records::{NewRecord, RecordKind};
use russh::{
    client, server, Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::recording::{Header, Recording, Stream};
use crate::scp::ScpObserver;
use crate::sftp::SftpObserver;
use crate::{Peer, SshGateway, REFUSED_EXIT_STATUS};

/// What a channel needs to know about its session.
pub(crate) struct ChannelContext {
    pub gw: Arc<SshGateway>,
    pub peer: Peer,
    pub principal: Arc<Principal>,
    /// The grant the session runs under, if any; named in every record.
    pub grant: Option<String>,
    pub handle: server::Handle,
    /// Numbers the session's channels, for recording file names.
    pub number: u32,
}

#[derive(Default)]
struct Shared {
    phase: Phase,
    pty: Option<Pty>,
    recording: Option<Recording>,
    scp: Option<(ScpDirection, ScpObserver)>,
    sftp: Option<SftpObserver>,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
    stdout_bytes: u64,
    stderr_bytes: u64,
    input_bytes: u64,
    signals: Vec<String>,
    /// Environment variables passed on to the upstream, for the record.
    env: Vec<(String, String)>,
    /// The client left and the upstream had not closed the channel within the grace period.
    upstream_abandoned: bool,
}

#[derive(Default, PartialEq, Eq)]
enum Phase {
    /// No exec / shell / subsystem yet.
    #[default]
    Waiting,
    Running {
        statement: i64,
        started: Instant,
    },
    /// Refused: the upstream side is closed, the client told why.
    Refused,
}

struct Pty {
    term: String,
    width: u32,
    height: u32,
}

impl ChannelContext {
    /// Who asks, for records: the principal and the grant it runs under.
    fn who(&self) -> (&Principal, Option<&str>) {
        (&self.principal, self.grant.as_deref())
    }
}

type ClientTx = ChannelWriteHalf<server::Msg>;
type UpstreamTx = ChannelWriteHalf<client::Msg>;

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) async fn run(
    ctx: ChannelContext,
    client: Channel<server::Msg>,
    upstream: Channel<client::Msg>,
) {
    let (mut client_rx, client_tx) = client.split();
    let (mut upstream_rx, upstream_tx) = upstream.split();
    let shared = Mutex::new(Shared::default());
    let (client_queue, mut client_msgs) = mpsc::unbounded_channel();
    let (upstream_queue, mut upstream_msgs) = mpsc::unbounded_channel();
    let (to_client, to_upstream) = (AtomicBool::new(false), AtomicBool::new(false));
    let client_done = tokio::sync::Notify::new();
    let upstream_side = async {
        tokio::join!(
            drain(&mut upstream_rx, upstream_queue, &to_upstream),
            from_upstream(&ctx, &mut upstream_msgs, &client_tx, &shared, &to_client),
        );
    };
    tokio::join!(
        drain(&mut client_rx, client_queue, &to_client),
        async {
            from_client(
                &ctx,
                &mut client_msgs,
                &client_tx,
                &upstream_tx,
                &shared,
                &to_upstream,
            )
            .await;
            // Nothing more is taken from the client: its drain stops too.
            client_msgs.close();
            client_done.notify_one();
        },
        async {
            tokio::select! {
                () = upstream_side => {}
                () = client_gone_for(&client_done, UPSTREAM_CLOSE_GRACE) => {
                    lock(&shared).upstream_abandoned = true;
                }
            }
        },
    );
    let shared = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    finish(&ctx, shared).await;
}

/// How long the upstream may take to close a channel once the client has closed it or gone,
/// before the channel's result is recorded without waiting further. A command still running
/// upstream (`sleep 600`, its client killed) would otherwise hold the record back until it ends.
const UPSTREAM_CLOSE_GRACE: Duration = Duration::from_secs(2);

async fn client_gone_for(client_done: &tokio::sync::Notify, grace: Duration) {
    client_done.notified().await;
    tokio::time::sleep(grace).await;
}

/// How many bytes of one direction may wait between the side that sent
/// them and the side whose window they wait for.
const IN_FLIGHT: usize = 8 * 1024 * 1024;
/// How many more may wait while the other direction's writer is waiting
/// for a window; see [`drain`].
const RESERVE: usize = 32 * 1024 * 1024;

/// A message taken off a channel, holding its share of the direction's budget
/// until it has been passed on.
type Queued = (ChannelMsg, OwnedSemaphorePermit);

/// Takes messages off one side as soon as they arrive, within a byte
/// budget. russh grants window as soon as it receives, so the only
/// backpressure it has is a channel whose messages are not taken: then its
/// whole SSH connection stops reading, window updates included.
///
/// That can stall both directions at once (`cat big | ssh host cat`): this
/// side's budget is full of data for the other side, whose window does not
/// open because the other side's connection stopped reading, its budget
/// full of data for this side, whose window update sits unread behind this
/// side's data. So while the writer towards this side is waiting
/// (`far_writer_waiting`: waiting for this side's window), the drain may
/// take a reserve beyond its budget: reading on lets the window update
/// through, and the writer moves again. The reserve bounds what a client
/// that never opens its window can make the gateway hold.
async fn drain(
    rx: &mut ChannelReadHalf,
    queue: mpsc::UnboundedSender<Queued>,
    far_writer_waiting: &AtomicBool,
) {
    let budget = Arc::new(Semaphore::new(IN_FLIGHT));
    let reserve = Arc::new(Semaphore::new(RESERVE));
    while let Some(msg) = rx.wait().await {
        let size = match &msg {
            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                data.len().min(IN_FLIGHT) as u32
            }
            _ => 0,
        };
        let permit = loop {
            if let Ok(permit) = budget.clone().try_acquire_many_owned(size) {
                break permit;
            }
            if far_writer_waiting.load(Ordering::Acquire) {
                if let Ok(permit) = reserve.clone().try_acquire_many_owned(size) {
                    break permit;
                }
            }
            tokio::select! {
                acquired = budget.clone().acquire_many_owned(size) => match acquired {
                    Ok(permit) => break permit,
                    // Never closed; if it were, nothing more can be relayed.
                    Err(_) => return,
                },
                // Look at the other direction again soon.
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            if queue.is_closed() {
                return;
            }
        };
        if queue.send((msg, permit)).is_err() {
            return;
        }
    }
}

/// Marks a write towards one side as waiting for that side's window while
/// it is under way.
async fn writing<T>(waiting: &AtomicBool, write: impl std::future::Future<Output = T>) -> T {
    waiting.store(true, Ordering::Release);
    let result = write.await;
    waiting.store(false, Ordering::Release);
    result
}

async fn from_client(
    ctx: &ChannelContext,
    rx: &mut mpsc::UnboundedReceiver<Queued>,
    client: &ClientTx,
    upstream: &UpstreamTx,
    shared: &Mutex<Shared>,
    to_upstream: &AtomicBool,
) {
    // What the client sent while its request was held, to pass on in order
    // once it is settled.
    let mut backlog = VecDeque::new();
    loop {
        let next = match backlog.pop_front() {
            Some(queued) => Some(queued),
            None => rx.recv().await,
        };
        let Some((msg, _passed_on)) = next else { break };
        let request = match msg {
            ChannelMsg::Exec { command, .. } => {
                SshRequest::Exec(String::from_utf8_lossy(&command).into_owned())
            }
            ChannelMsg::RequestShell { .. } => SshRequest::Shell,
            ChannelMsg::RequestSubsystem { name, .. } => SshRequest::Subsystem(name),
            msg => {
                if !pass_on(msg, upstream, shared, to_upstream).await {
                    break;
                }
                continue;
            }
        };
        let waiting = Waiting {
            rx: &mut *rx,
            backlog: &mut backlog,
        };
        if start(ctx, client, upstream, shared, request, waiting)
            .await
            .is_err()
        {
            break;
        }
    }
    // However the client side ended, the upstream side ends with it.
    let _ = upstream.close().await;
}

/// Passes one client message other than the exec / shell / subsystem
/// request on to the upstream; `false` when the channel is done.
async fn pass_on(
    msg: ChannelMsg,
    upstream: &UpstreamTx,
    shared: &Mutex<Shared>,
    to_upstream: &AtomicBool,
) -> bool {
    match msg {
        ChannelMsg::RequestPty {
            term,
            col_width,
            row_height,
            pix_width,
            pix_height,
            terminal_modes,
            ..
        } => {
            let sent = upstream
                .request_pty(
                    false,
                    &term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    &terminal_modes,
                )
                .await;
            if sent.is_ok() {
                lock(shared).pty = Some(Pty {
                    term,
                    width: col_width,
                    height: row_height,
                });
            }
        }
        // Answered by the server handler (see `env_passes`); only the
        // variables it accepted are passed on, without asking for a reply.
        ChannelMsg::SetEnv {
            variable_name,
            variable_value,
            ..
        } if env_passes(&variable_name, &variable_value) => {
            lock(shared)
                .env
                .push((variable_name.clone(), variable_value.clone()));
            let _ = upstream.set_env(false, variable_name, variable_value).await;
        }
        ChannelMsg::Data { data } => {
            {
                let mut s = lock(shared);
                if s.phase == Phase::Refused {
                    return true;
                }
                s.input_bytes += data.len() as u64;
                if let Some((ScpDirection::Upload, observer)) = s.scp.as_mut() {
                    observer.observe(&data);
                }
                if let Some(observer) = s.sftp.as_mut() {
                    observer.client_bytes(&data);
                }
            }
            if writing(to_upstream, upstream.data_bytes(data))
                .await
                .is_err()
            {
                return false;
            }
        }
        ChannelMsg::ExtendedData { data, ext } => {
            let _ = writing(to_upstream, upstream.extended_data_bytes(ext, data)).await;
        }
        ChannelMsg::Eof => {
            let _ = upstream.eof().await;
        }
        ChannelMsg::WindowChange {
            col_width,
            row_height,
            pix_width,
            pix_height,
        } => {
            if let Some(rec) = lock(shared).recording.as_mut() {
                rec.resize(col_width, row_height);
            }
            let _ = upstream
                .window_change(col_width, row_height, pix_width, pix_height)
                .await;
        }
        ChannelMsg::Signal { signal } => {
            lock(shared).signals.push(format!("{signal:?}"));
            let _ = upstream.signal(signal).await;
        }
        ChannelMsg::Close => return false,
        // Agent and X11 requests are answered by the server handler.
        _ => {}
    }
    true
}

async fn from_upstream(
    ctx: &ChannelContext,
    rx: &mut mpsc::UnboundedReceiver<Queued>,
    client: &ClientTx,
    shared: &Mutex<Shared>,
    to_client: &AtomicBool,
) {
    let id = client.id();
    while let Some((msg, _passed_on)) = rx.recv().await {
        match msg {
            ChannelMsg::Data { data } => {
                output(shared, Stream::Stdout, &data);
                if writing(to_client, client.data_bytes(data)).await.is_err() {
                    break;
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                output(shared, Stream::Stderr, &data);
                if writing(to_client, client.extended_data_bytes(ext, data))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = client.eof().await;
            }
            ChannelMsg::ExitStatus { exit_status } => {
                lock(shared).exit_status = Some(exit_status);
                let _ = client.exit_status(exit_status).await;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                lock(shared).exit_signal = Some(format!("{signal_name:?}"));
                let _ = ctx
                    .handle
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await;
            }
            // Replies to the exec / shell / subsystem request passed on.
            ChannelMsg::Success => reply(ctx, id, true).await,
            ChannelMsg::Failure => reply(ctx, id, false).await,
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    if lock(shared).phase != Phase::Refused {
        let _ = client.close().await;
    }
}

fn output(shared: &Mutex<Shared>, stream: Stream, data: &[u8]) {
    let mut s = lock(shared);
    match stream {
        Stream::Stdout => s.stdout_bytes += data.len() as u64,
        Stream::Stderr => s.stderr_bytes += data.len() as u64,
    }
    if let Some((ScpDirection::Download, observer)) = s.scp.as_mut() {
        observer.observe(data);
    }
    if let (Some(observer), Stream::Stdout) = (s.sftp.as_mut(), stream) {
        observer.server_bytes(data);
    }
    if let Some(rec) = s.recording.as_mut() {
        rec.output(stream, data);
    }
}

/// Whether the client may set this environment variable upstream.
///
/// Variables change what a command does (`LD_PRELOAD`, `PATH`, `BASH_ENV`)
/// without appearing in its command line, so only those that stock clients
/// send and that change no program are let through: the locale (OpenSSH's
/// `SendEnv LANG LC_*`, which Ansible and git rely on) and git's protocol
/// version. The upstream's `AcceptEnv` still has the last word.
pub(crate) fn env_passes(name: &str, value: &str) -> bool {
    let locale_name = name == "LANG" || name == "LANGUAGE" || name.starts_with("LC_");
    let locale_value = value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@:".contains(&b));
    let git_protocol = name == "GIT_PROTOCOL"
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=:.".contains(&b));
    (locale_name && locale_value) || git_protocol
}

async fn reply(ctx: &ChannelContext, id: russh::ChannelId, ok: bool) {
    let _ = match ok {
        true => ctx.handle.channel_success(id).await,
        false => ctx.handle.channel_failure(id).await,
    };
}

/// The client's side of a channel while a request of it is held: its
/// messages are read (so a disconnect ends the wait) and kept for later.
struct Waiting<'a> {
    rx: &'a mut mpsc::UnboundedReceiver<Queued>,
    backlog: &'a mut VecDeque<Queued>,
}

/// The client went away while its request was held.
struct ClientGone;

/// Decides the channel's one exec / shell / subsystem request (waiting for
/// an approver when policy holds it), records it, and either passes it on
/// or refuses it.
async fn start(
    ctx: &ChannelContext,
    client: &ClientTx,
    upstream: &UpstreamTx,
    shared: &Mutex<Shared>,
    request: SshRequest,
    waiting: Waiting<'_>,
) -> Result<(), ClientGone> {
    let id = client.id();
    if lock(shared).phase != Phase::Waiting {
        reply(ctx, id, false).await;
        return Ok(());
    }
    let decision = ctx
        .gw
        .rules(&ctx.principal, ctx.grant.as_deref())
        .decide_ssh(&request);
    let (kind, text, scp) = match &request {
        SshRequest::Exec(command) => ("exec", command.clone(), parse_scp(command)),
        SshRequest::Shell => ("shell", "(interactive shell)".to_string(), None),
        SshRequest::Subsystem(name) => ("subsystem", name.clone(), None),
        other => ("other", other.describe(), None),
    };
    let kind = if scp.is_some() { "scp" } else { kind };
    let settled = match decision.verdict {
        Verdict::Hold => await_approval(ctx, client, waiting, &decision, &text).await?,
        _ => Settled {
            decision,
            approval: None,
            message: None,
        },
    };
    let Settled {
        decision,
        approval,
        mut message,
    } = settled;
    let (pty, env) = {
        let s = lock(shared);
        let env: serde_json::Map<String, Value> =
            s.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        (s.pty.as_ref().map(|p| p.term.clone()), env)
    };
    let detail = json!({
        "protocol": "ssh",
        "request": kind,
        "classes": [kind],
        "text": text,
        "channel": ctx.number,
        "pty": pty,
        "env": env,
        "scp": scp,
        "reason": decision.reason,
        "approval": approval,
    });
    let (decision, statement) =
        match record_decision(&ctx.gw, &ctx.peer, ctx.who(), &decision, detail).await {
            Ok(statement) => (decision, statement),
            Err(refused) => {
                message = None;
                (refused, 0)
            }
        };
    // A held request reaches here settled (allowed or refused); one still
    // marked held would be a bug, and is refused like a denial.
    if decision.verdict != Verdict::Allow {
        lock(shared).phase = Phase::Refused;
        let message = message.unwrap_or_else(|| refusal_message(&decision));
        refuse(ctx, client, upstream, &decision, &message).await;
        return Ok(());
    }
    // Transfers are recorded as file lists; their bytes are not a terminal.
    let recorded = matches!(request, SshRequest::Exec(_) | SshRequest::Shell) && scp.is_none();
    if recorded {
        match open_recording(ctx, shared, &text) {
            Ok(rec) => lock(shared).recording = Some(rec),
            Err(e) => {
                tracing::error!(session = %ctx.peer.session_id, error = %e, "cannot create terminal recording");
                lock(shared).phase = Phase::Refused;
                let refused = Decision {
                    verdict: Verdict::Deny,
                    policy: None,
                    rule: "recording unavailable".into(),
                    reason: format!("the terminal recording could not be created ({e})"),
                    statement_index: None,
                };
                let message = refusal_message(&refused);
                refuse(ctx, client, upstream, &refused, &message).await;
                return Ok(());
            }
        }
    }
    {
        let mut s = lock(shared);
        s.phase = Phase::Running {
            statement,
            started: Instant::now(),
        };
        s.scp = scp.map(|c| (c.direction, ScpObserver::default()));
        if matches!(&request, SshRequest::Subsystem(name) if name == "sftp") {
            s.sftp = Some(SftpObserver::default());
        }
    }
    let sent = match &request {
        SshRequest::Exec(command) => upstream.exec(true, command.as_bytes()).await,
        SshRequest::Shell => upstream.request_shell(true).await,
        SshRequest::Subsystem(name) => upstream.request_subsystem(true, name.as_str()).await,
        _ => Ok(()),
    };
    if sent.is_err() {
        reply(ctx, id, false).await;
    }
    Ok(())
}

/// How a held request was settled: the decision to record and act on, the
/// approval it waited for, and what the client is told if it is refused.
struct Settled {
    decision: Decision,
    approval: Option<String>,
    message: Option<String>,
}

/// Holds the request with the broker, tells the client where to look, and
/// waits for the approver, the deadline or the client's departure. Dropping
/// the hold when the client goes records the approval as abandoned. Client
/// messages meanwhile wait in the backlog, within the channel's in-flight
/// budget (beyond it the session's connection stops being read until the
/// request is settled).
async fn await_approval(
    ctx: &ChannelContext,
    client: &ClientTx,
    waiting: Waiting<'_>,
    held: &Decision,
    text: &str,
) -> Result<Settled, ClientGone> {
    let request = HoldRequest {
        session_id: ctx.peer.session_id.clone(),
        principal: ctx.principal.name.clone(),
        issuer: ctx.principal.issuer.clone(),
        connection: ctx.gw.name.clone(),
        statement: text.to_string(),
        classes: Vec::new(),
        relations: Vec::new(),
        policy: held.policy.clone(),
        rule: held.rule.clone(),
        reason: held.reason.clone(),
        grant: ctx.grant.clone(),
    };
    let mut hold = match ctx.gw.jit.hold(request).await {
        Ok(hold) => hold,
        Err(e) => {
            // Fail closed: nobody could approve what was not recorded.
            let message = format!("it needs approval and the hold could not be recorded ({e})");
            return Ok(Settled {
                decision: wording::refused(held, &message),
                approval: None,
                message: Some(format!("portcullis: not run: {message}")),
            });
        }
    };
    let id = hold.approval.id.clone();
    // One covered by an earlier approval's re-run window is not waiting for
    // anyone, so the client is not told it is.
    if hold.approval.status == ApprovalStatus::Pending {
        let base_url = &ctx.gw.jit.settings().base_url;
        let line = format!(
            "portcullis: {}\r\nportcullis: {}\r\n",
            wording::awaiting(&hold.approval, base_url),
            wording::deadline_hint(&hold.approval, "command")
        );
        let _ = client.extended_data_bytes(1, line.into_bytes()).await;
    }
    tracing::info!(session = %ctx.peer.session_id, approval = %id, "request held for approval");
    let outcome = loop {
        tokio::select! {
            outcome = hold.outcome() => break outcome,
            queued = waiting.rx.recv() => match queued {
                None | Some((ChannelMsg::Close, _)) => return Err(ClientGone),
                Some(queued) => waiting.backlog.push_back(queued),
            },
        }
    };
    let (decision, message) = wording::settled(held, &id, &outcome);
    Ok(Settled {
        decision,
        approval: Some(id),
        message: message.map(|m| format!("portcullis: {m}")),
    })
}

fn open_recording(
    ctx: &ChannelContext,
    shared: &Mutex<Shared>,
    text: &str,
) -> std::io::Result<Recording> {
    let header = {
        let s = lock(shared);
        let (width, height, term) = match &s.pty {
            Some(p) => (p.width, p.height, Some(p.term.clone())),
            None => (80, 24, None),
        };
        Header {
            width: if width == 0 { 80 } else { width },
            height: if height == 0 { 24 } else { height },
            term,
            title: format!("{} on {}: {text}", ctx.principal.name, ctx.gw.name),
        }
    };
    let relative = format!("recordings/{}-{}.cast", ctx.peer.session_id, ctx.number);
    Recording::create(&ctx.gw.data_dir, &relative, &header)
}

/// Tells the client why, ends its channel with exit status 126, and closes
/// the unused upstream channel.
async fn refuse(
    ctx: &ChannelContext,
    client: &ClientTx,
    upstream: &UpstreamTx,
    decision: &Decision,
    message: &str,
) {
    tracing::info!(
        session = %ctx.peer.session_id, principal = %ctx.principal.name,
        verdict = %decision.verdict, rule = %decision.rule, "request refused"
    );
    reply(ctx, client.id(), true).await;
    let message = format!("{message}\r\n");
    let _ = client.extended_data_bytes(1, message.into_bytes()).await;
    let _ = client.exit_status(REFUSED_EXIT_STATUS).await;
    let _ = client.eof().await;
    let _ = client.close().await;
    let _ = upstream.close().await;
}

/// The sentence a refused client sees.
pub(crate) fn refusal_message(decision: &Decision) -> String {
    let by = match &decision.policy {
        Some(policy) => format!("policy {policy:?}, rule {:?}", decision.rule),
        None => format!("rule {:?}", decision.rule),
    };
    match decision.verdict {
        // Commands, shells and subsystems wait for an approver; forwarding
        // requests are answered at once, so a held one fails closed.
        Verdict::Hold => format!(
            "portcullis: approval required ({by}): {}; forwarding cannot wait for an approver, so it was refused",
            decision.reason
        ),
        _ => format!("portcullis: denied by {by}: {}", decision.reason),
    }
}

/// Records a decision before it takes effect. If the record cannot be
/// written, the request is refused: nothing runs unrecorded.
pub(crate) async fn record_decision(
    gw: &SshGateway,
    peer: &Peer,
    (principal, grant): (&Principal, Option<&str>),
    decision: &Decision,
    mut detail: Value,
) -> Result<i64, Decision> {
    detail["grant"] = json!(grant);
    let mut record = NewRecord::new(RecordKind::Statement)
        .session_id(peer.session_id.clone())
        .principal(principal.name.clone())
        .connection(gw.name.clone())
        .decision(decision.verdict.as_str())
        .rule(decision.rule.clone())
        .detail(detail);
    if let Some(policy) = &decision.policy {
        record = record.policy(policy.clone());
    }
    gw.store.append(record).await.map_err(|e| {
        tracing::error!(session = %peer.session_id, error = %e, "audit store unavailable; request refused");
        Decision {
            verdict: Verdict::Deny,
            policy: None,
            rule: "audit store unavailable".into(),
            reason: "the audit record could not be written, so the request was not run".into(),
            statement_index: None,
        }
    })
}

/// For callers that found no principal: deny.
pub(crate) fn not_authenticated() -> Decision {
    Decision {
        verdict: Verdict::Deny,
        policy: None,
        rule: "not authenticated".into(),
        reason: "the session is not authenticated".into(),
        statement_index: None,
    }
}

/// Writes the channel's result record: exit status, sizes, recording, files.
async fn finish(ctx: &ChannelContext, shared: Shared) {
    let Phase::Running { statement, started } = shared.phase else {
        return;
    };
    let mut result = json!({
        "statement": statement,
        "channel": ctx.number,
        "duration_us": started.elapsed().as_micros() as u64,
        "exit_status": shared.exit_status,
        "exit_signal": shared.exit_signal,
        "stdout_bytes": shared.stdout_bytes,
        "stderr_bytes": shared.stderr_bytes,
        "input_bytes": shared.input_bytes,
        "signals": shared.signals,
    });
    if shared.upstream_abandoned {
        result["upstream_still_open"] = json!(true);
    }
    if let Some(rec) = shared.recording {
        result["recording"] = rec.finish();
    }
    if let Some((direction, observer)) = shared.scp {
        result["scp_direction"] = json!(direction);
        result["files"] = observer.to_json();
    }
    if let Some(observer) = shared.sftp {
        result["sftp"] = observer.to_json();
    }
    write_result(ctx, result).await;
}

async fn write_result(ctx: &ChannelContext, result: Value) {
    let record = NewRecord::new(RecordKind::StatementResult)
        .session_id(ctx.peer.session_id.clone())
        .principal(ctx.principal.name.clone())
        .connection(ctx.gw.name.clone())
        .decision("ok")
        .detail(json!({ "results": [result], "grant": ctx.grant }));
    if let Err(e) = ctx.gw.store.append(record).await {
        tracing::error!(session = %ctx.peer.session_id, error = %e, "could not record channel result");
    }
}

/// Connections the upstream forwards back for the client's allowed remote
/// forwards, and where they came from in the records.
#[derive(Clone)]
pub(crate) struct Reverse {
    pub gw: Arc<SshGateway>,
    pub peer: Peer,
    pub principal: Arc<Principal>,
    pub grant: Option<String>,
    pub handle: server::Handle,
    pub numbers: Arc<AtomicU32>,
    /// The statement that allowed each forward, by the upstream listener
    /// (address, port) it asked for.
    pub forwards: HashMap<(String, u32), i64>,
}

impl Reverse {
    /// Opens the matching channel towards the client and relays the two.
    pub async fn open(
        self,
        upstream: Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        listener: (String, u32),
        origin: (String, u32),
    ) {
        let Some(&statement) = self.forwards.get(&listener) else {
            return reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        };
        let (address, port) = listener;
        let opened = self
            .handle
            .channel_open_forwarded_tcpip(address, port, origin.0, origin.1)
            .await;
        let client = match opened {
            Ok(client) => client,
            Err(_) => return reply.reject(ChannelOpenFailure::ConnectFailed).await,
        };
        reply.accept().await;
        let ctx = ChannelContext {
            number: self.numbers.fetch_add(1, Ordering::Relaxed) + 1,
            gw: self.gw,
            peer: self.peer,
            principal: self.principal,
            grant: self.grant,
            handle: self.handle,
        };
        pipe(ctx, statement, client, upstream).await;
    }
}

/// Relays an allowed port-forwarding channel byte for byte and records how
/// much went each way.
pub(crate) async fn pipe(
    ctx: ChannelContext,
    statement: i64,
    client: Channel<server::Msg>,
    upstream: Channel<client::Msg>,
) {
    let started = Instant::now();
    let mut client = client.into_stream();
    let mut upstream = upstream.into_stream();
    let (sent, received, error) =
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((sent, received)) => (sent, received, None),
            Err(e) => (0, 0, Some(e.to_string())),
        };
    let result = json!({
        "statement": statement,
        "channel": ctx.number,
        "duration_us": started.elapsed().as_micros() as u64,
        "input_bytes": sent,
        "stdout_bytes": received,
        "error": error,
    });
    write_result(&ctx, result).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(verdict: Verdict) -> Decision {
        Decision {
            verdict,
            policy: Some("ci-ssh".into()),
            rule: "port_forward".into(),
            reason: "why".into(),
            statement_index: None,
        }
    }

    #[test]
    fn refusals_name_the_policy_and_rule_and_a_held_forward_fails_closed() {
        assert_eq!(
            refusal_message(&decision(Verdict::Deny)),
            "portcullis: denied by policy \"ci-ssh\", rule \"port_forward\": why"
        );
        let held = refusal_message(&decision(Verdict::Hold));
        assert!(
            held.starts_with("portcullis: approval required (policy \"ci-ssh\", rule \"port_forward\"): why; forwarding cannot wait"),
            "{held}"
        );
        let default = Decision {
            policy: None,
            ..decision(Verdict::Deny)
        };
        assert_eq!(
            refusal_message(&default),
            "portcullis: denied by rule \"port_forward\": why"
        );
    }
}

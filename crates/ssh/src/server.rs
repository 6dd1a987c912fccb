//! The client-facing SSH server: token authentication, admission by
//! policy, and what happens to each channel or forwarding request. Every
//! login attempt leaves a `connection_attempt` record with its reason.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_identity::ratelimit::lockout_message;
use portcullis_identity::Principal;
use portcullis_jit::GrantLease;
use portcullis_policy::decide::{Decision, ForwardDirection, SshRequest, Verdict};
use portcullis_records::{NewRecord, RecordKind};
use russh::server::{Auth, ChannelOpenHandle, Msg, Response, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use crate::channel::{self, ChannelContext, Reverse};
use crate::upstream::{self, ReverseForwards, Upstream};
use crate::{Peer, SshError, SshGateway};

const TOKEN_PROMPT: &str = "OIDC token: ";
/// How long a client has from connecting to being logged in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one client connection to its end and records how it ended.
pub(crate) async fn run(
    gw: Arc<SshGateway>,
    tcp: TcpStream,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = Peer {
        session_id: uuid::Uuid::new_v4().to_string(),
        addr,
    };
    let admitted = Arc::new(std::sync::OnceLock::<Admitted>::new());
    let (lease_tx, lease_rx) = oneshot::channel::<GrantLease>();
    let handler = ClientHandler {
        gw: gw.clone(),
        peer: peer.clone(),
        principal: None,
        grant: None,
        lease: Some(lease_tx),
        admitted: admitted.clone(),
        upstream: None,
        numbers: Default::default(),
        reverse: Default::default(),
        told_why: false,
    };
    // A client that connects and never logs in would hold its task and
    // socket for ever; OpenSSH's LoginGraceTime does the same job.
    let login_deadline = tokio::time::Instant::now() + LOGIN_TIMEOUT;
    // A second handle on the socket, to cut a session russh cannot be asked
    // to end: it handles no disconnect request while a key exchange waits
    // for the client, which is exactly where a client that stalls sits.
    let (tcp, cutter) = match split_off_cutter(tcp) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(client = %addr, error = %e, "cannot set up the connection");
            return;
        }
    };
    let cut = || {
        let _ = cutter.shutdown(std::net::Shutdown::Both);
    };
    let started = russh::server::run_stream(gw.config.clone(), tcp, handler);
    let running = match tokio::time::timeout_at(login_deadline, started).await {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            tracing::debug!(client = %addr, error = %e, "SSH handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %addr, "no SSH version exchange within the login time");
            return;
        }
    };
    let handle = running.handle();
    tokio::pin!(running);
    let login_timeout = async {
        tokio::time::sleep_until(login_deadline).await;
        if admitted.get().is_some() {
            std::future::pending::<()>().await;
        }
    };
    // A session admitted under a grant ends when the grant does; the lease
    // arrives with the login, and never for standing access.
    let grant_ended = async {
        match lease_rx.await {
            Ok(mut lease) => lease.ended().await,
            Err(_) => std::future::pending().await,
        }
    };
    // Why the session ended, and what to tell a client the gateway
    // disconnects.
    let (reason, disconnect) = tokio::select! {
        result = &mut running => match result {
            Ok(()) => ("client disconnected".to_string(), None),
            Err(e) => (format!("connection ended: {e}"), None),
        },
        ended = grant_ended => {
            // OpenSSH prints the message ("Received disconnect from …") and
            // exits 255; held commands and channels end with the connection.
            let reason = format!("access ended: {ended}");
            let message = format!("portcullis: {reason}");
            (reason, Some(message))
        },
        _ = login_timeout => {
            let reason = format!("login did not complete within {} s", LOGIN_TIMEOUT.as_secs());
            cut();
            let _ = (&mut running).await;
            let record = NewRecord::new(RecordKind::ConnectionAttempt)
                .session_id(peer.session_id.clone())
                .connection(gw.name.clone())
                .decision("deny")
                .detail(json!({ "client_addr": addr.to_string(), "reason": reason }));
            if let Err(e) = gw.store.append(record).await {
                tracing::error!(error = %e, "could not record refused connection");
            }
            (reason, None)
        },
        _ = shutdown.changed() => {
            let reason = "the gateway is shutting down".to_string();
            (reason.clone(), Some(reason))
        }
    };
    if let Some(message) = disconnect {
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, message, "en".into())
            .await;
        if tokio::time::timeout(Duration::from_secs(5), &mut running)
            .await
            .is_err()
        {
            cut();
            let _ = running.await;
        }
    }
    if let Some(Admitted { principal, grant }) = admitted.get() {
        let record = NewRecord::new(RecordKind::SessionEnd)
            .session_id(peer.session_id.clone())
            .principal(principal.name.clone())
            .connection(gw.name.clone())
            .detail(json!({ "reason": reason, "grant": grant }));
        if let Err(e) = gw.store.append(record).await {
            tracing::error!(session = %peer.session_id, error = %e, "could not record session end");
        }
        tracing::info!(session = %peer.session_id, principal = %principal.name, %reason, "session ended");
    }
}

/// The stream for russh and a clone of the same socket to shut it down with.
fn split_off_cutter(tcp: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std_tcp = tcp.into_std()?;
    let cutter = std_tcp.try_clone()?;
    Ok((TcpStream::from_std(std_tcp)?, cutter))
}

/// Who logged in, and under which grant, for the session's last record.
struct Admitted {
    principal: Arc<Principal>,
    grant: Option<String>,
}

pub(crate) struct ClientHandler {
    gw: Arc<SshGateway>,
    peer: Peer,
    principal: Option<Arc<Principal>>,
    /// The grant the session was admitted under; named in its records, and
    /// what lets the `jit` policies' rules apply.
    grant: Option<String>,
    /// Hands the grant's lease to [`run`], which ends the session with it.
    lease: Option<oneshot::Sender<GrantLease>>,
    /// Set once authenticated, so the session end can be recorded.
    admitted: Arc<std::sync::OnceLock<Admitted>>,
    /// Opened with the first channel and shared by all of them.
    upstream: Option<Arc<Upstream>>,
    /// Numbers the session's channels (recording file names), shared with
    /// the channels the upstream forwards back.
    numbers: Arc<AtomicU32>,
    reverse: ReverseForwards,
    /// A keyboard-interactive round has just told the client why its token
    /// was refused; the client's empty answer to it is rejected, not read
    /// as another token.
    told_why: bool,
}

/// Why a login failed: the reason goes to the record, and to the client
/// when it logs in with keyboard-interactive.
struct Refusal {
    reason: String,
    principal: Option<String>,
    /// Counts towards the address's failed-login limit: not when the
    /// gateway itself failed (its audit store), which says nothing about
    /// the client.
    client_at_fault: bool,
}

impl ClientHandler {
    /// Admits the client with `token`, or says why not, in words for the
    /// client: the same a PostgreSQL client gets in its ErrorResponse.
    async fn authenticate(&mut self, user: &str, token: &str) -> Result<(), String> {
        let ip = self.peer.addr.ip();
        if let Some(wait) = self.gw.limits.retry_after(ip, Instant::now()) {
            let reason = lockout_message(ip, wait);
            // Not awaited: a flood of refused attempts must not queue on the store.
            self.gw
                .store
                .append_detached(self.attempt("deny").detail(json!({
                    "client_addr": self.peer.addr.to_string(),
                    "client_user": user,
                    "reason": &reason,
                })));
            return Err(reason);
        }
        match self.admit(user, token).await {
            Ok((principal, lease)) => {
                let grant = lease.as_ref().map(|l| l.id.clone());
                let _ = self.admitted.set(Admitted {
                    principal: principal.clone(),
                    grant: grant.clone(),
                });
                if let (Some(lease), Some(tx)) = (lease, self.lease.take()) {
                    let _ = tx.send(lease);
                }
                self.principal = Some(principal);
                self.grant = grant;
                Ok(())
            }
            Err(refusal) => {
                if refusal.client_at_fault {
                    self.gw.limits.failed(ip, Instant::now());
                }
                tracing::info!(
                    session = %self.peer.session_id, connection = %self.gw.name, client = %self.peer.addr,
                    principal = refusal.principal.as_deref().unwrap_or("-"), reason = %refusal.reason,
                    "connection refused"
                );
                let mut record = self.attempt("deny").detail(json!({
                    "client_addr": self.peer.addr.to_string(),
                    "client_user": user,
                    "reason": refusal.reason,
                }));
                if let Some(p) = refusal.principal {
                    record = record.principal(p);
                }
                if let Err(e) = self.gw.store.append(record).await {
                    tracing::error!(error = %e, "could not record refused connection");
                }
                Err(refusal.reason)
            }
        }
    }

    async fn admit(
        &self,
        user: &str,
        token: &str,
    ) -> Result<(Arc<Principal>, Option<GrantLease>), Refusal> {
        let refuse = |reason: String, principal: Option<&Principal>| Refusal {
            reason,
            principal: principal.map(|p| p.name.clone()),
            client_at_fault: true,
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(refuse(
                "no token: answer the password prompt with your OIDC token".into(),
                None,
            ));
        }
        let principal = self
            .gw
            .verifier
            .verify(token)
            .await
            .map_err(|e| refuse(format!("token rejected: {e}"), None))?;
        let applicable = self.gw.policies.applicable(&principal, &self.gw.name);
        if applicable.is_empty() {
            return Err(refuse(
                format!(
                    "principal {:?} has no access to connection {:?}: no policy matches (default deny)",
                    principal.name, self.gw.name
                ),
                Some(&principal),
            ));
        }
        // Through a grant in force when the principal holds one (its `jit`
        // rules then apply too, and the session ends with it), else through
        // a standing policy, else not at all.
        let lease = match applicable.jit_terms() {
            Some(_) => self.gw.jit.lease(&principal, &self.gw.name).await,
            None => None,
        };
        if lease.is_none() && applicable.standing_only().is_empty() {
            return Err(refuse(
                format!(
                    "principal {:?} has just-in-time access to connection {:?} and no active grant; request one with `portcullis grants request --connection {} --duration 15m --reason ...`",
                    principal.name, self.gw.name, self.gw.name
                ),
                Some(&principal),
            ));
        }
        let grant = lease.as_ref().map(|l| l.id.as_str());
        let attempt = self
            .attempt("ok")
            .principal(principal.name.clone())
            .detail(json!({
                "client_addr": self.peer.addr.to_string(),
                "client_user": user,
                "issuer": principal.issuer,
                "token": principal.token_fingerprint,
                "groups": principal.groups,
            }));
        let start = NewRecord::new(RecordKind::SessionStart)
            .session_id(self.peer.session_id.clone())
            .principal(principal.name.clone())
            .connection(self.gw.name.clone())
            .detail(json!({
                "client_addr": self.peer.addr.to_string(),
                "protocol": "ssh",
                "client_user": user,
                "grant": grant,
            }));
        for record in [attempt, start] {
            self.gw.store.append(record).await.map_err(|e| Refusal {
                client_at_fault: false,
                ..refuse(
                    format!("audit store unavailable, so the session cannot be recorded: {e}"),
                    Some(&principal),
                )
            })?;
        }
        tracing::info!(
            session = %self.peer.session_id, connection = %self.gw.name, principal = %principal.name,
            token = %principal.token_fingerprint, client = %self.peer.addr,
            grant = grant.unwrap_or("-"), "session started"
        );
        Ok((Arc::new(principal), lease))
    }

    fn attempt(&self, decision: &str) -> NewRecord {
        NewRecord::new(RecordKind::ConnectionAttempt)
            .session_id(self.peer.session_id.clone())
            .connection(self.gw.name.clone())
            .decision(decision)
    }

    fn principal(&self) -> Result<Arc<Principal>, russh::Error> {
        // russh only calls channel handlers after authentication succeeded.
        self.principal.clone().ok_or(russh::Error::NotAuthenticated)
    }

    async fn upstream(&mut self) -> Result<Arc<Upstream>, SshError> {
        if let Some(up) = &self.upstream {
            if !up.is_closed() {
                return Ok(up.clone());
            }
        }
        let up = Arc::new(upstream::connect(&self.gw.upstream, self.reverse.clone()).await?);
        self.upstream = Some(up.clone());
        Ok(up)
    }

    /// Decides a request that is not a command on a session channel, and
    /// records the decision before anything happens.
    async fn decide_and_record(&self, request: &SshRequest, kind: &str) -> (Decision, i64) {
        let principal = match self.principal() {
            Ok(p) => p,
            Err(_) => return (channel::not_authenticated(), 0),
        };
        let decision = self
            .gw
            .rules(&principal, self.grant.as_deref())
            .decide_ssh(request);
        let detail = json!({
            "protocol": "ssh",
            "request": kind,
            "classes": [kind],
            "text": request.describe(),
            "reason": decision.reason,
        });
        let who = (&*principal, self.grant.as_deref());
        match channel::record_decision(&self.gw, &self.peer, who, &decision, detail).await {
            Ok(statement) => (decision, statement),
            Err(refused) => (refused, 0),
        }
    }

    /// Records the decision on a request the gateway cannot relay yet
    /// (agent, X11); the caller refuses it either way, so
    /// nothing runs that the records do not show.
    async fn decide_unsupported(&self, request: &SshRequest, kind: &str) {
        let (decision, _) = self.decide_and_record(request, kind).await;
        if decision.verdict == Verdict::Allow {
            tracing::warn!(
                session = %self.peer.session_id,
                "{} is allowed by policy but not supported by this gateway yet; refused",
                request.describe()
            );
        }
    }

    fn context(&mut self, principal: Arc<Principal>, session: &Session) -> ChannelContext {
        ChannelContext {
            gw: self.gw.clone(),
            peer: self.peer.clone(),
            principal,
            grant: self.grant.clone(),
            handle: session.handle(),
            number: self.numbers.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// Asks the upstream to listen for an allowed `ssh -R`; connections to
    /// it come back through [`Reverse`]. Returns the port it listens on.
    async fn forward_remote(
        &mut self,
        address: &str,
        port: u32,
        statement: i64,
        handle: russh::server::Handle,
    ) -> Result<u32, SshError> {
        let principal = self
            .principal()
            .map_err(|e| SshError::Upstream(e.to_string()))?;
        let up = self.upstream().await?;
        let bound = up
            .tcpip_forward(address, port)
            .await
            .map_err(|e| SshError::Upstream(format!("the upstream refused to listen: {e}")))?;
        let port = if port == 0 { bound } else { port };
        let mut slot = self.reverse.lock().unwrap_or_else(|p| p.into_inner());
        let reverse = slot.get_or_insert_with(|| Reverse {
            gw: self.gw.clone(),
            peer: self.peer.clone(),
            principal,
            grant: self.grant.clone(),
            handle,
            numbers: self.numbers.clone(),
            forwards: Default::default(),
        });
        reverse
            .forwards
            .insert((address.to_string(), port), statement);
        Ok(port)
    }

    /// Refuses a channel the upstream could not provide, saying why: OpenSSH
    /// prints `open failed: connect failed: REASON`.
    async fn upstream_unavailable(&self, reply: ChannelOpenHandle, error: &SshError) {
        self.record_upstream_failure(error).await;
        reply
            .reject(ChannelOpenFailure::Other {
                code: 2,
                reason: format!("portcullis: {error}"),
            })
            .await;
    }

    async fn record_upstream_failure(&self, error: &SshError) {
        tracing::warn!(session = %self.peer.session_id, connection = %self.gw.name, error = %error, "upstream unavailable");
        let record = NewRecord::new(RecordKind::Error)
            .session_id(self.peer.session_id.clone())
            .principal(
                self.principal
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
            )
            .connection(self.gw.name.clone())
            .detail(json!({ "source": "upstream", "error": error.to_string() }));
        if let Err(e) = self.gw.store.append(record).await {
            tracing::error!(error = %e, "could not record upstream failure");
        }
    }
}

impl russh::server::Handler for ClientHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(token_methods())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Keys belong to people and machines the gateway does not know;
        // the token is the credential. Not recorded: clients offer keys
        // on their own before they ask for a password.
        Ok(token_methods())
    }

    /// Password authentication has no way to say why it failed: the reason
    /// is only in the record.
    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(match self.authenticate(user, password).await {
            Ok(()) => Auth::Accept,
            Err(_) => Auth::reject(),
        })
    }

    /// Asks for the token; a refused one gets a second round with no
    /// prompt, whose instruction tells the client why (OpenSSH prints it
    /// at its default log level), and only the answer to that is rejected.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let told_why = std::mem::take(&mut self.told_why);
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: Cow::Borrowed("Portcullis"),
                instructions: Cow::Borrowed("Answer with your OIDC token."),
                prompts: Cow::Owned(vec![(Cow::Borrowed(TOKEN_PROMPT), false)]),
            });
        };
        if told_why {
            return Ok(Auth::reject());
        }
        let answer = response.next().unwrap_or_default();
        let token = String::from_utf8_lossy(&answer).into_owned();
        Ok(match self.authenticate(user, &token).await {
            Ok(()) => Auth::Accept,
            Err(why) => {
                self.told_why = true;
                Auth::Partial {
                    name: Cow::Borrowed("Portcullis"),
                    instructions: Cow::Owned(format!("Login refused: {why}")),
                    prompts: Cow::Owned(Vec::new()),
                }
            }
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let principal = self.principal()?;
        let opened = match self.upstream().await {
            Ok(up) => up
                .channel_open_session()
                .await
                .map_err(|e| SshError::Upstream(e.to_string())),
            Err(e) => Err(e),
        };
        let upstream = match opened {
            Ok(upstream) => upstream,
            Err(e) => {
                self.upstream_unavailable(reply, &e).await;
                return Ok(());
            }
        };
        reply.accept().await;
        let context = self.context(principal, session);
        tokio::spawn(channel::run(context, channel, upstream));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = SshRequest::PortForward {
            direction: ForwardDirection::Local,
            host: host.to_string(),
            port,
        };
        let (decision, statement) = self.decide_and_record(&request, "port_forward").await;
        if decision.verdict != Verdict::Allow {
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 1,
                    reason: channel::refusal_message(&decision),
                })
                .await;
            return Ok(());
        }
        let opened = match self.upstream().await {
            Ok(up) => up
                .channel_open_direct_tcpip(host, port, originator_address, originator_port)
                .await
                .map_err(|e| SshError::Upstream(e.to_string())),
            Err(e) => Err(e),
        };
        match opened {
            Ok(upstream) => {
                reply.accept().await;
                let context = self.context(self.principal()?, session);
                tokio::spawn(channel::pipe(context, statement, channel, upstream));
            }
            Err(e) => self.upstream_unavailable(reply, &e).await,
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let request = SshRequest::PortForward {
            direction: ForwardDirection::Remote,
            host: address.to_string(),
            port: *port,
        };
        let (decision, statement) = self.decide_and_record(&request, "port_forward").await;
        if decision.verdict != Verdict::Allow {
            return Ok(false);
        }
        let handle = session.handle();
        match self.forward_remote(address, *port, statement, handle).await {
            Ok(bound) => {
                *port = bound;
                Ok(true)
            }
            Err(e) => {
                self.record_upstream_failure(&e).await;
                Ok(false)
            }
        }
    }

    /// Answered here rather than by the channel task: russh keeps one
    /// want-reply flag per channel, overwritten by each request, so a reply
    /// sent later from the channel task could answer the next request
    /// (OpenSSH sends `env` without wanting a reply, then `exec`).
    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match channel::env_passes(variable_name, variable_value) {
            true => session.channel_success(channel),
            false => session.channel_failure(channel),
        }
    }

    /// Answered here for the same reason as `env`; the channel task passes
    /// the request on to the upstream.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.decide_unsupported(&SshRequest::AgentForward, "agent_forward")
            .await;
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.decide_unsupported(&SshRequest::X11, "x11").await;
        session.channel_failure(channel)
    }
}

/// The answer to anything but a token: which methods to use instead.
fn token_methods() -> Auth {
    let methods: &[MethodKind] = &[MethodKind::KeyboardInteractive, MethodKind::Password];
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(methods)),
        partial_success: false,
    }
}

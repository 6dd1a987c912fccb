//! The admin API on `admin.listen`: grants and held statements as JSON over
//! HTTP, for the `grants` / `approvals` CLI commands and any other client
//! (spec: `docs/admin-api.yaml`).
//!
//! Every request carries an OIDC bearer token checked by the same verifier
//! as the protocol listeners. Workloads may request and read their own
//! grants; everything else needs an approver (`identity.approvers`). What a
//! caller may do is decided by the broker, so the rules hold for any future
//! front end too; this module maps its answers to HTTP.
//!
//! The API shares its process with the data plane, so nobody it has not
//! authenticated gets to hold much of it: checks run in the order
//! authentication, authorisation, existence, body, and a body is read only
//! once the caller may act, within a small limit and a deadline; headers
//! have a deadline too, connections are capped, and one address's failed
//! tokens count against the same limit as its failed PostgreSQL and SSH
//! logins. Refusals (401, 403, 429) are `admin_request` records.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use portcullis_identity::ratelimit::{lockout_message, AuthRateLimit};
use portcullis_identity::{Principal, Verifier};
use portcullis_jit::{Broker, JitError};
use portcullis_records::{NewRecord, RecordKind, Store};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

#[derive(Clone)]
pub struct AdminState {
    pub verifier: Verifier,
    pub broker: Arc<Broker>,
    pub store: Store,
    /// The gateway's per-address failed-login limit, shared with every listener.
    pub limits: Arc<AuthRateLimit>,
}

/// Connections served at once; more are closed as they arrive. Each holds
/// at most its header buffer and one small body, for a bounded time.
const MAX_CONNECTIONS: usize = 128;
/// How long a client may take to send a request's headers (and its TLS
/// handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body, once asked for it.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read.
const MAX_HEAD: usize = 16 * 1024;
/// The longest request target (path and query) answered; longer is 414.
const MAX_URI: usize = 2048;
/// The largest request body: every body is a small JSON object, and a
/// reason of `MAX_REASON_CHARS` fits even with every character escaped.
pub const MAX_BODY: usize = 16 * 1024;

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/grants", get(list_grants).post(request_grant))
        .route("/v1/grants/{id}", get(show_grant))
        .route("/v1/grants/{id}/{action}", post(act_on_grant))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}", get(show_approval))
        .route("/v1/approvals/{id}/{action}", post(act_on_approval))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The client's address, put on every request by [`serve`].
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

/// Serves `app` (over TLS when `tls` is given) until `stop` flips: one
/// request per connection, at most [`MAX_CONNECTIONS`] at once, headers
/// within [`HEADER_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // In its own block so the watch guard is gone before any await.
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(client = %peer, "admin API busy: connection closed");
            continue;
        };
        let app = app.clone().layer(Extension(Peer(peer)));
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => serve_connection(tcp, app, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_connection(stream, app, peer).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "admin API TLS handshake failed")
                        }
                        Err(_) => {}
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(stream: S, app: Router, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        // One request per connection: an idle connection holds no slot.
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(client = %peer, error = %e, "admin API connection ended with an error");
    }
}

/// Around every request: refuses over-long targets, records refusals, and
/// gives every error the JSON body the spec promises (axum answers 405 and
/// extractor rejections in plain text).
async fn guard(State(s): State<AdminState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let peer = request.extensions().get::<Peer>().map(|p| p.0);
    if target.len() > MAX_URI {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target is longer than {MAX_URI} bytes"),
        )
        .into_response();
    }
    let response = next.run(request).await;
    if let Some(refusal) = response.extensions().get::<Refusal>() {
        record_refusal(&s, refusal, &method, &target, peer, response.status());
    }
    as_json_error(response).await
}

/// An error response without a JSON body gets one, keeping its status and
/// headers (`Allow` on 405).
async fn as_json_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_string(),
    };
    let body = serde_json::to_vec(&json!({ "error": message })).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// What a refused request's record says about who asked.
#[derive(Clone)]
struct Refusal {
    message: String,
    principal: Option<String>,
    token: Option<String>,
}

fn record_refusal(
    s: &AdminState,
    refusal: &Refusal,
    method: &Method,
    target: &str,
    peer: Option<SocketAddr>,
    status: StatusCode,
) {
    let client = peer.map(|p| p.to_string());
    tracing::info!(
        method = %method, path = target, status = status.as_u16(),
        client = client.as_deref().unwrap_or("-"),
        principal = refusal.principal.as_deref().unwrap_or("-"),
        reason = refusal.message.as_str(),
        "admin API request refused"
    );
    let mut record = NewRecord::new(RecordKind::AdminRequest)
        .decision("deny")
        .detail(json!({
            "method": method.as_str(),
            "path": target,
            "status": status.as_u16(),
            "client_addr": client,
            "reason": refusal.message,
            "token": refusal.token,
        }));
    if let Some(p) = &refusal.principal {
        record = record.principal(p.clone());
    }
    // Not awaited: a flood of refusals must not queue on the store, and
    // the answer is the same either way.
    s.store.append_detached(record);
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// The caller, when known (a 403 names who was refused).
    principal: Option<String>,
    /// The fingerprint of the token presented, when there was one.
    token: Option<String>,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            principal: None,
            token: None,
            retry_after: None,
        }
    }

    fn by(mut self, who: &Principal) -> Self {
        self.principal = Some(who.name.clone());
        self.token = Some(who.token_fingerprint.clone());
        self
    }
}

impl From<JitError> for ApiError {
    fn from(e: JitError) -> Self {
        let (status, retry_after) = match &e {
            JitError::Invalid(_) => (StatusCode::BAD_REQUEST, None),
            JitError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
            JitError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            JitError::Conflict(_) => (StatusCode::CONFLICT, None),
            JitError::TooMany { retry_after, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, Some(*retry_after))
            }
            JitError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
        };
        Self {
            retry_after,
            ..Self::new(status, e.to_string())
        }
    }
}

/// Maps a broker error, naming the caller it refused.
fn refused(who: &Principal) -> impl Fn(JitError) -> ApiError + '_ {
    move |e| ApiError::from(e).by(who)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis\""),
            );
        }
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        ) {
            response.extensions_mut().insert(Refusal {
                message: self.message,
                principal: self.principal,
                token: self.token,
            });
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

/// Who is calling, from the one bearer token; 401 without a valid one, 429
/// while the address is over the failed-login limit (before the token is
/// looked at, as on the other listeners).
async fn caller(
    state: &AdminState,
    peer: Peer,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let ip = peer.0.ip();
    if let Some(wait) = state.limits.retry_after(ip, Instant::now()) {
        return Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, lockout_message(ip, wait))
        });
    }
    // A credential presented and refused counts against the address, as a
    // refused login does; a request that presents none does not, as a
    // client that hangs up before its password does not.
    let unauthorized = |message: String| {
        state.limits.failed(ip, Instant::now());
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (Some(value), None) => value,
        (Some(_), Some(_)) => {
            return Err(unauthorized(
                "more than one Authorization header: send exactly one".into(),
            ))
        }
        (None, _) => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer <OIDC token>)",
            ))
        }
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(unauthorized(
            "the Authorization header is not `Bearer <token>`".into(),
        ));
    };
    state.verifier.verify(token).await.map_err(|e| ApiError {
        token: Some(portcullis_identity::fingerprint(token)),
        ..unauthorized(format!("token rejected: {e}"))
    })
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes within
/// [`BODY_TIMEOUT`]; an empty body reads as `{}` for endpoints whose fields
/// are all optional. Called only once the caller may act.
async fn body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let bytes: Bytes =
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => return Err(too_large()),
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        BODY_TIMEOUT.as_secs()
                    ),
                ))
            }
        };
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn ok<T: serde::Serialize>(status: StatusCode, value: T) -> ApiResult {
    Ok((status, Json(value)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    connection: String,
    /// `15m`, `1h`...
    duration: String,
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Note {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveStatement {
    /// Also let the identical statement re-run without a hold for this long
    /// (`10m`); absent means this one execution only.
    #[serde(default, rename = "for")]
    window: Option<String>,
}

async fn request_grant(
    State(s): State<AdminState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    raw: Body,
) -> ApiResult {
    let who = caller(&s, peer, &headers).await?;
    let req: GrantRequest = body(&headers, raw).await?;
    let duration = portcullis_jit::duration::parse(&req.duration)?;
    let grant = s
        .broker
        .request_grant(&who, &req.connection, duration, &req.reason)
        .await
        .map_err(refused(&who))?;
    ok(StatusCode::CREATED, grant)
}

async fn list_grants(
    State(s): State<AdminState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> ApiResult {
    let who = caller(&s, peer, &headers).await?;
    ok(StatusCode::OK, s.broker.grants(&who).await)
}

async fn show_grant(
    State(s): State<AdminState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = caller(&s, peer, &headers).await?;
    ok(
        StatusCode::OK,
        s.broker.grant(&id, &who).await.map_err(refused(&who))?,
    )
}

/// `approve`, `deny` or `revoke` a grant.
async fn act_on_grant(
    State(s): State<AdminState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    raw: Body,
) -> ApiResult {
    let who = caller(&s, peer, &headers).await?;
    if !["approve", "deny", "revoke"].contains(&action.as_str()) {
        return Err(no_such_action(&action));
    }
    s.broker.require_approver(&who).map_err(refused(&who))?;
    s.broker.grant(&id, &who).await.map_err(refused(&who))?;
    let grant = match action.as_str() {
        "approve" => {
            let Empty {} = body(&headers, raw).await?;
            s.broker.approve_grant(&id, &who).await
        }
        "deny" => {
            let note: Note = body(&headers, raw).await?;
            s.broker.deny_grant(&id, &who, note.reason).await
        }
        _ => {
            let note: Note = body(&headers, raw).await?;
            s.broker.revoke_grant(&id, &who, note.reason).await
        }
    };
    ok(StatusCode::OK, grant.map_err(refused(&who))?)
}

async fn list_approvals(
    State(s): State<AdminState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> ApiResult {
    let who = caller(&s, peer, &headers).await?;
    ok(
        StatusCode::OK,
        s.broker.approvals(&who).await.map_err(refused(&who))?,
    )
}

async fn show_approval(
    State(s): State<AdminState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = caller(&s, peer, &headers).await?;
    ok(
        StatusCode::OK,
        s.broker.approval(&id, &who).await.map_err(refused(&who))?,
    )
}

/// `approve` or `deny` a held statement.
async fn act_on_approval(
    State(s): State<AdminState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    raw: Body,
) -> ApiResult {
    let who = caller(&s, peer, &headers).await?;
    if !["approve", "deny"].contains(&action.as_str()) {
        return Err(no_such_action(&action));
    }
    // Approver and existence, before the body is read.
    s.broker.approval(&id, &who).await.map_err(refused(&who))?;
    let approval = if action == "approve" {
        let req: ApproveStatement = body(&headers, raw).await?;
        let window = req
            .window
            .as_deref()
            .map(portcullis_jit::duration::parse)
            .transpose()?;
        s.broker.approve(&id, &who, window).await
    } else {
        let note: Note = body(&headers, raw).await?;
        s.broker.deny(&id, &who, note.reason).await
    };
    ok(StatusCode::OK, approval.map_err(refused(&who))?)
}

fn no_such_action(action: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such action {action:?}"))
}

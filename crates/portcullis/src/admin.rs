//! The admin API on `admin.listen`: grants and held statements as JSON over
//! HTTP, for the `grants` / `approvals` CLI commands and any other client
//! (spec: `docs/admin-api.yaml`).
//!
//! Every request carries an OIDC bearer token checked by the same verifier
//! as the protocol listeners. Workloads may request and read their own
//! grants; everything else needs an approver (`identity.approvers`). What a
//! caller may do is decided by the broker, so the rules hold for any future
//! front end too; this module only maps its answers to HTTP.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis_identity::{Principal, Verifier};
use portcullis_jit::{Broker, JitError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

#[derive(Clone)]
pub struct AdminState {
    pub verifier: Verifier,
    pub broker: Arc<Broker>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/grants", get(list_grants).post(request_grant))
        .route("/v1/grants/:id", get(show_grant))
        .route("/v1/grants/:id/:action", post(act_on_grant))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/:id", get(show_approval))
        .route("/v1/approvals/:id/:action", post(act_on_approval))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves `app` over TLS (`admin.tls: true`) until `stop` flips. axum's own
/// `serve` speaks plain TCP only, so connections are accepted here and each
/// handed to hyper after its handshake, on its own task.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
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
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "admin API TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(client = %peer, error = %e, "admin API connection ended with an error");
            }
        });
    }
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<JitError> for ApiError {
    fn from(e: JitError) -> Self {
        let status = match &e {
            JitError::Invalid(_) => StatusCode::BAD_REQUEST,
            JitError::Forbidden(_) => StatusCode::FORBIDDEN,
            JitError::NotFound(_) => StatusCode::NOT_FOUND,
            JitError::Conflict(_) => StatusCode::CONFLICT,
            JitError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            return (
                self.status,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"portcullis\"")],
                body,
            )
                .into_response();
        }
        (self.status, body).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// Who is calling, from the bearer token; 401 without a valid one.
async fn caller(state: &AdminState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let unauthorized = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        unauthorized("missing bearer token (Authorization: Bearer <OIDC token>)".into())
    })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`".into()))?;
    state.verifier.verify(token).await.map_err(|e| {
        tracing::info!(error = %e, token = %portcullis_identity::fingerprint(token), "admin API token rejected");
        unauthorized(format!("token rejected: {e}"))
    })
}

/// Parses a JSON body; an empty body reads as `{}` for endpoints whose
/// fields are all optional.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
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

async fn request_grant(State(s): State<AdminState>, headers: HeaderMap, bytes: Bytes) -> ApiResult {
    let who = caller(&s, &headers).await?;
    let req: GrantRequest = body(&bytes)?;
    let duration: Duration = humantime::parse_duration(&req.duration).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid duration {:?}: {e}", req.duration),
        )
    })?;
    let grant = s
        .broker
        .request_grant(&who, &req.connection, duration, &req.reason)
        .await?;
    ok(StatusCode::CREATED, grant)
}

async fn list_grants(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult {
    let who = caller(&s, &headers).await?;
    ok(StatusCode::OK, s.broker.grants(&who).await)
}

async fn show_grant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = caller(&s, &headers).await?;
    ok(StatusCode::OK, s.broker.grant(&id, &who).await?)
}

/// `approve`, `deny` or `revoke` a grant.
async fn act_on_grant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let who = caller(&s, &headers).await?;
    let grant = match action.as_str() {
        "approve" => {
            let Empty {} = body(&bytes)?;
            s.broker.approve_grant(&id, &who).await?
        }
        "deny" => {
            let note: Note = body(&bytes)?;
            s.broker.deny_grant(&id, &who, note.reason).await?
        }
        "revoke" => {
            let note: Note = body(&bytes)?;
            s.broker.revoke_grant(&id, &who, note.reason).await?
        }
        _ => return Err(no_such_action(&action)),
    };
    ok(StatusCode::OK, grant)
}

async fn list_approvals(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult {
    let who = caller(&s, &headers).await?;
    ok(StatusCode::OK, s.broker.approvals(&who).await?)
}

async fn show_approval(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = caller(&s, &headers).await?;
    ok(StatusCode::OK, s.broker.approval(&id, &who).await?)
}

/// `approve` or `deny` a held statement.
async fn act_on_approval(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let who = caller(&s, &headers).await?;
    let approval = match action.as_str() {
        "approve" => {
            let req: ApproveStatement = body(&bytes)?;
            let window = req
                .window
                .map(|w| {
                    humantime::parse_duration(&w).map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("invalid duration {w:?}: {e}"),
                        )
                    })
                })
                .transpose()?;
            s.broker.approve(&id, &who, window).await?
        }
        "deny" => {
            let note: Note = body(&bytes)?;
            s.broker.deny(&id, &who, note.reason).await?
        }
        _ => return Err(no_such_action(&action)),
    };
    ok(StatusCode::OK, approval)
}

fn no_such_action(action: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such action {action:?}"))
}

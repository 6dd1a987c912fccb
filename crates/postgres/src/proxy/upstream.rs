//! Opening the upstream session with the credential the gateway holds:
//! TCP, optional TLS, StartupMessage, password / md5 / SCRAM login, then the
//! ParameterStatus and BackendKeyData the client will be shown.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use portcullis_config::UpstreamTls;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{md5_password, ScramClient, ScramError};
use crate::codec::backend::{error_field, parse_auth_request, parse_error_fields, AuthRequest};
use crate::codec::frontend::{encode_password, encode_sasl_initial, encode_sasl_response};
use crate::codec::startup::{encode_ssl_request, encode_startup};
use crate::codec::{decode_frame, CodecError, Frame, MAX_MESSAGE_LEN};

use super::stream::MaybeTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom the gateway logs in upstream.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub tls: UpstreamTls,
    pub tls_config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for UpstreamTarget {
    // Hand-written so the password can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach upstream {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {0} did not answer within 10 s")]
    Timeout(String),
    #[error("upstream refused TLS but the connection requires it (tls: {0:?})")]
    TlsRefused(UpstreamTls),
    #[error("TLS handshake with upstream failed: {0}")]
    Tls(String),
    #[error("upstream rejected the gateway's login: {0}")]
    Rejected(String),
    #[error("upstream asks for a password but none is configured for this connection")]
    NoPassword,
    #[error("upstream asks for an authentication method the gateway does not support ({0})")]
    UnsupportedAuth(String),
    #[error(transparent)]
    Scram(#[from] ScramError),
    #[error("upstream protocol error: {0}")]
    Protocol(#[from] CodecError),
    #[error("upstream closed the connection during login")]
    Closed,
    #[error("upstream I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A logged-in upstream session, ready for queries.
pub struct Upstream {
    pub stream: MaybeTls,
    pub parameters: Vec<(String, String)>,
    pub backend_key: Option<(u32, u32)>,
    /// Anything the upstream sent after ReadyForQuery (asynchronous notices).
    pub pending: BytesMut,
}

pub async fn connect(
    target: &UpstreamTarget,
    client_params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let addr = format!("{}:{}", target.host, target.port);
    tokio::time::timeout(CONNECT_TIMEOUT, login(target, client_params))
        .await
        .map_err(|_| UpstreamError::Timeout(addr))?
}

async fn login(
    target: &UpstreamTarget,
    client_params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let mut stream = open(target).await?;
    let mut params: Vec<(&str, &str)> = vec![
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
    ];
    params.extend(client_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    stream.write_all(&encode_startup(&params)).await?;
    let mut conn = Login {
        stream,
        buf: BytesMut::with_capacity(8192),
    };
    conn.authenticate(target).await?;
    conn.collect_session_state().await
}

/// Connects and negotiates TLS per the connection's `tls` mode.
pub async fn open(target: &UpstreamTarget) -> Result<MaybeTls, UpstreamError> {
    let addr = format!("{}:{}", target.host, target.port);
    let mut tcp = TcpStream::connect(&addr)
        .await
        .map_err(|source| UpstreamError::Connect {
            addr: addr.clone(),
            source,
        })?;
    tcp.set_nodelay(true)?;
    if target.tls == UpstreamTls::Disable {
        return Ok(MaybeTls::Plain(tcp));
    }
    tcp.write_all(&encode_ssl_request()).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(target.tls_config.clone());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            Ok(MaybeTls::ClientTls(Box::new(tls)))
        }
        _ if target.tls == UpstreamTls::Prefer => Ok(MaybeTls::Plain(tcp)),
        _ => Err(UpstreamError::TlsRefused(target.tls)),
    }
}

struct Login {
    stream: MaybeTls,
    buf: BytesMut,
}

impl Login {
    async fn next(&mut self) -> Result<Frame, UpstreamError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, MAX_MESSAGE_LEN)? {
                if frame.tag == b'E' {
                    let fields = parse_error_fields(&frame.body)?;
                    let message = error_field(&fields, b'M').unwrap_or_default();
                    let code = error_field(&fields, b'C').unwrap_or_default();
                    return Err(UpstreamError::Rejected(format!(
                        "{message} (SQLSTATE {code})"
                    )));
                }
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }

    async fn send(&mut self, msg: BytesMut) -> Result<(), UpstreamError> {
        self.stream.write_all(&msg).await?;
        Ok(())
    }

    async fn authenticate(&mut self, target: &UpstreamTarget) -> Result<(), UpstreamError> {
        let mut scram: Option<ScramClient> = None;
        loop {
            let frame = self.next().await?;
            if frame.tag != b'R' {
                return Err(CodecError::malformed("login", "expected Authentication").into());
            }
            let password = || target.password.as_deref().ok_or(UpstreamError::NoPassword);
            match parse_auth_request(&frame.body)? {
                AuthRequest::Ok => return Ok(()),
                AuthRequest::Cleartext => {
                    let msg = encode_password(BytesMut::new(), password()?.as_bytes());
                    self.send(msg).await?;
                }
                AuthRequest::Md5 { salt } => {
                    let hashed = md5_password(&target.user, password()?, salt);
                    self.send(encode_password(BytesMut::new(), hashed.as_bytes()))
                        .await?;
                }
                AuthRequest::Sasl { mechanisms } => {
                    if !mechanisms.contains(&"SCRAM-SHA-256") {
                        return Err(UpstreamError::UnsupportedAuth(mechanisms.join(", ")));
                    }
                    let client = ScramClient::new(password()?);
                    let first = client.client_first();
                    scram = Some(client);
                    let msg =
                        encode_sasl_initial(BytesMut::new(), "SCRAM-SHA-256", first.as_bytes());
                    self.send(msg).await?;
                }
                AuthRequest::SaslContinue(data) => {
                    let client = scram
                        .as_mut()
                        .ok_or(ScramError::Malformed("unexpected continue"))?;
                    let fin = client.client_final(data)?;
                    self.send(encode_sasl_response(BytesMut::new(), fin.as_bytes()))
                        .await?;
                }
                AuthRequest::SaslFinal(data) => {
                    let client = scram
                        .as_ref()
                        .ok_or(ScramError::Malformed("unexpected final"))?;
                    client.verify_server_final(data)?;
                }
                AuthRequest::Unsupported(code) => {
                    return Err(UpstreamError::UnsupportedAuth(format!("method {code}")))
                }
            }
        }
    }

    async fn collect_session_state(mut self) -> Result<Upstream, UpstreamError> {
        let mut parameters = Vec::new();
        let mut backend_key = None;
        loop {
            let frame = self.next().await?;
            match frame.tag {
                b'S' => {
                    let (k, v) = crate::codec::backend::parse_parameter_status(&frame.body)?;
                    parameters.push((k.to_string(), v.to_string()));
                }
                b'K' => backend_key = Some(crate::codec::backend::parse_backend_key(&frame.body)?),
                b'Z' => {
                    return Ok(Upstream {
                        stream: self.stream,
                        parameters,
                        backend_key,
                        pending: self.buf,
                    })
                }
                // Notices during login are not worth failing over.
                _ => {}
            }
        }
    }
}

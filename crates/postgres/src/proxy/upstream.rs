//! Opening the upstream session with the credential the gateway holds:
//! TCP (optional TLS) or a Unix-domain socket, StartupMessage, password /
//! md5 / SCRAM login, then the ParameterStatus and BackendKeyData the client
//! will be shown.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use portcullis_config::{PostgresUpstream, UpstreamTls};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::auth::{md5_password, ScramClient, ScramError};
use crate::codec::backend::{error_field, parse_auth_request, parse_error_fields, AuthRequest};
use crate::codec::frontend::{encode_password, encode_sasl_initial, encode_sasl_response};
use crate::codec::startup::{encode_ssl_request, encode_startup};
use crate::codec::{decode_frame, CodecError, Frame, MAX_MESSAGE_LEN};

use super::stream::MaybeTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the upstream listens. Sessions, cancel requests and the masking
/// catalog all dial it, so the libpq host convention is decided once here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Tcp {
        host: String,
        port: u16,
    },
    /// The socket file itself, `{host}/.s.PGSQL.{port}`.
    Unix(PathBuf),
}

impl UpstreamAddr {
    pub fn from_config(upstream: &PostgresUpstream) -> Self {
        match upstream.unix_socket() {
            Some(path) => Self::Unix(path),
            None => Self::Tcp {
                host: upstream.host.clone(),
                port: upstream.port,
            },
        }
    }

    /// A plain connection: what a CancelRequest is sent over (PostgreSQL
    /// reads it before any TLS).
    pub async fn dial(&self) -> Result<MaybeTls, UpstreamError> {
        match self {
            Self::Tcp { host, port } => self.connect_tcp(host, *port).await.map(MaybeTls::Plain),
            Self::Unix(path) => UnixStream::connect(path)
                .await
                .map(MaybeTls::Unix)
                .map_err(|source| self.unreachable(source)),
        }
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpStream, UpstreamError> {
        // A (host, port) pair takes an IPv6 address bare; `[::1]` as written
        // in a URL is accepted too.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|source| self.unreachable(source))?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    fn unreachable(&self, source: std::io::Error) -> UpstreamError {
        UpstreamError::Connect {
            addr: self.clone(),
            source,
        }
    }
}

/// `host:port`, or `unix:` and the socket path, so a log line never leaves
/// the reader guessing which transport was meant.
impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Where and as whom the gateway logs in upstream.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub addr: UpstreamAddr,
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
            .field("addr", &self.addr)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: UpstreamAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {0} did not answer within 10 s")]
    Timeout(UpstreamAddr),
    #[error("upstream refused TLS but the connection requires it (tls: {0:?})")]
    TlsRefused(UpstreamTls),
    #[error("TLS is not available on a Unix socket upstream (tls: {0:?}); use prefer or disable")]
    TlsOverUnixSocket(UpstreamTls),
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
    tokio::time::timeout(CONNECT_TIMEOUT, login(target, client_params))
        .await
        .map_err(|_| UpstreamError::Timeout(target.addr.clone()))?
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
    let (host, port) = match &target.addr {
        UpstreamAddr::Tcp { host, port } => (host, *port),
        // PostgreSQL answers 'N' to an SSLRequest on its socket, so libpq
        // does not send one there, and neither do we.
        UpstreamAddr::Unix(_) => {
            return match target.tls {
                UpstreamTls::Disable | UpstreamTls::Prefer => target.addr.dial().await,
                mode => Err(UpstreamError::TlsOverUnixSocket(mode)),
            }
        }
    };
    let mut tcp = target.addr.connect_tcp(host, port).await?;
    if target.tls == UpstreamTls::Disable {
        return Ok(MaybeTls::Plain(tcp));
    }
    tcp.write_all(&encode_ssl_request()).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = ServerName::try_from(host.clone())
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A listener where PostgreSQL's socket would be, in a directory of its
    /// own that is removed on drop.
    pub(crate) struct FakeSocket {
        dir: PathBuf,
        pub path: PathBuf,
    }

    impl FakeSocket {
        pub(crate) fn bind() -> (FakeSocket, tokio::net::UnixListener) {
            let name = format!("portcullis-socket-{}", rand::random::<u64>());
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(".s.PGSQL.5432");
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            (FakeSocket { dir, path }, listener)
        }
    }

    impl Drop for FakeSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn configured(host: &str) -> PostgresUpstream {
        PostgresUpstream {
            host: host.into(),
            port: 6543,
            database: "app".into(),
            user: "app".into(),
            password_env: None,
            password_file: None,
            password: None,
            tls: UpstreamTls::Prefer,
            ca_file: None,
        }
    }

    fn target(addr: UpstreamAddr, tls: UpstreamTls) -> UpstreamTarget {
        UpstreamTarget {
            addr,
            database: "app".into(),
            user: "app".into(),
            password: Some("never-logged".into()),
            tls,
            tls_config: super::super::stream::upstream_tls_config(None),
        }
    }

    #[test]
    fn a_slash_host_is_a_socket_and_says_so() {
        let unix = UpstreamAddr::from_config(&configured("/run/postgresql"));
        assert_eq!(
            unix,
            UpstreamAddr::Unix("/run/postgresql/.s.PGSQL.6543".into())
        );
        assert_eq!(unix.to_string(), "unix:/run/postgresql/.s.PGSQL.6543");
        let tcp = UpstreamAddr::from_config(&configured("db.internal"));
        assert_eq!(tcp.to_string(), "db.internal:6543");
        let debug = format!("{:?}", target(unix, UpstreamTls::Prefer));
        assert!(debug.contains("/run/postgresql/.s.PGSQL.6543"), "{debug}");
        assert!(!debug.contains("never-logged"), "{debug}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_named_in_the_error() {
        let addr = UpstreamAddr::Unix("/nonexistent/portcullis/.s.PGSQL.5432".into());
        let err = connect(&target(addr, UpstreamTls::Prefer), &[])
            .await
            .err()
            .expect("no server there");
        assert_eq!(
            err.to_string(),
            "cannot connect to upstream unix:/nonexistent/portcullis/.s.PGSQL.5432: \
             No such file or directory (os error 2)"
        );
    }

    #[tokio::test]
    async fn required_tls_on_a_socket_fails_before_dialing() {
        // The path does not exist: an attempt to dial would say so instead.
        let addr = UpstreamAddr::Unix("/nonexistent/portcullis/.s.PGSQL.5432".into());
        for mode in [UpstreamTls::Require, UpstreamTls::VerifyFull] {
            let err = open(&target(addr.clone(), mode)).await.err();
            assert!(
                matches!(err, Some(UpstreamError::TlsOverUnixSocket(m)) if m == mode),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_socket_upstream_gets_the_startup_message_without_an_ssl_request() {
        let (socket, listener) = FakeSocket::bind();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 8];
            s.read_exact(&mut head).await.unwrap();
            // Reject the login so the client side finishes at once.
            let mut body = b"SFATAL\0C28000\0Mgo away\0\0".to_vec();
            let mut msg = vec![b'E'];
            msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            msg.append(&mut body);
            s.write_all(&msg).await.unwrap();
            head
        });
        let addr = UpstreamAddr::Unix(socket.path.clone());
        let err = connect(&target(addr, UpstreamTls::Prefer), &[]).await.err();
        let head = server.await.unwrap();
        // Protocol 3.0, not the SSLRequest code 80877103.
        assert_eq!(head[4..], 196_608u32.to_be_bytes());
        assert!(
            matches!(&err, Some(UpstreamError::Rejected(m)) if m.contains("go away")),
            "{err:?}"
        );
    }
}

//! Opening the upstream session with the credential the gateway holds:
//! TCP (optional TLS) or a Unix-domain socket, StartupMessage, password /
//! md5 / SCRAM login, then the ParameterStatus and BackendKeyData the client
//! will be shown.
//!
//! The held password is only ever revealed (cleartext) or made replayable
//! (md5) to a server the gateway has authenticated: over a Unix socket, or
//! over TLS whose certificate was verified (`verify-full`). Anywhere else the
//! server gets nothing unless the connection says `insecure_password_auth`;
//! SCRAM, which proves knowledge of the password without showing it, is the
//! normal path, bound to the TLS certificate when the server offers -PLUS.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use portcullis_config::{ChannelBindingMode, PostgresUpstream, UpstreamTls};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::auth::{md5_password, tls_server_end_point, ChannelBinding, ScramClient, ScramError};
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
    pub channel_binding: ChannelBindingMode,
    /// Send cleartext and md5 answers to a server nothing authenticated.
    pub insecure_password_auth: bool,
}

impl std::fmt::Debug for UpstreamTarget {
    // Hand-written so the password can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("addr", &self.addr)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("tls", &self.tls)
            .field("channel_binding", &self.channel_binding)
            .field("insecure_password_auth", &self.insecure_password_auth)
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
    #[error("upstream asks for the password as {method}, which the gateway only sends to an authenticated server, and {why}; the server got nothing (use scram-sha-256 on the server, tls: verify-full, or insecure_password_auth: true)")]
    PasswordWithheld {
        method: &'static str,
        why: &'static str,
    },
    #[error(
        "upstream login is not SCRAM-SHA-256-PLUS over TLS ({0}) but channel_binding: require"
    )]
    ChannelBindingRequired(&'static str),
    #[error("upstream ended the SCRAM exchange without proving it knows the password")]
    ScramUnfinished,
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

/// What the transport says about the server: whether it is authenticated,
/// and what a SCRAM exchange can be bound to.
struct Channel {
    /// Why the server is not known to be the configured one; `None` when it
    /// is (a Unix socket, whose directory permissions vouch for it, or TLS
    /// with a verified certificate).
    unauthenticated: Option<&'static str>,
    tls: bool,
    /// tls-server-end-point data of the server's certificate.
    end_point: Option<Vec<u8>>,
}

impl Channel {
    fn of(stream: &MaybeTls, mode: UpstreamTls) -> Self {
        match stream {
            MaybeTls::Unix(_) => Self {
                unauthenticated: None,
                tls: false,
                end_point: None,
            },
            MaybeTls::ClientTls(tls) => Self {
                unauthenticated: match mode {
                    UpstreamTls::VerifyFull => None,
                    UpstreamTls::Require => {
                        Some("its TLS certificate is not verified (tls: require)")
                    }
                    _ => Some("its TLS certificate is not verified (tls: prefer)"),
                },
                tls: true,
                end_point: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| tls_server_end_point(cert)),
            },
            _ => Self {
                unauthenticated: Some(match mode {
                    UpstreamTls::Disable => "the connection is not encrypted (tls: disable)",
                    _ => "the server declined TLS (tls: prefer)",
                }),
                tls: false,
                end_point: None,
            },
        }
    }

    /// Binds to the certificate whenever the server offers -PLUS. Without a
    /// usable certificate hash the client says it does not bind (`n`), since
    /// `y` would tell such a server its -PLUS offer had been stripped.
    fn binding(&self, mechanisms: &[&str]) -> ChannelBinding {
        if !self.tls {
            return ChannelBinding::None;
        }
        if !mechanisms.contains(&"SCRAM-SHA-256-PLUS") {
            return ChannelBinding::NotOffered;
        }
        match &self.end_point {
            Some(hash) => ChannelBinding::TlsServerEndPoint(hash.clone()),
            None => ChannelBinding::None,
        }
    }
}

/// Refuses to answer a cleartext or md5 request with the held password
/// unless the server is authenticated or the connection accepts the risk.
fn may_reveal(
    target: &UpstreamTarget,
    channel: &Channel,
    method: &'static str,
) -> Result<(), UpstreamError> {
    if target.channel_binding == ChannelBindingMode::Require {
        return Err(UpstreamError::ChannelBindingRequired(
            "the server asks for a password without SCRAM",
        ));
    }
    match channel.unauthenticated {
        Some(why) if !target.insecure_password_auth => {
            tracing::warn!(addr = %target.addr, method, why, "upstream asked for the password in a form the gateway withholds from an unauthenticated server");
            Err(UpstreamError::PasswordWithheld { method, why })
        }
        _ => Ok(()),
    }
}

/// AuthenticationOk counts only after a SCRAM exchange (if one began) proved
/// the server knows the password, and, under `channel_binding: require`,
/// only after a bound one.
fn finished(target: &UpstreamTarget, scram: Option<&ScramClient>) -> Result<(), UpstreamError> {
    if scram.is_some_and(|c| !c.server_verified()) {
        return Err(UpstreamError::ScramUnfinished);
    }
    if target.channel_binding == ChannelBindingMode::Require && !scram.is_some_and(|c| c.bound()) {
        return Err(UpstreamError::ChannelBindingRequired(
            "the server let the gateway in without SCRAM",
        ));
    }
    Ok(())
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
        let channel = Channel::of(&self.stream, target.tls);
        let mut scram: Option<ScramClient> = None;
        loop {
            let frame = self.next().await?;
            if frame.tag != b'R' {
                return Err(CodecError::malformed("login", "expected Authentication").into());
            }
            let password = || target.password.as_deref().ok_or(UpstreamError::NoPassword);
            match parse_auth_request(&frame.body)? {
                AuthRequest::Ok => return finished(target, scram.as_ref()),
                AuthRequest::Cleartext => {
                    may_reveal(target, &channel, "a cleartext password")?;
                    let msg = encode_password(BytesMut::new(), password()?.as_bytes());
                    self.send(msg).await?;
                }
                AuthRequest::Md5 { salt } => {
                    may_reveal(target, &channel, "md5")?;
                    let hashed = md5_password(&target.user, password()?, salt);
                    self.send(encode_password(BytesMut::new(), hashed.as_bytes()))
                        .await?;
                }
                AuthRequest::Sasl { mechanisms } => {
                    let binding = channel.binding(&mechanisms);
                    if target.channel_binding == ChannelBindingMode::Require
                        && !matches!(binding, ChannelBinding::TlsServerEndPoint(_))
                    {
                        return Err(UpstreamError::ChannelBindingRequired(
                            "the server offers no SCRAM-SHA-256-PLUS, or its certificate's signature algorithm has no tls-server-end-point hash",
                        ));
                    }
                    let mechanism = binding.mechanism();
                    if !mechanisms.contains(&mechanism) {
                        return Err(UpstreamError::UnsupportedAuth(mechanisms.join(", ")));
                    }
                    let client = ScramClient::new(password()?, binding);
                    let first = client.client_first();
                    scram = Some(client);
                    let msg = encode_sasl_initial(BytesMut::new(), mechanism, first.as_bytes());
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
                        .as_mut()
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
            users: Default::default(),
            password_env: None,
            password_file: None,
            password: None,
            tls: UpstreamTls::Prefer,
            ca_file: None,
            channel_binding: ChannelBindingMode::Prefer,
            insecure_password_auth: false,
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
            channel_binding: ChannelBindingMode::Prefer,
            insecure_password_auth: false,
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

    /// What a fake server does with the SSLRequest.
    #[derive(Clone, Copy)]
    enum FakeTls {
        Decline,
        SelfSigned,
    }

    /// A TCP server that answers the SSLRequest as told, reads the startup
    /// message, sends one Authentication request (`request`: its code and
    /// body) and returns the message the gateway answered with (empty when
    /// it hung up instead).
    async fn fake_server(
        tls: FakeTls,
        request: Vec<u8>,
    ) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut ssl_request = [0u8; 8];
            tcp.read_exact(&mut ssl_request).await.unwrap();
            assert_eq!(ssl_request[4..], 80_877_103u32.to_be_bytes());
            let mut stream: Box<dyn AsyncStream> = match tls {
                FakeTls::Decline => {
                    tcp.write_all(b"N").await.unwrap();
                    Box::new(tcp)
                }
                FakeTls::SelfSigned => {
                    tcp.write_all(b"S").await.unwrap();
                    Box::new(self_signed_acceptor().accept(tcp).await.unwrap())
                }
            };
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            stream.read_exact(&mut startup).await.unwrap();
            let mut msg = vec![b'R'];
            msg.extend_from_slice(&((request.len() + 4) as u32).to_be_bytes());
            msg.extend_from_slice(&request);
            stream.write_all(&msg).await.unwrap();
            let mut head = [0u8; 5];
            if stream.read_exact(&mut head).await.is_err() {
                return Vec::new();
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut got = head.to_vec();
            got.resize(len + 1, 0);
            stream.read_exact(&mut got[5..]).await.unwrap();
            got
        });
        (port, task)
    }

    trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

    fn self_signed_acceptor() -> tokio_rustls::TlsAcceptor {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    fn tcp_target(port: u16, tls: UpstreamTls) -> UpstreamTarget {
        let addr = UpstreamAddr::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        target(addr, tls)
    }

    const CLEARTEXT: [u8; 4] = 3u32.to_be_bytes();

    fn md5_request() -> Vec<u8> {
        [&5u32.to_be_bytes()[..], b"salt"].concat()
    }

    #[tokio::test]
    async fn a_server_that_declines_tls_gets_no_password_in_any_form() {
        for (request, method) in [
            (CLEARTEXT.to_vec(), "a cleartext password"),
            (md5_request(), "md5"),
        ] {
            let (port, server) = fake_server(FakeTls::Decline, request).await;
            let err = connect(&tcp_target(port, UpstreamTls::Prefer), &[])
                .await
                .err();
            let got = server.await.unwrap();
            assert!(got.is_empty(), "{method}: the server received {got:?}");
            assert!(
                matches!(&err, Some(UpstreamError::PasswordWithheld { method: m, why })
                    if *m == method && why.contains("declined TLS")),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_unverified_tls_server_gets_no_cleartext_password() {
        for mode in [UpstreamTls::Prefer, UpstreamTls::Require] {
            let (port, server) = fake_server(FakeTls::SelfSigned, CLEARTEXT.to_vec()).await;
            let err = connect(&tcp_target(port, mode), &[]).await.err();
            let got = server.await.unwrap();
            assert!(got.is_empty(), "the server received {got:?}");
            assert!(
                matches!(&err, Some(UpstreamError::PasswordWithheld { why, .. }) if why.contains("not verified")),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn insecure_password_auth_sends_what_the_server_asks_for() {
        let (port, server) = fake_server(FakeTls::Decline, CLEARTEXT.to_vec()).await;
        let mut target = tcp_target(port, UpstreamTls::Prefer);
        target.insecure_password_auth = true;
        let _ = connect(&target, &[]).await;
        let got = server.await.unwrap();
        let password = b"never-logged\0";
        assert!(
            got.windows(password.len()).any(|w| w == password),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn require_fails_closed_when_the_server_declines_tls() {
        let (port, server) = fake_server(FakeTls::Decline, CLEARTEXT.to_vec()).await;
        let err = connect(&tcp_target(port, UpstreamTls::Require), &[])
            .await
            .err();
        assert!(
            matches!(err, Some(UpstreamError::TlsRefused(UpstreamTls::Require))),
            "{err:?}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn scram_over_tls_binds_to_the_certificate_when_plus_is_offered() {
        let sasl = [
            &10u32.to_be_bytes()[..],
            b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
        ]
        .concat();
        let (port, server) = fake_server(FakeTls::SelfSigned, sasl).await;
        let mut target = tcp_target(port, UpstreamTls::Require);
        target.channel_binding = ChannelBindingMode::Require;
        let login = tokio::spawn(async move { connect(&target, &[]).await.err() });
        let got = server.await.unwrap();
        let _ = login.await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("SCRAM-SHA-256-PLUS\0"), "{text}");
        assert!(text.contains("p=tls-server-end-point,,n=,r="), "{text}");
    }

    #[tokio::test]
    async fn channel_binding_require_refuses_plain_scram() {
        let sasl = [&10u32.to_be_bytes()[..], b"SCRAM-SHA-256\0\0"].concat();
        let (port, server) = fake_server(FakeTls::SelfSigned, sasl).await;
        let mut target = tcp_target(port, UpstreamTls::Require);
        target.channel_binding = ChannelBindingMode::Require;
        let err = connect(&target, &[]).await.err();
        assert!(server.await.unwrap().is_empty());
        assert!(
            matches!(err, Some(UpstreamError::ChannelBindingRequired(_))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn authentication_ok_before_the_scram_proof_is_refused() {
        // The server asks for SCRAM, then lets the gateway in without ever
        // proving it knows the password.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 8];
            tcp.read_exact(&mut buf).await.unwrap();
            tcp.write_all(b"N").await.unwrap();
            let mut len = [0u8; 4];
            tcp.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            tcp.read_exact(&mut startup).await.unwrap();
            let body = [&10u32.to_be_bytes()[..], b"SCRAM-SHA-256\0\0"].concat();
            let mut msg = vec![b'R'];
            msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            msg.extend_from_slice(&body);
            msg.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
            tcp.write_all(&msg).await.unwrap();
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
        });
        let err = connect(&tcp_target(port, UpstreamTls::Prefer), &[])
            .await
            .err();
        server.abort();
        assert!(
            matches!(err, Some(UpstreamError::ScramUnfinished)),
            "{err:?}"
        );
    }
}

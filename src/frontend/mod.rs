//! The client side of the wire: the listener, TLS and protocol negotiation,
//! client authentication, and one task per client that runs its session.
//!
//! Phases of a connection, each bounded in time:
//! 1. negotiate: SSLRequest (TLS or 'N'), GSSENCRequest ('N'), CancelRequest
//!    (forwarded, then closed), StartupMessage (protocol 3.x);
//! 2. authenticate: scram-sha-256, md5 or trust, per configured user;
//! 3. attach: pick the pool, learn the server's parameters, align the
//!    client's session parameters, and greet the client;
//! 4. run the session (`session::Session`) until the client leaves.

pub mod auth;

pub mod stream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::startup::Authentication;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::backend::CheckoutError;
use crate::config::secret::StoredSecret;
use crate::config::{AuthMethod, PoolMode, User, ADMIN_DATABASE};
use crate::protocol::TxStatus;
use crate::protocol::{
    self, fe, sqlstate, BodyReader, FrameReader, PgError, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET, SSL_REQUEST_CODE,
};
use crate::proxy::{Proxy, SessionPools, SessionSlot};
use crate::session::{self, Session, SessionSetup};
use crate::stats::clients::Registration;
use crate::stats::metrics::Rejection;
use auth::{ScramError, ScramServer};
use stream::ClientStream;

/// Time a client has to negotiate and authenticate (PostgreSQL's
/// authentication_timeout defaults to a minute; a proxy can be stricter).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept clients until shutdown, then wait (up to `shutdown_timeout`) for
/// running transactions to finish.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let mut shutdown = proxy.shutdown_requested();
    proxy.listening.store(true, Ordering::Relaxed);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let proxy = proxy.clone();
                    let id = proxy.next_client_id.fetch_add(1, Ordering::Relaxed);
                    proxy.metrics.clients_accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(handle_client(proxy, tcp, id, peer));
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    proxy.listening.store(false, Ordering::Relaxed);
    let shutdown_timeout = proxy.config().shutdown_timeout;
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    tracing::info!(
        clients = proxy.active_clients.load(Ordering::Relaxed),
        timeout = ?shutdown_timeout,
        "stopped accepting; waiting for running transactions"
    );
    while proxy.active_clients.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = proxy.active_clients.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            clients = left,
            "shutdown timeout reached; closing remaining sessions"
        );
    } else {
        tracing::info!("all sessions closed");
    }
}

/// Decrements the live-client count however the task ends.
struct ActiveGuard(Arc<Proxy>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection, from its first byte to its end. Its log events
/// carry the `session` span (client id and address), except while the
/// session runs at the default log level: see `login_and_run`.
async fn handle_client(proxy: Arc<Proxy>, tcp: TcpStream, id: u64, peer: SocketAddr) {
    proxy.active_clients.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(proxy.clone());
    let _ = tcp.set_nodelay(true);
    let span = tracing::info_span!("session", client = id, %peer);
    let negotiated = async {
        match tokio::time::timeout(LOGIN_TIMEOUT, negotiate(&proxy, tcp)).await {
            Ok(Ok(Some(x))) => Some(x),
            Ok(Ok(None)) => None, // cancel request handled
            Ok(Err(e)) => {
                tracing::info!(error = %e, "client rejected during negotiation");
                None
            }
            Err(_) => {
                tracing::info!("client did not complete negotiation in time");
                None
            }
        }
    }
    .instrument(span.clone())
    .await;
    let Some((stream, params)) = negotiated else {
        return;
    };
    let max = proxy.config().max_message_size;
    let client = ClientConn {
        id,
        peer,
        tls: matches!(stream, ClientStream::Tls(_)),
    };
    match stream {
        ClientStream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            login_and_run(proxy, client, FrameReader::new(rd, max), wr, params, span).await
        }
        tls => {
            let (rd, wr) = tokio::io::split(tls);
            login_and_run(proxy, client, FrameReader::new(rd, max), wr, params, span).await
        }
    }
}

/// Facts about a client connection known before login.
#[derive(Debug, Clone, Copy)]
struct ClientConn {
    id: u64,
    peer: SocketAddr,
    tls: bool,
}

#[derive(Debug, thiserror::Error)]
enum NegotiateError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Rejected(String),
}

/// Read a startup-phase packet: length, then body. No message type byte.
async fn read_startup_packet<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, NegotiateError> {
    let len = s.read_i32().await? as i64;
    if !(8..=MAX_STARTUP_PACKET as i64).contains(&len) {
        return Err(NegotiateError::Rejected(format!(
            "invalid length of startup packet: {len}"
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await?;
    Ok(body)
}

async fn reject<S: AsyncWrite + Unpin>(s: &mut S, err: PgError) -> NegotiateError {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    NegotiateError::Rejected(err.message)
}

/// Steps 1 of the connection: returns the (maybe TLS) stream and the
/// startup parameters, or None when the connection was a CancelRequest.
async fn negotiate(
    proxy: &Proxy,
    tcp: TcpStream,
) -> Result<Option<(ClientStream, Vec<(String, String)>)>, NegotiateError> {
    let mut stream = ClientStream::Plain(tcp);
    loop {
        let body = read_startup_packet(&mut stream).await?;
        let mut r = BodyReader::new(&body, "startup");
        let code = r
            .i32()
            .map_err(|e| NegotiateError::Rejected(e.to_string()))?;
        match code {
            SSL_REQUEST_CODE => {
                let plain = match stream {
                    ClientStream::Plain(tcp) => tcp,
                    ClientStream::Tls(_) => {
                        return Err(NegotiateError::Rejected("SSLRequest inside TLS".into()))
                    }
                };
                match &proxy.tls {
                    Some(cfg) => {
                        let mut plain = plain;
                        plain.write_all(b"S").await?;
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                        let tls = acceptor.accept(plain).await?;
                        stream = ClientStream::Tls(Box::new(tls));
                    }
                    None => {
                        let mut plain = plain;
                        plain.write_all(b"N").await?;
                        stream = ClientStream::Plain(plain);
                    }
                }
            }
            GSSENC_REQUEST_CODE => {
                // Not offered; libpq then falls back to SSL or plain.
                stream.write_all(b"N").await?;
            }
            CANCEL_REQUEST_CODE => {
                let (pid, secret) = match (r.i32(), r.i32()) {
                    (Ok(p), Ok(s)) => (p, s),
                    _ => return Err(NegotiateError::Rejected("short CancelRequest".into())),
                };
                let timeout = proxy.config().pool.connect_timeout;
                proxy.cancels.cancel(pid, secret, timeout).await;
                return Ok(None);
            }
            code if code >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let k = r
                        .cstr()
                        .map_err(|e| NegotiateError::Rejected(e.to_string()))?;
                    if k.is_empty() {
                        break;
                    }
                    let v = r
                        .cstr()
                        .map_err(|e| NegotiateError::Rejected(e.to_string()))?;
                    params.push((k.to_string(), v.to_string()));
                }
                // Protocol 3.x above 3.0, and `_pq_.` options: we speak 3.0.
                let unsupported: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if code & 0xffff != 0 || !unsupported.is_empty() {
                    let mut out = BytesMut::new();
                    protocol::negotiate_protocol_version(&mut out, &unsupported);
                    stream.write_all(&out).await?;
                    params.retain(|(k, _)| !k.starts_with("_pq_."));
                }
                if let Some(t) = &proxy.config().tls {
                    if t.required && matches!(stream, ClientStream::Plain(_)) {
                        let e = PgError::fatal(
                            sqlstate::INVALID_AUTHORIZATION,
                            "this proxy requires TLS connections",
                        )
                        .with_hint("connect with sslmode=require");
                        return Err(reject(&mut stream, e).await);
                    }
                }
                return Ok(Some((stream, params)));
            }
            other => {
                let e = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        other >> 16,
                        other & 0xffff
                    ),
                );
                return Err(reject(&mut stream, e).await);
            }
        }
    }
}

/// Steps 2-4: authenticate, attach to a pool, greet, run the session.
///
/// The running session enters `span` only when debug logging is on:
/// entering it costs every poll, that is every message, and the session's
/// own info and warning events name their client instead.
async fn login_and_run<R, W>(
    proxy: Arc<Proxy>,
    client: ClientConn,
    mut rd: FrameReader<R>,
    mut wr: W,
    params: Vec<(String, String)>,
    span: tracing::Span,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let proxy_for_login = proxy.clone();
    let attached = async {
        let proxy = proxy_for_login;
        let mut out = BytesMut::new();
        let attached = tokio::time::timeout(
            LOGIN_TIMEOUT,
            login(&proxy, client, &mut rd, &mut wr, &mut out, params),
        )
        .await;
        let login = match attached {
            Ok(Ok(login)) => login,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "login failed");
                e.encode(&mut out);
                let _ = wr.write_all(&out).await;
                let _ = wr.flush().await;
                return None;
            }
            Err(_) => {
                tracing::info!("login timed out");
                return None;
            }
        };
        let (setup, slot) = match login {
            Login::Admin(registration) => {
                if wr.write_all(&out).await.is_ok() && wr.flush().await.is_ok() {
                    tracing::info!(user = %registration.info.user, "admin console session started");
                    crate::admin::console::run(proxy, registration, rd, wr).await;
                    tracing::info!("admin console session ended");
                }
                return None;
            }
            Login::Session(setup, slot) => (setup, slot),
        };
        if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
            proxy.cancels.unregister(setup.cancel.pid);
            return None;
        }
        tracing::info!(user = %setup.user, database = %setup.database, "session started");
        Some((setup, slot, rd, wr))
    }
    .instrument(span.clone())
    .await;
    let Some((setup, _slot, rd, wr)) = attached else {
        return;
    };
    let pid = setup.cancel.pid;
    let run = Session::new(*setup, rd, wr).run();
    let end = if tracing::enabled!(tracing::Level::DEBUG) {
        run.instrument(span.clone()).await
    } else {
        run.await
    };
    proxy.cancels.unregister(pid);
    span.in_scope(|| tracing::info!(reason = ?end, "session ended"));
}

/// What a successful login leads to.
enum Login {
    /// A client session, holding its slot under max_client_connections.
    Session(Box<SessionSetup>, SessionSlot),
    /// The admin console.
    Admin(Registration),
}

/// Authenticate and prepare the session; greeting messages go into `out`.
async fn login<R, W>(
    proxy: &Arc<Proxy>,
    client: ClientConn,
    rd: &mut FrameReader<R>,
    wr: &mut W,
    out: &mut BytesMut,
    params: Vec<(String, String)>,
) -> Result<Login, PgError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let config = proxy.config();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user_name = get("user").ok_or_else(|| {
        PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let database = get("database").unwrap_or_else(|| user_name.clone());
    if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        return Err(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through shardwire",
        )
        .with_hint("connect to the shard's server directly for replication"));
    }
    // Checked before authentication, like PostgreSQL: a full proxy spends
    // nothing on a client it cannot serve. The admin console is exempt so
    // an operator can always get in.
    let slot = if database == ADMIN_DATABASE {
        None
    } else {
        match proxy.admit_session() {
            Some(slot) => Some(slot),
            None => {
                proxy.metrics.reject(Rejection::MaxClients);
                return Err(PgError::fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "sorry, too many clients already",
                )
                .with_detail(format!(
                    "shardwire serves at most {} client connections (limits.max_client_connections)",
                    config.limits.max_client_connections
                ))
                .with_hint("retry later, or use fewer connections (a connection pool in the application)"));
            }
        }
    };

    let user = config.users.get(&user_name);
    if let Err(e) = authenticate(proxy, &user_name, user, rd, wr).await {
        proxy.metrics.reject(Rejection::AuthFailed);
        return Err(e);
    }
    let user = user.expect("authenticate fails for unknown users");
    protocol::authentication(out, Authentication::Ok);

    if database == ADMIN_DATABASE {
        if !user.admin {
            return Err(PgError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("user \"{}\" may not use the admin console", user.name),
            )
            .with_hint("set admin = true for this user in [[users]] of the config"));
        }
        let registration = proxy
            .clients
            .admit(
                client.id,
                &user.name,
                ADMIN_DATABASE,
                Some(client.peer),
                client.tls,
                None,
                None,
            )
            .map_err(|_| PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, "unreachable"))?;
        crate::admin::console::greet(out);
        return Ok(Login::Admin(registration));
    }
    let slot = slot.expect("taken above for every database but the admin console");
    let registration = proxy
        .clients
        .admit(
            client.id,
            &user.name,
            &database,
            Some(client.peer),
            client.tls,
            user.max_connections,
            user.rate_limit,
        )
        .map_err(|limit| {
            proxy.metrics.reject(Rejection::UserLimit);
            PgError::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!("too many connections for role \"{}\"", user.name),
            )
            .with_detail(format!(
                "the user's max_connections in [[users]] is {}",
                limit.limit
            ))
        })?;
    let db = config.databases.get(&database).ok_or_else(|| {
        PgError::fatal(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
        )
        .with_hint(format!(
            "databases served by this proxy: {}",
            config
                .databases
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;

    let wanted_from_client = client_session_params(&params)?;
    // The default shard's primary greets the client.
    let SessionPools {
        primaries: pools,
        replicas,
    } = proxy.session_pools(&config, db, user);
    let pool = pools[config.default_shard].clone();
    let fatal = |e: CheckoutError| {
        let mut e = e.to_pg();
        e.severity = "FATAL";
        e
    };
    let server_params = pool.server_params().await.map_err(fatal)?;

    // What the client wants: the server's tracked defaults, then its own.
    let mut wanted: BTreeMap<String, String> = server_params
        .iter()
        .filter(|(k, _)| session::is_tracked(k))
        .cloned()
        .collect();
    for (k, v) in &wanted_from_client {
        wanted.insert(k.clone(), v.clone());
    }
    let mut wanted = Arc::new(wanted);
    // Align one server now: validates the client's parameters and learns
    // the server's canonical spelling of each. Session pooling keeps it. In
    // transaction pooling a busy pool does not hold up the login: the
    // parameters are then applied (and checked) at the first checkout.
    let conn = match db.pool_mode {
        PoolMode::Session => Some(pool.checkout().await),
        PoolMode::Transaction => pool.try_checkout().await,
    };
    let server = match conn {
        None => None,
        Some(conn) => {
            let mut conn = conn.map_err(fatal)?;
            session::sync_params(&mut conn, &mut wanted)
                .await
                .map_err(|mut e| {
                    e.severity = "FATAL";
                    e
                })?;
            match db.pool_mode {
                PoolMode::Session => Some(conn),
                PoolMode::Transaction => {
                    conn.release();
                    None
                }
            }
        }
    };

    for (k, v) in server_params.iter() {
        let v = wanted.get(k).unwrap_or(v);
        protocol::parameter_status(out, k, v);
    }
    for (k, v) in wanted.iter() {
        if !server_params.iter().any(|(s, _)| s == k) && session::is_tracked(k) {
            protocol::parameter_status(out, k, v);
        }
    }
    let cancel = proxy
        .cancels
        .register(server.as_ref().map(|conn| conn.backend_pid));
    protocol::backend_key_data(out, cancel.pid, cancel.secret);
    protocol::ready_for_query(out, TxStatus::Idle);
    let setup = SessionSetup {
        proxy: proxy.clone(),
        config: config.clone(),
        registration,
        replicas,
        read_from: config.read_from(db, user),
        user: user.name.clone(),
        database: db.name.clone(),
        pools,
        default_shard: config.default_shard,
        router: config.router.clone(),
        pool_mode: db.pool_mode,
        max_prepared_per_server: config.pool.max_prepared_statements as usize,
        wanted_params: wanted,
        cancel,
        shutdown: proxy.shutdown_requested(),
        server,
    };
    Ok(Login::Session(Box::new(setup), slot))
}

/// Session parameters from the startup packet (and its `options`), minus
/// the ones that are about the connection itself.
fn client_session_params(params: &[(String, String)]) -> Result<Vec<(String, String)>, PgError> {
    let mut out = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => out.extend(parse_options(v)?),
            _ => out.push((k.clone(), v.clone())),
        }
    }
    for (k, _) in &out {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(PgError::fatal(
                sqlstate::UNDEFINED_OBJECT,
                format!("invalid configuration parameter name \"{k}\""),
            ));
        }
    }
    Ok(out)
}

/// The `options` startup parameter: `-c name=value` and `--name=value`.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut out = Vec::new();
    let mut words = split_options(options).into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("--").map(|s| s.to_string())
        };
        let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) else {
            return Err(PgError::fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("unsupported startup option \"{w}\""),
            )
            .with_hint("only -c name=value settings are supported in options"));
        };
        out.push((k.replace('-', "_"), v.to_string()));
    }
    Ok(out)
}

/// Split on unescaped spaces; a backslash escapes the next character.
fn split_options(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn password_failed(user: &str) -> PgError {
    PgError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Run the configured authentication exchange. Unknown users go through a
/// SCRAM exchange against a random verifier and fail like a wrong password.
async fn authenticate<R, W>(
    proxy: &Proxy,
    user_name: &str,
    user: Option<&User>,
    rd: &mut FrameReader<R>,
    wr: &mut W,
) -> Result<(), PgError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let method = user.map(|u| u.auth).unwrap_or(AuthMethod::ScramSha256);
    match method {
        AuthMethod::Trust => Ok(()),
        AuthMethod::Md5 => {
            let salt = auth::random_bytes::<4>();
            send_auth(wr, Authentication::MD5Password(salt.to_vec())).await?;
            let frame = read_password_frame(rd).await?;
            let mut r = BodyReader::new(protocol::body(&frame), "PasswordMessage");
            let given = r
                .cstr()
                .map_err(|e| PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
            let expected = user
                .and_then(|u| u.secret.as_ref())
                .and_then(|s| s.md5_hash(user_name))
                .map(|stored| auth::md5_expected_response(&stored, &salt));
            match expected {
                Some(e) if auth::constant_time_eq(e.as_bytes(), given.as_bytes()) => Ok(()),
                _ => Err(password_failed(user_name)),
            }
        }
        AuthMethod::ScramSha256 => {
            let verifier = user
                .and_then(|u| u.secret.as_ref())
                .and_then(StoredSecret::scram)
                .unwrap_or(&proxy.dummy_verifier);
            send_auth(wr, Authentication::SASL(vec!["SCRAM-SHA-256".to_string()])).await?;
            let frame = read_password_frame(rd).await?;
            let mut r = BodyReader::new(protocol::body(&frame), "SASLInitialResponse");
            let proto = |e: String| PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e);
            let mechanism = r.cstr().map_err(|e| proto(e.to_string()))?;
            if mechanism != "SCRAM-SHA-256" {
                return Err(proto(format!(
                    "client selected an invalid SASL authentication mechanism \"{mechanism}\""
                )));
            }
            let len = r.i32().map_err(|e| proto(e.to_string()))?;
            let data = if len < 0 {
                &[][..]
            } else {
                r.bytes(len as usize).map_err(|e| proto(e.to_string()))?
            };
            let mut scram = ScramServer::new(verifier);
            let scram_err = |e: ScramError| match e {
                ScramError::Protocol(m) => proto(m),
                ScramError::WrongPassword => password_failed(user_name),
            };
            let server_first = scram.first(data).map_err(scram_err)?;
            send_auth(
                wr,
                Authentication::SASLContinue(server_first.into_bytes().into()),
            )
            .await?;
            let frame = read_password_frame(rd).await?;
            let server_final = scram.finish(protocol::body(&frame)).map_err(scram_err)?;
            if user.is_none() {
                return Err(password_failed(user_name));
            }
            send_auth(
                wr,
                Authentication::SASLFinal(server_final.into_bytes().into()),
            )
            .await?;
            Ok(())
        }
    }
}

async fn send_auth<W: AsyncWrite + Unpin>(wr: &mut W, auth: Authentication) -> Result<(), PgError> {
    let mut out = BytesMut::new();
    protocol::authentication(&mut out, auth);
    let io = |e: std::io::Error| PgError::fatal(sqlstate::CONNECTION_EXCEPTION, e.to_string());
    wr.write_all(&out).await.map_err(io)?;
    wr.flush().await.map_err(io)
}

async fn read_password_frame<R: AsyncRead + Unpin>(
    rd: &mut FrameReader<R>,
) -> Result<BytesMut, PgError> {
    let frame = rd.next().await.map_err(|e| {
        PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("during authentication: {e}"),
        )
    })?;
    if frame[0] != fe::PASSWORD {
        return Err(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "expected a password response, got message type {:?}",
                frame[0] as char
            ),
        ));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let o = parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=64MB").unwrap();
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64MB".into())
            ]
        );
        assert!(parse_options("-x").is_err());
        assert_eq!(split_options("a\\ b c"), vec!["a b", "c"]);
    }

    #[test]
    fn bad_param_names_rejected() {
        let p = vec![("user".into(), "u".into()), ("bad name".into(), "x".into())];
        assert!(client_session_params(&p).is_err());
    }
}

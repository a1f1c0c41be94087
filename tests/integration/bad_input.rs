//! Bad credentials, unreachable backends, and garbage on the wire: each
//! fails that one connection cleanly and never disturbs other clients.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

#[test]
fn wrong_password_unknown_user_and_unknown_database() {
    let proxy = TestProxy::start(|_| {});
    block_on(Duration::from_secs(60), async move {
        let e = try_connect(&proxy.pg_config("app", "wrong"))
            .await
            .map(drop)
            .expect_err("wrong password accepted");
        assert_eq!(sqlstate(&e), "28P01", "{e}");
        assert!(
            db_message(&e).contains("password authentication failed for user \"app\""),
            "{e}"
        );

        let e = try_connect(&proxy.pg_config("nosuchuser", "app"))
            .await
            .map(drop)
            .expect_err("unknown user accepted");
        assert_eq!(sqlstate(&e), "28P01", "{e}");

        let mut c = proxy.pg_config("app", "app");
        c.dbname("nosuchdb");
        let e = try_connect(&c)
            .await
            .map(drop)
            .expect_err("unknown database accepted");
        assert_eq!(sqlstate(&e), "3D000", "{e}");
        assert!(db_message(&e).contains("nosuchdb"), "{e}");

        // The admin console is for admin users only.
        let mut c = proxy.pg_config("app", "app");
        c.dbname("shardwire");
        let e = try_connect(&c)
            .await
            .map(drop)
            .expect_err("admin console accepted a non-admin user");
        assert_eq!(sqlstate(&e), "42501", "{e}");
        assert!(db_message(&e).contains("admin console"), "{e}");

        // A session parameter the server rejects fails the login, like PostgreSQL.
        let mut c = proxy.pg_config("app", "app");
        c.options("-c DateStyle=Bogus");
        let e = try_connect(&c)
            .await
            .map(drop)
            .expect_err("invalid DateStyle accepted");
        assert_eq!(sqlstate(&e), "22023", "{e}");
        assert!(db_message(&e).contains("DateStyle"), "{e}");

        // And the proxy still serves the right credentials.
        let (client, _conn) = connect(&proxy.pg_config("app", "app")).await;
        let v: i32 = client
            .query_one("select 1", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(v, 1);
    });
}

fn point_s0_primary_at(config: &mut toml::Value, port: u16) {
    config["shards"][0]["servers"][0]["port"] = toml::Value::Integer(port as i64);
    set(config, "pool.connect_timeout", "1s");
    add_fast_user(config);
}

#[test]
fn backend_down_gives_clear_error_quickly() {
    let dead = free_port();
    let proxy = TestProxy::start(|c| point_s0_primary_at(c, dead));
    block_on(Duration::from_secs(60), async move {
        for attempt in 0..2 {
            let start = Instant::now();
            let e = try_connect(&proxy.pg_config("fast", "fast"))
                .await
                .map(drop)
                .expect_err("connected through a proxy whose backend is down");
            let took = start.elapsed();
            let msg = db_message(&e);
            assert!(
                took < Duration::from_secs(3),
                "attempt {attempt}: error took {took:?}"
            );
            assert!(msg.contains("\"s0\""), "no shard name in: {msg}");
            assert!(
                msg.contains(&format!("127.0.0.1:{dead}")),
                "no address in: {msg}"
            );
            assert_eq!(sqlstate(&e), "08006", "{e}");
        }
    });
}

/// A "server" that accepts TCP connections and never says a word.
struct SilentServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => held.push(sock),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            held.len()
        });
        SilentServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns how many connections it accepted.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or(0))
            .unwrap_or(0)
    }
}

#[test]
fn backend_that_never_answers_times_out() {
    let silent = SilentServer::start();
    let port = silent.port;
    let proxy = TestProxy::start(|c| point_s0_primary_at(c, port));
    block_on(Duration::from_secs(60), async move {
        // The first attempt waits for connect_timeout; the failure bans the
        // server, so the next one fails at once, with the same cause.
        for attempt in 0..2 {
            let start = Instant::now();
            let e = try_connect(&proxy.pg_config("fast", "fast"))
                .await
                .map(drop)
                .expect_err("connected through a silent backend");
            let took = start.elapsed();
            let msg = db_message(&e);
            assert!(
                took < Duration::from_secs(3),
                "attempt {attempt}: error took {took:?}"
            );
            assert!(msg.contains("timed out"), "{msg}");
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
            if attempt == 1 {
                assert!(msg.contains("unavailable"), "{msg}");
            } else if !msg.contains("unavailable") {
                // Not banned yet (by the health check): it waited.
                assert!(
                    took >= Duration::from_millis(900),
                    "gave up after {took:?}, before connect_timeout"
                );
            }
        }
    });
    assert!(
        silent.stop() >= 2,
        "the proxy never reached the silent server"
    );
}

/// Reads until the peer closes; returns what it sent. Fails after `secs`.
async fn read_to_close(s: &mut TcpStream, secs: u64) -> Vec<u8> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(secs), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the proxy kept the connection open for {secs}s (got {got:?})"
    );
    got
}

async fn raw_connect(port: u16) -> TcpStream {
    within(10, "tcp connect", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("tcp connect")
}

/// An ErrorResponse's SQLSTATE and message (fields C and M).
pub(crate) fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut msg) = (String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        if let Some((&t, v)) = field.split_first() {
            let v = String::from_utf8_lossy(v).into_owned();
            match t {
                b'C' => code = v,
                b'M' => msg = v,
                _ => {}
            }
        }
    }
    (code, msg)
}

/// Splits bytes into (type, body) messages; a trailing partial one is ignored.
fn messages(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        if len < 4 || b.len() < len + 1 {
            break;
        }
        out.push((b[0], b[5..len + 1].to_vec()));
        b = &b[len + 1..];
    }
    out
}

#[test]
fn garbage_and_truncated_startup_packets() {
    let proxy = TestProxy::start(|_| {});
    let port = proxy.port;
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async move {
        let (bystander, _conn) = connect(&config).await;
        let check = |label: &'static str| {
            let b = &bystander;
            async move {
                let v: String = b
                    .query_one("select $1::text", &[&label])
                    .await
                    .unwrap_or_else(|e| panic!("bystander failed {label}: {e}"))
                    .get(0);
                assert_eq!(v, label);
            }
        };
        check("before").await;

        // HTTP instead of PostgreSQL: closed without a word.
        let mut s = raw_connect(port).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let got = read_to_close(&mut s, 5).await;
        assert!(got.is_empty(), "answered HTTP with {got:?}");
        check("after http").await;

        // Length says 100, 10 bytes arrive, then EOF.
        let mut s = raw_connect(port).await;
        let mut pkt = 100u32.to_be_bytes().to_vec();
        pkt.extend_from_slice(&196_608u32.to_be_bytes());
        pkt.extend_from_slice(b"us");
        s.write_all(&pkt).await.expect("write");
        s.shutdown().await.expect("shutdown write side");
        read_to_close(&mut s, 5).await;
        check("after truncated").await;

        // Length says 100, 10 bytes arrive, and the client just waits: the
        // proxy drops it at its login timeout. Meanwhile others are served.
        let mut stalled = raw_connect(port).await;
        stalled.write_all(&pkt).await.expect("write");
        check("during stalled").await;
        let (fresh, _c) = connect(&config).await;
        let v: i32 = fresh
            .query_one("select 3", &[])
            .await
            .expect("fresh client")
            .get(0);
        assert_eq!(v, 3);

        // An impossible startup length, and an unsupported protocol version.
        let mut s = raw_connect(port).await;
        s.write_all(&[0, 0, 0, 3, 0, 0, 0, 0]).await.expect("write");
        read_to_close(&mut s, 5).await;
        let mut s = raw_connect(port).await;
        s.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).await.expect("write");
        let got = read_to_close(&mut s, 5).await;
        let msgs = messages(&got);
        assert_eq!(msgs.len(), 1, "{got:?}");
        assert_eq!(msgs[0].0, b'E');
        let (code, msg) = error_fields(&msgs[0].1);
        assert_eq!(code, "08P01", "{msg}");
        assert!(msg.contains("unsupported frontend protocol 2.0"), "{msg}");

        check("after all").await;
        drop(stalled);
    });
}

fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "app")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend(body);
    pkt
}

pub(crate) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Reads messages until one of type `until` arrives (returned with all before it).
pub(crate) async fn read_until(s: &mut TcpStream, until: u8) -> Vec<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 8192];
        loop {
            let msgs = messages(&buf);
            if msgs.iter().any(|(t, _)| *t == until) {
                return msgs;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    panic!("connection closed before {:?}: {:?}", until as char, msgs)
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("no {:?} within 10s", until as char))
}

/// A logged-in raw connection (the `raw` user has trust auth).
pub(crate) async fn raw_session(port: u16) -> TcpStream {
    raw_login(port).await.0
}

/// A logged-in raw connection and the messages of its login, up to the
/// first ReadyForQuery (ParameterStatus, BackendKeyData).
pub(crate) async fn raw_login(port: u16) -> (TcpStream, Vec<(u8, Vec<u8>)>) {
    let mut s = raw_connect(port).await;
    s.write_all(&startup_packet("raw")).await.expect("startup");
    let msgs = read_until(&mut s, b'Z').await;
    assert_eq!(
        msgs[0],
        (b'R', vec![0, 0, 0, 0]),
        "expected AuthenticationOk"
    );
    (s, msgs)
}

/// Asserts the proxy answers with one FATAL 08P01 and closes.
async fn expect_protocol_violation(s: &mut TcpStream, what: &str) {
    let got = read_to_close(s, 5).await;
    let msgs = messages(&got);
    let errors: Vec<(String, String)> = msgs
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| error_fields(b))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: expected one ErrorResponse, got {msgs:?}"
    );
    assert_eq!(errors[0].0, "08P01", "{what}: {:?}", errors[0]);
}

#[test]
fn malformed_messages_after_login() {
    let proxy = TestProxy::start(|c| {
        add_user(
            c,
            "name = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app\"",
        );
        set(c, "max_message_size", 4096);
    });
    let port = proxy.port;
    let config = proxy.pg_config("app", "app");
    block_on(Duration::from_secs(60), async move {
        let (bystander, _conn) = connect(&config).await;
        let check = |n: i32| {
            let b = &bystander;
            async move {
                let v: i32 = b
                    .query_one("select $1::int4", &[&n])
                    .await
                    .expect("bystander")
                    .get(0);
                assert_eq!(v, n);
            }
        };
        check(1).await;

        // A Bind whose statement name runs off the end of the message.
        let mut s = raw_session(port).await;
        s.write_all(&frame(b'B', b"portal\0stmt-without-terminator"))
            .await
            .expect("write");
        s.write_all(&frame(b'S', b"")).await.expect("write");
        expect_protocol_violation(&mut s, "truncated Bind").await;
        check(2).await;

        // A message whose length field is impossible (< 4).
        let mut s = raw_session(port).await;
        s.write_all(&[b'Q', 0, 0, 0, 2, b'x']).await.expect("write");
        expect_protocol_violation(&mut s, "invalid length").await;
        check(3).await;

        // A message type that does not exist.
        let mut s = raw_session(port).await;
        s.write_all(&frame(b'!', b"hello")).await.expect("write");
        expect_protocol_violation(&mut s, "unknown message type").await;
        check(4).await;

        // A Bind the proxy can route but whose parameter data is short: the
        // server rejects it (ERROR, not FATAL), discards up to Sync, and the
        // session goes on.
        let mut s = raw_session(port).await;
        let mut parse = b"\0select $1::int4\0".to_vec();
        parse.extend_from_slice(&1i16.to_be_bytes());
        parse.extend_from_slice(&23u32.to_be_bytes());
        let mut bind = b"\0\0".to_vec();
        bind.extend_from_slice(&0i16.to_be_bytes()); // no format codes
        bind.extend_from_slice(&1i16.to_be_bytes()); // one parameter
        bind.extend_from_slice(&4i32.to_be_bytes()); // of 4 bytes...
        bind.extend_from_slice(b"12"); // ...of which 2 are there
        let mut batch = frame(b'P', &parse);
        batch.extend(frame(b'B', &bind));
        batch.extend(frame(b'E', b"\0\0\0\0\0"));
        batch.extend(frame(b'S', b""));
        s.write_all(&batch).await.expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let tags: Vec<u8> = msgs.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![b'1', b'E', b'Z'], "{msgs:?}");
        let (code, msg) = error_fields(&msgs[1].1);
        assert_eq!(code, "08P01", "{msg}");
        s.write_all(&frame(b'Q', b"select 'alive'\0"))
            .await
            .expect("write");
        let msgs = read_until(&mut s, b'Z').await;
        let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a DataRow");
        assert!(row.1.ends_with(b"alive"), "{row:?}");
        s.write_all(&frame(b'X', b"")).await.expect("terminate");
        check(5).await;

        // A message over max_message_size.
        let mut s = raw_session(port).await;
        let mut q = format!("select '{}'", "x".repeat(5000)).into_bytes();
        q.push(0);
        s.write_all(&frame(b'Q', &q)).await.expect("write");
        expect_protocol_violation(&mut s, "oversized message").await;
        check(6).await;
    });
}

/// The negotiation steps before the startup packet, and protocol versions.
#[test]
fn startup_negotiation() {
    let proxy = TestProxy::start(|c| {
        add_user(
            c,
            "name = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app\"",
        );
    });
    let port = proxy.port;
    block_on(Duration::from_secs(60), async move {
        // GSSENCRequest and SSLRequest are both declined with 'N' (no TLS
        // configured), then the startup continues in plain text.
        let mut s = raw_connect(port).await;
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
            .await
            .expect("gssenc request");
        let mut b = [0u8; 1];
        within(5, "GSSENC answer", s.read_exact(&mut b))
            .await
            .expect("read");
        assert_eq!(&b, b"N");
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .expect("ssl request");
        within(5, "SSL answer", s.read_exact(&mut b))
            .await
            .expect("read");
        assert_eq!(&b, b"N");
        s.write_all(&startup_packet("raw")).await.expect("startup");
        let msgs = read_until(&mut s, b'Z').await;
        assert_eq!(msgs[0], (b'R', vec![0, 0, 0, 0]));
        let keys: Vec<&(u8, Vec<u8>)> = msgs.iter().filter(|(t, _)| *t == b'K').collect();
        assert_eq!(keys.len(), 1, "one BackendKeyData: {msgs:?}");
        let params: Vec<String> = msgs
            .iter()
            .filter(|(t, _)| *t == b'S')
            .map(|(_, b)| {
                String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default())
                    .into_owned()
            })
            .collect();
        for p in [
            "server_version",
            "client_encoding",
            "DateStyle",
            "TimeZone",
            "integer_datetimes",
        ] {
            assert!(
                params.iter().any(|x| x == p),
                "no ParameterStatus {p}: {params:?}"
            );
        }

        // Protocol 3.2 with a _pq_ option: NegotiateProtocolVersion says 3.0
        // and names the option, then the login goes on.
        let mut s = raw_connect(port).await;
        let mut body = 196_610u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0raw\0database\0app\0_pq_.test_option\0on\0\0");
        let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        pkt.extend(body);
        s.write_all(&pkt).await.expect("startup 3.2");
        let msgs = read_until(&mut s, b'Z').await;
        assert_eq!(msgs[0].0, b'v', "{msgs:?}");
        let mut expected = 196_608u32.to_be_bytes().to_vec();
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(b"_pq_.test_option\0");
        assert_eq!(msgs[0].1, expected);
        assert_eq!(msgs[1], (b'R', vec![0, 0, 0, 0]));
        s.write_all(&frame(b'Q', b"select 'negotiated'\0"))
            .await
            .expect("query");
        let msgs = read_until(&mut s, b'Z').await;
        assert!(
            msgs.iter()
                .any(|(t, b)| *t == b'D' && b.ends_with(b"negotiated")),
            "{msgs:?}"
        );

        // Replication connections are refused.
        let mut s = raw_connect(port).await;
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0raw\0database\0app\0replication\0database\0\0");
        let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        pkt.extend(body);
        s.write_all(&pkt).await.expect("startup");
        let got = read_to_close(&mut s, 5).await;
        let msgs = messages(&got);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(error_fields(&msgs[0].1).0, "0A000");

        // No user name: 28000.
        let mut s = raw_connect(port).await;
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"database\0app\0\0");
        let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        pkt.extend(body);
        s.write_all(&pkt).await.expect("startup");
        let got = read_to_close(&mut s, 5).await;
        let msgs = messages(&got);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(error_fields(&msgs[0].1).0, "28000");
    });
}

//! TLS between clients and the proxy (psql/libpq as the client).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// A self-signed certificate and key made with the openssl CLI.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    run_cmd(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "2", "-subj", "/CN=localhost"]),
        None,
        Duration::from_secs(30),
    )
    .ok("openssl req");
    (cert, key)
}

fn with_tls(config: &mut toml::Value, cert: &Path, key: &Path, required: bool) {
    set(config, "tls.cert", cert.to_str().expect("utf-8 path"));
    set(config, "tls.key", key.to_str().expect("utf-8 path"));
    set(config, "tls.required", required);
}

fn conninfo(port: u16, sslmode: &str) -> String {
    format!("host=127.0.0.1 port={port} user=app dbname=app sslmode={sslmode}")
}

#[test]
fn tls_connections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed(dir.path());
    let proxy = TestProxy::start(|c| with_tls(c, &cert, &key, false));

    let out = psql(
        &conninfo(proxy.port, "require"),
        "app",
        true,
        &["-qAt", "-c", "\\conninfo", "-c", "select 'over tls'"],
        None,
    )
    .ok("psql sslmode=require");
    assert!(
        out.stdout.contains("SSL connection (protocol: TLSv1."),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with("over tls\n"), "{}", out.stdout);

    // Bulk data both ways through TLS records.
    let t = table_name("tls_copy");
    let rows: String = (1..=5000)
        .map(|i| format!("{i}\trow {i} {}\n", "z".repeat(i % 97)))
        .collect();
    let script = format!(
        "create table {t} (id int, v text);\n\\copy {t} from stdin\n{rows}\\.\n\
         select count(*), sum(length(v)) from {t};\n\
         select length(string_agg(repeat('y', 100000), '')) from generate_series(1, 20);\n"
    );
    let out = psql(
        &conninfo(proxy.port, "require"),
        "app",
        true,
        &["-qAt", "-f", "-"],
        Some(&script),
    )
    .ok("copy over tls");
    let expected_len: usize = (1..=5000)
        .map(|i| format!("row {i} {}", "z".repeat(i % 97)).len())
        .sum();
    assert_eq!(out.stdout, format!("5000|{expected_len}\n2000000\n"));
    let out = psql(
        &conninfo(proxy.port, "require"),
        "app",
        true,
        &[
            "-qAt",
            "-c",
            "select repeat('y', 100000) from generate_series(1, 20)",
        ],
        None,
    )
    .ok("large result over tls");
    assert_eq!(out.stdout.len(), 20 * 100_001);
    assert!(out
        .stdout
        .lines()
        .all(|l| l.len() == 100_000 && l.bytes().all(|b| b == b'y')));

    // TLS is optional here.
    let out = psql(
        &conninfo(proxy.port, "disable"),
        "app",
        true,
        &["-qAt", "-c", "\\conninfo", "-c", "select 1"],
        None,
    )
    .ok("psql sslmode=disable");
    assert!(!out.stdout.contains("SSL connection"), "{}", out.stdout);
    assert!(out.stdout.ends_with("1\n"));
}

#[test]
fn tls_required_refuses_plain_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed(dir.path());
    let proxy = TestProxy::start(|c| with_tls(c, &cert, &key, true));

    let out = psql(
        &conninfo(proxy.port, "disable"),
        "app",
        true,
        &["-c", "select 1"],
        None,
    );
    assert!(!out.success(), "a plain client got in: {}", out.stdout);
    assert!(out.stderr.contains("requires TLS"), "{}", out.stderr);

    let out = psql(
        &conninfo(proxy.port, "require"),
        "app",
        true,
        &["-qAt", "-c", "select 'secure'"],
        None,
    )
    .ok("psql sslmode=require");
    assert_eq!(out.stdout, "secure\n");
    // libpq's default (prefer) upgrades to TLS.
    let out = psql(
        &conninfo(proxy.port, "prefer"),
        "app",
        true,
        &["-qAt", "-c", "\\conninfo"],
        None,
    )
    .ok("psql sslmode=prefer");
    assert!(out.stdout.contains("SSL connection"), "{}", out.stdout);
}

#[test]
fn without_tls_require_fails_and_prefer_works() {
    let proxy = TestProxy::start(|_| {});
    let out = psql(
        &conninfo(proxy.port, "require"),
        "app",
        true,
        &["-c", "select 1"],
        None,
    );
    assert!(
        !out.success(),
        "sslmode=require connected to a proxy without TLS"
    );
    assert!(
        out.stderr.contains("server does not support SSL"),
        "{}",
        out.stderr
    );

    let out = psql(
        &conninfo(proxy.port, "prefer"),
        "app",
        true,
        &["-qAt", "-c", "\\conninfo", "-c", "select 'plain'"],
        None,
    )
    .ok("psql sslmode=prefer");
    assert!(!out.stdout.contains("SSL connection"), "{}", out.stdout);
    assert!(out.stdout.ends_with("plain\n"), "{}", out.stdout);
}

/// A cross-shard answer streamed to a TLS client (execute::stream writes
/// it out in 64 KB pieces, each flushed through TLS records), after a COPY
/// split by key over TLS too.
#[test]
fn streamed_cross_shard_answers_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed(dir.path());
    let t = table_name("tls_sharded");
    let tables = format!("[[tables]]\nname = \"{t}\"\nkey = \"id\"\nstrategy = \"hash\"\n");
    let proxy = TestProxy::start(|c| {
        with_tls(c, &cert, &key, true);
        set_tables(c, &tables);
    });
    // psql over TLS (sslmode=require), -qAt: `sql` as -c, or a script.
    let over_tls = |sql: Option<&str>, script: Option<&str>, what: &str| {
        let args = match sql {
            Some(sql) => vec!["-qAt", "-c", sql],
            None => vec!["-qAt", "-f", "-"],
        };
        psql(&conninfo(proxy.port, "require"), "app", true, &args, script)
            .ok(what)
            .stdout
    };
    let rows: String = (1..=20_000)
        .map(|i| format!("{i}\t{}\n", "w".repeat(150 + i % 50)))
        .collect();
    let script = format!(
        "create table {t} (id int primary key, v text);\n\\copy {t} from stdin\n{rows}\\.\n"
    );
    over_tls(None, Some(&script), "copy into a sharded table over tls");
    let expected_len: usize = (1..=20_000).map(|i| 150 + i % 50).sum();

    let out = over_tls(
        Some(&format!("select id, v from {t}")),
        None,
        "concatenation over tls",
    );
    let mut ids: Vec<usize> = Vec::new();
    let mut total = 0;
    for line in out.lines() {
        let (id, v) = line.split_once('|').expect("id|v");
        ids.push(id.parse().expect("id"));
        total += v.len();
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=20_000).collect::<Vec<_>>());
    assert_eq!(total, expected_len);

    let out = over_tls(
        Some(&format!("select id from {t} order by id desc")),
        None,
        "ordered over tls",
    );
    let ids: Vec<usize> = out.lines().map(|l| l.parse().expect("id")).collect();
    assert_eq!(ids, (1..=20_000).rev().collect::<Vec<_>>());

    over_tls(Some(&format!("drop table {t}")), None, "drop");
}

//! psql through the proxy: several commands, multi-statement strings,
//! \copy in both directions, and an error inside a multi-statement query.

use crate::common::*;

#[test]
fn psql_commands_and_multi_statement_queries() {
    let proxy = TestProxy::start(|_| {});
    let t = table_name("psql_cmds");
    let out = psql(
        &proxy.url(),
        "app",
        true,
        &[
            "-qAt",
            "-c",
            &format!("create table {t} (id int primary key, name text)"),
            "-c",
            &format!("insert into {t} values (1, 'one'), (2, 'two'), (3, NULL)"),
            "-c",
            &format!("update {t} set name = 'three' where id = 3"),
            "-c",
            &format!("select id, name from {t} order by id"),
            "-c",
            "select 1; select 2",
            "-c",
            &format!("select count(*) from {t}; select max(id) from {t}; select 'x' || 'y'"),
        ],
        None,
    )
    .ok("psql -c ...");
    assert_eq!(out.stdout, "1|one\n2|two\n3|three\n1\n2\n3\n3\nxy\n");
    assert_eq!(out.stderr, "");
}

/// Rows for COPY text format: tabs, a NULL, backslash escapes, non-ASCII.
fn copy_rows(n: usize) -> String {
    let mut s = String::new();
    for i in 1..=n {
        let note = match i % 7 {
            0 => "\\N".to_string(),
            1 => format!("tab\\there {i}"),
            2 => format!("grüße, 世界 {i}"),
            _ => format!("note {i}"),
        };
        s.push_str(&format!("{i}\tname {i}\t{note}\n"));
    }
    s
}

#[test]
fn psql_copy_from_stdin_and_to_stdout() {
    let proxy = TestProxy::start(|_| {});
    let t = table_name("psql_copy");
    psql(
        &proxy.url(),
        "app",
        true,
        &[
            "-q",
            "-c",
            &format!("create table {t} (id int primary key, name text, note text)"),
        ],
        None,
    )
    .ok("create table");

    // `\copy ... from stdin` in a script read from stdin: the rows follow
    // the command, up to `\.`; the script goes on afterwards.
    let rows = copy_rows(3000);
    let script = format!("\\copy {t} from stdin\n{rows}\\.\nselect count(*) from {t};\n");
    let out = psql(
        &proxy.url(),
        "app",
        true,
        &["-qAt", "-f", "-"],
        Some(&script),
    )
    .ok("\\copy from stdin");
    assert_eq!(out.stdout, "3000\n", "stderr: {}", out.stderr);

    // Back out through the proxy: byte for byte what went in.
    let out = psql(
        &proxy.url(),
        "app",
        true,
        &[
            "-q",
            "-c",
            &format!("\\copy (select * from {t} order by id) to stdout"),
        ],
        None,
    )
    .ok("\\copy to stdout");
    assert_eq!(out.stdout.len(), rows.len());
    assert!(
        out.stdout == rows,
        "COPY OUT through the proxy differs from what was copied in"
    );

    // And the server itself holds exactly that.
    let direct = psql(
        &cluster().direct_url(),
        "app",
        true,
        &[
            "-q",
            "-c",
            &format!("\\copy (select * from {t} order by id) to stdout"),
        ],
        None,
    )
    .ok("direct \\copy to stdout");
    assert!(direct.stdout == rows, "COPY OUT straight from s0 differs");
    let nulls = psql(
        &cluster().direct_url(),
        "app",
        true,
        &[
            "-qAt",
            "-c",
            &format!("select count(*) from {t} where note is null"),
        ],
        None,
    )
    .ok("count nulls");
    assert_eq!(nulls.stdout.trim(), (3000 / 7).to_string());
}

/// An error in the middle of a multi-statement simple query: the statements
/// run in one implicit transaction, so the insert before the error is rolled
/// back too, and the one after it never runs. The session stays usable.
/// The proxy must behave exactly like the server does.
#[test]
fn psql_error_inside_multi_statement_query() {
    let proxy = TestProxy::start(|_| {});
    let direct_url = cluster().direct_url();
    let mut outputs = Vec::new();
    for (via, url) in [("proxy", proxy.url()), ("direct", direct_url.clone())] {
        let t = table_name("psql_err");
        psql(
            &url,
            "app",
            true,
            &["-q", "-c", &format!("create table {t} (id int)")],
            None,
        )
        .ok("create");
        let out = psql(
            &url,
            "app",
            false,
            &[
                "-qAt",
                "-c",
                &format!("insert into {t} values (1); select 1/0; insert into {t} values (2)"),
                "-c",
                &format!("select count(*) from {t}"),
                "-c",
                "select 'still usable'",
            ],
            None,
        );
        assert_eq!(
            out.stdout, "0\nstill usable\n",
            "{via}: stderr: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("division by zero"),
            "{via}: {}",
            out.stderr
        );
        // Nothing was committed, as seen from another session on the server.
        let count = psql(
            &direct_url,
            "app",
            true,
            &["-qAt", "-c", &format!("select count(*) from {t}")],
            None,
        )
        .ok("count");
        assert_eq!(count.stdout, "0\n", "{via}");
        outputs.push((out.stdout, out.stderr));
    }
    assert_eq!(outputs[0], outputs[1], "proxy and server disagree");
}

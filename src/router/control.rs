//! Statements a session handles itself rather than route by table:
//! transaction control (BEGIN, COMMIT, ROLLBACK TO SAVEPOINT), the proxy's
//! own `SET/RESET/SHOW shardwire.*` commands, statements that go wherever
//! the transaction goes, and the statements that reset server state the
//! session tracks (DISCARD ALL, DEALLOCATE ALL, RESET ALL).

use crate::router::{Analysis, Kind};

/// Statements that go wherever the rest of the transaction goes:
/// transaction control and SET.
pub fn is_neutral(a: &Analysis) -> bool {
    !a.statements.is_empty()
        && a.statements
            .iter()
            .all(|s| matches!(s.kind, Kind::Transaction | Kind::Set))
}

/// Statements PostgreSQL refuses inside a transaction block (VACUUM and
/// other maintenance, anything CONCURRENTLY): a broadcast of one runs on
/// each shard on its own, not all or nothing. A word `concurrently` in a
/// literal errs on the side of running without a transaction, which the
/// shards then refuse or accept as one database would.
pub fn needs_no_transaction(sql: &str, analysis: &Analysis) -> bool {
    if analysis
        .statements
        .iter()
        .any(|s| s.kind == Kind::Maintenance)
    {
        return true;
    }
    let lower = sql.to_ascii_lowercase();
    lower
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| w == "concurrently")
}

/// What a statement may do to the settings of the server session it runs
/// on, as far as a proxy that must carry them to other servers can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsEffect {
    /// Leaves them as they were (SHOW, SET LOCAL, SET TRANSACTION, and
    /// every statement that does not start with SET, RESET, DISCARD, DO or
    /// CALL and calls no `set_config`).
    None,
    /// May change them: the session reads them back afterwards.
    Changes,
    /// Changes what the proxy cannot carry to another server (the session
    /// user): refused where servers are shared.
    Unfollowable(&'static str),
}

/// What a statement may do to the server session it runs on that the proxy
/// must track, beyond the statement's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    pub settings: SettingsEffect,
    /// CREATE, ALTER, DROP, COMMENT (or DO and CALL, which may run them):
    /// statements prepared before may no longer fit their tables.
    pub schema: bool,
    /// DISCARD ALL, DEALLOCATE [PREPARE] ALL: the server's prepared
    /// statements are gone.
    pub drops_statements: bool,
    /// DISCARD ALL, RESET ALL: every setting is back to its default.
    pub resets_settings: bool,
    /// State that cannot follow a client to another server and must never
    /// reach another client: LISTEN, temporary tables, session advisory
    /// locks, SQL-level PREPARE, WITH HOLD cursors, LOAD. What it is, for
    /// the log and the client's errors.
    pub pins: Option<&'static str>,
}

impl Effects {
    pub const NONE: Effects = Effects {
        settings: SettingsEffect::None,
        schema: false,
        drops_statements: false,
        resets_settings: false,
        pins: None,
    };
}

/// What `sql` may do (see `Effects`). A word scan of each statement's first
/// words, not a parse: it errs toward an effect (which costs the proxy a
/// read-back or a re-prepare), never toward none. A statement starts at
/// the beginning or after a `;`, past comments. Functions that SET inside
/// their body (not via `set_config`) are the one thing it cannot see; the
/// README says so.
pub fn effects(sql: &[u8]) -> Effects {
    let mut e = Effects::NONE;
    // Both names hold an underscore, rarer in SQL than any letter: only the
    // places of one are looked at (this runs for every simple query).
    for at in memchr::memchr_iter(b'_', sql) {
        let (before, after) = (&sql[..at], &sql[at + 1..]);
        if ends_with_ignore_case(before, b"set") && starts_with_ignore_case(after, b"config") {
            e.settings = SettingsEffect::Changes;
        }
        // pg_advisory_lock, pg_advisory_lock_shared, pg_try_advisory_lock...;
        // the _xact_ ones end with their transaction.
        if ends_with_ignore_case(before, b"advisory")
            && (starts_with_ignore_case(after, b"lock")
                || starts_with_ignore_case(after, b"unlock"))
        {
            e.pins = Some("a session advisory lock");
        }
    }
    for piece in sql.split(|b| *b == b';') {
        let mut words = StatementWords::new(piece);
        let first = words.next();
        let second = words.next();
        let third = words.next();
        let is =
            |w: Option<&[u8]>, kw: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(kw.as_bytes()));
        if is(first, "set") && is(second, "session") && is(third, "authorization") {
            e.settings = SettingsEffect::Unfollowable(
                "SET SESSION AUTHORIZATION changes the session user, which cannot follow a client to another server",
            );
        }
        let changes = (is(first, "set") && !is(second, "local") && !is(second, "transaction"))
            || is(first, "reset")
            || is(first, "discard")
            || is(first, "do")
            || is(first, "call");
        if changes && e.settings == SettingsEffect::None {
            e.settings = SettingsEffect::Changes;
        }
        if ["create", "alter", "drop", "comment", "do", "call"]
            .iter()
            .any(|kw| is(first, kw))
        {
            e.schema = true;
        }
        if is(first, "discard") && is(second, "all") {
            e.drops_statements = true;
            e.resets_settings = true;
        }
        if is(first, "deallocate")
            && (is(second, "all") || (is(second, "prepare") && is(third, "all")))
        {
            e.drops_statements = true;
        }
        if is(first, "reset") && is(second, "all") {
            e.resets_settings = true;
        }
        let temp = |w: Option<&[u8]>| is(w, "temp") || is(w, "temporary");
        let pin = if is(first, "listen") {
            Some("LISTEN")
        } else if is(first, "create")
            && (temp(second) || ((is(second, "local") || is(second, "global")) && temp(third)))
        {
            Some("a temporary table")
        } else if (is(first, "select") || is(first, "with") || is(first, "create"))
            && has_word(piece, "temp", "temporary")
        {
            // SELECT ... INTO TEMP, CREATE TABLE ... AS with TEMP: any
            // such word errs toward a pin.
            Some("a temporary table")
        } else if is(first, "prepare") && !is(second, "transaction") {
            Some("a prepared statement made with PREPARE")
        } else if is(first, "declare") && has_word(piece, "hold", "hold") {
            Some("a WITH HOLD cursor")
        } else if is(first, "load") {
            Some("a library loaded with LOAD")
        } else {
            None
        };
        if pin.is_some() {
            e.pins = pin;
        }
    }
    e
}

/// Whether `piece` has the word `a` or `b` anywhere (case-insensitive).
/// Both must start with the same letter; only its places are looked at.
fn has_word(piece: &[u8], a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    debug_assert!(a[0].eq_ignore_ascii_case(&b[0]));
    let is_word_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let first = a[0].to_ascii_lowercase();
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), piece).any(|at| {
        if at > 0 && is_word_byte(piece[at - 1]) {
            return false;
        }
        let rest = &piece[at..];
        let word = rest
            .iter()
            .position(|c| !is_word_byte(*c))
            .map_or(rest, |end| &rest[..end]);
        word.eq_ignore_ascii_case(a) || word.eq_ignore_ascii_case(b)
    })
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn ends_with_ignore_case(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// The first words of one statement, past leading whitespace and comments.
struct StatementWords<'a> {
    rest: &'a [u8],
}

impl<'a> StatementWords<'a> {
    fn new(piece: &'a [u8]) -> Self {
        StatementWords { rest: piece }
    }
}

impl<'a> Iterator for StatementWords<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let s = self.rest;
            let start = s.iter().position(|b| !b.is_ascii_whitespace() && *b != 0)?;
            let s = &s[start..];
            if s.starts_with(b"--") {
                let end = s.iter().position(|b| *b == b'\n').unwrap_or(s.len());
                self.rest = &s[end..];
            } else if s.starts_with(b"/*") {
                self.rest = &s[super::fallback::block_comment_len(s)..];
            } else {
                let end = s
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .unwrap_or(s.len());
                if end == 0 {
                    // Punctuation (a parenthesis, a quote): no keyword here.
                    self.rest = &[];
                    return Some(&s[..1]);
                }
                self.rest = &s[end..];
                return Some(&s[..end]);
            }
        }
    }
}

/// A lone transaction-control statement the proxy may answer itself.
#[derive(Debug, PartialEq, Eq)]
pub enum TxControl {
    Begin,
    /// COMMIT / END (tag "COMMIT") or ROLLBACK / ABORT (tag "ROLLBACK").
    End(&'static str),
    /// ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name.
    RollbackToSavepoint,
}

fn words(sql: &str) -> Vec<String> {
    sql.split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

pub fn tx_control(sql: &str, a: &Analysis) -> Option<TxControl> {
    let body = sql
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    if a.statements.len() != 1 || a.statements[0].kind != Kind::Transaction || body.contains(';') {
        return None;
    }
    let w = words(body);
    let first = w.first()?.as_str();
    let plain_tail = w.len() == 1 || (w.len() == 2 && (w[1] == "work" || w[1] == "transaction"));
    match first {
        "begin" => Some(TxControl::Begin),
        "start" if w.get(1).map(String::as_str) == Some("transaction") => Some(TxControl::Begin),
        "commit" | "end" if plain_tail => Some(TxControl::End("COMMIT")),
        "rollback" | "abort" if plain_tail => Some(TxControl::End("ROLLBACK")),
        "rollback" | "abort" if w.iter().skip(1).take(2).any(|x| x == "to") && w.len() <= 5 => {
            Some(TxControl::RollbackToSavepoint)
        }
        _ => None,
    }
}

/// A savepoint statement, with its savepoint's name as PostgreSQL reads
/// it (unquoted names folded to lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointOp {
    Set(String),
    Release(String),
    RollbackTo(String),
}

impl SavepointOp {
    pub fn name(&self) -> &str {
        match self {
            SavepointOp::Set(n) | SavepointOp::Release(n) | SavepointOp::RollbackTo(n) => n,
        }
    }
}

/// The name quoted for SQL.
pub fn quoted_savepoint(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `sql` as one savepoint statement (SAVEPOINT, RELEASE [SAVEPOINT],
/// ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT]), if it is one.
pub fn savepoint_op(sql: &str, a: &Analysis) -> Option<SavepointOp> {
    if a.statements.len() != 1 || a.statements[0].kind != Kind::Transaction {
        return None;
    }
    match savepoint_ops(sql, a).as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The savepoint statements of a string of transaction control and SET
/// statements (`BEGIN; SAVEPOINT a`), in order.
pub fn savepoint_ops(sql: &str, a: &Analysis) -> Vec<SavepointOp> {
    if !is_neutral(a) {
        return Vec::new();
    }
    let Ok(parsed) =
        sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, sql)
    else {
        return Vec::new();
    };
    let name = |i: &sqlparser::ast::Ident| {
        if i.quote_style.is_some() {
            i.value.clone()
        } else {
            i.value.to_lowercase()
        }
    };
    parsed
        .iter()
        .filter_map(|st| match st {
            sqlparser::ast::Statement::Savepoint { name: n } => Some(SavepointOp::Set(name(n))),
            sqlparser::ast::Statement::ReleaseSavepoint { name: n } => {
                Some(SavepointOp::Release(name(n)))
            }
            sqlparser::ast::Statement::Rollback {
                chain: false,
                savepoint: Some(n),
            } => Some(SavepointOp::RollbackTo(name(n))),
            _ => None,
        })
        .collect()
}

/// A session routing setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintVar {
    Shard,
    ShardKey,
    /// The session's WAL positions per shard (read-your-writes across
    /// connections and proxies).
    CausalToken,
}

impl HintVar {
    pub fn name(self) -> &'static str {
        match self {
            HintVar::Shard => "shardwire.shard",
            HintVar::ShardKey => "shardwire.shard_key",
            HintVar::CausalToken => "shardwire.causal_token",
        }
    }
}

/// A command the proxy answers itself.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyCommand {
    /// SET (value) or RESET / SET ... TO DEFAULT (None). `local` is noted
    /// but treated as session-level.
    Set {
        var: HintVar,
        value: Option<String>,
        reset: bool,
    },
    Show(HintVar),
}

/// `SET [SESSION|LOCAL] shardwire.x {=|TO} value`, `RESET shardwire.x`,
/// `SHOW shardwire.x`. None for anything else; an error for an unknown
/// `shardwire.` variable.
pub fn proxy_command(sql: &str) -> Option<Result<ProxyCommand, String>> {
    let s = sql
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let (verb, rest) = split_word(s);
    let verb = verb.to_ascii_lowercase();
    if !matches!(verb.as_str(), "set" | "reset" | "show") {
        return None;
    }
    let mut rest = rest;
    if verb == "set" {
        let (w, r) = split_word(rest);
        if w.eq_ignore_ascii_case("session") || w.eq_ignore_ascii_case("local") {
            rest = r;
        }
    }
    let name_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    let name = rest[..name_end].to_ascii_lowercase();
    let after = rest[name_end..].trim_start();
    let var_name = name.strip_prefix("shardwire.")?;
    let var = match var_name {
        "shard" => HintVar::Shard,
        "shard_key" => HintVar::ShardKey,
        "causal_token" => HintVar::CausalToken,
        other => {
            return Some(Err(format!(
                "unrecognized configuration parameter \"shardwire.{other}\" (known: shardwire.shard, shardwire.shard_key, shardwire.causal_token)"
            )))
        }
    };
    match verb.as_str() {
        "reset" | "show" if !after.is_empty() => {
            Some(Err(format!("syntax error at or near \"{after}\"")))
        }
        "reset" => Some(Ok(ProxyCommand::Set {
            var,
            value: None,
            reset: true,
        })),
        "show" => Some(Ok(ProxyCommand::Show(var))),
        _ => {
            let v = if let Some(v) = after.strip_prefix('=') {
                v.trim()
            } else {
                let (w, r) = split_word(after);
                if !w.eq_ignore_ascii_case("to") {
                    return Some(Err(format!("syntax error at or near \"{after}\"")));
                }
                r
            };
            let value = if let Some(q) = v.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')) {
                Some(q.replace("''", "'"))
            } else if v.eq_ignore_ascii_case("default") {
                None
            } else if v.is_empty() || v.contains(char::is_whitespace) {
                return Some(Err(format!("syntax error at or near \"{v}\"")));
            } else {
                Some(v.trim_matches('"').to_string())
            };
            Some(Ok(ProxyCommand::Set {
                var,
                value,
                reset: false,
            }))
        }
    }
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_that_run_outside_a_transaction() {
        use super::needs_no_transaction;
        let tables = Default::default();
        let a = |s: &str| crate::router::analyze::analyze(s, &tables);
        assert!(needs_no_transaction("vacuum t", &a("vacuum t")));
        let ci = "create index concurrently i on t (x)";
        assert!(needs_no_transaction(ci, &a(ci)));
        let ct = "create table t (x int)";
        assert!(!needs_no_transaction(ct, &a(ct)));
    }

    use super::*;

    #[test]
    fn statements_that_may_change_settings() {
        use SettingsEffect::*;
        let e = |s: &str| effects(s.as_bytes()).settings;
        for sql in [
            "SET search_path = a, b",
            "set session work_mem to '3MB'",
            "reset all",
            "RESET search_path",
            "discard all",
            "select 1; set statement_timeout = 5",
            "/* app */ SET role x",
            "-- hi\n set x.y = 1",
            "select pg_catalog.SET_CONFIG('search_path', 'x', false)",
            "do $$ begin perform 1; end $$",
            "call p()",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET TIME ZONE 'UTC'",
        ] {
            assert_eq!(e(sql), Changes, "{sql}");
        }
        for sql in [
            "select 1",
            "update t set x = 1",
            "SET LOCAL search_path = a",
            "set transaction isolation level serializable",
            "show search_path",
            "select 'set x = 1'",
            "alter role r set search_path = a",
            "create function f() returns int language sql set search_path = a as 'select 1'",
        ] {
            assert_eq!(e(sql), None, "{sql}");
        }
        assert!(matches!(
            e("set session authorization bob"),
            Unfollowable(_)
        ));
    }

    #[test]
    fn transaction_control() {
        use crate::router::analyze::{analyze, Tables};
        let tx = |sql: &str| tx_control(sql, &analyze(sql, &Tables::default()));
        assert_eq!(tx("BEGIN"), Some(TxControl::Begin));
        assert_eq!(
            tx("begin isolation level serializable;"),
            Some(TxControl::Begin)
        );
        assert_eq!(tx("START TRANSACTION"), Some(TxControl::Begin));
        assert_eq!(tx("commit"), Some(TxControl::End("COMMIT")));
        assert_eq!(tx("END WORK;"), Some(TxControl::End("COMMIT")));
        assert_eq!(tx("rollback"), Some(TxControl::End("ROLLBACK")));
        assert_eq!(tx("abort"), Some(TxControl::End("ROLLBACK")));
        assert_eq!(
            tx("rollback to savepoint a"),
            Some(TxControl::RollbackToSavepoint)
        );
        assert_eq!(
            tx("ROLLBACK WORK TO a"),
            Some(TxControl::RollbackToSavepoint)
        );
        assert_eq!(tx("commit prepared 'x'"), None);
        assert_eq!(tx("begin; select 1"), None);
        assert_eq!(tx("select 1"), None);
    }

    #[test]
    fn proxy_commands() {
        use ProxyCommand::*;
        assert_eq!(
            proxy_command("SET shardwire.shard = 's1'")
                .unwrap()
                .unwrap(),
            Set {
                var: HintVar::Shard,
                value: Some("s1".into()),
                reset: false
            }
        );
        assert_eq!(
            proxy_command("set local shardwire.shard_key to '42';")
                .unwrap()
                .unwrap(),
            Set {
                var: HintVar::ShardKey,
                value: Some("42".into()),
                reset: false
            }
        );
        assert_eq!(
            proxy_command("set shardwire.shard_key=42")
                .unwrap()
                .unwrap(),
            Set {
                var: HintVar::ShardKey,
                value: Some("42".into()),
                reset: false
            }
        );
        assert_eq!(
            proxy_command("RESET shardwire.shard").unwrap().unwrap(),
            Set {
                var: HintVar::Shard,
                value: None,
                reset: true
            }
        );
        assert_eq!(
            proxy_command("set shardwire.shard to default")
                .unwrap()
                .unwrap(),
            Set {
                var: HintVar::Shard,
                value: None,
                reset: false
            }
        );
        assert_eq!(
            proxy_command("show shardwire.shard").unwrap().unwrap(),
            Show(HintVar::Shard)
        );
        assert!(proxy_command("set shardwire.shrad = 's1'")
            .unwrap()
            .is_err());
        assert!(proxy_command("set search_path = x").is_none());
        assert!(proxy_command("select 1").is_none());
    }

    #[test]
    fn detects_discard_all_and_schema_changes() {
        let resets = |sql: &[u8]| {
            let e = effects(sql);
            (e.drops_statements, e.resets_settings)
        };
        assert_eq!(resets(b"DISCARD ALL\0"), (true, true));
        assert_eq!(resets(b"deallocate   all;\0"), (true, false));
        assert_eq!(resets(b"select 1; discard all\0"), (true, true));
        assert_eq!(resets(b"DEALLOCATE PREPARE ALL\0"), (true, false));
        assert_eq!(resets(b"RESET ALL\0"), (false, true));
        assert_eq!(resets(b"deallocate foo\0"), (false, false));
        assert_eq!(resets(b"deallocate prepare foo\0"), (false, false));
        assert_eq!(resets(b"select 'discard'\0"), (false, false));
        for sql in [
            "alter table t add column c int",
            "select 1; DROP TABLE t",
            "/* m */ create index i on t (x)",
            "do $$ begin end $$",
        ] {
            assert!(effects(sql.as_bytes()).schema, "{sql}");
        }
        for sql in [
            "select 1",
            "insert into t values (1)",
            "select 'alter table'",
        ] {
            assert!(!effects(sql.as_bytes()).schema, "{sql}");
        }
        for sql in [
            "LISTEN ch",
            "create temp table t (i int)",
            "CREATE LOCAL TEMPORARY TABLE t (i int)",
            "select 1 into temp t",
            "select pg_advisory_lock(1)",
            "select pg_try_advisory_lock_shared(1)",
            "SELECT PG_ADVISORY_UNLOCK(1)",
            "select 1 into TEMPORARY t",
            "with x as (select 1) select * into Temp t from x",
            "prepare p as select 1",
            "declare c cursor with hold for select 1",
            "load 'auto_explain'",
        ] {
            assert!(effects(sql.as_bytes()).pins.is_some(), "{sql}");
        }
        for sql in [
            "select pg_advisory_xact_lock(1)",
            "prepare transaction 'x'",
            "declare c cursor for select 1",
            "select * from temps",
            "select attempt, temp_c from tmp_temp",
            "create table t as select 1",
        ] {
            assert!(effects(sql.as_bytes()).pins.is_none(), "{sql}");
        }
    }
}

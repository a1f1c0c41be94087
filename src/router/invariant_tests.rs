//! The routing invariant (DESIGN §4), case by case: a statement goes to one
//! shard only when every occurrence of every sharded table is pinned there
//! by its own conditions and every unsharded table lives there; otherwise
//! it is merged, run everywhere, or refused, never sent to a guessed shard.
//! The cases are the wrong answers issue 19 found, and their neighbours.
//!
//! The fixture (tests::router): `accounts` and `history` hash-sharded on
//! `aid` and co-located; `events` range-sharded on `id`; `users` by
//! geography; `countries` a reference table; anything else (`settings`)
//! is unsharded, on the default shard 0.

use super::tests::{router, shard_of};
use super::*;

fn route(sql: &str) -> Result<Route, PgError> {
    router().route(sql, &[], &SessionHints::default())
}

fn refused(sql: &str) -> PgError {
    match route(sql) {
        Ok(r) => panic!(
            "{sql}\nwas routed to {:?} ({}), not refused",
            r.shards, r.reason
        ),
        Err(e) => e,
    }
}

fn one_shard(sql: &str) -> usize {
    match route(sql) {
        Ok(r) if r.shards.len() == 1 && r.merge().cloned().is_none() => r.shards[0],
        Ok(r) => panic!("{sql}\nwent to {:?} ({})", r.shards, r.reason),
        Err(e) => panic!("{sql}\nwas refused: {}", e.message),
    }
}

/// Two keys on different shards, the first on shard 0 (the default).
fn keys_apart() -> (i64, i64) {
    let a = (1..100).find(|&k| shard_of(k) == 0).unwrap();
    let b = (1..100).find(|&k| shard_of(k) == 1).unwrap();
    (a, b)
}

#[test]
fn every_reference_to_a_sharded_table_counts() {
    let (a, b) = keys_apart();
    // A second reference, in a scalar subquery, reads every shard.
    let e = refused(&format!(
        "select (select count(*) from accounts) from accounts where aid = {a}"
    ));
    assert_eq!(e.code, "0A000");
    assert!(e.message.contains("accounts"), "{}", e.message);
    // Self-joins: each alias needs its own key.
    refused(&format!(
        "select * from accounts x join accounts y on x.bid = y.bid where x.aid = {a}"
    ));
    refused(&format!(
        "select * from accounts x, accounts y where x.aid = {a} and y.aid = {b}"
    ));
    let a2 = (a + 1..200).find(|&k| shard_of(k) == 0).unwrap();
    assert_eq!(
        one_shard(&format!(
            "select * from accounts x, accounts y where x.aid = {a} and y.aid = {a2}"
        )),
        0
    );
    assert_eq!(
        one_shard(&format!(
            "select * from accounts x join accounts y on x.aid = y.aid where x.aid = {b}"
        )),
        1
    );
    // Writes computed from another shard's rows.
    refused(&format!(
        "update accounts set abalance = (select max(abalance) from accounts where aid < 20) where aid = {a}"
    ));
    refused(&format!(
        "with x as (update accounts set bid = bid + 100 returning aid) select * from x where aid = {a}"
    ));
    assert_eq!(
        one_shard(&format!(
            "with x as (update accounts set bid = bid + 100 where aid = {b} returning aid) select * from x"
        )),
        1
    );
    // Set operations: each branch's own keys.
    refused(&format!(
        "select aid from accounts where aid = {a} union select aid from accounts where aid = {b}"
    ));
    assert_eq!(
        one_shard(&format!(
            "select aid from accounts where aid = {a} union all select aid from history where aid = {a2}"
        )),
        0
    );
    // `TABLE t` is every row of t.
    refused("table accounts");
    // Derived tables and CTEs are blocks of their own.
    assert_eq!(
        one_shard(&format!(
            "select * from (select * from accounts where aid = {b}) t"
        )),
        1
    );
    refused(&format!(
        "with x as (select * from accounts) select * from x where aid = {a}"
    ));
    refused(&format!(
        "select * from (select * from accounts) t where t.aid = {a}"
    ));
    // A CTE named like a table shadows it.
    assert_eq!(
        one_shard("with accounts as (select 1 as aid) select * from accounts where aid = 7"),
        0
    );
}

#[test]
fn correlated_subqueries_follow_key_equalities() {
    let (a, b) = keys_apart();
    assert_eq!(
        one_shard(&format!(
            "select * from accounts x where x.aid = {b} and exists (select 1 from history h where h.aid = x.aid)"
        )),
        1
    );
    assert_eq!(
        one_shard(&format!(
            "update accounts set abalance = (select sum(delta) from history where history.aid = accounts.aid) where aid = {a}"
        )),
        0
    );
    // Not co-located (range-sharded events): its own shards.
    refused(&format!(
        "select * from accounts x where x.aid = {a} and exists (select 1 from events e where e.id = x.aid)"
    ));
    // An inner block's condition on an outer column does not pin the
    // outer table (it may sit under OR or NOT): every shard runs it.
    let r = route(&format!(
        "select * from accounts x where exists (select 1 from countries c where x.aid = {a})"
    ))
    .unwrap();
    assert_eq!(
        (r.shards.len(), r.merge().cloned()),
        (2, Some(Merge::Concat))
    );
    // An unqualified column belongs to its own block: here history's.
    refused(&format!(
        "select * from accounts x where x.bid in (select bid from history where aid = {a})"
    ));
}

#[test]
fn outer_join_conditions_never_filter_the_preserved_side() {
    let (a, _) = keys_apart();
    // ON restricts the nullable side only: every row of x is kept, so
    // every shard answers for its own rows (a join on co-located keys,
    // concatenated), never one shard.
    let r = route(&format!(
        "select * from accounts x left join history h on h.aid = x.aid and x.aid = {a}"
    ))
    .unwrap();
    assert_eq!(
        (r.shards.len(), r.merge().cloned()),
        (2, Some(Merge::Concat))
    );
    assert_eq!(
        one_shard(&format!(
            "select * from accounts x left join history h on h.aid = x.aid where x.aid = {a}"
        )),
        0
    );
    assert_eq!(
        one_shard(&format!(
            "select * from history h right join accounts x on h.aid = x.aid where x.aid = {a}"
        )),
        0
    );
    refused(&format!(
        "select * from accounts x full join history h on h.aid = x.aid where x.aid = {a}"
    ));
    assert_eq!(
        one_shard(&format!(
            "select * from accounts x join history h using (aid) where x.aid = {a}"
        )),
        0
    );
}

#[test]
fn unsharded_tables_pin_the_default_shard() {
    let (a, b) = keys_apart();
    assert_eq!(
        one_shard(&format!(
            "select x.aid, s.v from accounts x left join settings s on s.k = x.bid where x.aid = {a}"
        )),
        0
    );
    let e = refused(&format!(
        "select x.aid, s.v from accounts x left join settings s on s.k = x.bid where x.aid = {b}"
    ));
    assert!(e.message.contains("\"settings\""), "{}", e.message);
    refused(&format!(
        "select * from accounts x join settings s on true where x.aid in ({a}, {b})"
    ));
    // The UPDATE-everywhere and merge paths do not apply with one.
    refused("update accounts set abalance = (select v from settings limit 1)");
    refused("select count(*) from accounts join settings on true");
    assert_eq!(one_shard("select * from settings"), 0);
    assert_eq!(
        one_shard("select * from settings s join countries c on c.code = s.k"),
        0
    );
    assert_eq!(
        one_shard(&format!(
            "insert into settings select aid, abalance from accounts where aid = {a}"
        )),
        0
    );
    refused(&format!(
        "insert into settings select aid, abalance from accounts where aid = {b}"
    ));
    refused(&format!(
        "insert into accounts (aid, abalance) values ({b}, (select v from settings))"
    ));
    // Catalogs are on every shard.
    assert_eq!(
        one_shard(&format!(
            "select * from accounts x join pg_catalog.pg_class c on true where x.aid = {b}"
        )),
        1
    );
}

#[test]
fn unreadable_statements_in_a_string_are_refused_not_neutral() {
    let sql = "BEGIN; INSERT INTO accounts(aid,bid,abalance) VALUES (23,1,230) ON CONFLICT (aid) WHERE abalance >= 0 DO NOTHING; COMMIT;";
    let r = router();
    let analysis = r.analysis(sql);
    assert_eq!(analysis.statements.len(), 3, "{analysis:?}");
    assert_eq!(analysis.statements[1].kind, Kind::Other);
    let e = r.route(sql, &[], &SessionHints::default()).unwrap_err();
    assert_eq!(e.code, "0A000");
    assert!(e.message.contains("accounts"), "{}", e.message);
    // The statements of one string must agree on one shard.
    let (a, b) = keys_apart();
    refused(&format!(
        "begin; select * from accounts where aid = {a}; select * from accounts where aid = {b}; commit"
    ));
    // An unreadable write to a reference table would reach one copy.
    refused(
        "INSERT INTO countries (code) VALUES ('x') ON CONFLICT (code) WHERE code > '' DO NOTHING",
    );
    // Unreadable DDL reaches every shard.
    let r =
        route("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO app2").unwrap();
    assert!(r.is_broadcast(), "{}", r.reason);
}

#[test]
fn upserts_may_not_move_the_key() {
    let e = refused(
        "insert into accounts (aid, abalance) values (1, 0) on conflict (aid) do update set aid = 1002",
    );
    assert!(e.message.contains("shard key"), "{}", e.message);
    refused("insert into accounts (aid, abalance) values (1, 0) on conflict (aid) do update set (abalance, aid) = (1, 2)");
    assert_eq!(
        one_shard("insert into accounts (aid, abalance) values (1, 0) on conflict (aid) do update set abalance = excluded.abalance"),
        shard_of(1)
    );
    // Reading another shard's rows while inserting: refused.
    refused(
        "insert into accounts (aid, abalance) values (1, (select max(abalance) from accounts))",
    );
}

#[test]
fn empty_any_arrays_match_no_row_on_one_shard() {
    for sql in [
        "select * from accounts where aid = any($1)",
        "delete from accounts where aid = any($1)",
        "update accounts set abalance = 0 where aid = any($1)",
    ] {
        for value in [b"{}".as_slice(), b"{NULL}".as_slice()] {
            let r = router()
                .route(sql, &[Param::text(value)], &SessionHints::default())
                .unwrap_or_else(|e| panic!("{sql}: {}", e.message));
            assert_eq!(r.shards.len(), 1, "{sql}");
        }
    }
    assert_eq!(
        one_shard("select * from accounts where aid = any(array[]::int[])"),
        0
    );
}

#[test]
fn functions_in_from_are_seen() {
    let r = router().with_write_functions(&["bump".into()]);
    for sql in [
        "select * from nextval('s')",
        "select * from bump()",
        "select * from set_config('search_path', 'tenant_a', false)",
        "select * from public.bump() as b",
    ] {
        let a = r.analysis(sql);
        assert!(!r.is_read(&a), "{sql} reads only? {a:?}");
    }
    assert!(r.is_read(&r.analysis("select * from generate_series(1, 3) g")));
}

#[test]
fn schema_wide_ddl_reaches_every_shard() {
    for sql in [
        "create schema tenant_a",
        "drop schema tenant_a cascade",
        "grant all on hx to app2",
        "revoke all on hx from app2",
        "grant usage on schema tenant_a to app2",
        "comment on table accounts is 'x'",
        "create extension if not exists pgcrypto",
        "create sequence s",
        "create type mood as enum ('a', 'b')",
        "create function f() returns int language sql as 'select 1'",
        "create view v as select * from countries",
        "create role r2",
        "alter table accounts add column x int",
    ] {
        let r = route(sql).unwrap_or_else(|e| panic!("{sql}: {}", e.message));
        assert!(r.is_broadcast(), "{sql}: {}", r.reason);
        assert_eq!(r.shards, vec![0, 1], "{sql}");
    }
    // A view or table made from one shard's rows: refused.
    refused("create view v as select * from accounts");
    refused("create table t2 as select * from accounts");
    refused("select * into t2 from accounts where aid = 1");
    assert!(route("create table t3 as select * from countries")
        .unwrap()
        .is_broadcast());
}

#[test]
fn reference_writes_read_only_reference_tables() {
    refused("insert into countries select 'x', aid from accounts");
    refused("insert into countries select * from settings");
    refused("update countries set code = (select max(k) from settings)");
    refused("delete from countries using accounts where accounts.bid = 1");
    let r = route("insert into countries select * from countries").unwrap();
    assert!(r.is_broadcast());
    // A data-modifying CTE would write one shard's copy.
    refused("with w as (update countries set code = code returning code) select * from w");
    refused(
        "with w as (insert into countries values ('x') returning code) select * from countries",
    );
    refused("with w as (delete from countries returning code) delete from accounts where aid = 1");
}

#[test]
fn explain_goes_where_its_statement_goes() {
    let (_, b) = keys_apart();
    assert_eq!(
        one_shard(&format!("explain select * from accounts where aid = {b}")),
        1
    );
    refused("explain select count(*) from accounts");
    refused("explain analyze insert into countries values ('x')");
    let r = route("explain insert into countries values ('x')").unwrap();
    assert_eq!(r.shards.len(), 1);
}

#[test]
fn merges_need_every_row_to_have_a_sharded_row() {
    // The preserved side of an outer join keeps its rows where the sharded
    // table has no match: every shard would answer them.
    refused("select c.code, a.aid from countries c left join accounts a on a.bid = c.code");
    refused("select count(*) from countries c left join accounts a on a.bid = c.code");
    refused("select g, a.aid from generate_series(1, 3) g left join accounts a on a.aid = g");
    refused("select a.aid from accounts a right join countries c on a.bid = c.code");
    refused("select a.aid from accounts a full join countries c on a.bid = c.code");
    for sql in [
        "select a.aid, c.code from accounts a left join countries c on a.bid = c.code",
        "select count(*) from countries c join accounts a on a.bid = c.code",
        "select g, a.aid from generate_series(1, 3) g join accounts a on a.aid = g",
        "select a.aid from countries c right join accounts a on a.bid = c.code",
    ] {
        let r = route(sql).unwrap_or_else(|e| panic!("{sql}: {}", e.message));
        assert_eq!(r.shards.len(), 2, "{sql}");
        assert!(r.merge().cloned().is_some(), "{sql}");
    }
}

#[test]
fn every_occurrence_needs_all_the_shards_its_keys_are_on() {
    let (a, b) = keys_apart();
    // One occurrence on a's shard, the other on a's and b's: both shards
    // are needed, not the one they share.
    refused(&format!(
        "select aid from accounts where aid = {a} union all select aid from history where aid in ({a}, {b})"
    ));
    refused(&format!(
        "select * from accounts x where x.aid = {a} and exists (select 1 from history h where h.aid in ({a}, {b}))"
    ));
    refused(&format!(
        "select aid from accounts where aid in ({a}, {b}) except select aid from history where aid = {b}"
    ));
    // Assigning the key in a data-modifying CTE, or its upsert, moves it too.
    refused(&format!(
        "with w as (update accounts set aid = 20372 where aid = {a} returning aid) select count(*) from w"
    ));
    refused(&format!(
        "with w as (insert into accounts (aid) values ({a}) on conflict (aid) do update set aid = 7 returning aid) select * from w"
    ));
}

#[test]
fn tier_three_gathers_sharded_beside_unsharded() {
    let r = router().with_gather(true);
    let route = r
        .route(
            "select a.aid, s.v from accounts a join settings s on s.k = a.bid",
            &[],
            &SessionHints::default(),
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
    assert_eq!(route.plan.name(), "gather");
}

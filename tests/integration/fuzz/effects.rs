//! Effects: what the statements left behind. A snapshot is every fuzz
//! table's rows (as PostgreSQL's record text, with the shard key's text
//! beside it) plus the catalog objects DDL units create, read straight
//! from one database. The check computes, with the shardwire library's own
//! routing rules, on which shard each of the oracle's rows belongs and
//! compares that with what each shard's primary holds; reference tables
//! must be whole on every shard, unsharded ones only on the default shard.
//!
//! `restore` puts a snapshot back on the oracle and every shard (each
//! shard getting only its rows), so a difference in effects is reported
//! once and does not cascade.

use std::collections::BTreeMap;
use std::time::Duration;

use shardwire::router::{parse_key, Router};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::schema::{Kind, Table};

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// table -> sorted (shard key text, row text)
    pub tables: BTreeMap<String, Vec<(Option<String>, String)>>,
    /// Sorted descriptions of the fuzz's catalog objects (schemas,
    /// relations with their ACLs).
    pub catalog: Vec<String>,
}

const CATALOG_SQL: &str = "select 'schema ' || nspname from pg_namespace where nspname like 'fzs\\_%' \
     union all select 'relation ' || relname || ' ' || relkind::text || ' ' || coalesce(relacl::text, '') \
     from pg_class c join pg_namespace n on n.oid = c.relnamespace \
     where n.nspname = 'public' and relname like 'fz%' and relkind in ('r', 'i')";

fn rows_sql(tables: &[Table]) -> String {
    tables
        .iter()
        .map(|t| {
            let key = match t.key {
                Some(k) => format!("(x.{k})::text"),
                None => "null::text".into(),
            };
            format!("select '{}', {key}, x::text from {} x", t.name, t.name)
        })
        .collect::<Vec<_>>()
        .join(" union all ")
}

pub async fn fetch(c: &Client, tables: &[Table]) -> Result<Snapshot, String> {
    let sql = format!("{}; {CATALOG_SQL}", rows_sql(tables));
    let msgs = match tokio::time::timeout(TIMEOUT, c.simple_query(&sql)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(format!("reading the tables failed: {}", pg_error(&e))),
        Err(_) => return Err("reading the tables took longer than 30s".into()),
    };
    let mut snap = Snapshot::default();
    for t in tables {
        snap.tables.insert(t.name.to_string(), Vec::new());
    }
    let mut part = 0;
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) if part == 0 => {
                let table = r.get(0).unwrap_or_default().to_string();
                let key = r.get(1).map(str::to_string);
                let row = r.get(2).unwrap_or_default().to_string();
                snap.tables.entry(table).or_default().push((key, row));
            }
            SimpleQueryMessage::Row(r) => snap.catalog.push(r.get(0).unwrap_or_default().into()),
            SimpleQueryMessage::CommandComplete(_) => part += 1,
            _ => {}
        }
    }
    for rows in snap.tables.values_mut() {
        rows.sort();
    }
    snap.catalog.sort();
    Ok(snap)
}

/// The shard each row of `table` belongs on.
fn placement(
    router: &Router,
    t: &Table,
    default_shard: usize,
    shards: usize,
    key: &Option<String>,
) -> Result<Vec<usize>, String> {
    match t.kind {
        Kind::Reference => Ok((0..shards).collect()),
        Kind::Unsharded => Ok(vec![default_shard]),
        _ => {
            let rule = router
                .table(t.name)
                .ok_or_else(|| format!("{} is not configured", t.name))?;
            let k = key
                .as_deref()
                .ok_or_else(|| format!("{}: a row without a shard key", t.name))?;
            let v = parse_key(rule.key_type, k).map_err(|e| format!("{}: {e}", t.name))?;
            rule.shard_for(&v)
                .map(|s| vec![s])
                .map_err(|e| format!("{}: {e}", t.name))
        }
    }
}

/// What each shard should hold for the oracle's contents `want`.
pub fn split(
    want: &Snapshot,
    router: &Router,
    tables: &[Table],
    default_shard: usize,
    shards: usize,
) -> Result<Vec<Snapshot>, String> {
    let mut out: Vec<Snapshot> = (0..shards)
        .map(|_| Snapshot {
            catalog: want.catalog.clone(),
            ..Default::default()
        })
        .collect();
    for t in tables {
        for s in out.iter_mut() {
            s.tables.insert(t.name.to_string(), Vec::new());
        }
        for row in want.tables.get(t.name).into_iter().flatten() {
            for s in placement(router, t, default_shard, shards, &row.0)? {
                out[s]
                    .tables
                    .get_mut(t.name)
                    .expect("inserted above")
                    .push(row.clone());
            }
        }
    }
    Ok(out)
}

fn list(rows: &[&(Option<String>, String)]) -> String {
    let mut s: Vec<String> = rows.iter().take(6).map(|r| r.1.clone()).collect();
    if rows.len() > 6 {
        s.push(format!("... {} more", rows.len() - 6));
    }
    s.join(" ")
}

/// Differences between what the shards hold and what they should hold.
pub fn check(
    oracle: &Snapshot,
    actual: &[Snapshot],
    router: &Router,
    tables: &[Table],
    default_shard: usize,
    shard_names: &[String],
) -> Vec<String> {
    let expected = match split(oracle, router, tables, default_shard, actual.len()) {
        Ok(e) => e,
        Err(e) => return vec![format!("cannot place the oracle's rows: {e}")],
    };
    let mut problems = Vec::new();
    for (i, (want, got)) in expected.iter().zip(actual).enumerate() {
        let shard = &shard_names[i];
        for t in tables {
            let w = &want.tables[t.name];
            let g = got.tables.get(t.name).cloned().unwrap_or_default();
            if *w == g {
                continue;
            }
            let missing: Vec<_> = w.iter().filter(|r| !g.contains(r)).collect();
            let extra: Vec<_> = g.iter().filter(|r| !w.contains(r)).collect();
            let mut p = format!(
                "{} on shard {shard}: {} rows, expected {}",
                t.name,
                g.len(),
                w.len()
            );
            if !missing.is_empty() {
                p.push_str(&format!("; missing {}", list(&missing)));
            }
            if !extra.is_empty() {
                p.push_str(&format!("; unexpected {}", list(&extra)));
            }
            if missing.is_empty() && extra.is_empty() {
                p.push_str("; duplicated rows");
            }
            problems.push(p);
        }
        if want.catalog != got.catalog {
            let missing: Vec<&String> = want
                .catalog
                .iter()
                .filter(|c| !got.catalog.contains(c))
                .collect();
            let extra: Vec<&String> = got
                .catalog
                .iter()
                .filter(|c| !want.catalog.contains(c))
                .collect();
            problems.push(format!(
                "catalog on shard {shard} differs from the oracle: missing {missing:?}, unexpected {extra:?}"
            ));
        }
    }
    problems
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// SQL that makes a database hold exactly `snap`'s rows, and none of the
/// fuzz's extra catalog objects (DDL units create them through the proxy;
/// after a restore every database starts from none again).
fn restore_sql(snap: &Snapshot, tables: &[Table]) -> String {
    let mut sql = String::from(
        "begin; set local lock_timeout = '10s';
        do $$ declare r record; begin
          for r in select nspname from pg_namespace where nspname like 'fzs\\_%' loop
            execute format('drop schema %I cascade', r.nspname); end loop;
          for r in select relname from pg_class where relname like 'fzx\\_%' and relkind = 'r' loop
            execute format('drop table %I cascade', r.relname); end loop;
          for r in select relname from pg_class where relname like 'fzi\\_%' and relkind = 'i' loop
            execute format('drop index %I', r.relname); end loop;
        end $$;
        revoke all on all tables in schema public from public;\n",
    );
    for t in tables {
        sql.push_str(&format!("delete from {};\n", t.name));
        let rows = &snap.tables[t.name];
        if !rows.is_empty() {
            let lits: Vec<String> = rows.iter().map(|r| sql_literal(&r.1)).collect();
            sql.push_str(&format!(
                "insert into {} select (r::{}).* from unnest(array[{}]::text[]) r;\n",
                t.name,
                t.name,
                lits.join(", ")
            ));
        }
    }
    sql.push_str("commit;");
    sql
}

/// Puts `oracle_snap` on the oracle and each shard's part on each shard.
pub async fn restore(
    oracle: &Client,
    shards: &[Client],
    oracle_snap: &Snapshot,
    router: &Router,
    tables: &[Table],
    default_shard: usize,
) -> Result<(), String> {
    let parts = split(oracle_snap, router, tables, default_shard, shards.len())?;
    let mut jobs = vec![(oracle, restore_sql(oracle_snap, tables))];
    for (c, p) in shards.iter().zip(&parts) {
        jobs.push((c, restore_sql(p, tables)));
    }
    let runs = jobs.iter().map(|(c, sql)| async move {
        match tokio::time::timeout(TIMEOUT, c.batch_execute(sql)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // Leave the connection usable for the next attempt.
                let _ = tokio::time::timeout(TIMEOUT, c.batch_execute("rollback")).await;
                Err(format!("restore failed: {}", pg_error(&e)))
            }
            Err(_) => Err("restore took longer than 30s".to_string()),
        }
    });
    for r in futures_util::future::join_all(runs).await {
        r?;
    }
    Ok(())
}

/// A server error's SQLSTATE and message (tokio-postgres' Display says
/// only "db error").
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

//! What the router hands to execution: a `Route` (the shards, and why) whose
//! `Plan` says how the statement runs on them. The session matches on the
//! plan instead of probing optional fields; a statement over several shards
//! that no plan can run is refused here, before anything is sent.

use serde::Serialize;

use super::gather::Gather;
use super::hints::ReadFrom;
use super::insert_select::InsertSelect;
use super::Merge;

/// How a routed statement runs on its shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// On `Route::shards[0]` alone, answered as one database would.
    Single,
    /// The same statement on every shard (DDL, maintenance, writes to
    /// reference tables); the client sees the first shard's answer.
    /// `atomic`: all or nothing in one transaction over the shards (two-phase
    /// commit); false for statements PostgreSQL refuses inside a transaction
    /// block (VACUUM, CREATE INDEX CONCURRENTLY), which run on each shard on
    /// its own.
    Broadcast { atomic: bool },
    /// A SELECT that several shards answer, merged into one answer.
    Scatter(Merge),
    /// An UPDATE or DELETE of one table on several shards, each changing its
    /// own rows: the command tags' counts are summed under this tag.
    SumWrites(&'static str),
    /// An INSERT whose rows go to different shards: row index -> shard.
    SplitInsert(Vec<usize>),
    /// COPY FROM STDIN into a sharded table: the rows are split by key.
    SplitCopy(CopySplit),
    /// A read PostgreSQL answers on the default shard (`Route::shards`
    /// holds it) from the rows of its sharded tables gathered there from
    /// the other shards (tier 3, router::gather).
    Gather(Box<Gather>),
    /// An INSERT ... SELECT: the SELECT answered as a `Gather` on the
    /// default shard (into a table shaped like the target's columns),
    /// its rows then inserted into the target's shards by key.
    InsertSelect(Box<InsertSelect>),
}

impl Plan {
    /// Whether the plan runs on more than one shard by its nature (a
    /// broadcast to a one-shard cluster is still a broadcast).
    pub fn is_broadcast(&self) -> bool {
        matches!(self, Plan::Broadcast { .. })
    }

    /// Its name in `shardwire route`'s output.
    pub fn name(&self) -> &'static str {
        match self {
            Plan::Single => "single",
            Plan::Broadcast { atomic: true } => "broadcast",
            Plan::Broadcast { atomic: false } => "broadcast_each",
            Plan::Scatter(_) => "scatter",
            Plan::SumWrites(_) => "sum_writes",
            Plan::SplitInsert(_) => "split_insert",
            Plan::SplitCopy(_) => "split_copy",
            Plan::Gather(_) => "gather",
            Plan::InsertSelect(_) => "insert_select",
        }
    }

    /// The tier of cross-shard execution (DESIGN §6): 1 when the shards
    /// answer the statement and the proxy combines their answers, 3 when
    /// PostgreSQL answers it from gathered rows, 2 when such a read feeds
    /// a write; 0 for one shard or the same statement everywhere.
    pub fn tier(&self) -> u8 {
        match self {
            Plan::Single | Plan::Broadcast { .. } => 0,
            Plan::Scatter(_) | Plan::SumWrites(_) | Plan::SplitInsert(_) | Plan::SplitCopy(_) => 1,
            Plan::Gather(_) => 3,
            Plan::InsertSelect(_) => 2,
        }
    }

    /// The merge of a scatter, if this is one.
    pub fn merge(&self) -> Option<&Merge> {
        match self {
            Plan::Scatter(m) => Some(m),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopySplit {
    pub table: String,
    pub key_column: Option<usize>,
}

/// Where a statement goes.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// Shard indexes, sorted and distinct. More than one only for a plan
    /// other than `Single`.
    pub shards: Vec<usize>,
    pub plan: Plan,
    pub writes: bool,
    pub table: Option<String>,
    pub strategy: Option<&'static str>,
    /// The key values that decided, as text.
    pub keys: Vec<String>,
    /// Why, in words (for `shardwire route` and logs).
    pub reason: String,
    /// A routing hint chose the shard (`shard=` or `shard_key=`).
    pub hinted: bool,
    /// `/* shardwire: role=... */`: where this statement may read from.
    pub role: Option<ReadFrom>,
}

impl Route {
    /// A route to `shards` with nothing else to it (no merge, split or
    /// hint).
    pub fn simple(shards: Vec<usize>, writes: bool, reason: String) -> Route {
        Route {
            shards,
            plan: Plan::Single,
            writes,
            table: None,
            strategy: None,
            keys: vec![],
            reason,
            hinted: false,
            role: None,
        }
    }

    /// The shard was chosen for this statement (by its key or a hint), not
    /// defaulted: what the metrics call a "single" route.
    pub fn is_keyed(&self) -> bool {
        self.hinted || !self.keys.is_empty()
    }

    /// The scatter's merge, if the statement is a merged SELECT.
    pub fn merge(&self) -> Option<&Merge> {
        self.plan.merge()
    }

    pub fn is_broadcast(&self) -> bool {
        self.plan.is_broadcast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::{router, shard_of};
    use crate::router::SessionHints;

    fn route(sql: &str) -> Result<Route, crate::protocol::PgError> {
        router().route(sql, &[], &SessionHints::default())
    }

    /// Two keys of `accounts` on different shards.
    fn keys_on_two_shards() -> (i64, i64) {
        let other = (2..100).find(|k| shard_of(*k) != shard_of(1)).unwrap();
        (1, other)
    }

    #[test]
    fn each_shape_gets_its_plan() {
        let (a, b) = keys_on_two_shards();
        let plan = |sql: &str| route(sql).unwrap().plan;
        assert_eq!(
            plan(&format!("select * from accounts where aid = {a}")),
            Plan::Single
        );
        assert_eq!(plan("select * from accounts"), Plan::Scatter(Merge::Concat));
        assert_eq!(
            plan("update accounts set abalance = 0"),
            Plan::SumWrites("UPDATE")
        );
        assert_eq!(
            plan(&format!("delete from accounts where aid in ({a}, {b})")),
            Plan::SumWrites("DELETE")
        );
        assert!(matches!(
            plan(&format!("insert into accounts (aid) values ({a}), ({b})")),
            Plan::SplitInsert(_)
        ));
        assert!(matches!(
            plan("copy accounts from stdin"),
            Plan::SplitCopy(_)
        ));
        assert_eq!(
            plan("create table x (i int)"),
            Plan::Broadcast { atomic: true }
        );
        assert_eq!(plan("vacuum accounts"), Plan::Broadcast { atomic: false });
        assert_eq!(
            plan("create index concurrently i on accounts (abalance)"),
            Plan::Broadcast { atomic: false }
        );
    }

    /// A plan that reads or rewrites its one statement's answer cannot
    /// share the string: before, `SET ...; UPDATE` over two shards reached
    /// the session, which had to notice; two split INSERTs kept only the
    /// first one's row map.
    #[test]
    fn merged_split_and_summed_statements_stand_alone() {
        let (a, b) = keys_on_two_shards();
        for sql in [
            "set work_mem = '8MB'; update accounts set abalance = 0".to_string(),
            format!(
                "insert into accounts (aid) values ({a}), ({b}); insert into accounts (aid) values ({b}), ({a})"
            ),
            "select 1; select * from accounts".to_string(),
            format!("delete from accounts where aid in ({a}, {b}); select 1"),
        ] {
            let e = route(&sql).unwrap_err();
            assert_eq!(e.code, "0A000", "{sql}");
            assert!(
                e.message.contains("must be the only statement of its query string"),
                "{sql}: {}",
                e.message
            );
        }
        // Statements that each run whole on the same shards still combine.
        let r = route("create table x (i int); create table y (i int)").unwrap();
        assert_eq!(r.plan, Plan::Broadcast { atomic: true });
        let r = route(&format!(
            "select * from accounts where aid = {a}; update accounts set abalance = 1 where aid = {a}"
        ))
        .unwrap();
        assert_eq!(r.plan, Plan::Single);
    }

    /// Several shards and no plan to run there: refused by the router, so
    /// nothing downstream can guess one shard.
    #[test]
    fn several_shards_without_a_plan_are_refused_here() {
        let (a, b) = keys_on_two_shards();
        let e = route(&format!(
            "insert into history (aid) select aid from accounts where aid in ({a}, {b})"
        ))
        .unwrap_err();
        assert_eq!(e.code, "0A000");
        let e = route("copy countries from stdin").unwrap_err();
        assert!(e.message.contains("reference table"), "{}", e.message);
    }
}

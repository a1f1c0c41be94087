//! Writes: INSERT (with or without a column list, multi-row, from a
//! SELECT, multi-row over several shard keys with RETURNING, whose rows
//! are compared in VALUES order), upserts (DO NOTHING, DO UPDATE,
//! assigning the shard key),
//! UPDATE (also of the shard key, with FROM, with a correlated subquery),
//! DELETE (also with USING), RETURNING, and data-modifying CTEs.

use rand::seq::SliceRandom;
use rand::Rng;

use super::super::schema::{self, Table, Ty};
use super::super::sql::*;
use super::*;

impl<'a> Gen<'a> {
    // ------------------------------------------------------------------
    // Writes

    pub fn write_stmt(&mut self) -> Stmt {
        match self.rng.gen_range(0..100) {
            0..=33 => Stmt::Insert(self.insert()),
            34..=39 => Stmt::Insert(self.insert_values_returning()),
            40..=64 => Stmt::Update(self.update()),
            65..=79 => Stmt::Delete(self.delete()),
            _ => Stmt::Insert(self.upsert()),
        }
    }

    /// Values for `cols` of table `t`: keys from the pool or fresh.
    pub(super) fn row(&mut self, t: &Table, cols: &[&str]) -> Vec<Expr> {
        cols.iter()
            .map(|name| {
                let c = t.col(name);
                let rc = RCol {
                    name: c.name.into(),
                    ty: c.ty,
                    pool: c.pool,
                    key: t.key == Some(c.name),
                    not_null: c.not_null,
                };
                if t.pk.contains(name) && t.pk.len() == 1 && self.p(0.3) {
                    self.fresh_key(&rc)
                } else if c.default && self.p(0.08) {
                    self.tag("insert:default-keyword");
                    lit("default")
                } else {
                    self.value(&rc, !c.not_null)
                }
            })
            .collect()
    }

    pub(super) fn insert(&mut self) -> Insert {
        let t = self.any_table();
        let all: Vec<&str> = t.cols.iter().map(|c| c.name).collect();
        let (cols, list) = match self.rng.gen_range(0..100) {
            0..=49 => {
                let mut c = all.clone();
                c.shuffle(&mut self.rng);
                (c.clone(), Some(c))
            }
            50..=74 => {
                // The required columns plus some others.
                let mut c: Vec<&str> = t
                    .cols
                    .iter()
                    .filter(|c| c.not_null || self.rng.gen_bool(0.5))
                    .map(|c| c.name)
                    .collect();
                c.shuffle(&mut self.rng);
                self.tag("insert:column-subset");
                (c.clone(), Some(c))
            }
            _ => {
                self.tag("insert:no-column-list");
                (all.clone(), None)
            }
        };
        let source = if self.p(0.12) {
            self.insert_select(t, &cols)
        } else {
            let n = if self.p(0.4) {
                self.tag("insert:multi-row");
                self.rng.gen_range(2..=5)
            } else {
                1
            };
            InsertSource::Values((0..n).map(|_| self.row(t, &cols)).collect())
        };
        let returning = self.returning(t, "");
        Insert {
            table: t.name.into(),
            cols: list.map(|l| l.iter().map(|s| s.to_string()).collect()),
            source,
            on_conflict: None,
            returning,
        }
    }

    /// A multi-row `INSERT ... VALUES` of a sharded table whose rows have
    /// several shard keys (so usually span shards), with RETURNING, often
    /// in the extended protocol with parameters. One database returns the
    /// rows in VALUES order, and so must the proxy (compared in order,
    /// except after ON CONFLICT DO NOTHING, which may leave rows out).
    pub(super) fn insert_values_returning(&mut self) -> Insert {
        self.tag("insert:values-returning");
        let sharded: Vec<&Table> = self.tables.iter().filter(|t| t.is_sharded()).collect();
        let t: &Table = sharded.choose(&mut self.rng).expect("sharded");
        let mut cols: Vec<&str> = t
            .cols
            .iter()
            .filter(|c| c.not_null || t.pk.contains(&c.name) || self.rng.gen_bool(0.7))
            .map(|c| c.name)
            .collect();
        cols.shuffle(&mut self.rng);
        let want = self.rng.gen_range(2..=6);
        let mut rows: Vec<Vec<Expr>> = Vec::new();
        let mut seen = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..want * 2 {
            if rows.len() == want {
                break;
            }
            let row = self.row(t, &cols);
            // No primary key twice in one statement (a unique violation,
            // or DO UPDATE touching a row twice, on one database too).
            let text = |e: &Expr| match e {
                Expr::Param(p) => p.text().unwrap_or_default(),
                other => Render::new(true).expr(other).trim_matches('\'').to_string(),
            };
            let pk: Vec<String> =
                t.pk.iter()
                    .map(|p| {
                        let i = cols.iter().position(|c| c == p).expect("pk listed");
                        text(&row[i])
                    })
                    .collect();
            if pk.iter().any(|v| v == "default") || seen.contains(&pk) {
                continue;
            }
            let key = t.key.expect("sharded");
            let k = cols.iter().position(|c| *c == key).expect("key listed");
            let kv = text(&row[k]);
            if !keys.contains(&kv) {
                keys.push(kv);
            }
            seen.push(pk);
            rows.push(row);
        }
        if keys.len() > 1 {
            self.tag("insert:values-returning:several-keys");
        }
        if self.params {
            self.tag("insert:values-returning:extended");
        }
        let mut returning: Vec<Expr> = t.cols.iter().map(|c| col("", c.name)).collect();
        returning.shuffle(&mut self.rng);
        returning.truncate(self.rng.gen_range(1..=t.cols.len()));
        if self.p(0.2) {
            self.tag("insert:values-returning:expression");
            returning.push(lit("1"));
        }
        let target: Vec<String> = t.pk.iter().map(|c| c.to_string()).collect();
        let non_key: Vec<&str> = cols.iter().copied().filter(|c| !t.pk.contains(c)).collect();
        let on_conflict = match self.rng.gen_range(0..100) {
            0..=14 if !non_key.is_empty() => {
                self.tag("insert:values-returning:do-update");
                let c = *non_key.choose(&mut self.rng).expect("non-key");
                Some(OnConflict::Update {
                    target,
                    sets: vec![(c.to_string(), col("excluded", c))],
                    where_: None,
                })
            }
            15..=24 => {
                self.tag("insert:values-returning:do-nothing");
                Some(OnConflict::Nothing(target))
            }
            _ => None,
        };
        Insert {
            table: t.name.into(),
            cols: Some(cols.iter().map(|c| c.to_string()).collect()),
            source: InsertSource::Values(rows),
            on_conflict,
            returning,
        }
    }

    /// `INSERT INTO t (cols) SELECT ... FROM other`, keys offset by a fresh
    /// amount so they rarely collide.
    pub(super) fn insert_select(&mut self, t: &Table, cols: &[&str]) -> InsertSource {
        self.tag("insert:select");
        let src = self.any_table();
        let alias = self.next_alias("src");
        let rel = self.rel_of(src, alias.clone());
        self.fresh += 1;
        let offset = 100_000 + self.fresh * 1000;
        let items: Vec<(Expr, Option<String>)> = cols
            .iter()
            .map(|name| {
                let c = t.col(name);
                let same: Vec<&RCol> = rel.cols.iter().filter(|x| x.ty == c.ty).collect();
                let e = match (same.choose(&mut self.rng), c.ty) {
                    (Some(x), Ty::Int4 | Ty::Int8) if t.pk.contains(name) => Expr::Func(
                        "coalesce".into(),
                        vec![
                            bin(col(&alias, &x.name), "+", lit(offset.to_string())),
                            lit("0"),
                        ],
                    ),
                    (Some(x), Ty::Text) if t.pk.contains(name) => {
                        bin(col(&alias, &x.name), "||", lit(format!("'#{offset}'")))
                    }
                    (Some(x), _) if !t.pk.contains(name) => col(&alias, &x.name),
                    _ => lit(schema::pool_literal(&mut self.rng, c.pool, false)),
                };
                let e = if c.not_null && !matches!(e, Expr::Lit(_)) {
                    Expr::Func(
                        "coalesce".into(),
                        vec![e, lit(schema::pool_literal(&mut self.rng, c.pool, false))],
                    )
                } else {
                    e
                };
                (e, None)
            })
            .collect();
        let mut q = Select {
            items,
            from: vec![FromItem {
                join: None,
                source: Source::Table(src.name.into()),
                alias,
            }],
            ..Default::default()
        };
        q.where_ = Some(self.pred(&[rel], 1));
        InsertSource::Select(Box::new(q))
    }

    /// RETURNING columns, qualified by `alias` (UPDATE ... FROM and
    /// DELETE ... USING bring a second table that may share names).
    pub(super) fn returning(&mut self, t: &Table, alias: &str) -> Vec<Expr> {
        if self.p(0.3) {
            self.tag("returning");
            let mut cols: Vec<Expr> = t.cols.iter().map(|c| col(alias, c.name)).collect();
            cols.shuffle(&mut self.rng);
            cols.truncate(self.rng.gen_range(1..=t.cols.len()));
            cols
        } else {
            vec![]
        }
    }

    pub(super) fn upsert(&mut self) -> Insert {
        let mut ins = self.insert();
        if matches!(ins.source, InsertSource::Select(_)) {
            ins.source = {
                let t = self.table(&ins.table);
                let cols: Vec<&str> = match &ins.cols {
                    Some(c) => c.iter().map(|s| t.col(s).name).collect(),
                    None => t.cols.iter().map(|c| c.name).collect(),
                };
                InsertSource::Values(vec![self.row(t, &cols)])
            };
        }
        let t = self.table(&ins.table);
        let target: Vec<String> = t.pk.iter().map(|s| s.to_string()).collect();
        let rows = match &ins.source {
            InsertSource::Values(r) => r.len(),
            InsertSource::Select(_) => 2,
        };
        let non_key: Vec<&str> = t
            .cols
            .iter()
            .filter(|c| !t.pk.contains(&c.name))
            .map(|c| c.name)
            .collect();
        ins.on_conflict = Some(match self.rng.gen_range(0..100) {
            0..=34 => {
                self.tag("upsert:do-nothing");
                OnConflict::Nothing(target)
            }
            // Assigning the shard key: one row, to a fresh key.
            35..=54 if rows == 1 && t.key.is_some() => {
                self.tag("upsert:assigns-shard-key");
                let key = t.key_col().expect("key");
                let rc = RCol {
                    name: key.name.into(),
                    ty: key.ty,
                    pool: key.pool,
                    key: true,
                    not_null: true,
                };
                let v = self.fresh_key(&rc);
                OnConflict::Update {
                    target,
                    sets: vec![(key.name.into(), v)],
                    where_: None,
                }
            }
            _ if !non_key.is_empty() => {
                self.tag("upsert:do-update");
                let n = self.rng.gen_range(1..=non_key.len());
                let mut cols = non_key.clone();
                cols.shuffle(&mut self.rng);
                let sets = cols[..n]
                    .iter()
                    .map(|c| {
                        let e = if self.p(0.6) {
                            col("excluded", c)
                        } else if t.col(c).ty.is_int() {
                            Expr::Func(
                                "coalesce".into(),
                                vec![bin(col(t.name, c), "+", lit("1")), lit("0")],
                            )
                        } else {
                            lit(schema::pool_literal(&mut self.rng, t.col(c).pool, true))
                        };
                        (c.to_string(), e)
                    })
                    .collect();
                let where_ = if self.p(0.2) {
                    self.tag("upsert:where");
                    let c = t.col(non_key[0]);
                    Some(Expr::IsNull(Box::new(col(t.name, c.name)), true))
                } else {
                    None
                };
                OnConflict::Update {
                    target,
                    sets,
                    where_,
                }
            }
            _ => OnConflict::Nothing(target),
        });
        ins
    }

    pub(super) fn update(&mut self) -> Update {
        let t = self.any_table();
        let alias = self.next_alias("w");
        let rel = self.rel_of(t, alias.clone());
        // Assign the shard key of one row to a fresh key.
        if t.key.is_some() && self.p(0.12) {
            self.tag("update:assigns-shard-key");
            let key = rel.cols.iter().find(|c| c.key).expect("key").clone();
            let fresh = self.fresh_key(&key);
            let mut w: Option<Expr> = None;
            for pk in t.pk {
                let c = rel.cols.iter().find(|c| c.name == *pk).expect("pk").clone();
                let v = self.value(&c, false);
                let e = bin(col(&alias, pk), "=", v);
                w = Some(match w {
                    None => e,
                    Some(prev) => and(prev, e),
                });
            }
            let returning = self.returning(t, &alias);
            return Update {
                table: t.name.into(),
                alias,
                sets: vec![(key.name.clone(), fresh)],
                from: None,
                where_: w,
                returning,
            };
        }
        let settable: Vec<RCol> = rel
            .cols
            .iter()
            .filter(|c| !t.pk.contains(&c.name.as_str()))
            .cloned()
            .collect();
        let n = self.rng.gen_range(1..=settable.len().clamp(1, 3));
        let mut cols = settable.clone();
        cols.shuffle(&mut self.rng);
        let mut sets = Vec::new();
        for c in cols.into_iter().take(n) {
            let e = match self.rng.gen_range(0..100) {
                0..=29 if c.ty.is_int() => Expr::Func(
                    "coalesce".into(),
                    vec![bin(col(&alias, &c.name), "+", lit("1")), lit("0")],
                ),
                30..=37 if c.ty.is_int() && t.name == "fz_acct" => {
                    self.tag("update:correlated-subquery");
                    let ia = self.next_alias("it");
                    Expr::Scalar(Box::new(Select {
                        items: vec![(agg("count", false, vec![]), None)],
                        from: vec![FromItem {
                            join: None,
                            source: Source::Table("fz_item".into()),
                            alias: ia.clone(),
                        }],
                        where_: Some(bin(col(&ia, "acct_id"), "=", col(&alias, "id"))),
                        ..Default::default()
                    }))
                }
                _ => self.value(&c, !c.not_null),
            };
            sets.push((c.name.clone(), e));
        }
        let mut scope = vec![rel];
        let from = if t.cols.iter().any(|c| c.name == "code") && self.p(0.12) {
            self.tag("update:from");
            let ra = self.next_alias("r");
            scope.push(self.rel_of(self.table("fz_ref"), ra.clone()));
            Some(("fz_ref".to_string(), ra))
        } else {
            None
        };
        let mut where_ = if self.p(0.92) {
            Some(self.pred(&scope[..1], 0))
        } else {
            self.tag("update:no-where");
            None
        };
        if let Some((_, ra)) = &from {
            let j = bin(col(ra, "code"), "=", col(&alias, "code"));
            where_ = Some(match where_ {
                Some(w) => and(j, w),
                None => j,
            });
        }
        let returning = self.returning(t, &alias);
        Update {
            table: t.name.into(),
            alias,
            sets,
            from,
            where_,
            returning,
        }
    }

    pub(super) fn delete(&mut self) -> Delete {
        let t = self.any_table();
        let alias = self.next_alias("d");
        let rel = self.rel_of(t, alias.clone());
        let using = if t.cols.iter().any(|c| c.name == "code") && self.p(0.12) {
            self.tag("delete:using");
            Some(("fz_ref".to_string(), self.next_alias("r")))
        } else {
            None
        };
        let mut where_ = if self.p(0.97) {
            Some(self.pred(std::slice::from_ref(&rel), 0))
        } else {
            self.tag("delete:no-where");
            None
        };
        if let Some((_, ra)) = &using {
            let j = bin(col(ra, "code"), "=", col(&alias, "code"));
            where_ = Some(match where_ {
                Some(w) => and(j, w),
                None => j,
            });
        }
        let returning = self.returning(t, &alias);
        Delete {
            table: t.name.into(),
            alias,
            using,
            where_,
            returning,
        }
    }

    /// `WITH w AS (INSERT/UPDATE/DELETE ... RETURNING ...) SELECT ... FROM w`.
    pub(super) fn modifying_cte(&mut self) -> Stmt {
        self.tag("cte:data-modifying");
        let mut w = self.write_stmt();
        let table = match &w {
            Stmt::Insert(i) => i.table.clone(),
            Stmt::Update(u) => u.table.clone(),
            Stmt::Delete(d) => d.table.clone(),
            _ => unreachable!("write_stmt writes"),
        };
        let t = self.table(&table);
        let key = t.key.unwrap_or(t.pk[0]);
        match &mut w {
            Stmt::Insert(i) => i.returning = vec![col("", key)],
            Stmt::Update(u) => u.returning = vec![col(&u.alias, key)],
            Stmt::Delete(d) => d.returning = vec![col(&d.alias, key)],
            _ => {}
        }
        let name = self.next_alias("wcte");
        let alias = self.next_alias("m");
        let mut q = Select {
            ctes: vec![Cte {
                name: name.clone(),
                body: Box::new(w),
            }],
            from: vec![FromItem {
                join: None,
                source: Source::Table(name),
                alias: alias.clone(),
            }],
            ..Default::default()
        };
        match self.rng.gen_range(0..3) {
            0 => q.items = vec![(agg("count", false, vec![]), None)],
            1 => q.items = vec![(col(&alias, key), None)],
            _ => {
                // Join the returned keys back to another table.
                let other = self.any_table();
                let oa = self.next_alias("o");
                let orel = self.rel_of(other, oa.clone());
                let kc = t.col(key);
                let same: Vec<&RCol> = orel
                    .cols
                    .iter()
                    .filter(|c| c.ty.fam() == kc.ty.fam())
                    .collect();
                match same.choose(&mut self.rng) {
                    Some(oc) => {
                        self.tag("cte:data-modifying-joined");
                        q.from.push(FromItem {
                            join: Some((
                                JoinKind::Left,
                                bin(col(&alias, key), "=", col(&oa, &oc.name)),
                            )),
                            source: Source::Table(other.name.into()),
                            alias: oa.clone(),
                        });
                        q.items = vec![
                            (col(&alias, key), None),
                            (agg("count", false, vec![col(&oa, &oc.name)]), None),
                        ];
                        q.group_by = vec![col(&alias, key)];
                    }
                    None => q.items = vec![(agg("count", false, vec![]), None)],
                }
            }
        }
        Stmt::Select(q)
    }
}

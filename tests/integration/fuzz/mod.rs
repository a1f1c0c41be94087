//! Differential SQL fuzzer (DESIGN §10): random, valid statements from a
//! seeded generator run through the proxy in front of a private 3-shard
//! cluster and on one plain PostgreSQL database (the oracle, database
//! `fuzz_oracle` on shard 0's primary) holding the same data; answers,
//! errors and effects must agree.
//!
//! - `gen` writes units: single statements (SELECTs with joins,
//!   subqueries, CTEs, aggregates; INSERT/UPDATE/DELETE/upserts),
//!   multi-statement query strings, explicit transactions, TLP and NoREC
//!   groups, unusual syntax and DDL; in the simple protocol or the
//!   extended one with text and binary parameters of many types.
//! - `exec` runs a step and records the answer; `compare` compares the
//!   two sides, telling refusals (0A000 and other errors the proxy raises
//!   itself: counted by reason, not differences) from wrong answers.
//! - `effects` checks after every write that each row is on the shard the
//!   shardwire library says it belongs on, reference tables everywhere,
//!   unsharded tables on the default shard, and that the union equals the
//!   oracle; after a difference it restores both sides from the last
//!   agreed snapshot, so one bug is reported once.
//! - `shrink` makes a smaller reproduction of each difference (in fresh
//!   sessions; with the unit before when the difference came from what
//!   that unit left in the session).
//!
//! Units run one after another in the same two sessions (the proxy's and
//! the oracle's) until a difference, after which both start afresh.
//!
//! `seeded_run_matches_one_database` is the fixed-seed run of the test
//! suite; `long_run` (ignored; `scripts/fuzz-sql.sh --minutes N [--seed S]`)
//! runs the same fuzzer for longer. Both write the whole report to
//! `target/tmp/fuzz-sql-seed<S>.txt`.

mod compare;
mod effects;
mod exec;
mod gen;
mod schema;
mod shrink;
mod sql;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use shardwire::router::Router;
use tokio_postgres::Client;

use crate::common::*;
use compare::{Class, Problem};
use effects::Snapshot;
use exec::Outcome;
use gen::{Check, Gen, Unit};
use schema::Table;
use sql::{Step, Stmt, TxCmd};

/// How long and how hard to fuzz.
struct Settings {
    seed: u64,
    /// Stop after this many units...
    units: Option<u64>,
    /// ...or after this long.
    time: Option<Duration>,
    /// Effects are checked after every unit that may write, and after
    /// every `check_every` units anyway.
    check_every: u64,
    /// Shrink attempts per difference, and in the whole run.
    shrink_per_diff: usize,
    shrink_total: usize,
    /// At most this share of the run's time goes to shrinking (a timed
    /// run; the seeded run is bounded by attempts, so it stays
    /// deterministic).
    shrink_share: Option<f64>,
}

/// Refused statements by normalized reason.
type Refusals = BTreeMap<String, u64>;

struct Difference {
    unit_no: u64,
    unit: Unit,
    problems: Vec<Problem>,
    transcript: String,
    shrunk: Option<Shrunk>,
}

struct Shrunk {
    unit: Unit,
    /// Empty when nothing reproduced the difference.
    problems: Vec<Problem>,
    attempts: usize,
    /// How the shrinking started (or why it could not).
    note: &'static str,
}

struct Report {
    seed: u64,
    units: u64,
    statements: u64,
    /// Time spent running units (setup and shrinking excluded).
    fuzz_time: Duration,
    shrink_time: Duration,
    refusals: Refusals,
    invalid_sql: Refusals,
    invalid_example: BTreeMap<String, String>,
    /// The first statement refused for each reason.
    refusal_example: BTreeMap<String, String>,
    diffs: Vec<Difference>,
    /// Set when the run had to stop early (the proxy went away).
    aborted: Option<String>,
    /// Units generated with each tag (what the run exercised).
    tags: BTreeMap<String, u64>,
}

/// Units before a difference replayed when it does not reproduce alone.
const HISTORY: usize = 8;

/// Units run in the test suite's seeded run. About 1.7 statements a unit.
const SEED_UNITS: u64 = 1600;

#[test]
fn seeded_run_matches_one_database() {
    let report = fuzz(Settings {
        seed: 20_250_101,
        units: Some(SEED_UNITS),
        time: None,
        check_every: 20,
        shrink_per_diff: 20,
        shrink_total: 300,
        shrink_share: None,
    });
    // Every difference in detail: the list is the point of a failure.
    let text = report.render(usize::MAX);
    eprintln!("{}", report.headline());
    assert!(
        report.diffs.is_empty() && report.aborted.is_none(),
        "the proxy and one database disagree:\n{text}"
    );
}

/// `scripts/fuzz-sql.sh --minutes N [--seed S]`: FUZZ_MINUTES, FUZZ_SEED.
#[test]
#[ignore = "long fuzzing run: scripts/fuzz-sql.sh"]
fn long_run() {
    let minutes: f64 = std::env::var("FUZZ_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let report = fuzz(Settings {
        seed,
        units: None,
        time: Some(Duration::from_secs_f64(minutes * 60.0)),
        check_every: 20,
        shrink_per_diff: 60,
        shrink_total: usize::MAX,
        shrink_share: Some(0.5),
    });
    // The file has everything; the failure message the first differences.
    let text = report.render(20);
    eprintln!("{}", report.headline());
    assert!(
        report.diffs.is_empty() && report.aborted.is_none(),
        "the proxy and one database disagree:\n{text}"
    );
}

fn fuzz(settings: Settings) -> Report {
    let private = PrivateCluster::start(&["--shards", "3", "--replicas", "0"]);
    private.run(
        "psql",
        &[
            "--shard",
            "s0",
            "-c",
            "create database fuzz_oracle owner app",
        ],
    );
    let proxy = TestProxy::start_on(&private.0, |c| {
        set_tables(c, schema::TABLES_TOML);
        add_fast_user(c);
    });
    let config = shardwire::config::Config::load(&proxy.config_path).expect("config");
    let ports: Vec<u16> = config
        .shards
        .iter()
        .map(|s| {
            s.servers
                .iter()
                .find(|v| v.role == shardwire::config::Role::Primary)
                .expect("a primary")
                .port
        })
        .collect();
    let shard_urls: Vec<String> = ports
        .iter()
        .map(|p| format!("postgres://app:app@127.0.0.1:{p}/app"))
        .collect();
    let oracle_url = format!("postgres://app:app@127.0.0.1:{}/fuzz_oracle", ports[0]);
    let limit = settings.time.unwrap_or(Duration::from_secs(600)) + Duration::from_secs(600);
    let tables = schema::tables();
    let report = block_on(limit, async {
        let mut f = Fuzzer {
            tables: &tables,
            router: &config.router,
            default_shard: config.default_shard,
            shard_names: config.shards.iter().map(|s| s.name.clone()).collect(),
            proxy_cfg: proxy.pg_config("fast", "fast"),
            proxy: connect(&proxy.pg_config("fast", "fast")).await.0,
            oracle: connect_url(&oracle_url).await.0,
            reader: connect_url(&oracle_url).await.0,
            oracle_url: oracle_url.clone(),
            shards: {
                let mut v = Vec::new();
                for u in &shard_urls {
                    v.push(connect_url(u).await.0);
                }
                v
            },
            snapshot: Snapshot::default(),
            refusals: Refusals::new(),
            invalid_sql: Refusals::new(),
            invalid_example: BTreeMap::new(),
            refusal_example: BTreeMap::new(),
            counting: true,
        };
        f.setup(settings.seed).await;
        f.run(&settings).await
    });
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-sql-seed{}.txt", report.seed));
    let _ = std::fs::write(&path, report.render(usize::MAX));
    eprintln!("fuzz report: {}", path.display());
    report
}

struct Fuzzer<'a> {
    tables: &'a [Table],
    router: &'a Router,
    default_shard: usize,
    shard_names: Vec<String>,
    proxy_cfg: tokio_postgres::Config,
    oracle_url: String,
    /// The sessions statements run in.
    proxy: Client,
    oracle: Client,
    /// Reads and restores the oracle's tables: a connection of its own, so
    /// a session left in a transaction (or an aborted one) cannot hide or
    /// block them.
    reader: Client,
    /// Direct connections to each shard's primary (database app), for
    /// reading and restoring only.
    shards: Vec<Client>,
    /// The contents every side agrees on (checked last).
    snapshot: Snapshot,
    refusals: Refusals,
    /// Statements the oracle rejected as invalid SQL (class 42), by
    /// reason: the generator's mistakes, which make a run weaker.
    invalid_sql: Refusals,
    /// The first statement of each of those reasons.
    invalid_example: BTreeMap<String, String>,
    /// The first statement refused for each reason.
    refusal_example: BTreeMap<String, String>,
    /// Refusals are counted only while fuzzing, not while shrinking.
    counting: bool,
}

/// What running a unit produced.
struct UnitRun {
    problems: Vec<Problem>,
    /// Errors of class 42 (syntax, undefined or ambiguous names, type
    /// mismatches) on either side: the generator writes valid SQL, so a
    /// shrunk candidate with more of them than the original is broken SQL,
    /// not a smaller reproduction.
    invalid: usize,
    transcript: String,
    /// The proxy's answers, for the metamorphic checks.
    answers: Vec<Outcome>,
}

/// Run on the oracle in place of a statement the proxy refused inside a
/// transaction: the proxy must leave the transaction aborted, as a server
/// error would, so the oracle's transaction is aborted the same way.
const ABORT_MARKER: &str = "select 'shardwire fuzz: the proxy refused this statement'::int";

impl Fuzzer<'_> {
    /// Tables created directly on every shard and the oracle (not through
    /// the proxy: setup must not depend on what is being tested), the
    /// initial rows loaded into the oracle, then distributed.
    async fn setup(&mut self, seed: u64) {
        let ddl = schema::ddl(self.tables);
        for c in self.shards.iter().chain(std::iter::once(&self.reader)) {
            within(60, "create the fuzz tables", c.batch_execute(&ddl))
                .await
                .expect("create the fuzz tables");
        }
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        for sql in schema::initial_inserts(self.tables, &mut rng) {
            within(60, "load the oracle", self.reader.batch_execute(&sql))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let snap = effects::fetch(&self.reader, self.tables)
            .await
            .expect("read the oracle");
        self.restore(&snap).await.expect("load the shards");
        let (_, problems) = self.effects().await.expect("read the shards");
        assert!(problems.is_empty(), "setup: {problems:?}");
        self.snapshot = snap;
    }

    async fn restore(&self, snap: &Snapshot) -> Result<(), String> {
        effects::restore(
            &self.reader,
            &self.shards,
            snap,
            self.router,
            self.tables,
            self.default_shard,
        )
        .await
    }

    /// The oracle's contents and what is wrong with the shards'.
    async fn effects(&self) -> Result<(Snapshot, Vec<String>), String> {
        let reads = std::iter::once(&self.reader)
            .chain(&self.shards)
            .map(|c| effects::fetch(c, self.tables));
        let mut all = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let actual = all.split_off(1);
        let oracle = all.pop().expect("the oracle's snapshot");
        let problems = effects::check(
            &oracle,
            &actual,
            self.router,
            self.tables,
            self.default_shard,
            &self.shard_names,
        );
        Ok((oracle, problems))
    }

    /// Fresh sessions on both sides: whatever a difference left behind
    /// (an open transaction, a broken protocol state) is gone.
    async fn reconnect(&mut self) -> Result<(), String> {
        let p = try_connect(&self.proxy_cfg)
            .await
            .map_err(|e| format!("cannot reconnect to the proxy: {e}"))?;
        let o = try_connect(&self.oracle_url.parse().expect("oracle URL"))
            .await
            .map_err(|e| format!("cannot reconnect to the oracle: {e}"))?;
        self.proxy = p.0;
        self.oracle = o.0;
        Ok(())
    }

    /// Both sides back to `snap`, with fresh sessions.
    async fn resync(&mut self, snap: &Snapshot) -> Result<(), String> {
        self.reconnect().await?;
        self.restore(snap).await?;
        self.snapshot = snap.clone();
        Ok(())
    }

    async fn run(&mut self, s: &Settings) -> Report {
        let mut gen = Gen::new(s.seed, self.tables);
        let mut report = Report {
            seed: s.seed,
            units: 0,
            statements: 0,
            fuzz_time: Duration::ZERO,
            shrink_time: Duration::ZERO,
            refusals: Refusals::new(),
            invalid_sql: Refusals::new(),
            invalid_example: BTreeMap::new(),
            refusal_example: BTreeMap::new(),
            diffs: Vec::new(),
            aborted: None,
            tags: BTreeMap::new(),
        };
        let started = Instant::now();
        let mut shrink_left = s.shrink_total;
        // The units before (each with the contents before it) that ran in
        // the sessions the current unit runs in: a difference may need
        // what they left there. The last HISTORY of them.
        let mut history: VecDeque<(Unit, Snapshot)> = VecDeque::new();
        loop {
            if s.units.is_some_and(|n| report.units >= n)
                || s.time.is_some_and(|t| started.elapsed() >= t)
            {
                break;
            }
            // A generator bug must not lose the report of a long run.
            let unit = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gen.unit())) {
                Ok(u) => u,
                Err(e) => {
                    let what = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    report.aborted = Some(format!("the generator panicked: {what}"));
                    break;
                }
            };
            report.units += 1;
            report.statements += unit.statements() as u64;
            for t in &unit.tags {
                *report.tags.entry(t.clone()).or_default() += 1;
            }
            let before = self.snapshot.clone();
            let mut run = self.run_unit(&unit).await;
            if unit.writes() || report.units % s.check_every == 0 || !run.problems.is_empty() {
                self.check_effects(&mut run.problems).await;
            }
            if run.problems.is_empty() {
                // The next unit continues these sessions.
                history.push_back((unit, before));
                if history.len() > HISTORY {
                    history.pop_front();
                }
                continue;
            }
            let mut diff = Difference {
                unit_no: report.units,
                unit: unit.clone(),
                problems: run.problems,
                transcript: run.transcript,
                shrunk: None,
            };
            let class = diff.problems[0].class;
            let shape = diff.problems[0].shape.clone();
            let share_left = s.shrink_share.is_none_or(|f| {
                report.shrink_time.as_secs_f64() <= f * started.elapsed().as_secs_f64()
            });
            if shrink_left > 0 && share_left && class != Class::Hang && unit.check == Check::None {
                let t0 = Instant::now();
                let budget = s.shrink_per_diff.min(shrink_left);
                diff.shrunk = self
                    .shrink(&unit, &before, &history, &shape, budget, run.invalid)
                    .await;
                let used = diff.shrunk.as_ref().map_or(budget, |x| x.attempts);
                shrink_left = shrink_left.saturating_sub(used);
                report.shrink_time += t0.elapsed();
            }
            report.diffs.push(diff);
            // Fresh sessions from here on.
            history.clear();
            if let Err(e) = self.resync(&before).await {
                // One more try after a pause (a hung statement may still
                // hold locks), then give up on this run.
                tokio::time::sleep(Duration::from_secs(2)).await;
                if let Err(e2) = self.resync(&before).await {
                    report.aborted = Some(format!("{e}; then {e2}"));
                    break;
                }
            }
        }
        // A last look at the effects.
        let mut last = Vec::new();
        self.check_effects(&mut last).await;
        if !last.is_empty() {
            report.diffs.push(Difference {
                unit_no: report.units,
                unit: Unit {
                    kind: "final check",
                    steps: vec![],
                    tags: Default::default(),
                    check: Check::None,
                },
                problems: last,
                transcript: String::new(),
                shrunk: None,
            });
        }
        report.fuzz_time = started.elapsed().saturating_sub(report.shrink_time);
        report.refusals = std::mem::take(&mut self.refusals);
        report.invalid_sql = std::mem::take(&mut self.invalid_sql);
        report.invalid_example = std::mem::take(&mut self.invalid_example);
        report.refusal_example = std::mem::take(&mut self.refusal_example);
        report
    }

    async fn check_effects(&mut self, problems: &mut Vec<Problem>) {
        match self.effects().await {
            Ok((snap, p)) if p.is_empty() => self.snapshot = snap,
            Ok((_, p)) => {
                problems.extend(p.into_iter().map(|text| Problem::new(Class::Effects, text)))
            }
            Err(e) => problems.push(Problem::new(
                Class::Hang,
                format!("cannot read the shards or the oracle: {e}"),
            )),
        }
    }

    fn note_invalid(&mut self, o: &Outcome, step: &Step) {
        if let Some(e) = o
            .err()
            .filter(|e| e.code.starts_with("42") && self.counting)
        {
            let reason = compare::reason(e);
            self.invalid_example
                .entry(reason.clone())
                .or_insert_with(|| step.describe());
            *self.invalid_sql.entry(reason).or_default() += 1;
        }
    }

    fn refused(&mut self, reason: String, step: &Step) {
        if self.counting {
            self.refusal_example
                .entry(reason.clone())
                .or_insert_with(|| step.describe());
            *self.refusals.entry(reason).or_default() += 1;
        }
    }

    async fn run_unit(&mut self, u: &Unit) -> UnitRun {
        let mut run = UnitRun {
            problems: Vec::new(),
            invalid: 0,
            transcript: String::new(),
            answers: Vec::new(),
        };
        let mut in_tx = false;
        let mut loose_tx = false;
        for (i, step) in u.steps.iter().enumerate() {
            let n = i + 1;
            let p = exec::run_step(&self.proxy, step).await;
            run.invalid += invalid(&p);
            let tx = step.tx();
            let _ = writeln!(run.transcript, "  step {n}: {}", step.describe());
            let refusal = p.err().filter(|e| compare::is_refusal(e)).cloned();
            let refused = refusal.is_some();
            if let Some(e) = refusal {
                let mut note = "refused by the proxy (not a difference)";
                if !step.writes() && tx.is_none() {
                    // A read: does one database refuse it too?
                    let o = exec::run_step(&self.oracle, step).await;
                    run.invalid += invalid(&o);
                    self.note_invalid(&o, step);
                    if o.err().map(|x| &x.code) == Some(&e.code) {
                        note = "failed on both sides with the same SQLSTATE";
                    } else {
                        self.refused(compare::reason(&e), step);
                        if in_tx && matches!(o, Outcome::Ok(_)) {
                            quietly(&self.oracle, ABORT_MARKER).await;
                        }
                    }
                    let _ = writeln!(
                        run.transcript,
                        "      proxy:  {}\n      oracle: {}\n      ({note})",
                        compare::summary(&p),
                        compare::summary(&o)
                    );
                } else {
                    // A write: would one database fail the same way? Ask it
                    // inside a transaction (or savepoint) that is rolled
                    // back, so its data stays as the proxy's. Not for a
                    // string with its own BEGIN/COMMIT, which would commit.
                    let probe = !step.stmts.iter().any(|s| matches!(s, Stmt::Tx(..)));
                    let mut same = false;
                    let mut oracle = "not run".to_string();
                    if probe {
                        let (open, close) = if in_tx {
                            ("savepoint fuzz_probe", "rollback to savepoint fuzz_probe")
                        } else {
                            ("begin", "rollback")
                        };
                        quietly(&self.oracle, open).await;
                        let o = exec::run_step(&self.oracle, step).await;
                        quietly(&self.oracle, close).await;
                        same = o.err().map(|x| &x.code) == Some(&e.code);
                        oracle = format!("{}, rolled back", compare::summary(&o));
                    }
                    if same {
                        note = "failed on both sides with the same SQLSTATE";
                    } else {
                        self.refused(compare::reason(&e), step);
                    }
                    match tx {
                        Some(TxCmd::Commit | TxCmd::Rollback) => {
                            quietly(&self.oracle, "rollback").await;
                            in_tx = false;
                        }
                        // Not begun on the oracle either.
                        Some(TxCmd::Begin) => {}
                        _ if in_tx => quietly(&self.oracle, ABORT_MARKER).await,
                        _ => {}
                    }
                    let _ = writeln!(
                        run.transcript,
                        "      proxy:  {}\n      oracle: {oracle} ({note})",
                        compare::summary(&p)
                    );
                }
            } else {
                let o = exec::run_step(&self.oracle, step).await;
                run.invalid += invalid(&o);
                self.note_invalid(&o, step);
                let _ = writeln!(
                    run.transcript,
                    "      proxy:  {}\n      oracle: {}",
                    compare::summary(&p),
                    compare::summary(&o)
                );
                if let Some(mut pr) = compare::compare(step, &p, &o) {
                    pr.text = format!("step {n}: {}", pr.text);
                    run.problems.push(pr);
                }
            }
            let begins = step
                .stmts
                .iter()
                .any(|s| matches!(s, Stmt::Tx(TxCmd::Begin, _)));
            if begins && p.err().is_some() {
                // `BEGIN; ...; COMMIT` in one string that failed half-way
                // leaves its transaction open (aborted) on the server.
                loose_tx = true;
            }
            if !refused {
                // BEGIN and COMMIT may also sit inside a query string.
                for s in &step.stmts {
                    match s {
                        Stmt::Tx(TxCmd::Begin, _) => in_tx = true,
                        Stmt::Tx(TxCmd::Commit | TxCmd::Rollback, _) => in_tx = false,
                        _ => {}
                    }
                }
            } else if matches!(tx, Some(TxCmd::Commit | TxCmd::Rollback)) {
                in_tx = false;
            }
            let broken = matches!(p, Outcome::Timeout | Outcome::Lost(_));
            run.answers.push(p);
            if broken {
                break;
            }
        }
        if in_tx || loose_tx {
            // A unit cut short (or shrunk) inside a transaction: end it on
            // both sides, so the next unit starts outside one.
            quietly(&self.proxy, "rollback").await;
            quietly(&self.oracle, "rollback").await;
        }
        if run.problems.is_empty() {
            if let Some(p) = metamorphic(u, &run.answers) {
                run.problems.push(p);
            }
        }
        run
    }

    /// Greedy shrinking: take the first smaller variant that still shows a
    /// problem of the same class, until none does or the budget is spent.
    /// It starts from the unit alone in fresh sessions; when that does not
    /// reproduce (the unit failed because of what the sessions carried
    /// over), from the unit before and this one together, then from all
    /// units of `history` and this one.
    async fn shrink(
        &mut self,
        unit: &Unit,
        before: &Snapshot,
        history: &VecDeque<(Unit, Snapshot)>,
        shape: &str,
        budget: usize,
        invalid_before: usize,
    ) -> Option<Shrunk> {
        self.counting = false;
        let mut attempts = 1;
        let mut start = None;
        if let Some(p) = self.reproduce(unit, before, shape, invalid_before).await {
            start = Some((unit.clone(), before.clone(), p, "from the unit alone"));
        }
        let windows = [
            (
                1,
                "only together with the unit before it, whose sessions it continued",
            ),
            (
                HISTORY,
                "only together with the units before it, whose sessions it continued",
            ),
        ];
        for (n, note) in windows {
            if start.is_some() || attempts >= budget || history.len() < n.min(2) {
                break;
            }
            let from = history.len().saturating_sub(n);
            attempts += 1;
            let mut joined = Unit {
                kind: unit.kind,
                steps: Vec::new(),
                tags: unit.tags.clone(),
                check: Check::None,
            };
            for (u, _) in history.iter().skip(from) {
                joined.steps.extend(u.steps.iter().cloned());
                joined.tags.extend(u.tags.iter().cloned());
            }
            joined.steps.extend(unit.steps.iter().cloned());
            let base = &history[from].1;
            if let Some(p) = self.reproduce(&joined, base, shape, invalid_before).await {
                start = Some((joined, base.clone(), p, note));
            }
        }
        let Some((mut cur, base, mut found, note)) = start else {
            self.counting = true;
            return Some(Shrunk {
                unit: unit.clone(),
                problems: Vec::new(),
                attempts,
                note: "did not reproduce in fresh sessions, alone or after the units before it",
            });
        };
        'outer: loop {
            for cand in shrink::candidates(&cur) {
                if attempts >= budget {
                    break 'outer;
                }
                attempts += 1;
                if let Some(p) = self.reproduce(&cand, &base, shape, invalid_before).await {
                    cur = cand;
                    found = p;
                    continue 'outer;
                }
            }
            break;
        }
        self.counting = true;
        Some(Shrunk {
            unit: cur,
            problems: found,
            attempts,
            note,
        })
    }

    /// Runs `u` in fresh sessions from `before`; its problems when one has
    /// `shape` (and the SQL is no more broken than the original's).
    async fn reproduce(
        &mut self,
        u: &Unit,
        before: &Snapshot,
        shape: &str,
        invalid_before: usize,
    ) -> Option<Vec<Problem>> {
        // Broken SQL is no smaller reproduction (inside an aborted
        // transaction the oracle would not even say so).
        for step in &u.steps {
            if !exec::valid(&self.reader, step).await {
                return None;
            }
        }
        // A read-only unit changed nothing: fresh sessions suffice.
        let ready = if u.writes() {
            self.resync(before).await
        } else {
            self.reconnect().await
        };
        ready.ok()?;
        let mut run = self.run_unit(u).await;
        if u.writes() {
            self.check_effects(&mut run.problems).await;
        }
        (run.invalid <= invalid_before && run.problems.iter().any(|p| p.shape == shape))
            .then_some(run.problems)
    }
}

fn invalid(o: &Outcome) -> usize {
    o.err().is_some_and(|e| e.code.starts_with("42")) as usize
}

/// Runs `sql` for its side effect on the session, ignoring the answer.
async fn quietly(c: &Client, sql: &str) {
    let _ = tokio::time::timeout(exec::STEP_TIMEOUT, c.simple_query(sql)).await;
}

/// TLP: the rows of Q are the rows of Q where P, NOT P, P IS NULL.
/// NoREC: count(*) where P equals the sum of (P ? 1 : 0). Only when the
/// proxy answered every step (a refusal skips the check).
fn metamorphic(u: &Unit, answers: &[Outcome]) -> Option<Problem> {
    match u.check {
        Check::None => None,
        Check::Tlp => {
            let rows: Vec<_> = answers.iter().map(compare::rows_of).collect();
            if rows.len() != 4 || rows.iter().any(Option::is_none) {
                return None;
            }
            let all = rows[0].clone().expect("checked");
            let mut parts: Vec<_> = rows[1..]
                .iter()
                .flat_map(|r| r.clone().expect("checked"))
                .collect();
            parts.sort();
            (all != parts).then(|| Problem::new(Class::Metamorphic, format!(
                    "TLP through the proxy: step 1 has {} rows, steps 2-4 together {}: {} vs {} + {} + {}",
                    all.len(),
                    parts.len(),
                    compare::describe_rows(&answers[0]),
                    compare::describe_rows(&answers[1]),
                    compare::describe_rows(&answers[2]),
                    compare::describe_rows(&answers[3]),
                )))
        }
        Check::NoRec => {
            let a = answers.first().and_then(compare::number_of)?;
            let b = answers.get(1).and_then(compare::number_of)?;
            (a != b).then(|| Problem::new(Class::Metamorphic, format!("NoREC through the proxy: count(*) where P = {a}, sum(case when P then 1 else 0 end) = {b}")))
        }
    }
}

impl Report {
    fn headline(&self) -> String {
        let secs = self.fuzz_time.as_secs_f64();
        format!(
            "fuzz-sql seed {}: {} units, {} statements in {:.1}s ({:.0} statements/s; shrinking {:.1}s), {} refusals, {} differences{}",
            self.seed,
            self.units,
            self.statements,
            secs,
            self.statements as f64 / secs.max(0.001),
            self.shrink_time.as_secs_f64(),
            self.refusals.values().sum::<u64>(),
            self.diffs.len(),
            self.aborted
                .as_ref()
                .map(|a| format!(" (stopped early: {a})"))
                .unwrap_or_default()
        )
    }

    /// The report: headline, refusals by reason, then the differences
    /// (`detailed` of them with transcripts, the rest one line each).
    fn render(&self, detailed: usize) -> String {
        let mut s = format!("{}\n", self.headline());
        let mut refusals: Vec<(&String, &u64)> = self.refusals.iter().collect();
        refusals.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(s, "\nrefusals by reason (count  SQLSTATE: message):");
        for (r, n) in refusals {
            let _ = writeln!(s, "  {n:6}  {r}");
            if let Some(x) = self.refusal_example.get(r) {
                let _ = writeln!(s, "          e.g. {}", shorten(x, 400));
            }
        }
        if !self.invalid_sql.is_empty() {
            let _ = writeln!(
                s,
                "\nstatements the oracle rejected as invalid SQL (generator mistakes):"
            );
            for (r, n) in &self.invalid_sql {
                let _ = writeln!(s, "  {n:6}  {r}");
                if let Some(x) = self.invalid_example.get(r) {
                    let _ = writeln!(s, "          e.g. {}", shorten(x, 600));
                }
            }
        }
        let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &self.diffs {
            *by_class.entry(d.problems[0].class.name()).or_default() += 1;
        }
        let _ = writeln!(s, "\ndifferences by class: {by_class:?}");
        for (i, d) in self.diffs.iter().enumerate() {
            let first = d.problems[0].text.lines().next().unwrap_or_default();
            if i >= detailed {
                let _ = writeln!(
                    s,
                    "\n#{} unit {} ({}): {}: {}",
                    i + 1,
                    d.unit_no,
                    d.unit.kind,
                    d.problems[0].class.name(),
                    shorten(first, 300)
                );
                continue;
            }
            let _ = writeln!(
                s,
                "\n#{} unit {} ({}) {}\n  tags: {}",
                i + 1,
                d.unit_no,
                d.unit.kind,
                d.problems[0].class.name(),
                d.unit.tags.iter().cloned().collect::<Vec<_>>().join(" ")
            );
            s.push_str(&d.transcript);
            for p in &d.problems {
                let _ = writeln!(s, "  PROBLEM ({}): {}", p.class.name(), p.text);
            }
            if let Some(sh) = d.shrunk.as_ref().filter(|sh| sh.problems.is_empty()) {
                let _ = writeln!(s, "  NOT SHRUNK: {} ({} attempts)", sh.note, sh.attempts);
            }
            if let Some(sh) = d.shrunk.as_ref().filter(|sh| !sh.problems.is_empty()) {
                let _ = writeln!(
                    s,
                    "  SHRUNK ({} attempts; reproduced {}) to:",
                    sh.attempts, sh.note
                );
                for (k, step) in sh.unit.steps.iter().enumerate() {
                    let _ = writeln!(s, "    step {}: {}", k + 1, step.describe());
                }
                for p in &sh.problems {
                    let _ = writeln!(s, "    PROBLEM ({}): {}", p.class.name(), p.text);
                }
            }
        }
        let _ = writeln!(s, "\nunits by tag (count  tag):");
        for (t, n) in &self.tags {
            let _ = writeln!(s, "  {n:6}  {t}");
        }
        s
    }
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

//! The fuzzer's schema: ten tables covering every placement the proxy
//! knows (hash on int, text and uuid keys, range on int and text keys, geo,
//! reference, and a table the config does not name, which lives on the
//! default shard), with co-located and non-co-located pairs; the
//! `[[tables]]` rules that declare them; the value pools the generator
//! draws from; and the initial rows.
//!
//! Text columns are `collate "C"`: the proxy merges text in byte order and
//! refuses other collations, and we want the generator's ORDER BYs to test
//! the merge rather than be refused. Numerics have a fixed scale so equal
//! values print equally (`1.0` vs `1.00` would be a false difference).
//! Defaults are constants: a sequence default would differ per shard by
//! design.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// Column types the generator understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Int4,
    Int8,
    Text,
    Numeric,
    Uuid,
}

/// Types that compare with each other without casts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    Num,
    Text,
    Uuid,
}

impl Ty {
    pub fn fam(self) -> Fam {
        match self {
            Ty::Int4 | Ty::Int8 | Ty::Numeric => Fam::Num,
            Ty::Text => Fam::Text,
            Ty::Uuid => Fam::Uuid,
        }
    }

    pub fn is_int(self) -> bool {
        matches!(self, Ty::Int4 | Ty::Int8)
    }
}

/// Where a column's values come from (so keys collide, joins match and
/// codes find their reference rows often enough to be interesting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Integer shard keys, -15..=140: spans every range shard.
    IntKey,
    /// Words, for text keys (hash and range).
    Word,
    /// A fixed list of uuids.
    Uuid,
    /// Region names, some configured, some not (default shard), one in
    /// upper case (the proxy ignores ASCII case).
    Region,
    /// Small integers with NULLs.
    Small,
    /// Codes of the reference table (0..=9) and a few without a row.
    Code,
    /// 1..=4, the second part of a composite primary key.
    Seq,
    /// Short texts with NULLs.
    Text,
    /// numeric(10,2) values with NULLs.
    Num,
}

pub struct Col {
    pub name: &'static str,
    pub ty: Ty,
    pub pool: Pool,
    pub not_null: bool,
    /// Has a constant DEFAULT (so INSERTs may leave it out or say DEFAULT).
    pub default: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hash,
    Range,
    Geo,
    Reference,
    /// Not in the config: lives on the default shard.
    Unsharded,
}

pub struct Table {
    pub name: &'static str,
    pub kind: Kind,
    /// The shard key (sharded tables only).
    pub key: Option<&'static str>,
    pub cols: Vec<Col>,
    pub pk: &'static [&'static str],
    /// Tables with equal groups are placed identically (co-located).
    pub coloc: Option<&'static str>,
}

impl Table {
    pub fn col(&self, name: &str) -> &Col {
        self.cols
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{}.{name}", self.name))
    }

    pub fn key_col(&self) -> Option<&Col> {
        self.key.map(|k| self.col(k))
    }

    pub fn is_sharded(&self) -> bool {
        matches!(self.kind, Kind::Hash | Kind::Range | Kind::Geo)
    }
}

fn c(name: &'static str, ty: Ty, pool: Pool) -> Col {
    Col {
        name,
        ty,
        pool,
        not_null: false,
        default: false,
    }
}

fn nn(name: &'static str, ty: Ty, pool: Pool) -> Col {
    Col {
        not_null: true,
        ..c(name, ty, pool)
    }
}

fn d(name: &'static str, ty: Ty, pool: Pool) -> Col {
    Col {
        default: true,
        ..c(name, ty, pool)
    }
}

pub fn tables() -> Vec<Table> {
    use Pool as P;
    use Ty::*;
    vec![
        Table {
            name: "fz_acct",
            kind: Kind::Hash,
            key: Some("id"),
            cols: vec![
                nn("id", Int8, P::IntKey),
                d("v", Int4, P::Small),
                d("t", Text, P::Text),
                c("n", Numeric, P::Num),
                c("code", Int4, P::Code),
            ],
            pk: &["id"],
            coloc: Some("hash"),
        },
        Table {
            name: "fz_item",
            kind: Kind::Hash,
            key: Some("acct_id"),
            cols: vec![
                nn("acct_id", Int4, P::IntKey),
                nn("seq", Int4, P::Seq),
                d("qty", Int4, P::Small),
                c("note", Text, P::Text),
            ],
            pk: &["acct_id", "seq"],
            coloc: Some("hash"),
        },
        Table {
            name: "fz_tag",
            kind: Kind::Hash,
            key: Some("name"),
            cols: vec![
                nn("name", Text, P::Word),
                c("v", Int4, P::Small),
                c("acct", Int8, P::IntKey),
            ],
            pk: &["name"],
            coloc: Some("hash-text"),
        },
        Table {
            name: "fz_dev",
            kind: Kind::Hash,
            key: Some("u"),
            cols: vec![
                nn("u", Uuid, P::Uuid),
                c("v", Int4, P::Small),
                c("t", Text, P::Text),
                c("acct", Int8, P::IntKey),
            ],
            pk: &["u"],
            coloc: Some("hash-uuid"),
        },
        Table {
            name: "fz_far",
            kind: Kind::Hash,
            key: Some("id"),
            cols: vec![
                nn("id", Int4, P::IntKey),
                c("v", Int4, P::Small),
                c("t", Text, P::Text),
            ],
            pk: &["id"],
            coloc: Some("hash64"),
        },
        Table {
            name: "fz_ev",
            kind: Kind::Range,
            key: Some("id"),
            cols: vec![
                nn("id", Int4, P::IntKey),
                d("v", Int4, P::Small),
                c("t", Text, P::Text),
                c("n", Numeric, P::Num),
            ],
            pk: &["id"],
            coloc: Some("range-int"),
        },
        Table {
            name: "fz_word",
            kind: Kind::Range,
            key: Some("w"),
            cols: vec![
                nn("w", Text, P::Word),
                c("v", Int4, P::Small),
                c("code", Int4, P::Code),
            ],
            pk: &["w"],
            coloc: Some("range-text"),
        },
        Table {
            name: "fz_geo",
            kind: Kind::Geo,
            key: Some("region"),
            cols: vec![
                nn("region", Text, P::Region),
                nn("id", Int4, P::IntKey),
                c("v", Int4, P::Small),
                c("t", Text, P::Text),
            ],
            pk: &["region", "id"],
            coloc: Some("geo"),
        },
        Table {
            name: "fz_ref",
            kind: Kind::Reference,
            key: None,
            cols: vec![nn("code", Int4, P::Code), c("label", Text, P::Text)],
            pk: &["code"],
            coloc: None,
        },
        Table {
            name: "fz_plain",
            kind: Kind::Unsharded,
            key: None,
            cols: vec![
                nn("id", Int4, P::IntKey),
                d("v", Int4, P::Small),
                c("t", Text, P::Text),
                c("code", Int4, P::Code),
            ],
            pk: &["id"],
            coloc: None,
        },
    ]
}

/// The routing rules for a 3-shard cluster (s0, s1, s2); `fz_plain` is
/// deliberately absent.
pub const TABLES_TOML: &str = r#"
[[tables]]
name = "fz_acct"
key = "id"
strategy = "hash"

[[tables]]
name = "fz_item"
key = "acct_id"
strategy = "hash"

[[tables]]
name = "fz_tag"
key = "name"
strategy = "hash"
key_type = "text"

[[tables]]
name = "fz_dev"
key = "u"
strategy = "hash"
key_type = "uuid"

[[tables]]
name = "fz_far"
key = "id"
strategy = "hash"
vnodes = 64

[[tables]]
name = "fz_ev"
key = "id"
strategy = "range"
ranges = [{ shard = "s0", to = 0 }, { shard = "s1", from = 0, to = 100 }, { shard = "s2", from = 100 }]

[[tables]]
name = "fz_word"
key = "w"
strategy = "range"
ranges = [{ shard = "s0", to = "h" }, { shard = "s1", from = "h", to = "p" }, { shard = "s2", from = "p" }]

[[tables]]
name = "fz_geo"
key = "region"
strategy = "geo"
regions = { s0 = ["us", "ca"], s1 = ["de", "fr"], s2 = ["jp", "kr"] }
default_shard = "s1"

[[tables]]
name = "fz_ref"
strategy = "reference"
"#;

/// CREATE TABLE statements, run directly on every shard and the oracle.
pub fn ddl(tables: &[Table]) -> String {
    let mut out = String::new();
    for t in tables {
        let cols: Vec<String> = t
            .cols
            .iter()
            .map(|c| {
                let ty = match c.ty {
                    Ty::Int4 => "int",
                    Ty::Int8 => "bigint",
                    Ty::Text => "text collate \"C\"",
                    Ty::Numeric => "numeric(10,2)",
                    Ty::Uuid => "uuid",
                };
                let mut s = format!("{} {ty}", c.name);
                if c.not_null {
                    s.push_str(" not null");
                }
                if c.default {
                    s.push_str(match c.ty {
                        Ty::Text => " default 'dflt'",
                        _ => " default 0",
                    });
                }
                s
            })
            .collect();
        out.push_str(&format!(
            "create table {} ({}, primary key ({}));\n",
            t.name,
            cols.join(", "),
            t.pk.join(", ")
        ));
    }
    out
}

pub const WORDS: &[&str] = &[
    "", "Alpha", "apple", "bravo", "cherry", "delta", "echo", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "zulu", "a b",
];

pub const REGIONS: &[&str] = &["us", "ca", "de", "fr", "jp", "kr", "br", "US"];

pub const TEXTS: &[&str] = &[
    "apple", "Banana", "cherry", "a b", "", "zeta", "x", "y", "Ünï",
];

/// The i-th uuid of the pool (fixed, so runs are reproducible).
pub fn pool_uuid(i: u32) -> String {
    let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        (h & 0xfff) as u16,
        ((h >> 20) & 0xfff) as u16,
        h & 0xffff_ffff_ffff
    )
}

pub const UUID_POOL: u32 = 24;

/// A plain SQL literal from a pool (never a fresh value).
pub fn pool_literal(rng: &mut StdRng, pool: Pool, nullable: bool) -> String {
    if nullable && rng.gen_bool(0.12) {
        return "null".into();
    }
    match pool {
        Pool::IntKey => rng.gen_range(-15i64..=140).to_string(),
        Pool::Word => quote(WORDS.choose(rng).expect("words")),
        Pool::Uuid => quote(&pool_uuid(rng.gen_range(0..UUID_POOL))),
        Pool::Region => quote(REGIONS.choose(rng).expect("regions")),
        Pool::Small => rng.gen_range(-3i64..=20).to_string(),
        Pool::Code => rng.gen_range(0i64..=11).to_string(),
        Pool::Seq => rng.gen_range(1i64..=4).to_string(),
        Pool::Text => quote(TEXTS.choose(rng).expect("texts")),
        Pool::Num => num_literal(rng),
    }
}

pub fn num_literal(rng: &mut StdRng) -> String {
    let cents: i64 = rng.gen_range(-50_000..=50_000);
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Initial rows as INSERT statements, deterministic for a seed. Keys come
/// from the pools (a subset, so later INSERTs both hit and miss).
pub fn initial_inserts(tables: &[Table], rng: &mut StdRng) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        let want = match t.kind {
            Kind::Reference => 10,
            _ => 30,
        };
        let mut seen = std::collections::HashSet::new();
        let mut rows = Vec::new();
        let mut tries = 0;
        while rows.len() < want && tries < 1000 {
            tries += 1;
            let vals: Vec<String> = t
                .cols
                .iter()
                .map(|c| {
                    if t.name == "fz_ref" && c.name == "code" {
                        // Codes 0..=9 have a row; 10 and 11 do not.
                        return (rows.len() as i64).to_string();
                    }
                    pool_literal(rng, c.pool, !c.not_null)
                })
                .collect();
            let pk: Vec<String> =
                t.pk.iter()
                    .map(|p| {
                        let i = t.cols.iter().position(|c| c.name == *p).expect("pk col");
                        vals[i].clone()
                    })
                    .collect();
            if seen.insert(pk) {
                rows.push(format!("({})", vals.join(", ")));
            }
        }
        out.push(format!("insert into {} values {}", t.name, rows.join(", ")));
    }
    out
}

//! A hand-written differential corpus over a multi-tenant schema: a private
//! 3-shard cluster (no replicas) with the proxy in front, the same data
//! loaded sharded through the proxy and into one plain database
//! (`tenant_one` on shard 0's primary), then every statement run through
//! both, in the simple query protocol and in the extended protocol
//! (`prepare` + `query`, values compared as the raw binary bytes).
//!
//! Schema: `customers` (hash on `id`), `orders` and `order_items` (hash on
//! `customer_id`, co-located with `customers`), `products` (reference),
//! `events` (geography on `region`), and two unsharded tables on the
//! default shard, `plans` and `audit_log`.
//!
//! Each (statement, protocol) pair is classified:
//! - SAME: identical answer (column names, rows in order when the ORDER BY
//!   is total, else as sorted multisets, row counts), or both fail with the
//!   same SQLSTATE;
//! - REFUSED: the proxy fails with 0A000 or 54000 (cannot answer) while
//!   the plain database answered; also the statements of a transaction
//!   after such a refusal (aborted on both sides);
//! - WRONG: anything else.
//!
//! Writes (and transactions) run once per protocol and side, each protocol
//! on rows of its own: `{p}` in a write is replaced by 1 in the simple pass
//! and by 2 in the extended one, so the passes never apply one write twice.
//! When the proxy fails a write that the plain database would apply, the
//! plain database runs it inside a rolled-back transaction, so both copies
//! keep the same rows; when the proxy refuses a statement inside a
//! transaction, the plain database's transaction is aborted as well.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::*;

const TABLES: &str = r#"
[[tables]]
name = "customers"
key = "id"
strategy = "hash"

[[tables]]
name = "orders"
key = "customer_id"
strategy = "hash"

[[tables]]
name = "order_items"
key = "customer_id"
strategy = "hash"

[[tables]]
name = "products"
strategy = "reference"

[[tables]]
name = "events"
key = "region"
strategy = "geo"
regions = { s0 = ["us", "ca"], s1 = ["de", "fr"], s2 = ["jp"] }
default_shard = "s2"
"#;

const SCHEMA: &str = r#"
create table customers (
  id int8 primary key,
  name text collate "C" not null,
  email text,
  country char(2),
  created_at timestamptz,
  tier text collate "C",
  credit numeric(12,2),
  score numeric,
  plan_id int
);
create table products (
  id int primary key,
  name text collate "C" not null,
  category text collate "C",
  price numeric(10,2) not null,
  weight float8
);
create table orders (
  id int8 not null,
  customer_id int8 not null references customers (id),
  status text collate "C" not null,
  total numeric(12,2),
  placed_at timestamptz not null,
  primary key (customer_id, id)
);
create table order_items (
  customer_id int8 not null,
  order_id int8 not null,
  line int not null,
  product_id int references products (id),
  qty int not null,
  price numeric(10,2) not null,
  primary key (customer_id, order_id, line),
  foreign key (customer_id, order_id) references orders (customer_id, id) on delete cascade
);
create table events (
  id int8 not null,
  region text not null,
  customer_id int8,
  kind text collate "C" not null,
  at timestamptz not null,
  payload jsonb,
  latency float8,
  primary key (region, id)
);
create table plans (
  id int primary key,
  name text collate "C" not null,
  monthly numeric(8,2)
);
create table audit_log (
  id int8 primary key,
  at timestamptz not null,
  customer_id int8,
  action text collate "C" not null,
  detail text
);
"#;

// ---------------------------------------------------------------------------
// Data

const NAMES: &[&str] = &[
    "Alice",
    "bob",
    "Émile",
    "Zoë",
    "Ångström",
    "O'Brien",
    "李雷",
    "Mary-Jane",
    "alice",
    "ZED",
    "Øystein",
    "Renée",
    "Zoe",
    "ümit",
    "Bob",
    "Chloé",
    "dmitri",
    "Eve",
    "eve",
    "Frank",
    "Gül",
    "Hannah",
    "Ivan",
    "Jürgen",
    "Kai",
    " Leading",
    "Trailing ",
    "Zoë",
];

const PRODUCTS: &[(&str, Option<&str>)] = &[
    ("Widget", Some("tools")),
    ("gadget", Some("tools")),
    ("Gizmo", Some("toys")),
    ("Ünïcorn toy", Some("toys")),
    ("Book: Rust", Some("books")),
    ("book: sql", Some("Books")),
    ("Lamp", Some("home")),
    ("lamp", Some("home")),
    ("Chair", Some("furniture")),
    ("Desk", Some("furniture")),
    ("Pen", Some("office")),
    ("pencil", Some("office")),
    ("Café mug", None),
    ("Zebra print", Some("decor")),
    ("Äpfel", Some("food")),
];

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "null".to_string())
}

/// Cents as a decimal literal: -1234 -> -12.34.
fn cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", c.abs() / 100, c.abs() % 100)
}

fn product_price(p: i64) -> i64 {
    (p * 1379) % 9000 + 99
}

/// The rows, as INSERT statements (the same text for both copies). Every
/// value is computed from its row number: nothing random.
fn inserts() -> Vec<String> {
    let mut ids: Vec<i64> = (1..=110).collect();
    ids.extend([-7, -3, 0, 5_000_000_001, 9_007_199_254_740_993]);
    let countries = [
        Some("US"),
        Some("DE"),
        Some("FR"),
        Some("JP"),
        Some("BR"),
        Some("us"),
        None,
    ];
    let tiers = [
        Some("free"),
        Some("pro"),
        Some("enterprise"),
        Some("free"),
        Some("pro"),
        None,
        Some("Pro"),
    ];
    let scores = [
        Some("1.0"),
        Some("1.00"),
        Some("1"),
        Some("2.50"),
        Some("2.5"),
        Some("-0.125"),
        None,
        Some("100"),
        Some("1E2"),
        Some("0.000"),
    ];
    let plans = [Some(1), Some(2), Some(3), Some(4), None, Some(2), Some(99)];
    let domains = ["example.com", "Example.COM", "mail.de", "ünï.jp"];
    let mut customers = Vec::new();
    let mut orders = Vec::new();
    let mut items = Vec::new();
    let mut n: i64 = 5000;
    for (k, &id) in ids.iter().enumerate() {
        let k = k as i64;
        let name = lit(NAMES[(k as usize * 7) % NAMES.len()]);
        let email = if k % 9 == 4 {
            None
        } else if k % 13 == 0 {
            Some(lit("shared@example.com"))
        } else {
            Some(lit(&format!("u{id}@{}", domains[(k % 4) as usize])))
        };
        let country = countries[(k as usize * 3) % 7].map(lit);
        let created = (k % 17 != 5).then(|| {
            format!(
                "timestamptz '2023-01-01 00:00:00+00' + interval '{} days {} hours'",
                (k * 97) % 700,
                (k * 13) % 24
            )
        });
        let tier = tiers[(k as usize * 5) % 7].map(lit);
        let credit = (k % 11 != 3).then(|| cents((k * 7919) % 20001 - 10000));
        let score = scores[(k % 10) as usize].map(str::to_string);
        let plan = plans[(k % 7) as usize].map(|p: i32| p.to_string());
        customers.push(format!(
            "({id}, {name}, {}, {}, {}, {}, {}, {}, {})",
            opt(email),
            opt(country),
            opt(created),
            opt(tier),
            opt(credit),
            opt(score),
            opt(plan)
        ));
        let count = if id == 42 {
            5
        } else {
            [0, 1, 2, 3, 1, 2, 4][(k % 7) as usize]
        };
        for _ in 0..count {
            n += 1;
            let status = [
                "new",
                "paid",
                "shipped",
                "cancelled",
                "refunded",
                "paid",
                "shipped",
            ][((n * 3) % 7) as usize];
            let mut total = 0i64;
            for line in 1..=(n % 3) + 1 {
                let product = (n * 7 + line * 3) % 15 + 1;
                let qty = [1, 2, 3, 1, 5, -1, 2, 0][((n + line) % 8) as usize];
                let mut price = product_price(product);
                if (n + line) % 4 == 0 {
                    price = price * 9 / 10;
                }
                total += qty * price;
                items.push(format!(
                    "({id}, {n}, {line}, {product}, {qty}, {})",
                    cents(price)
                ));
            }
            let total = if status == "new" && n % 2 == 0 {
                None
            } else {
                Some(cents(total))
            };
            orders.push(format!(
                "({n}, {id}, {}, {}, timestamptz '2024-01-01 00:00:00+00' + interval '{} hours')",
                lit(status),
                opt(total),
                (n * 53) % 2900
            ));
        }
    }
    let products: Vec<String> = PRODUCTS
        .iter()
        .enumerate()
        .map(|(i, (name, cat))| {
            let p = i as i64 + 1;
            format!(
                "({p}, {}, {}, {}, {})",
                lit(name),
                opt(cat.map(lit)),
                cents(product_price(p)),
                (p % 9) as f64 * 0.25 + 0.5
            )
        })
        .collect();
    let regions = ["us", "ca", "de", "fr", "jp", "br", "au", "US", "DE", "us"];
    let kinds = ["login", "view", "view", "purchase", "logout", "signup"];
    let events: Vec<String> = (1..=170i64)
        .map(|i| {
            let customer = (i % 15 != 0).then(|| ((i * 37) % 125 - 10).to_string());
            let payload = if i % 8 == 0 {
                None
            } else if i % 11 == 0 {
                Some("'{}'".to_string())
            } else if i % 10 == 3 {
                Some(format!(
                    "'{{\"ms\": {}, \"page\": \"/p/{}\", \"tags\": [\"a\", \"b\"]}}'",
                    (i * 31) % 500,
                    i % 7
                ))
            } else {
                Some(format!(
                    "'{{\"ms\": {}, \"page\": \"/p/{}\"}}'",
                    (i * 31) % 500,
                    i % 7
                ))
            };
            let latency = (i % 13 != 0).then(|| format!("{}", (i % 17) as f64 * 0.125));
            format!(
                "({i}, {}, {}, {}, timestamptz '2024-02-01 00:00:00+00' + interval '{} minutes', {}, {})",
                lit(regions[((i * 7) % 10) as usize]),
                opt(customer),
                lit(kinds[((i * 5) % 6) as usize]),
                (i * 97) % 20000,
                opt(payload),
                opt(latency)
            )
        })
        .collect();
    let audit: Vec<String> = (1..=12i64)
        .map(|i| {
            let customer = [
                Some(1),
                Some(42),
                Some(17),
                None,
                Some(5_000_000_001),
                Some(3),
                Some(42),
                Some(999),
            ][(i % 8) as usize];
            let action = ["login", "export", "delete", "login", "plan change"][(i % 5) as usize];
            format!(
                "({i}, timestamptz '2024-03-01 00:00:00+00' + interval '{} hours', {}, {}, {})",
                i * 5,
                opt(customer.map(|c: i64| c.to_string())),
                lit(action),
                if i % 4 == 0 {
                    "null".to_string()
                } else {
                    lit(&format!("détail n°{i}"))
                }
            )
        })
        .collect();
    vec![
        format!(
            "insert into customers (id, name, email, country, created_at, tier, credit, score, plan_id) values {}",
            customers.join(", ")
        ),
        format!(
            "insert into products (id, name, category, price, weight) values {}",
            products.join(", ")
        ),
        format!(
            "insert into orders (id, customer_id, status, total, placed_at) values {}",
            orders.join(", ")
        ),
        format!(
            "insert into order_items (customer_id, order_id, line, product_id, qty, price) values {}",
            items.join(", ")
        ),
        format!(
            "insert into events (id, region, customer_id, kind, at, payload, latency) values {}",
            events.join(", ")
        ),
        "insert into plans (id, name, monthly) values (1, 'Free', 0), (2, 'Pro', 29), (3, 'Team', 99.5), (4, 'Enterprise', null), (5, 'Legacy', -1.00)".to_string(),
        format!(
            "insert into audit_log (id, at, customer_id, action, detail) values {}",
            audit.join(", ")
        ),
    ]
}

// ---------------------------------------------------------------------------
// The corpus

#[derive(Clone, Copy)]
enum Step {
    /// A read, run in both protocols. `ordered`: its ORDER BY is total
    /// (rows compared in order); `numeric`: equal numerics may be written
    /// differently by PostgreSQL itself (1.0, 1.00), so they are compared
    /// with trailing fraction zeros dropped.
    Read {
        sql: &'static str,
        ordered: bool,
        numeric: bool,
    },
    /// A write, run once per protocol and side; `{p}` is 1 in the simple
    /// pass, 2 in the extended one. RETURNING rows compared as multisets.
    Write(&'static str),
    /// A transaction, its statements run in turn (with `{p}` as for
    /// writes), answers compared as multisets.
    Tx(&'static [&'static str]),
}

const fn o(sql: &'static str) -> Step {
    Step::Read {
        sql,
        ordered: true,
        numeric: false,
    }
}

const fn u(sql: &'static str) -> Step {
    Step::Read {
        sql,
        ordered: false,
        numeric: false,
    }
}

const fn un(sql: &'static str) -> Step {
    Step::Read {
        sql,
        ordered: false,
        numeric: true,
    }
}

const fn w(sql: &'static str) -> Step {
    Step::Write(sql)
}

const fn tx(stmts: &'static [&'static str]) -> Step {
    Step::Tx(stmts)
}

const KEY_LOOKUPS: &[Step] = &[
    u("select id, name, email, country, tier, credit from customers where id = 42"),
    u("select * from customers where id in (1, 2, 3, 50, 99)"),
    u("select id, name from customers where id = any(array[7, 14, 21, 28, -7])"),
    u("select * from customers where id = 9007199254740993"),
    u("select id, name, score from customers where id = -3"),
    u("select id, created_at from customers where id = 0"),
    u("select count(*) from customers where id in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)"),
    u("select id, status, total from orders where customer_id = 42"),
    o("select id, status, total, placed_at from orders where customer_id = 17 order by id"),
    u("select * from orders where customer_id in (3, 4, 5) and status = 'paid'"),
    u("select customer_id, order_id, line, qty, price from order_items where customer_id = 13"),
    u("select * from order_items where customer_id = any('{1,2,3}'::int8[])"),
    u("select id, kind, customer_id from events where region = 'us'"),
    u("select id, kind from events where region in ('de', 'fr')"),
    u("select id, region, payload from events where region = 'br'"),
    u("select id, region from events where region = 'US'"),
    u("select id from customers where id = 1000000"),
    u("select name, email from customers where id = 5 and tier = 'Pro'"),
    u("select id from customers where id between 10 and 20"),
    u("select * from orders where customer_id = 42 and id = (select min(id) from orders where customer_id = 42)"),
    u("select id, name from customers where id = 3 or id = 4"),
    u("select * from customers where id = any(array[]::int8[])"),
    u("select id, payload->>'page' from events where region = 'jp' and id < 80"),
    u("select id, name from customers where id = '77'"),
    u("select customer_id, id from orders where customer_id = 5000000001"),
    u("select id, latency from events where region = any(array['ca', 'au'])"),
];

const COLOCATED_JOINS: &[Step] = &[
    u("select c.id, c.name, o.id, o.total from customers c join orders o on o.customer_id = c.id where c.id = 42"),
    u("select c.name, o.id, i.line, i.qty from customers c join orders o on o.customer_id = c.id join order_items i on i.customer_id = o.customer_id and i.order_id = o.id where c.id = 17"),
    u("select c.id, count(o.id) from customers c left join orders o on o.customer_id = c.id where c.id in (1, 2, 3, 4, 5) group by c.id"),
    u("select c.id, o.id from customers c join orders o on o.customer_id = c.id"),
    u("select c.tier, count(*), sum(o.total) from customers c join orders o on o.customer_id = c.id group by c.tier"),
    o("select c.id, o.id, o.total from customers c join orders o on o.customer_id = c.id order by o.total desc nulls last, c.id, o.id limit 10"),
    u("select c.id, c.name from customers c where exists (select 1 from orders o where o.customer_id = c.id and o.status = 'refunded')"),
    u("select c.id from customers c left join orders o on o.customer_id = c.id where o.id is null"),
    u("select o.customer_id, o.id, sum(i.qty * i.price) from orders o join order_items i on i.customer_id = o.customer_id and i.order_id = o.id group by o.customer_id, o.id"),
    u("select count(*) from orders o join order_items i using (customer_id) where o.customer_id = 9"),
    u("select c.id, o.status, i.product_id from customers c join orders o on o.customer_id = c.id join order_items i on i.customer_id = c.id and i.order_id = o.id where c.id in (10, 11, 12)"),
    u("select count(*), sum(i.qty) from customers c join order_items i on i.customer_id = c.id where c.country = 'DE'"),
    o("select c.id, c.name, count(o.id) as n from customers c join orders o on o.customer_id = c.id group by c.id, c.name order by n desc, c.id limit 5"),
    u("select c.id, o.id, o.total from customers c join orders o on c.id = o.customer_id where o.total > c.credit"),
    u("select o.status, count(distinct c.id) from customers c join orders o on o.customer_id = c.id group by o.status"),
    u("select c.id, o.id from customers c, orders o where o.customer_id = c.id and c.id = -7"),
    u("select c.id, max(o.placed_at) from customers c join orders o on o.customer_id = c.id where c.tier = 'enterprise' group by c.id"),
    u("select c.email, o.id from customers c right join orders o on o.customer_id = c.id where o.customer_id = 42"),
    u("select o.id, i.line, i.price from orders o join order_items i on (i.customer_id, i.order_id) = (o.customer_id, o.id) where o.status = 'cancelled'"),
    u("select c.id, coalesce(sum(o.total), 0) from customers c left join orders o on o.customer_id = c.id and o.status <> 'cancelled' where c.id between 1 and 30 group by c.id"),
    u("select count(*) from customers c join orders o on o.customer_id = c.id join order_items i on i.customer_id = o.customer_id and i.order_id = o.id"),
];

const REFERENCE_JOINS: &[Step] = &[
    u("select i.order_id, i.line, p.name, p.category from order_items i join products p on p.id = i.product_id where i.customer_id = 13"),
    u("select p.category, sum(i.qty) from order_items i join products p on p.id = i.product_id group by p.category"),
    u("select * from products where id in (1, 2)"),
    o("select id, name, price from products order by price desc, id"),
    u("select p.name, count(*) from products p join order_items i on i.product_id = p.id group by p.name"),
    u("select i.customer_id, i.order_id, i.line, p.name from order_items i join products p on p.id = i.product_id"),
    u("select count(*), sum(i.qty * p.price) from order_items i join products p on p.id = i.product_id where p.category = 'toys'"),
    u("select i.customer_id, i.order_id, i.line from order_items i join products p on p.id = i.product_id where i.price <> p.price"),
    o("select i.customer_id, i.order_id, i.line, p.name from order_items i join products p on p.id = i.product_id order by p.name, i.customer_id, i.order_id, i.line limit 12"),
    u("select c.name, p.name from customers c join order_items i on i.customer_id = c.id join products p on p.id = i.product_id where c.id = 42"),
    u("select p.id, p.name from products p where not exists (select 1 from products q where q.category = p.category and q.id < p.id)"),
    u("select p.id from products p left join order_items i on i.product_id = p.id where i.product_id is null"),
    u("select max(p.weight), min(p.weight), sum(p.weight) from order_items i join products p on p.id = i.product_id"),
    u("select p.category, count(distinct i.customer_id) from products p join order_items i on i.product_id = p.id group by p.category"),
    u("select o.status, p.category, sum(i.qty) from orders o join order_items i on i.customer_id = o.customer_id and i.order_id = o.id join products p on p.id = i.product_id where o.customer_id = 42 group by o.status, p.category"),
    u("select i.product_id, p.name from order_items i left join products p on p.id = i.product_id where i.qty <= 0"),
    u("select p.name from products p where p.id in (select product_id from order_items where customer_id = 42)"),
    u("select count(*) from products"),
    o("select category, count(*), avg(price) from products group by category order by category nulls first"),
    u("select distinct p.category from order_items i join products p on p.id = i.product_id where i.customer_id in (1, 2, 3, 4, 5, 6)"),
    u("select p.name, i.qty * p.price as amount from order_items i join products p using (price) where false"),
];

const AGGREGATES: &[Step] = &[
    u("select count(*) from customers"),
    u("select count(*), count(email), count(country), count(credit), count(score), count(created_at) from customers"),
    u("select sum(credit), min(credit), max(credit), avg(credit) from customers"),
    un("select sum(score), avg(score), min(score), max(score) from customers"),
    u("select min(created_at), max(created_at) from customers"),
    u("select sum(qty), avg(qty), min(price), max(price) from order_items"),
    u("select count(distinct country) from customers"),
    u("select count(distinct id) from customers"),
    u("select min(name), max(name) from customers"),
    u("select avg(latency), sum(latency), min(latency), max(latency) from events"),
    u("select count(*) filter (where status = 'paid'), sum(total) filter (where status <> 'cancelled') from orders"),
    u("select string_agg(name, ', ' order by name, id) from customers where tier = 'pro'"),
    u("select array_agg(id order by id) from orders where status = 'new'"),
    u("select bool_and(credit > -100), bool_or(credit > 90) from customers"),
    u("select stddev_samp(qty), var_pop(qty) from order_items"),
    u("select percentile_cont(0.5) within group (order by total) from orders"),
    u("select max(placed_at) - min(placed_at) from orders"),
    u("select count(*), sum(total) from orders where placed_at >= '2024-03-01 00:00:00+00'"),
    u("select jsonb_agg(id order by id) from events where kind = 'purchase' and region = 'jp'"),
    u("select sum(credit), count(*) from customers where id < 0"),
    u("select avg(total)::numeric(12,4), sum(total) / count(total) from orders"),
    u("select count(*) from events where payload ? 'tags'"),
    u("select min(at)::date, max(at)::date from events"),
    u("select count(*), sum(qty), max(price) from order_items where customer_id = 42"),
    u("select sum(id), min(id), max(id), avg(id) from customers"),
    u("select count(*), avg(latency) from events where region in ('de', 'DE', 'fr')"),
    u("select sum((payload->>'ms')::int), max(payload->>'page') from events"),
    u("select count(distinct (customer_id, status)) from orders"),
];

const GROUP_BY: &[Step] = &[
    o("select tier, count(*) from customers group by tier order by tier nulls first"),
    o("select country, count(*), sum(credit) from customers group by country order by country nulls last"),
    u("select lower(name), count(*) from customers group by lower(name)"),
    o("select date_trunc('month', placed_at) as m, count(*), sum(total) from orders group by 1 order by 1"),
    o("select status, count(*) from orders group by status having count(*) > 10 order by status"),
    o("select status, avg(total) from orders group by status having avg(total) > 100 order by status"),
    u("select customer_id, count(*) from orders group by customer_id having count(*) >= 3"),
    u("select customer_id, sum(total) from orders group by customer_id having sum(total) > (select avg(total) * 3 from orders)"),
    u("select tier, country, count(*) from customers group by tier, country"),
    u("select extract(year from created_at), count(*) from customers group by 1"),
    o("select product_id, sum(qty) from order_items group by product_id having sum(qty) > 5 order by sum(qty) desc, product_id"),
    u("select region, kind, count(*) from events group by region, kind"),
    u("select tier, count(*) from customers group by rollup(tier)"),
    u("select country, tier, count(*) from customers group by grouping sets ((country), (tier), ())"),
    o("select region, count(*) from events group by region order by count(*) desc, region"),
    u("select kind, count(distinct customer_id) from events group by kind"),
    u("select customer_id, max(placed_at) from orders where customer_id in (1, 2, 3, 4, 5, 6) group by customer_id"),
    u("select tier, string_agg(name, '|' order by id) from customers group by tier"),
    u("select length(name), count(*) from customers group by length(name) having count(*) > 1"),
    o("select status, min(placed_at), max(placed_at) from orders group by status order by status"),
    u("select payload->>'page' as pg, count(*) from events group by 1"),
    u("select tier, count(*) from customers group by tier having max(name) > 'M'"),
    o("select country, count(*) from customers where tier is not null group by country having count(*) filter (where credit < 0) > 2 order by country"),
    o("select plan_id, count(*), min(credit), max(credit) from customers group by plan_id order by plan_id nulls first"),
    // Equal numerics (1.0, 1.00, 1) are one group; PostgreSQL prints the
    // first it met, so the text is normalized.
    un("select score, count(*) from customers group by score"),
    o("select order_id, count(*), sum(qty * price) from order_items where customer_id = 42 group by order_id order by order_id"),
    o("select tier, count(*) from customers group by tier having count(*) > 5 and min(credit) < 0 order by tier"),
];

const ORDER_LIMIT: &[Step] = &[
    o("select id, name from customers order by id limit 10"),
    o("select id, name from customers order by name, id limit 15"),
    o("select id, credit from customers order by credit desc nulls last, id limit 5 offset 3"),
    o("select id, created_at from customers order by created_at nulls first, id fetch first 7 rows only"),
    o("select id from customers order by id desc offset 95"),
    o("select customer_id, id, total from orders order by total, customer_id, id limit 20"),
    o("select id, name from customers order by lower(name), id limit 10"),
    o("select id, email from customers order by length(email) desc nulls last, id limit 8"),
    o(r#"select id, name from customers order by name collate "und-x-icu", id"#),
    o("select id, tier from customers order by tier, id"),
    o("select customer_id, id, placed_at from orders order by placed_at desc, customer_id, id limit 12"),
    o("select id, region, at from events order by at, id limit 25"),
    o("select * from products order by category nulls first, name, id"),
    o("select id, score from customers order by score, id"),
    o("select id, credit from customers where tier = 'pro' order by 2 desc, 1 limit 5"),
    o("select id from customers order by id limit 0"),
    o("select id, region, latency from events order by latency desc nulls last, id limit 10"),
    o("select c.id, c.name from customers c order by c.credit * -1, c.id limit 5"),
    o("select customer_id, id from orders order by customer_id desc, id desc offset 10 rows fetch next 5 rows only"),
    o("select id, name from customers order by email nulls first, id limit 10"),
    o("select id, created_at from customers order by extract(dow from created_at), id limit 10"),
    o("select id, name from customers order by name desc, id desc limit 10 offset 10"),
    u("select id, name, tier from customers order by tier fetch first 3 rows with ties"),
    o("select id, region from events order by region, id limit 30"),
    o("select id, email from customers order by email collate \"C\" desc, id limit 12"),
    o("select customer_id, order_id, line, qty from order_items order by qty * price desc, customer_id, order_id, line limit 10"),
    o("select id, name from customers where country = 'DE' order by id fetch first row only"),
];

const DISTINCT: &[Step] = &[
    o("select distinct country from customers order by country nulls first"),
    u("select distinct tier from customers"),
    o("select distinct tier, country from customers order by tier, country"),
    u("select distinct status from orders"),
    o("select distinct on (customer_id) customer_id, id, total from orders order by customer_id, placed_at desc, id"),
    o("select distinct on (tier) tier, id, name from customers order by tier, credit desc nulls last, id"),
    un("select distinct score from customers"),
    o("select distinct product_id from order_items order by product_id"),
    u("select distinct lower(name) from customers"),
    u("select distinct region from events"),
    u("select distinct kind, region from events where customer_id is not null"),
    o("select distinct date_trunc('day', placed_at)::date from orders order by 1 limit 10"),
    u("select count(*) from (select distinct customer_id from orders) x"),
    u("select distinct p.category from products p join order_items i on i.product_id = p.id"),
    o("select distinct on (region) region, id, at from events order by region, at desc, id"),
    u("select distinct payload->>'page' from events"),
    o("select distinct c.country from customers c join orders o on o.customer_id = c.id order by 1 nulls first"),
    u("select distinct credit from customers where credit > 50"),
    o("select distinct on (status) status, customer_id, id from orders order by status, total desc nulls last, customer_id, id"),
    u("select distinct name from customers where id in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)"),
    o("select distinct tier from customers order by tier desc nulls last limit 2"),
    u("select distinct payload from events where region = 'fr'"),
    u("select distinct customer_id from events where region = 'us'"),
];

const WINDOWS: &[Step] = &[
    o("select customer_id, id, row_number() over (partition by customer_id order by id) from orders order by customer_id, id"),
    o("select id, credit, rank() over (order by credit desc nulls last) from customers order by 3, id"),
    u("select customer_id, id, sum(total) over (partition by customer_id) from orders"),
    u("select customer_id, id, total, sum(total) over (partition by customer_id order by id) from orders"),
    o("select id, lag(id) over (order by id), lead(id) over (order by id) from customers order by id"),
    u("select tier, id, dense_rank() over (partition by tier order by credit nulls last, id) from customers"),
    u("select region, id, count(*) over (partition by region) from events"),
    o("select id, ntile(4) over (order by id) from customers order by id"),
    u("select customer_id, id, first_value(id) over (partition by customer_id order by placed_at, id) from orders"),
    u("select id, avg(credit) over () from customers"),
    u("select id, row_number() over (order by id) from orders where customer_id = 42"),
    o("select * from (select id, name, row_number() over (partition by tier order by id) as rn from customers) x where rn <= 2 order by id"),
    u("select customer_id, id, percent_rank() over (partition by customer_id order by total nulls first, id) from orders"),
    u("select customer_id, order_id, line, sum(qty) over (partition by customer_id, order_id) from order_items"),
    o("select region, id, latency, max(latency) over (partition by region order by id rows between 2 preceding and current row) from events order by region, id"),
    u("select c.id, o.id, count(o.id) over (partition by c.tier) from customers c left join orders o on o.customer_id = c.id"),
    o("select customer_id, id, cume_dist() over (order by total nulls last, customer_id, id) from orders order by customer_id, id"),
    u("select kind, id, nth_value(id, 2) over (partition by kind order by id rows between unbounded preceding and unbounded following) from events"),
    o("select status, count(*), rank() over (order by count(*) desc, status) from orders group by status order by 3"),
    u("select customer_id, id, total - lag(total) over (partition by customer_id order by id) from orders"),
    u("select id, sum(credit) over (order by id rows between 1 preceding and 1 following) from customers where id in (1, 2, 3, 4, 5, 6)"),
    u("select customer_id, id, row_number() over w, sum(total) over w from orders window w as (partition by customer_id order by placed_at, id)"),
];

const SUBQUERIES: &[Step] = &[
    u("with big as (select customer_id, sum(total) as s from orders group by customer_id) select c.name, b.s from customers c join big b on b.customer_id = c.id where b.s > 500"),
    u("select id, name from customers where id in (select customer_id from orders where status = 'refunded')"),
    u("select id from customers c where not exists (select 1 from orders o where o.customer_id = c.id)"),
    u("select id, (select count(*) from orders o where o.customer_id = c.id) from customers c where c.id <= 20"),
    u("select id from customers where credit > (select avg(credit) from customers)"),
    u("select x.tier, x.n from (select tier, count(*) as n from customers group by tier) x where x.n > 5"),
    u("with recursive r(n) as (select 1 union all select n + 1 from r where n < 5) select r.n, count(c.id) from r left join customers c on c.plan_id = r.n group by r.n"),
    u("with o as (select * from orders where customer_id = 42) select count(*), sum(total) from o"),
    u("select * from orders where customer_id = 42 and total > (select avg(total) from orders where customer_id = 42)"),
    u("select id from customers where id = any(select customer_id from events where region = 'jp')"),
    u("select id, name from customers where country = (select country from customers where id = 1)"),
    u("select o.customer_id, o.id from orders o where o.total = (select max(o2.total) from orders o2 where o2.customer_id = o.customer_id)"),
    u("with t as materialized (select id, tier from customers) select tier, count(*) from t group by tier"),
    u("select count(*) from (select customer_id from orders group by customer_id having count(*) > 1) s"),
    u("select id from products where id not in (select product_id from order_items where product_id is not null)"),
    u("select e.region, e.id from events e where e.customer_id in (select id from customers where tier = 'enterprise')"),
    u("select c.id, lat.last_id from customers c cross join lateral (select max(o.id) as last_id from orders o where o.customer_id = c.id) lat where c.id < 15"),
    u("with s as (select status, count(*) as n from orders group by status) select * from s where n = (select max(n) from s)"),
    u("select (select count(*) from customers), (select count(*) from orders), (select count(*) from events)"),
    u("select id from customers where exists (select 1 from events e where e.customer_id = customers.id and e.kind = 'purchase')"),
    u("select id, name from customers where id = 42 and exists (select 1 from orders where customer_id = 42 and status = 'paid')"),
    u("with recent as (select * from orders where placed_at > '2024-03-15 00:00:00+00') select r.customer_id, r.id, c.name from recent r join customers c on c.id = r.customer_id"),
    u("select * from (select customer_id, id, total from orders where customer_id in (17, 42)) t where t.total is not null"),
    u("select id from customers where credit = (select max(credit) from customers)"),
];

const SET_OPS: &[Step] = &[
    u("select id from customers union select customer_id from orders"),
    u("select customer_id from orders union all select customer_id from events where customer_id is not null"),
    u("select id from customers intersect select customer_id from events"),
    u("select id from customers except select customer_id from orders"),
    o("select country from customers union select region from events order by 1 nulls first"),
    u("select tier from customers except all select name from plans"),
    o("select id from customers where id < 5 union all select id from products where id < 5 order by 1"),
    u("select customer_id, id from orders where customer_id = 1 union select customer_id, id from orders where customer_id = 2"),
    u("select name from customers intersect all select name from customers where tier = 'pro'"),
    u("(select id from customers order by id limit 3) union all (select id from customers order by id desc limit 3)"),
    u("select status from orders except select 'paid'"),
    u("select 'c' as src, count(*) from customers union all select 'o', count(*) from orders"),
    u("select customer_id from orders where customer_id = 42 union select id from customers where id = 42"),
    u("select customer_id from orders where status = 'paid' intersect select customer_id from orders where status = 'shipped'"),
    u("select id from plans union select plan_id from customers"),
    u("select region, id from events where region = 'us' union all select region, id from events where region = 'de'"),
    o("select name from products union select name from customers order by 1 limit 10"),
    u("select customer_id from order_items except all select customer_id from orders"),
    u("select email from customers where tier = 'free' union select email from customers where tier = 'pro'"),
    u("select kind from events where region = 'jp' intersect select kind from events where region = 'br'"),
    u("select customer_id, count(*) from (select customer_id from orders union all select customer_id from order_items) x group by customer_id"),
];

const NON_COLOCATED: &[Step] = &[
    u("select e.id, c.name from events e join customers c on c.id = e.customer_id where e.region = 'de'"),
    u("select e.region, count(*) from events e join customers c on c.id = e.customer_id group by e.region"),
    u("select a.id, b.id from orders a join orders b on a.status = b.status and a.id < b.id where a.customer_id = 42"),
    u("select a.id, b.id from customers a join customers b on a.name = b.name and a.id < b.id"),
    u("select c.id, e.id from customers c left join events e on e.customer_id = c.id where c.id in (1, 2, 3)"),
    u("select o.id, e.id from orders o join events e on e.customer_id = o.customer_id and e.at > o.placed_at where o.customer_id < 10"),
    u("select c1.id, c2.id from customers c1 join customers c2 on c2.id = c1.id + 1 where c1.id < 10"),
    u("select o.customer_id, o.id, i.customer_id, i.line from orders o join order_items i on i.order_id = o.id"),
    u("select c.country, e.region, count(*) from customers c join events e on e.customer_id = c.id group by 1, 2"),
    u("select e.id from customers c right join events e on e.customer_id = c.id where c.id is null"),
    u("select c.id, e.id from customers c full join events e on e.customer_id = c.id where c.id is null or e.id is null"),
    u("select a.customer_id, a.id, b.customer_id, b.id from orders a join orders b on date_trunc('day', a.placed_at) = date_trunc('day', b.placed_at) and (a.customer_id, a.id) < (b.customer_id, b.id) where a.customer_id < 30"),
    u("select c.tier, count(distinct e.id) from customers c join events e on e.customer_id = c.id and e.kind = 'login' group by c.tier"),
    u("select o.id, c.name from orders o join customers c on c.id = o.customer_id + 1 where o.customer_id < 20"),
    u("select e1.id, e2.id from events e1 join events e2 on e1.customer_id = e2.customer_id and e1.region <> e2.region and e1.id < e2.id where e1.id < 40"),
    u("select c.id, sum(i.qty) from customers c join order_items i on i.product_id = c.plan_id group by c.id"),
    u("select o.status, e.kind, count(*) from orders o join events e on e.customer_id = o.customer_id group by 1, 2"),
    u("select c.id from customers c where c.id in (select e.customer_id from events e where e.region = 'de')"),
    u("select e.region, e.id, o.id from events e join orders o on o.customer_id = e.customer_id where e.region = 'us' and o.status = 'paid'"),
    u("select c.name, count(*) from customers c join events e on e.customer_id = c.id where c.id = 42 group by c.name"),
    u("select a.id, b.id from customers a cross join customers b where a.id in (1, 2) and b.id in (3, 4)"),
];

const WITH_UNSHARDED: &[Step] = &[
    u("select c.id, p.name from customers c join plans p on p.id = c.plan_id"),
    u("select p.name, count(c.id) from plans p left join customers c on c.plan_id = p.id group by p.name"),
    u("select c.id, p.monthly from customers c join plans p on p.id = c.plan_id where c.id = 43"),
    u("select * from plans"),
    u("select action, count(*) from audit_log group by action"),
    u("select c.id from customers c where c.plan_id in (select id from plans where monthly > 0)"),
    u("select sum(p.monthly) from customers c join plans p on p.id = c.plan_id"),
    u("select a.id, c.name from audit_log a join customers c on c.id = a.customer_id"),
    u("select a.id, a.action, c.tier from audit_log a left join customers c on c.id = a.customer_id"),
    u("select p.name, sum(o.total) from plans p join customers c on c.plan_id = p.id join orders o on o.customer_id = c.id group by p.name"),
    u("select c.id from customers c where not exists (select 1 from plans p where p.id = c.plan_id)"),
    o("select p.id, p.name, (select count(*) from customers c where c.plan_id = p.id) from plans p order by p.id"),
    u("select a.customer_id, count(e.id) from audit_log a join events e on e.customer_id = a.customer_id group by a.customer_id"),
    u("select a.id, p.name from audit_log a cross join plans p where a.id < 3 and p.id < 3"),
    u("select c.id, p.name from customers c join plans p on p.id = c.plan_id where c.id in (1, 2, 3, 4, 5)"),
    u("select a.id from audit_log a where a.customer_id in (select id from customers where tier in ('enterprise', 'free'))"),
    u("select id, name from plans union all select id, name from customers where id < 4"),
    u("select p.name, pr.name from plans p join products pr on pr.id = p.id"),
    u("select c.tier, max(p.monthly) from customers c join plans p on p.id = c.plan_id group by c.tier"),
    u("select a.id, a.customer_id, o.id from audit_log a join orders o on o.customer_id = a.customer_id where a.customer_id = 42"),
    o("select id, action, detail from audit_log order by at, id"),
];

const WRITES: &[Step] = &[
    w("insert into customers (id, name, email, country, created_at, tier, credit, score, plan_id) values ({p}001, 'New {p}', 'new{p}@example.com', 'DE', '2024-05-01 10:00:00+00', 'free', 0, 1.0, 1)"),
    o("select * from customers where id >= 1000 order by id"),
    w("insert into customers (id, name, country, tier, credit) values ({p}002, 'Multi a', 'US', 'pro', 1.5), ({p}003, 'Multi b', 'FR', 'pro', -2.25), ({p}004, 'Multi c', 'JP', null, 3), ({p}005, 'Multi d', 'BR', 'free', null), ({p}006, 'Multi e', 'DE', 'free', 0.10) returning id, name, credit"),
    o("select id, name, country, tier, credit from customers where id >= 1000 order by id"),
    w("insert into orders (id, customer_id, status, total, placed_at) values (9{p}01, {p}001, 'new', 10.50, '2024-06-01 09:00:00+00') returning *"),
    w("insert into order_items values ({p}001, 9{p}01, 1, 3, 2, 5.25)"),
    w("update customers set tier = 'pro' where id = {p}001"),
    w("update customers set credit = credit + 1 where tier = 'enterprise'"),
    o("select id, tier, credit from customers where tier = 'enterprise' order by id"),
    w("update orders set status = 'shipped' where customer_id in ({p}3, {p}4, {p}5) and status = 'paid' returning customer_id, id"),
    w("delete from order_items where customer_id = {p}6 and line = 3 returning *"),
    w("delete from events where kind = 'logout' and region = 'ca' and id % 2 = {p} - 1"),
    w("delete from events where kind = 'logout' and id % 12 = 6 * {p} - 4 and at < '2024-02-08 00:00:00+00' returning region, id"),
    u("select region, count(*) from events where kind = 'logout' group by region"),
    w("insert into customers (id, name, tier) values ({p}001, 'Ignored', 'free') on conflict (id) do nothing"),
    w("insert into customers (id, name, tier) values ({p}001, 'Upserted', 'enterprise') on conflict (id) do update set tier = excluded.tier, name = excluded.name returning id, name, tier"),
    w("insert into products (id, name, category, price) values (10{p}, 'Ref {p}', 'new', 1.99)"),
    w("update products set price = price * 2 where id = 10{p} returning id, price"),
    u("select * from products where id > 100"),
    w("insert into plans (id, name, monthly) values (1{p}, 'Plan {p}', 5)"),
    w("insert into audit_log (id, at, customer_id, action, detail) values (10{p}, '2024-06-01 00:00:00+00', {p}001, 'signup', null) returning id"),
    w("insert into audit_log (id, at, customer_id, action) select 100{p}0 + id, '2024-06-01 00:00:00+00', id, 'bulk' from customers where id between 1 and 3"),
    u("select id, customer_id, action from audit_log where id > 100"),
    w("insert into orders (id, customer_id, status, total, placed_at) select id + 1000{p}0, customer_id, 'copy', total, placed_at from orders where customer_id = 5"),
    w("update customers set credit = null where id = -3 returning id, credit"),
    w("delete from customers where id = {p}005 returning id, name"),
    w("update orders set total = total + 0.01 where customer_id = 42 returning id, total"),
    w("insert into events (id, region, customer_id, kind, at, payload) values (100{p}, 'jp', 1, 'signup', '2024-06-01 00:00:00+00', '{\"a\": {p}}'), (100{p}, 'de', 2, 'signup', '2024-06-01 00:00:00+00', null), (100{p}, 'us', {p}001, 'signup', '2024-06-01 00:00:00+00', '[1, 2]')"),
    u("select region, id, customer_id, kind, payload from events where id >= 1000"),
    w("insert into customers (id, name) values (1, 'dup')"),
    w("insert into orders (id, customer_id, status, placed_at) values (9{p}99, 123456, 'new', '2024-06-01 00:00:00+00')"),
    w("delete from customers where id = 42"),
    w("update order_items set qty = qty + 1 where product_id = 3 returning customer_id, order_id, line, qty"),
    w("delete from orders where customer_id = {p}7 and status = 'cancelled'"),
    w("with moved as (delete from events where region = 'us' and id = 10 * {p} returning id, customer_id) insert into audit_log (id, at, customer_id, action) select 2000 + id, '2024-06-02 00:00:00+00', customer_id, 'moved' from moved"),
    w("update events set latency = latency * 2 where region = 'fr' returning region, id, latency"),
    w("insert into order_items (customer_id, order_id, line, product_id, qty, price) values ({p}001, 9{p}01, 2, 5, 1, 9.99), ({p}001, 9{p}01, 3, 6, -1, 9.99)"),
    o("select customer_id, order_id, line, product_id, qty, price from order_items where customer_id >= 1000 order by customer_id, order_id, line"),
    u("select count(*), sum(credit), sum(score) from customers"),
    u("select count(*), sum(total) from orders"),
    u("select count(*), sum(qty) from order_items"),
    u("select count(*), count(payload), sum(latency) from events"),
    o("select id, name, monthly from plans order by id"),
];

const TRANSACTIONS: &[Step] = &[
    // One shard, committed.
    tx(&[
        "begin",
        "insert into orders (id, customer_id, status, total, placed_at) values (9{p}11, 42, 'new', 20.00, '2024-06-02 12:00:00+00')",
        "insert into order_items (customer_id, order_id, line, product_id, qty, price) values (42, 9{p}11, 1, 4, 2, 10.00)",
        "update customers set credit = credit - 20 where id = 42 returning credit",
        "select id, status, total from orders where customer_id = 42 and id > 9000",
        "commit",
    ]),
    o("select id, status, total from orders where customer_id = 42 order by id"),
    // Several shards, committed (two-phase commit).
    tx(&[
        "begin",
        "update customers set tier = 'vip{p}' where id = 1",
        "update customers set tier = 'vip{p}' where id = 2",
        "update customers set tier = 'vip{p}' where id = 3",
        "insert into events (id, region, customer_id, kind, at, payload) values (50{p}, 'jp', 1, 'upgrade', '2024-06-03 00:00:00+00', '{\"by\": \"tx\"}')",
        "select id, tier from customers where id in (1, 2, 3)",
        "select count(*) from customers where tier like 'vip%'",
        "commit",
    ]),
    o("select id, tier from customers where id in (1, 2, 3) order by id"),
    // Several shards, rolled back.
    tx(&[
        "begin",
        "delete from order_items where customer_id in (4, 5, 6)",
        "update customers set credit = 0 where id in (4, 5, 6, 7)",
        "select count(*) from order_items where customer_id in (4, 5, 6)",
        "insert into products (id, name, category, price) values (20{p}, 'Rollback me', 'tmp', 1.00)",
        "rollback",
    ]),
    u("select customer_id, count(*) from order_items where customer_id in (4, 5, 6) group by customer_id"),
    o("select id, credit from customers where id in (4, 5, 6, 7) order by id"),
    u("select count(*) from products"),
    // An error aborts the transaction on every shard.
    tx(&[
        "begin",
        "insert into customers (id, name, tier) values ({p}010, 'Tx Err', 'free')",
        "insert into customers (id, name, tier) values (1, 'dup', 'free')",
        "select count(*) from customers",
        "commit",
    ]),
    u("select id from customers where id in (1010, 2010)"),
    // Cross-shard reads inside a transaction.
    tx(&[
        "begin",
        "select count(*), sum(credit) from customers",
        "select tier, count(*) from customers group by tier order by tier nulls first",
        "update customers set score = 7 where id = 9",
        "select id, score from customers where id in (9, 10)",
        "select c.id, count(o.id) from customers c join orders o on o.customer_id = c.id where c.id in (9, 10, 11) group by c.id",
        "commit",
    ]),
    // Reference and unsharded tables in one transaction.
    tx(&[
        "start transaction isolation level repeatable read",
        "insert into plans (id, name, monthly) values (2{p}, 'Tx plan {p}', 12.34)",
        "update products set price = price + 1 where id = 1",
        "select id, price from products where id = 1",
        // Gathered (sharded with unsharded) in a transaction that writes
        // on every shard: its two-phase commit must still succeed.
        "select p.name, count(c.id) from plans p left join customers c on c.plan_id = p.id group by p.name",
        "commit",
    ]),
    o("select id, name, monthly from plans order by id"),
    o("select id, price from products order by id"),
    // A read the shards cannot answer together (sharded with unsharded),
    // inside a transaction that wrote on the default shard.
    tx(&[
        "begin",
        "insert into plans (id, name, monthly) values (3{p}, 'Tx plan b{p}', 1)",
        "select p.name, count(c.id) from plans p left join customers c on c.plan_id = p.id group by p.name",
        "commit",
    ]),
    o("select id, name, monthly from plans order by id"),
    // The same read in a transaction that wrote nothing.
    tx(&[
        "begin",
        "select p.name, count(c.id) from plans p left join customers c on c.plan_id = p.id group by p.name",
        "commit",
    ]),
    // ... and in one that wrote on another shard (customer 11 is on s2).
    tx(&[
        "begin",
        "update customers set score = 3.5 where id = 11",
        "select c.id, c.score, p.name from customers c join plans p on p.id = c.plan_id where c.id in (10, 11, 12)",
        "commit",
    ]),
    u("select id, score from customers where id = 11"),
    // A multi-row INSERT over several shards inside a transaction.
    tx(&[
        "begin",
        "insert into customers (id, name, country, tier, credit) values ({p}021, 'Tx a', 'US', 'free', 1), ({p}022, 'Tx b', 'DE', 'pro', 2), ({p}023, 'Tx c', 'FR', 'pro', 3), ({p}024, 'Tx d', 'JP', 'free', 4)",
        "insert into orders (id, customer_id, status, total, placed_at) values (9{p}21, {p}021, 'new', 1.00, '2024-06-04 00:00:00+00'), (9{p}22, {p}022, 'paid', 2.00, '2024-06-04 00:00:00+00'), (9{p}23, {p}023, 'paid', 3.00, '2024-06-04 00:00:00+00')",
        "delete from customers where id = {p}024 returning id, name",
        "select count(*) from customers where id between {p}021 and {p}024",
        "commit",
    ]),
    o("select c.id, c.name, o.id, o.status from customers c left join orders o on o.customer_id = c.id where c.id between 1020 and 2030 order by c.id, o.id"),
    // A savepoint in a transaction on one shard.
    tx(&[
        "begin",
        "update customers set credit = 1.23 where id = 11",
        "savepoint s1",
        "update customers set credit = 4.56 where id = 11",
        "rollback to savepoint s1",
        "select credit from customers where id = 11",
        "commit",
    ]),
    u("select id, credit from customers where id = 11"),
    // A read that joins a table this transaction wrote with another shard's.
    tx(&[
        "begin",
        "update events set kind = 'seen{p}' where region = 'de' and id < 60",
        "select e.id, e.kind, c.name from events e join customers c on c.id = e.customer_id where e.region = 'de' and e.id < 60",
        "commit",
    ]),
    u("select id, kind from events where region = 'de' and id < 60"),
    // Delete and re-insert by key.
    tx(&[
        "begin",
        "delete from orders where customer_id = 12 returning id",
        "insert into orders (id, customer_id, status, total, placed_at) values (9{p}31, 12, 'new', 0, '2024-06-05 00:00:00+00')",
        "select customer_id, id, status from orders where customer_id = 12",
        "commit",
    ]),
    u("select customer_id, id, status from orders where customer_id = 12"),
    u("select customer_id, order_id, line from order_items where customer_id = 12"),
];

const CORPUS: &[(&str, &[Step])] = &[
    ("key lookups", KEY_LOOKUPS),
    ("co-located joins", COLOCATED_JOINS),
    ("reference joins", REFERENCE_JOINS),
    ("aggregates", AGGREGATES),
    ("group by/having", GROUP_BY),
    ("order by/limit", ORDER_LIMIT),
    ("distinct", DISTINCT),
    ("window functions", WINDOWS),
    ("ctes/subqueries", SUBQUERIES),
    ("set operations", SET_OPS),
    ("non-co-located joins", NON_COLOCATED),
    ("sharded+unsharded", WITH_UNSHARDED),
    ("writes", WRITES),
    ("transactions", TRANSACTIONS),
];

// ---------------------------------------------------------------------------
// Running and comparing

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Simple,
    Extended,
}

/// One statement's result: column names (and type OIDs in the extended
/// protocol), rows (text in the simple protocol, binary in the extended
/// one), and the command's row count.
#[derive(Debug, Clone, PartialEq, Default)]
struct Part {
    names: Vec<String>,
    types: Vec<u32>,
    rows: Vec<Vec<Option<Vec<u8>>>>,
    count: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Fail {
    code: String,
    message: String,
}

type Outcome = Result<Vec<Part>, Fail>;

fn fail(e: tokio_postgres::Error) -> Fail {
    match e.as_db_error() {
        Some(d) => Fail {
            code: d.code().code().to_string(),
            message: d.message().to_string(),
        },
        None => Fail {
            code: String::new(),
            message: e.to_string(),
        },
    }
}

async fn run_simple(c: &Client, sql: &str) -> Outcome {
    let msgs = c.simple_query(sql).await.map_err(fail)?;
    let mut parts = Vec::new();
    let mut cur = Part::default();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                cur.names = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => cur.rows.push(
                (0..r.len())
                    .map(|i| r.get(i).map(|s| s.as_bytes().to_vec()))
                    .collect(),
            ),
            SimpleQueryMessage::CommandComplete(n) => {
                cur.count = Some(n);
                parts.push(std::mem::take(&mut cur));
            }
            _ => {}
        }
    }
    Ok(parts)
}

async fn run_extended(c: &Client, sql: &str, numeric: bool) -> Outcome {
    let stmt = c.prepare(sql).await.map_err(fail)?;
    let names = stmt
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let types: Vec<u32> = stmt.columns().iter().map(|c| c.type_().oid()).collect();
    let stream = c
        .query_raw(&stmt, std::iter::empty::<&(dyn ToSql + Sync)>())
        .await
        .map_err(fail)?;
    pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.try_next().await.map_err(fail)? {
        rows.push(
            (0..row.len())
                .map(|i| {
                    let v = row.get::<_, Raw>(i).0;
                    let is_numeric = *row.columns()[i].type_() == Type::NUMERIC;
                    v.map(|v| {
                        if numeric && is_numeric {
                            numeric_canonical(&v)
                        } else {
                            v
                        }
                    })
                })
                .collect(),
        );
    }
    let count = stream.rows_affected();
    Ok(vec![Part {
        names,
        types,
        rows,
        count,
    }])
}

/// One statement on one side, bounded in time; rows sorted unless ordered.
async fn run(c: &Client, proto: Proto, sql: &str, ordered: bool, numeric: bool) -> Outcome {
    let fut = async {
        match proto {
            Proto::Simple => run_simple(c, sql).await,
            Proto::Extended => run_extended(c, sql, numeric).await,
        }
    };
    let mut parts = match tokio::time::timeout(Duration::from_secs(60), fut).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Fail {
                code: "timeout".into(),
                message: "no answer within 60 s".into(),
            })
        }
    };
    for p in &mut parts {
        if numeric && proto == Proto::Simple {
            for v in p.rows.iter_mut().flatten().flatten() {
                *v = strip_zeros(&String::from_utf8_lossy(v)).into_bytes();
            }
        }
        if !ordered {
            p.rows.sort();
        }
    }
    Ok(parts)
}

/// Runs `sql` on the plain database without keeping its effects.
async fn run_rolled_back(one: &Client, proto: Proto, sql: &str) -> Outcome {
    one.batch_execute("begin").await.expect("begin");
    let r = run(one, proto, sql, false, false).await;
    one.batch_execute("rollback").await.expect("rollback");
    r
}

#[derive(Debug, Clone, PartialEq)]
enum Class {
    Same,
    Refused(String),
    Wrong,
}

fn is_refusal(f: &Fail) -> bool {
    f.code == "0A000" || f.code == "54000"
}

fn classify(proxy: &Outcome, direct: &Outcome) -> Class {
    match (proxy, direct) {
        (Ok(a), Ok(b)) if a == b => Class::Same,
        (Err(a), Err(b)) if a.code == b.code && !a.code.is_empty() => Class::Same,
        (Err(a), Ok(_)) if is_refusal(a) => Class::Refused(format!("{}: {}", a.code, a.message)),
        (Err(a), Err(b)) if is_refusal(a) => Class::Refused(format!(
            "{}: {} (the plain database failed too: {}: {})",
            a.code, a.message, b.code, b.message
        )),
        _ => Class::Wrong,
    }
}

/// A value for a report: text as is, binary decoded for a few types.
fn show_value(v: &Option<Vec<u8>>, ty: Option<u32>) -> String {
    let Some(v) = v else {
        return "NULL".to_string();
    };
    let be = |n: usize| v.len() == n;
    match ty {
        None => format!("{:?}", String::from_utf8_lossy(v)),
        Some(t) if t == Type::INT8.oid() && be(8) => {
            i64::from_be_bytes(v[..].try_into().unwrap()).to_string()
        }
        Some(t) if t == Type::INT4.oid() && be(4) => {
            i32::from_be_bytes(v[..].try_into().unwrap()).to_string()
        }
        Some(t) if t == Type::INT2.oid() && be(2) => {
            i16::from_be_bytes(v[..].try_into().unwrap()).to_string()
        }
        Some(t) if t == Type::FLOAT8.oid() && be(8) => {
            format!("{:?}", f64::from_be_bytes(v[..].try_into().unwrap()))
        }
        Some(t)
            if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME]
                .iter()
                .any(|x| x.oid() == t) =>
        {
            format!("{:?}", String::from_utf8_lossy(v))
        }
        Some(_) => format!(
            "\\x{}",
            v.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

fn show(o: &Outcome) -> String {
    match o {
        Err(f) => format!("ERROR {}: {}", f.code, f.message),
        Ok(parts) => parts
            .iter()
            .map(|p| {
                let rows: Vec<String> = p
                    .rows
                    .iter()
                    .map(|r| {
                        let vals: Vec<String> = r
                            .iter()
                            .enumerate()
                            .map(|(i, v)| show_value(v, p.types.get(i).copied()))
                            .collect();
                        format!("({})", vals.join(", "))
                    })
                    .collect();
                let shown = if rows.len() > 40 {
                    format!("{} ... ({} rows)", rows[..40].join(" "), rows.len())
                } else {
                    rows.join(" ")
                };
                format!(
                    "columns {:?} types {:?} count {:?}: {shown}",
                    p.names, p.types, p.count
                )
            })
            .collect::<Vec<_>>()
            .join(" | "),
    }
}

struct Record {
    category: &'static str,
    proto: Proto,
    sql: String,
    class: Class,
    proxy: Outcome,
    direct: Outcome,
}

struct Runner<'a> {
    proxy: &'a Client,
    one: &'a Client,
    records: Vec<Record>,
}

impl Runner<'_> {
    fn record(
        &mut self,
        category: &'static str,
        proto: Proto,
        sql: String,
        class: Class,
        proxy: Outcome,
        direct: Outcome,
    ) {
        self.records.push(Record {
            category,
            proto,
            sql,
            class,
            proxy,
            direct,
        });
    }

    async fn read(
        &mut self,
        category: &'static str,
        proto: Proto,
        sql: &str,
        ordered: bool,
        numeric: bool,
    ) {
        let a = run(self.proxy, proto, sql, ordered, numeric).await;
        let b = run(self.one, proto, sql, ordered, numeric).await;
        let class = classify(&a, &b);
        self.record(category, proto, sql.to_string(), class, a, b);
    }

    async fn write(&mut self, category: &'static str, proto: Proto, sql: &str) {
        let a = run(self.proxy, proto, sql, false, false).await;
        // What the proxy did not apply, the plain database must not keep.
        let b = if a.is_err() {
            run_rolled_back(self.one, proto, sql).await
        } else {
            run(self.one, proto, sql, false, false).await
        };
        let class = classify(&a, &b);
        self.record(category, proto, sql.to_string(), class, a, b);
    }

    async fn transaction(&mut self, category: &'static str, proto: Proto, stmts: &[String]) {
        let mut refused = false;
        for (i, sql) in stmts.iter().enumerate() {
            let a = run(self.proxy, proto, sql, false, false).await;
            let b = run(self.one, proto, sql, false, false).await;
            let inside = i > 0 && i + 1 < stmts.len();
            if inside && a.is_err() != b.is_err() {
                // Abort the side that went on, so both roll back alike.
                let other = if a.is_err() { self.one } else { self.proxy };
                let _ = other.simple_query("select 1/0").await;
            }
            let mut class = classify(&a, &b);
            if refused && class == Class::Same {
                class = Class::Refused(
                    "(the transaction was aborted by the proxy's refusal of an earlier statement)"
                        .to_string(),
                );
            }
            if matches!(&a, Err(f) if is_refusal(f)) {
                refused = true;
            }
            self.record(category, proto, sql.clone(), class, a, b);
        }
        let _ = self.proxy.simple_query("rollback").await;
        let _ = self.one.simple_query("rollback").await;
    }
}

fn statements(step: &Step) -> usize {
    match step {
        Step::Read { .. } | Step::Write(_) => 1,
        Step::Tx(s) => s.len(),
    }
}

#[test]
fn tenant_corpus_matches_one_database() {
    let total_start = Instant::now();
    let private = PrivateCluster::start(&["--shards", "3", "--replicas", "0"]);
    let base = private.0.base_port;
    private.run(
        "psql",
        &[
            "--shard",
            "s0",
            "-c",
            "create database tenant_one owner app",
        ],
    );
    let proxy = TestProxy::start_on(&private.0, |c| set_tables(c, TABLES));
    block_on(Duration::from_secs(600), async {
        let (c, _t) = connect_url(&proxy.url()).await;
        let (one, _t1) =
            connect_url(&format!("postgres://app:app@127.0.0.1:{base}/tenant_one")).await;
        c.batch_execute(SCHEMA)
            .await
            .expect("schema through the proxy");
        one.batch_execute(SCHEMA).await.expect("schema tenant_one");
        for sql in inserts() {
            c.simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            one.batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        // The rows really are spread: customers, orders and events on every
        // shard, products on all of them, the unsharded tables on s0 only.
        for i in 0..3u16 {
            let (s, _ts) =
                connect_url(&format!("postgres://app:app@127.0.0.1:{}/app", base + i)).await;
            for t in ["customers", "orders", "order_items", "events"] {
                let n = query_count(&s, &format!("select count(*) from {t}")).await;
                assert!(n > 5, "{t} has {n} rows on shard {i}");
            }
            assert_eq!(query_count(&s, "select count(*) from products").await, 15);
            let plans = query_count(&s, "select count(*) from plans").await;
            assert_eq!(plans, if i == 0 { 5 } else { 0 }, "plans on shard {i}");
            // Orders live with their customer.
            assert_eq!(
                query_count(
                    &s,
                    "select count(*) from orders o where not exists (select 1 from customers c where c.id = o.customer_id)"
                )
                .await,
                0
            );
        }
        let loaded = total_start.elapsed();

        let started = Instant::now();
        let mut runner = Runner {
            proxy: &c,
            one: &one,
            records: Vec::new(),
        };
        for &(category, steps) in CORPUS {
            for step in steps {
                for proto in [Proto::Simple, Proto::Extended] {
                    let p = if proto == Proto::Simple { "1" } else { "2" };
                    match *step {
                        Step::Read {
                            sql,
                            ordered,
                            numeric,
                        } => runner.read(category, proto, sql, ordered, numeric).await,
                        Step::Write(sql) => {
                            runner.write(category, proto, &sql.replace("{p}", p)).await
                        }
                        Step::Tx(stmts) => {
                            let stmts: Vec<String> =
                                stmts.iter().map(|s| s.replace("{p}", p)).collect();
                            runner.transaction(category, proto, &stmts).await
                        }
                    }
                }
            }
        }
        let records = runner.records;

        // Summary.
        let statements_total: usize = CORPUS
            .iter()
            .map(|(_, s)| s.iter().map(statements).sum::<usize>())
            .sum();
        eprintln!(
            "\ntenant corpus: {statements_total} statements, {} (statement, protocol) pairs, loaded in {:.1}s, ran in {:.1}s",
            records.len(),
            loaded.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        eprintln!(
            "{:<22} {:>5} | {:>6} {:>8} {:>6} | {:>6} {:>8} {:>6}",
            "category", "stmts", "S:same", "S:refuse", "S:wrong", "E:same", "E:refuse", "E:wrong"
        );
        let count = |cat: Option<&str>, proto: Proto, f: &dyn Fn(&Class) -> bool| {
            records
                .iter()
                .filter(|r| cat.is_none_or(|c| r.category == c) && r.proto == proto && f(&r.class))
                .count()
        };
        let same = |c: &Class| *c == Class::Same;
        let refused = |c: &Class| matches!(c, Class::Refused(_));
        let wrong = |c: &Class| *c == Class::Wrong;
        for (category, steps) in CORPUS {
            let n: usize = steps.iter().map(statements).sum();
            let cat = Some(*category);
            eprintln!(
                "{:<22} {:>5} | {:>6} {:>8} {:>6} | {:>6} {:>8} {:>6}",
                category,
                n,
                count(cat, Proto::Simple, &same),
                count(cat, Proto::Simple, &refused),
                count(cat, Proto::Simple, &wrong),
                count(cat, Proto::Extended, &same),
                count(cat, Proto::Extended, &refused),
                count(cat, Proto::Extended, &wrong),
            );
        }
        eprintln!(
            "{:<22} {:>5} | {:>6} {:>8} {:>6} | {:>6} {:>8} {:>6}",
            "total",
            statements_total,
            count(None, Proto::Simple, &same),
            count(None, Proto::Simple, &refused),
            count(None, Proto::Simple, &wrong),
            count(None, Proto::Extended, &same),
            count(None, Proto::Extended, &refused),
            count(None, Proto::Extended, &wrong),
        );
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        eprintln!("\nREFUSED:");
        for r in &records {
            if let Class::Refused(msg) = &r.class {
                eprintln!(
                    "  [{}] {:?}: {}\n      -> {msg}",
                    r.category, r.proto, r.sql
                );
                *reasons.entry(msg.clone()).or_default() += 1;
            }
        }
        eprintln!("\nrefusal reasons:");
        for (msg, n) in &reasons {
            eprintln!("  {n:>3} x {msg}");
        }

        let wrongs: Vec<String> = records
            .iter()
            .filter(|r| r.class == Class::Wrong)
            .map(|r| {
                format!(
                    "[{}] {:?}: {}\n  proxy:  {}\n  direct: {}",
                    r.category,
                    r.proto,
                    r.sql,
                    show(&r.proxy),
                    show(&r.direct)
                )
            })
            .collect();
        if std::env::var_os("TENANT_CORPUS_VERBOSE").is_some() {
            eprintln!("\nreads whose plain answer has no rows:");
            for r in &records {
                if let Ok(parts) = &r.direct {
                    if parts
                        .iter()
                        .all(|p| p.rows.is_empty() && !p.names.is_empty())
                    {
                        eprintln!("  [{}] {:?}: {}", r.category, r.proto, r.sql);
                    }
                }
            }
        }
        let same_n = records.iter().filter(|r| r.class == Class::Same).count();
        let pct = 100.0 * same_n as f64 / records.len() as f64;
        eprintln!(
            "\nSAME {same_n} of {} pairs ({pct:.1}%), REFUSED {}, WRONG {}; total time {:.1}s",
            records.len(),
            records.iter().filter(|r| refused(&r.class)).count(),
            wrongs.len(),
            total_start.elapsed().as_secs_f64()
        );
        assert!(
            statements_total >= 260,
            "only {statements_total} statements"
        );
        assert!(
            wrongs.is_empty(),
            "{} WRONG answers:\n\n{}",
            wrongs.len(),
            wrongs.join("\n\n")
        );
        assert!(
            pct >= 97.0,
            "only {same_n} of {} (statement, protocol) pairs ({pct:.1}%) answered the same; refusals by reason: {reasons:#?}",
            records.len()
        );
    });
}

//! The column order of sharded tables, for INSERTs without a column list:
//! where among a row's values the shard key is.
//!
//! The router does no I/O, so the session reads a missing table's columns
//! from the catalog and puts them here before routing such an INSERT.
//! Entries expire after `TTL`, and DDL run through the proxy clears them,
//! so a table changed by a migration is read again rather than routed by
//! its old shape.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a table's column list is trusted without DDL through the proxy.
pub const TTL: Duration = Duration::from_secs(10);

/// A table's columns and when they were read.
type Entry = (Instant, Arc<[String]>);

#[derive(Debug, Default)]
pub struct ColumnCache {
    by_table: RwLock<HashMap<String, Entry>>,
}

impl ColumnCache {
    /// The columns of `table` (in order, dropped ones left out), if known
    /// and fresh.
    pub fn get(&self, table: &str) -> Option<Arc<[String]>> {
        let map = self.by_table.read().ok()?;
        let (at, cols) = map.get(table)?;
        (at.elapsed() < TTL).then(|| cols.clone())
    }

    pub fn put(&self, table: &str, columns: Vec<String>) {
        if let Ok(mut map) = self.by_table.write() {
            map.insert(table.to_string(), (Instant::now(), columns.into()));
        }
    }

    /// Forget every table (after DDL through the proxy).
    pub fn clear(&self) {
        if let Ok(mut map) = self.by_table.write() {
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_clear() {
        let c = ColumnCache::default();
        assert!(c.get("t").is_none());
        c.put("t", vec!["a".into(), "id".into()]);
        assert_eq!(c.get("t").unwrap().as_ref(), ["a", "id"]);
        c.clear();
        assert!(c.get("t").is_none());
    }
}

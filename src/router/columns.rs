//! The column order of sharded tables, for INSERTs without a column list:
//! where among a row's values the shard key is.
//!
//! The router does no I/O, so the session reads a missing table's columns
//! from the catalog and puts them here before routing such an INSERT.
//! Entries expire after `TTL`, and DDL run through the proxy clears them,
//! so a table changed by a migration is read again rather than routed by
//! its old shape. DDL clears the cache before it runs and again once it is
//! committed, and each clear starts a new generation: a read of the
//! catalog that began in an older generation (and may have seen the old
//! shape) is not kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a table's column list is trusted without DDL through the proxy.
pub const TTL: Duration = Duration::from_secs(10);

/// A table's columns and when they were read.
type Entry = (Instant, Arc<[String]>);

#[derive(Debug, Default)]
pub struct ColumnCache {
    by_table: RwLock<HashMap<String, Entry>>,
    /// Bumped by every `clear`.
    generation: AtomicU64,
}

impl ColumnCache {
    /// The columns of `table` (in order, dropped ones left out), if known
    /// and fresh.
    pub fn get(&self, table: &str) -> Option<Arc<[String]>> {
        let map = self.by_table.read().ok()?;
        let (at, cols) = map.get(table)?;
        (at.elapsed() < TTL).then(|| cols.clone())
    }

    /// The generation to pass to `put`, taken before the catalog is read.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keep `columns`, read from the catalog in `generation`, unless DDL
    /// has cleared the cache since.
    pub fn put(&self, table: &str, columns: Vec<String>, generation: u64) {
        if let Ok(mut map) = self.by_table.write() {
            // Checked under the lock `clear` takes: a clear either comes
            // first (and this is dropped) or removes it after.
            if self.generation.load(Ordering::Acquire) == generation {
                map.insert(table.to_string(), (Instant::now(), columns.into()));
            }
        }
    }

    /// Forget every table (DDL through the proxy is about to run, or ran).
    pub fn clear(&self) {
        if let Ok(mut map) = self.by_table.write() {
            self.generation.fetch_add(1, Ordering::AcqRel);
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
        c.put("t", vec!["a".into(), "id".into()], c.generation());
        assert_eq!(c.get("t").unwrap().as_ref(), ["a", "id"]);
        c.clear();
        assert!(c.get("t").is_none());
        // A read that began before a clear (DDL) is not kept.
        let before = c.generation();
        c.clear();
        c.put("t", vec!["id".into()], before);
        assert!(c.get("t").is_none());
    }
}

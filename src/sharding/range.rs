//! Range sharding: ordered, contiguous, non-overlapping key ranges to shards.
//!
//! Each range is `[from, to)`: `from` inclusive, `to` exclusive, either end
//! may be open (unbounded). Bounds are all integers or all text. Text is
//! compared byte-wise, which is PostgreSQL's C collation and Rust's `str`
//! ordering, so the proxy and a `WHERE key >= 'a' AND key < 'm'` on the shard
//! agree on every boundary. (Timestamps are routed as integers, e.g.
//! microseconds since the epoch, by whoever builds the map.)
//!
//! The ranges must tile one contiguous span: overlaps would make a key's shard
//! ambiguous, and gaps are almost always a config typo, so both are rejected
//! when the map is built. A key outside the span is an error, not a default
//! shard: writing it anywhere would put it where no later lookup finds it.

use std::cmp::Ordering;
use std::fmt;

use super::pghash::KeyValue;

/// One end of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeBound {
    /// An integer bound (any integer column type).
    Int(i64),
    /// A text bound, compared by UTF-8 bytes.
    Text(String),
}

impl RangeBound {
    fn type_name(&self) -> &'static str {
        match self {
            RangeBound::Int(_) => "integer",
            RangeBound::Text(_) => "text",
        }
    }

    /// Orders two bounds of the same type; `None` for mixed types.
    fn cmp_same(&self, other: &RangeBound) -> Option<Ordering> {
        match (self, other) {
            (RangeBound::Int(a), RangeBound::Int(b)) => Some(a.cmp(b)),
            (RangeBound::Text(a), RangeBound::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            _ => None,
        }
    }

    /// Orders a key against this bound; `None` if the types differ.
    fn cmp_key(&self, key: &KeyValue) -> Option<Ordering> {
        match (self, key) {
            (RangeBound::Int(b), KeyValue::Int(k)) => Some(b.cmp(k)),
            (RangeBound::Text(b), KeyValue::Text(k)) => Some(b.as_bytes().cmp(k.as_bytes())),
            _ => None,
        }
    }
}

impl fmt::Display for RangeBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeBound::Int(v) => write!(f, "{v}"),
            RangeBound::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// A range `[from, to)` and the shard that owns it; `None` is an open end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSpec {
    /// Inclusive lower bound, or `None` for no lower bound.
    pub from: Option<RangeBound>,
    /// Exclusive upper bound, or `None` for no upper bound.
    pub to: Option<RangeBound>,
    /// Index of the owning shard.
    pub shard: usize,
}

impl RangeSpec {
    /// A range with the given bounds.
    pub fn new(from: Option<RangeBound>, to: Option<RangeBound>, shard: usize) -> RangeSpec {
        RangeSpec { from, to, shard }
    }

    /// Whether `key` is at or after `from` (true for an open start).
    fn starts_at_or_before(&self, key: &KeyValue) -> bool {
        match &self.from {
            None => true,
            Some(from) => from.cmp_key(key) != Some(Ordering::Greater),
        }
    }

    /// Whether `key` is before `to` (true for an open end).
    fn ends_after(&self, key: &KeyValue) -> bool {
        match &self.to {
            None => true,
            Some(to) => to.cmp_key(key) == Some(Ordering::Greater),
        }
    }
}

/// `[from, to)` with open ends as `(-inf` and `+inf)`.
fn fmt_span(from: Option<&RangeBound>, to: Option<&RangeBound>) -> String {
    let from = from.map_or_else(|| "(-inf".to_string(), |b| format!("[{b}"));
    let to = to.map_or_else(|| "+inf)".to_string(), |b| format!("{b})"));
    format!("{from}, {to}")
}

impl fmt::Display for RangeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> shard {}",
            fmt_span(self.from.as_ref(), self.to.as_ref()),
            self.shard
        )
    }
}

/// A key no range owns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfRange {
    /// The key is below the first range or at/after the end of the last.
    #[error("key {key} is outside every range; the ranges cover {span}")]
    Outside {
        /// The key, as [`KeyValue`] displays it.
        key: String,
        /// The covered span, e.g. `[10, 500)`.
        span: String,
    },
    /// The key's type cannot be compared with the bounds.
    #[error("key {key} is {key_type} but the ranges have {bound_type} bounds (covering {span})")]
    WrongType {
        /// The key, as [`KeyValue`] displays it.
        key: String,
        /// `integer`, `text` or `uuid`.
        key_type: &'static str,
        /// `integer` or `text`.
        bound_type: &'static str,
        /// The covered span.
        span: String,
    },
}

/// Validated range map: ranges sorted by `from`, contiguous, one bound type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMap {
    ranges: Vec<RangeSpec>,
    /// `None` when no range has a bound (one range covering everything).
    bound_type: Option<&'static str>,
}

impl RangeMap {
    /// Validates and sorts `specs`. Rejects: no ranges, mixed integer/text
    /// bounds, a range with `from >= to`, overlapping ranges (including two
    /// ranges open at the same end), and gaps between consecutive ranges.
    /// Errors name the offending ranges by their position in `specs`.
    pub fn new(specs: Vec<RangeSpec>) -> Result<RangeMap, String> {
        if specs.is_empty() {
            return Err("no ranges given".to_string());
        }

        let mut bound_type: Option<(&'static str, usize)> = None;
        for (i, spec) in specs.iter().enumerate() {
            for bound in spec.from.iter().chain(spec.to.iter()) {
                match bound_type {
                    None => bound_type = Some((bound.type_name(), i)),
                    Some((t, first)) if t != bound.type_name() => {
                        return Err(format!(
                            "ranges[{i}] {spec} has a {} bound but ranges[{first}] has {t} bounds; \
                             all bounds must be of one type",
                            bound.type_name()
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let (Some(from), Some(to)) = (&spec.from, &spec.to) {
                if from.cmp_same(to) != Some(Ordering::Less) {
                    return Err(format!(
                        "ranges[{i}] {spec} is empty: from must be less than to"
                    ));
                }
            }
        }

        let mut indexed: Vec<(usize, RangeSpec)> = specs.into_iter().enumerate().collect();
        // Open starts first, then by bound (all one type by now). Stable, so
        // equal starts keep input order for the error message.
        indexed.sort_by(|(_, a), (_, b)| match (&a.from, &b.from) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => x.cmp_same(y).unwrap_or(Ordering::Equal),
        });

        for pair in indexed.windows(2) {
            let ((i, prev), (j, next)) = (&pair[0], &pair[1]);
            let overlap = || format!("ranges[{i}] {prev} overlaps ranges[{j}] {next}");
            match (&prev.to, &next.from) {
                (None, _) | (_, None) => return Err(overlap()),
                (Some(end), Some(start)) => match end.cmp_same(start) {
                    Some(Ordering::Greater) => return Err(overlap()),
                    Some(Ordering::Less) => {
                        return Err(format!(
                            "gap between ranges[{i}] {prev} and ranges[{j}] {next}: \
                             keys in [{end}, {start}) would have no shard"
                        ));
                    }
                    _ => {}
                },
            }
        }

        Ok(RangeMap {
            ranges: indexed.into_iter().map(|(_, spec)| spec).collect(),
            bound_type: bound_type.map(|(t, _)| t),
        })
    }

    /// The ranges, sorted by `from`.
    pub fn ranges(&self) -> &[RangeSpec] {
        &self.ranges
    }

    /// The span all ranges cover together, e.g. `[10, +inf)`.
    pub fn span(&self) -> String {
        let first = self
            .ranges
            .first()
            .expect("a RangeMap has at least one range");
        let last = self
            .ranges
            .last()
            .expect("a RangeMap has at least one range");
        fmt_span(first.from.as_ref(), last.to.as_ref())
    }

    /// The shard whose range contains `key`.
    pub fn shard_for(&self, key: &KeyValue) -> Result<usize, OutOfRange> {
        if let Some(bound_type) = self.bound_type {
            let key_type = match key {
                KeyValue::Int(_) => "integer",
                KeyValue::Text(_) => "text",
                KeyValue::Uuid(_) => "uuid",
            };
            if key_type != bound_type {
                return Err(OutOfRange::WrongType {
                    key: key.to_string(),
                    key_type,
                    bound_type,
                    span: self.span(),
                });
            }
        }
        // Ranges are sorted and contiguous: the candidate is the last range
        // starting at or before the key.
        let after = self.ranges.partition_point(|r| r.starts_at_or_before(key));
        match after.checked_sub(1).map(|i| &self.ranges[i]) {
            Some(range) if range.ends_after(key) => Ok(range.shard),
            _ => Err(OutOfRange::Outside {
                key: key.to_string(),
                span: self.span(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> Option<RangeBound> {
        Some(RangeBound::Int(v))
    }

    fn text(s: &str) -> Option<RangeBound> {
        Some(RangeBound::Text(s.to_string()))
    }

    fn key(v: i64) -> KeyValue {
        KeyValue::Int(v)
    }

    fn tkey(s: &str) -> KeyValue {
        KeyValue::Text(s.to_string())
    }

    #[test]
    fn integer_boundaries() {
        // Given out of order on purpose: the map sorts.
        let m = RangeMap::new(vec![
            RangeSpec::new(int(100), int(200), 1),
            RangeSpec::new(int(0), int(100), 0),
            RangeSpec::new(int(200), int(1000), 2),
        ])
        .unwrap();
        assert_eq!(m.shard_for(&key(0)), Ok(0)); // from is inclusive
        assert_eq!(m.shard_for(&key(99)), Ok(0));
        assert_eq!(m.shard_for(&key(100)), Ok(1)); // to is exclusive
        assert_eq!(m.shard_for(&key(199)), Ok(1));
        assert_eq!(m.shard_for(&key(200)), Ok(2));
        assert_eq!(m.shard_for(&key(999)), Ok(2));
        assert_eq!(m.span(), "[0, 1000)");

        let below = m.shard_for(&key(-1)).unwrap_err();
        assert_eq!(
            below.to_string(),
            "key -1 is outside every range; the ranges cover [0, 1000)"
        );
        let above = m.shard_for(&key(1000)).unwrap_err();
        assert_eq!(
            above.to_string(),
            "key 1000 is outside every range; the ranges cover [0, 1000)"
        );
        assert!(m.shard_for(&key(i64::MIN)).is_err());
        assert!(m.shard_for(&key(i64::MAX)).is_err());
    }

    #[test]
    fn open_ends() {
        let m = RangeMap::new(vec![
            RangeSpec::new(None, int(-10), 0),
            RangeSpec::new(int(-10), int(10), 1),
            RangeSpec::new(int(10), None, 2),
        ])
        .unwrap();
        assert_eq!(m.shard_for(&key(i64::MIN)), Ok(0));
        assert_eq!(m.shard_for(&key(-11)), Ok(0));
        assert_eq!(m.shard_for(&key(-10)), Ok(1));
        assert_eq!(m.shard_for(&key(9)), Ok(1));
        assert_eq!(m.shard_for(&key(10)), Ok(2));
        assert_eq!(m.shard_for(&key(i64::MAX)), Ok(2));
        assert_eq!(m.span(), "(-inf, +inf)");

        let everything = RangeMap::new(vec![RangeSpec::new(None, None, 3)]).unwrap();
        assert_eq!(everything.shard_for(&key(5)), Ok(3));
        assert_eq!(everything.shard_for(&tkey("x")), Ok(3));
        assert_eq!(everything.shard_for(&KeyValue::Uuid([0; 16])), Ok(3));

        let upper_only = RangeMap::new(vec![RangeSpec::new(None, int(0), 0)]).unwrap();
        assert_eq!(upper_only.shard_for(&key(-1)), Ok(0));
        assert_eq!(
            upper_only.shard_for(&key(0)).unwrap_err().to_string(),
            "key 0 is outside every range; the ranges cover (-inf, 0)"
        );
        let lower_only = RangeMap::new(vec![RangeSpec::new(int(0), None, 0)]).unwrap();
        assert_eq!(lower_only.shard_for(&key(0)), Ok(0));
        assert!(lower_only.shard_for(&key(-1)).is_err());
    }

    #[test]
    fn text_bounds_compare_bytes() {
        let m = RangeMap::new(vec![
            RangeSpec::new(None, text("M"), 0),
            RangeSpec::new(text("M"), text("a"), 1),
            RangeSpec::new(text("a"), text("n"), 2),
            RangeSpec::new(text("n"), None, 3),
        ])
        .unwrap();
        assert_eq!(m.shard_for(&tkey("")), Ok(0));
        assert_eq!(m.shard_for(&tkey("Lzzz")), Ok(0));
        assert_eq!(m.shard_for(&tkey("M")), Ok(1));
        // C collation: every upper-case letter sorts before every lower-case.
        assert_eq!(m.shard_for(&tkey("Zebra")), Ok(1));
        assert_eq!(m.shard_for(&tkey("a")), Ok(2));
        assert_eq!(m.shard_for(&tkey("mzzz")), Ok(2));
        assert_eq!(m.shard_for(&tkey("n")), Ok(3));
        // A prefix sorts before its extensions; non-ASCII after ASCII.
        assert_eq!(m.shard_for(&tkey("n\u{0}")), Ok(3));
        assert_eq!(m.shard_for(&tkey("é")), Ok(3));

        let bounded = RangeMap::new(vec![RangeSpec::new(text("b"), text("c"), 0)]).unwrap();
        assert_eq!(bounded.shard_for(&tkey("b")), Ok(0));
        assert_eq!(bounded.shard_for(&tkey("bzzzz")), Ok(0));
        assert!(bounded.shard_for(&tkey("c")).is_err());
        assert_eq!(
            bounded.shard_for(&tkey("azzz")).unwrap_err().to_string(),
            "key \"azzz\" is outside every range; the ranges cover [\"b\", \"c\")"
        );
    }

    #[test]
    fn wrong_key_type() {
        let m = RangeMap::new(vec![RangeSpec::new(int(0), int(10), 0)]).unwrap();
        let err = m.shard_for(&tkey("5")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key \"5\" is text but the ranges have integer bounds (covering [0, 10))"
        );
        assert!(matches!(
            m.shard_for(&KeyValue::Uuid([0; 16])),
            Err(OutOfRange::WrongType {
                key_type: "uuid",
                ..
            })
        ));
    }

    #[test]
    fn rejects_overlaps() {
        let err = RangeMap::new(vec![
            RangeSpec::new(int(0), int(100), 0),
            RangeSpec::new(int(50), int(150), 1),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            "ranges[0] [0, 100) -> shard 0 overlaps ranges[1] [50, 150) -> shard 1"
        );

        // Same start.
        assert!(RangeMap::new(vec![
            RangeSpec::new(int(0), int(10), 0),
            RangeSpec::new(int(0), int(20), 1),
        ])
        .is_err());
        // Two open starts, two open ends, an open end before another range.
        assert!(RangeMap::new(vec![
            RangeSpec::new(None, int(0), 0),
            RangeSpec::new(None, int(5), 1)
        ])
        .is_err());
        assert!(RangeMap::new(vec![
            RangeSpec::new(int(0), None, 0),
            RangeSpec::new(int(5), None, 1)
        ])
        .is_err());
        let err = RangeMap::new(vec![
            RangeSpec::new(int(0), None, 0),
            RangeSpec::new(int(-5), int(1), 1),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            "ranges[1] [-5, 1) -> shard 1 overlaps ranges[0] [0, +inf) -> shard 0"
        );
        // Touching is fine in any input order.
        assert!(RangeMap::new(vec![
            RangeSpec::new(int(0), None, 0),
            RangeSpec::new(int(-5), int(0), 1)
        ])
        .is_ok());
        // Duplicate range.
        assert!(RangeMap::new(vec![
            RangeSpec::new(int(0), int(1), 0),
            RangeSpec::new(int(0), int(1), 0)
        ])
        .is_err());
        // Contained range.
        assert!(RangeMap::new(vec![
            RangeSpec::new(int(0), int(100), 0),
            RangeSpec::new(int(10), int(20), 1),
        ])
        .is_err());
    }

    #[test]
    fn rejects_gaps() {
        let err = RangeMap::new(vec![
            RangeSpec::new(int(0), int(100), 0),
            RangeSpec::new(int(101), int(200), 1),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            "gap between ranges[0] [0, 100) -> shard 0 and ranges[1] [101, 200) -> shard 1: \
             keys in [100, 101) would have no shard"
        );
        assert!(RangeMap::new(vec![
            RangeSpec::new(text("a"), text("b"), 0),
            RangeSpec::new(text("bb"), text("c"), 1),
        ])
        .is_err());
    }

    #[test]
    fn rejects_mixed_types_empty_and_inverted() {
        let err = RangeMap::new(vec![
            RangeSpec::new(int(0), int(10), 0),
            RangeSpec::new(text("10"), None, 1),
        ])
        .unwrap_err();
        assert!(
            err.contains("text bound") && err.contains("integer bounds"),
            "{err}"
        );
        assert!(RangeMap::new(vec![RangeSpec::new(int(0), text("z"), 0)]).is_err());

        assert_eq!(RangeMap::new(vec![]).unwrap_err(), "no ranges given");
        let err = RangeMap::new(vec![RangeSpec::new(int(5), int(5), 0)]).unwrap_err();
        assert_eq!(
            err,
            "ranges[0] [5, 5) -> shard 0 is empty: from must be less than to"
        );
        assert!(RangeMap::new(vec![RangeSpec::new(int(6), int(5), 0)]).is_err());
        assert!(RangeMap::new(vec![RangeSpec::new(text("b"), text("a"), 0)]).is_err());
    }

    #[test]
    fn extreme_integer_bounds() {
        let m = RangeMap::new(vec![
            RangeSpec::new(int(i64::MIN), int(0), 0),
            RangeSpec::new(int(0), int(i64::MAX), 1),
        ])
        .unwrap();
        assert_eq!(m.shard_for(&key(i64::MIN)), Ok(0));
        assert_eq!(m.shard_for(&key(i64::MAX - 1)), Ok(1));
        // to is exclusive even at i64::MAX; an open end covers it.
        assert!(m.shard_for(&key(i64::MAX)).is_err());
        assert_eq!(m.ranges().len(), 2);
    }
}

//! The consistent-hash ring that maps hash-sharded keys to shards.
//!
//! Positions on the ring are signed 64-bit PostgreSQL extended hashes:
//! a key sits at [`KeyValue::position`], and shard `name`'s vnode `i` sits at
//! `hashtextextended('<name>#<i>', 0)`. Both are pure functions of their
//! inputs, identical on every machine, Rust version and PostgreSQL server, so
//! a ring built from the same shard names and vnode count always routes the
//! same, and the server can evaluate which arc a row is on.
//!
//! # Ring order and SQL predicates
//!
//! The ring is ordered by *signed* position: `i64::MIN` first, `i64::MAX`
//! last, then wrapping around to `i64::MIN`. (The `hashring` crate orders
//! `u64` keys, so positions are fed to it through the order-preserving map
//! `pos as u64 ^ 1 << 63`, not a plain `as u64` cast, which would put the
//! negative half after the positive one.) A key belongs to the first vnode at
//! or after its position (`vnode.position >= key position`); keys after the
//! last vnode wrap to the first one.
//!
//! With vnodes `v0 < v1 < ... < vn` (signed), vnode `vk` owns `(v(k-1), vk]`,
//! and `v0` owns both `[i64::MIN, v0]` and `(vn, i64::MAX]`. Because the
//! wrapping arc is split at the signed boundary, [`HashRing::arcs`] returns
//! plain inclusive signed intervals that tile `i64` exactly once, each of
//! which is the SQL predicate `hashint8extended(col, 0) BETWEEN lo AND hi`
//! (see [`Arc::sql_predicate`]; PostgreSQL compares the int8 hash as signed,
//! like we do).
//!
//! # Stability
//!
//! A vnode's position depends on the shard's *name* and the vnode count, not
//! on the shard's index, so renaming a shard or changing the vnode count
//! re-routes keys (that is a rebalancing, not a config edit), while reordering
//! the shard list only renumbers the indices returned. Adding a shard only
//! moves keys onto the new shard. `tests::pinned_routes` fails if any of this
//! changes by accident.

use std::hash::{BuildHasher, Hash, Hasher};

use super::pghash::{hashtextextended, KeyKind, KeyValue, SEED};

/// Virtual nodes per shard unless configured otherwise.
///
/// Chosen by measured evenness. A shard's share of the ring is the sum of its
/// vnodes' arcs, so its relative spread shrinks like `1/sqrt(vnodes)`. The
/// worst shard's deviation from its fair share `1/N` of the i64 space
/// (mean / max over four naming schemes `s0..`, `shard-0..`, `pg0..`,
/// `db_a..`; `tests::vnode_evenness_table` prints this):
///
/// | vnodes | N=2       | N=3        | N=4        | N=5        | N=8        | N=16       |
/// |--------|-----------|------------|------------|------------|------------|------------|
/// | 128    | 3.2/6.0%  | 10.8/14.7% | 8.0/10.0%  | 6.9/7.8%   | 12.5/15.4% | 16.0/25.1% |
/// | 256    | 2.8/4.8%  | 6.9/10.7%  | 8.8/13.5%  | 9.4/15.0%  | 11.2/14.7% | 14.8/17.2% |
/// | 512    | 5.8/7.6%  | 6.0/9.6%   | 5.6/9.9%   | 5.8/9.3%   | 7.8/12.6%  | 11.7/14.9% |
/// | 1024   | 2.3/4.7%  | 4.5/8.7%   | 5.5/8.9%   | 6.1/9.3%   | 5.1/6.3%   | 7.2/7.8%   |
///
/// 1024 is the smallest power of two that keeps every shard within 10% of
/// its fair share for 2 to 16 shards under every naming scheme tried. The
/// cost is small where it matters: 16 shards make a 16k-entry ring (about
/// 0.5 MB; a lookup takes ~0.1 µs, a 14-step binary search) built once per
/// topology change in ~10 ms (release build). The price is paid in
/// rebalancing: adding a shard moves about `1024 / N` arcs from each old
/// shard, i.e. that many `BETWEEN` terms in a row filter.
///
/// Changing this value re-routes almost every key of rings that use the
/// default: treat it like a data format.
pub const DEFAULT_VNODES: u32 = 1024;

/// An inclusive range of ring positions owned by one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arc {
    /// First position in the arc (inclusive).
    pub lo: i64,
    /// Last position in the arc (inclusive).
    pub hi: i64,
    /// Index of the owning shard.
    pub shard: usize,
}

impl Arc {
    /// Whether `pos` lies on this arc.
    pub fn contains(&self, pos: i64) -> bool {
        self.lo <= pos && pos <= self.hi
    }

    /// The arc as an `int8range` element of a multirange literal
    /// (`[lo,hi]`, an open end for `i64::MIN`/`i64::MAX`: an inclusive
    /// `i64::MAX` would overflow PostgreSQL's canonical form).
    pub fn range_literal(&self) -> String {
        let lo = if self.lo == i64::MIN {
            "(".to_string()
        } else {
            format!("[{}", self.lo)
        };
        let hi = if self.hi == i64::MAX {
            ")".to_string()
        } else {
            format!("{}]", self.hi)
        };
        format!("{lo},{hi}")
    }

    /// The predicate a shard evaluates to select the rows on this arc, e.g.
    /// `hashint8extended(id, 0) BETWEEN -5 AND 17`. `column` is inserted
    /// verbatim (the caller quotes identifiers). Ends at `i64::MIN`/`i64::MAX`
    /// are written as one-sided comparisons, which avoids spelling
    /// `-9223372036854775808` in SQL and keeps the predicate obviously total.
    pub fn sql_predicate(&self, kind: KeyKind, column: &str) -> String {
        let expr = kind.sql_position(column);
        match (self.lo == i64::MIN, self.hi == i64::MAX) {
            (true, true) => "true".to_string(),
            (true, false) => format!("{expr} <= {}", self.hi),
            (false, true) => format!("{expr} >= {}", self.lo),
            (false, false) => format!("{expr} BETWEEN {} AND {}", self.lo, self.hi),
        }
    }
}

/// One virtual node: a ring position owned by a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VNode {
    position: i64,
    shard: usize,
}

/// Maps a signed position to the `u64` the `hashring` crate orders by, so
/// that its unsigned order is our signed order (flip the sign bit).
fn ring_key(position: i64) -> u64 {
    (position as u64) ^ (1 << 63)
}

/// What `hashring` hashes to find a node's or a key's ring key. Both feed the
/// precomputed position to the hasher as a single `u64`.
struct RingKey(u64);

impl Hash for RingKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(ring_key(self.position));
    }
}

/// A `BuildHasher` whose hash of a [`RingKey`]/[`VNode`] is the `u64` it
/// writes: this makes `hashring` use our PostgreSQL-derived positions
/// instead of its own SipHash of the value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PositionHasherBuilder;

#[derive(Debug, Default)]
struct PositionHasher(u64);

impl Hasher for PositionHasher {
    fn write(&mut self, _bytes: &[u8]) {
        // Only RingKey and VNode are ever hashed here, and they write exactly
        // one u64. Anything else would silently route by some other hash.
        panic!("the ring hasher accepts only a u64 position");
    }

    fn write_u64(&mut self, position: u64) {
        self.0 = position;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for PositionHasherBuilder {
    type Hasher = PositionHasher;

    fn build_hasher(&self) -> PositionHasher {
        PositionHasher::default()
    }
}

/// A consistent-hash ring over named shards. Shard ids are indices into the
/// name list given to [`HashRing::new`].
#[derive(Debug, Clone)]
pub struct HashRing {
    ring: hashring::HashRing<VNode, PositionHasherBuilder>,
    /// The same vnodes sorted by position, for `arcs()`: `hashring` does not
    /// expose its nodes' keys.
    vnodes: Vec<VNode>,
    shard_count: usize,
}

impl HashRing {
    /// Builds the ring for `shards` (index = shard id) with
    /// `vnodes_per_shard` virtual nodes each.
    ///
    /// Rejects an empty shard list, zero vnodes, and duplicate or empty shard
    /// names (two shards with one name would get identical vnode positions).
    ///
    /// Two vnodes hashing to the same position (probability about
    /// `n^2 / 2^65` for `n` vnodes, i.e. never in practice) are resolved
    /// deterministically: the vnode of the lower shard index, then the lower
    /// vnode index, keeps the position and the other is dropped. `hashring`
    /// alone would leave the choice to an unspecified binary-search result.
    pub fn new(shards: &[&str], vnodes_per_shard: u32) -> Result<HashRing, String> {
        if shards.is_empty() {
            return Err("a hash ring needs at least one shard".to_string());
        }
        if vnodes_per_shard == 0 {
            return Err("vnodes per shard must be at least 1".to_string());
        }
        for (i, name) in shards.iter().enumerate() {
            if name.is_empty() {
                return Err(format!("shard {i} has an empty name"));
            }
            if let Some(j) = shards[..i].iter().position(|other| other == name) {
                return Err(format!("shard name {name:?} is used by shards {j} and {i}"));
            }
        }

        let mut vnodes = Vec::with_capacity(shards.len() * vnodes_per_shard as usize);
        for (shard, name) in shards.iter().enumerate() {
            for i in 0..vnodes_per_shard {
                vnodes.push(VNode {
                    position: vnode_position(name, i),
                    shard,
                });
            }
        }
        // Stable sort: among equal positions the earlier (shard, vnode) stays
        // first and dedup keeps it.
        vnodes.sort_by_key(|v| v.position);
        vnodes.dedup_by_key(|v| v.position);

        let mut ring = hashring::HashRing::with_hasher(PositionHasherBuilder);
        ring.batch_add(vnodes.clone());

        Ok(HashRing {
            ring,
            vnodes,
            shard_count: shards.len(),
        })
    }

    /// Number of shards the ring was built for.
    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// The shard that owns `key`.
    pub fn shard_for(&self, key: &KeyValue) -> usize {
        self.shard_for_position(key.position())
    }

    /// The shard that owns ring position `pos`: the owner of the first vnode
    /// at or after `pos`, wrapping past `i64::MAX` to the first vnode.
    pub fn shard_for_position(&self, pos: i64) -> usize {
        self.ring
            .get(&RingKey(ring_key(pos)))
            .expect("a HashRing always has at least one vnode")
            .shard
    }

    /// The ring as inclusive signed position ranges, sorted by `lo`, tiling
    /// `i64::MIN..=i64::MAX` with no gaps or overlaps. Adjacent arcs of the
    /// same shard are merged, so each arc is one maximal run. The first and
    /// the last entry both belong to the first vnode's shard: they are the
    /// two halves of the arc that wraps past `i64::MAX` (see the module
    /// docs). A ring of one shard is the single arc `[i64::MIN, i64::MAX]`.
    pub fn arcs(&self) -> Vec<Arc> {
        let first = self.vnodes[0];
        let mut arcs: Vec<Arc> = Vec::with_capacity(self.vnodes.len() + 1);
        let mut push = |lo: i64, hi: i64, shard: usize| match arcs.last_mut() {
            Some(last) if last.shard == shard => last.hi = hi,
            _ => arcs.push(Arc { lo, hi, shard }),
        };
        let mut lo = i64::MIN;
        for v in &self.vnodes {
            push(lo, v.position, v.shard);
            match v.position.checked_add(1) {
                Some(next) => lo = next,
                // A vnode at i64::MAX: nothing wraps.
                None => return arcs,
            }
        }
        push(lo, i64::MAX, first.shard);
        arcs
    }

    /// The arcs owned by `shard`, as from [`HashRing::arcs`].
    pub fn arcs_for_shard(&self, shard: usize) -> Vec<Arc> {
        self.arcs()
            .into_iter()
            .filter(|a| a.shard == shard)
            .collect()
    }
}

/// The ring positions whose owner changes from ring `old` to ring `new`:
/// arcs tagged with the new owner, each with its old owner. Shard ids are
/// translated through `old_members` / `new_members` (ring index -> shard
/// id), so rings over different shard lists compare. Adjacent positions
/// with the same (from, to) are one arc.
pub fn moved_arcs(
    old: &HashRing,
    old_members: &[usize],
    new: &HashRing,
    new_members: &[usize],
) -> Vec<(usize, Arc)> {
    let (a, b) = (old.arcs(), new.arcs());
    let (mut i, mut j) = (0, 0);
    let mut lo = i64::MIN;
    let mut out: Vec<(usize, Arc)> = Vec::new();
    while i < a.len() && j < b.len() {
        let hi = a[i].hi.min(b[j].hi);
        let (from, to) = (old_members[a[i].shard], new_members[b[j].shard]);
        if from != to {
            match out.last_mut() {
                Some((f, last))
                    if *f == from && last.shard == to && last.hi.checked_add(1) == Some(lo) =>
                {
                    last.hi = hi
                }
                _ => out.push((from, Arc { lo, hi, shard: to })),
            }
        }
        if hi == i64::MAX {
            break;
        }
        if a[i].hi == hi {
            i += 1;
        }
        if b[j].hi == hi {
            j += 1;
        }
        lo = hi + 1;
    }
    out
}

/// Position of vnode `index` of shard `name`: the PostgreSQL text hash of
/// `"<name>#<index>"`, so anyone (including SQL) can recompute the ring.
fn vnode_position(name: &str, index: u32) -> i64 {
    hashtextextended(format!("{name}#{index}").as_bytes(), SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    fn ring(n: usize, vnodes: u32) -> HashRing {
        let names = names(n);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        HashRing::new(&refs, vnodes).unwrap()
    }

    /// Exact share of the i64 space owned by each shard.
    fn shares(ring: &HashRing) -> Vec<f64> {
        let mut owned = vec![0f64; ring.shard_count()];
        for a in ring.arcs() {
            owned[a.shard] += (i128::from(a.hi) - i128::from(a.lo) + 1) as f64;
        }
        owned.iter().map(|o| o / 2f64.powi(64)).collect()
    }

    fn keys_100k() -> impl Iterator<Item = KeyValue> {
        (0..50_000)
            .map(KeyValue::Int)
            .chain((0..50_000).map(|i| KeyValue::Text(format!("user-{i}"))))
    }

    #[test]
    fn evenness_over_100k_keys() {
        for n in 2..=4 {
            let ring = ring(n, DEFAULT_VNODES);
            let mut counts = vec![0usize; n];
            let mut total = 0;
            for key in keys_100k() {
                counts[ring.shard_for(&key)] += 1;
                total += 1;
            }
            let fair = total as f64 / n as f64;
            // Shown with --nocapture; quoted in DEFAULT_VNODES' rationale.
            println!("{n} shards, {total} keys: {counts:?}");
            for (shard, &c) in counts.iter().enumerate() {
                let dev = (c as f64 - fair) / fair;
                assert!(
                    dev.abs() <= 0.10,
                    "{n} shards: shard {shard} has {c} keys, fair {fair} ({dev:+.3})"
                );
            }
        }
    }

    /// Prints the measurements behind DEFAULT_VNODES: for each vnode count,
    /// the worst shard's deviation from its fair share of the ring, for
    /// shards named `s0..`, `shard-0..`, `pg0..` and `db_a..` (mean and max
    /// over the four naming schemes). Run with
    /// `cargo test --release --lib vnode_evenness_table -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn vnode_evenness_table() {
        let schemes: [fn(usize) -> String; 4] = [
            |i| format!("s{i}"),
            |i| format!("shard-{i}"),
            |i| format!("pg{i}"),
            |i| format!("db_{}", (b'a' + i as u8) as char),
        ];
        for vnodes in [64, 128, 256, 512, 1024] {
            let mut row = format!("vnodes {vnodes:5}:");
            for n in [2, 3, 4, 5, 8, 16] {
                let worst: Vec<f64> = schemes
                    .iter()
                    .map(|scheme| {
                        let names: Vec<String> = (0..n).map(scheme).collect();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        let r = HashRing::new(&refs, vnodes).unwrap();
                        shares(&r)
                            .iter()
                            .map(|s| (s * n as f64 - 1.0).abs())
                            .fold(0.0, f64::max)
                    })
                    .collect();
                let mean = worst.iter().sum::<f64>() / worst.len() as f64;
                let max = worst.iter().copied().fold(0.0, f64::max);
                row += &format!("  N={n:2}: {:4.1}/{:4.1}%", mean * 100.0, max * 100.0);
            }
            println!("{row}");
        }
    }

    #[test]
    fn default_vnodes_ring_shares_are_close_to_fair() {
        for n in 2..=16 {
            for (shard, share) in shares(&ring(n, DEFAULT_VNODES)).iter().enumerate() {
                let dev = share * n as f64 - 1.0;
                assert!(
                    dev.abs() < 0.10,
                    "{n} shards: shard {shard} owns {share:.4} ({dev:+.3})"
                );
            }
        }
    }

    /// Routes pinned forever for the ring `s0..s3` with the default vnode
    /// count: if this fails, the change re-routes stored data.
    #[test]
    fn pinned_routes() {
        let r = HashRing::new(&["s0", "s1", "s2", "s3"], DEFAULT_VNODES).unwrap();
        let uuid = |s: &str| {
            let hex = s.replace('-', "");
            let bytes: Vec<u8> = (0..32)
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            KeyValue::Uuid(bytes.try_into().unwrap())
        };
        let pinned: &[(KeyValue, usize)] = &[
            (KeyValue::Int(0), 0),
            (KeyValue::Int(1), 3),
            (KeyValue::Int(-1), 1),
            (KeyValue::Int(2), 0),
            (KeyValue::Int(42), 2),
            (KeyValue::Int(1000), 1),
            (KeyValue::Int(123456789), 3),
            (KeyValue::Int(-987654321), 3),
            (KeyValue::Int(2147483647), 3),
            (KeyValue::Int(-2147483648), 2),
            (KeyValue::Int(i64::MAX), 2),
            (KeyValue::Int(i64::MIN), 3),
            (KeyValue::Text("".into()), 0),
            (KeyValue::Text("a".into()), 1),
            (KeyValue::Text("A".into()), 3),
            (KeyValue::Text("user-1".into()), 3),
            (KeyValue::Text("user-2".into()), 2),
            (KeyValue::Text("hello".into()), 0),
            (KeyValue::Text("日本語".into()), 2),
            (KeyValue::Text("tenant_42".into()), 0),
            (KeyValue::Text("The quick brown fox".into()), 2),
            (uuid("00000000-0000-0000-0000-000000000000"), 3),
            (uuid("ffffffff-ffff-ffff-ffff-ffffffffffff"), 1),
            (uuid("123e4567-e89b-12d3-a456-426614174000"), 0),
        ];
        for (key, want) in pinned {
            assert_eq!(r.shard_for(key), *want, "key {key} moved");
        }
        let arcs = r.arcs();
        assert_eq!(arcs.len(), 3017);
        assert_eq!(
            arcs[0],
            Arc {
                lo: i64::MIN,
                hi: -9222406951557826969,
                shard: 1
            }
        );
        assert_eq!(
            arcs[3016],
            Arc {
                lo: 9219237494125770055,
                hi: i64::MAX,
                shard: 1
            }
        );
    }

    #[test]
    fn moved_arcs_are_exactly_the_positions_that_change_owner() {
        let old = ring(2, 64);
        let new = ring(3, 64);
        let moves = moved_arcs(&old, &[0, 1], &new, &[0, 1, 2]);
        assert!(!moves.is_empty());
        // Only to the new shard: consistent hashing moves nothing else.
        assert!(moves.iter().all(|(_, a)| a.shard == 2));
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pos = x as i64;
            let (o, n) = (old.shard_for_position(pos), new.shard_for_position(pos));
            let moved = moves.iter().find(|(_, a)| a.contains(pos));
            match moved {
                Some((from, a)) => {
                    assert_eq!((*from, a.shard), (o, n), "{pos}");
                    assert_ne!(o, n);
                }
                None => assert_eq!(o, n, "{pos}"),
            }
        }
        for edge in [i64::MIN, i64::MAX, 0] {
            let moved = moves.iter().any(|(_, a)| a.contains(edge));
            assert_eq!(
                moved,
                old.shard_for_position(edge) != new.shard_for_position(edge)
            );
        }
        // The same ring: nothing moves.
        assert!(moved_arcs(&old, &[0, 1], &old, &[0, 1]).is_empty());
    }

    #[test]
    fn vnode_positions_match_the_server() {
        // SELECT hashtextextended('s0#0', 0), ... on PostgreSQL 15.18.
        assert_eq!(vnode_position("s0", 0), -182383375006875011);
        assert_eq!(vnode_position("s3", 0), -5089491100934904866);
        assert_eq!(vnode_position("s0", 1), -9027459891810533944);
        assert_eq!(vnode_position("s0", 1023), 7619695555338653018);
    }

    #[test]
    fn adding_a_shard_moves_keys_only_to_it() {
        for n in 2..=4 {
            let before = ring(n, DEFAULT_VNODES);
            let after = ring(n + 1, DEFAULT_VNODES);
            let mut moved = 0;
            let mut total = 0;
            for key in keys_100k() {
                let (a, b) = (before.shard_for(&key), after.shard_for(&key));
                if a != b {
                    assert_eq!(b, n, "key {key} moved from {a} to old shard {b}");
                    moved += 1;
                }
                total += 1;
            }
            let frac = moved as f64 / total as f64;
            let fair = 1.0 / (n + 1) as f64;
            println!("{n} -> {} shards: {moved} of {total} keys moved", n + 1);
            assert!(
                (frac - fair).abs() < 0.1 * fair,
                "{n}->{}: moved {frac:.3}, expected ~{fair:.3}",
                n + 1
            );
        }
    }

    #[test]
    fn removing_the_last_shard_moves_only_its_keys() {
        let before = ring(4, DEFAULT_VNODES);
        let after = ring(3, DEFAULT_VNODES);
        for key in keys_100k().step_by(7) {
            let a = before.shard_for(&key);
            if a != 3 {
                assert_eq!(after.shard_for(&key), a, "key {key}");
            }
        }
    }

    #[test]
    fn arcs_tile_the_space_and_agree_with_lookup() {
        for (n, vnodes) in [
            (1, 1),
            (1, 3),
            (2, 1),
            (3, 7),
            (4, DEFAULT_VNODES),
            (8, DEFAULT_VNODES),
        ] {
            let r = ring(n, vnodes);
            let arcs = r.arcs();
            assert_eq!(arcs.first().unwrap().lo, i64::MIN);
            assert_eq!(arcs.last().unwrap().hi, i64::MAX);
            for pair in arcs.windows(2) {
                assert!(pair[0].lo <= pair[0].hi);
                assert_eq!(
                    pair[0].hi.checked_add(1),
                    Some(pair[1].lo),
                    "gap or overlap: {pair:?}"
                );
                // Maximal runs, except the wrapping arc's two halves.
                assert_ne!(pair[0].shard, pair[1].shard, "unmerged arcs: {pair:?}");
            }
            for a in &arcs {
                assert_eq!(r.shard_for_position(a.lo), a.shard, "{a:?}");
                assert_eq!(r.shard_for_position(a.hi), a.shard, "{a:?}");
                let mid = ((i128::from(a.lo) + i128::from(a.hi)) / 2) as i64;
                assert_eq!(r.shard_for_position(mid), a.shard, "{a:?}");
            }
            // Arcs per shard partition the list.
            let total: usize = (0..n).map(|s| r.arcs_for_shard(s).len()).sum();
            assert_eq!(total, arcs.len());
        }
        // A ring of one shard is one arc covering everything.
        let one = ring(1, 16).arcs();
        assert_eq!(
            one,
            vec![Arc {
                lo: i64::MIN,
                hi: i64::MAX,
                shard: 0
            }]
        );
    }

    #[test]
    fn hashring_lookup_matches_sorted_vnodes() {
        // The crate's binary search must agree with our own reading of the
        // ring (first vnode at or after the position, wrapping).
        let r = ring(3, 64);
        let own = |pos: i64| {
            r.vnodes
                .iter()
                .find(|v| v.position >= pos)
                .unwrap_or(&r.vnodes[0])
                .shard
        };
        let mut probes = vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
        for v in &r.vnodes {
            probes.extend([
                v.position.saturating_sub(1),
                v.position,
                v.position.saturating_add(1),
            ]);
        }
        probes.extend(keys_100k().step_by(97).map(|k| k.position()));
        for pos in probes {
            assert_eq!(r.shard_for_position(pos), own(pos), "position {pos}");
        }
    }

    #[test]
    fn signed_order_wraps_at_i64_max() {
        // Keys past the last vnode belong to the first vnode's shard, and so
        // do keys at i64::MIN: the two halves of the wrapping arc.
        let r = ring(3, 8);
        let first = r.vnodes[0];
        let last = *r.vnodes.last().unwrap();
        assert!(
            first.position < 0 && last.position > 0,
            "test assumes vnodes on both signs"
        );
        assert_eq!(r.shard_for_position(i64::MIN), first.shard);
        assert_eq!(r.shard_for_position(i64::MAX), first.shard);
        assert_eq!(r.shard_for_position(last.position), last.shard);
        assert_eq!(r.shard_for_position(last.position + 1), first.shard);
        assert_eq!(r.shard_for_position(first.position + 1), r.vnodes[1].shard);
    }

    #[test]
    fn shard_order_only_renumbers() {
        let a = HashRing::new(&["alpha", "beta", "gamma"], 32).unwrap();
        let b = HashRing::new(&["gamma", "alpha", "beta"], 32).unwrap();
        let map_b_to_a = [2, 0, 1];
        for key in keys_100k().step_by(13) {
            assert_eq!(map_b_to_a[b.shard_for(&key)], a.shard_for(&key));
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(HashRing::new(&[], 8).is_err());
        assert!(HashRing::new(&["s0"], 0).is_err());
        assert!(HashRing::new(&["s0", ""], 8).is_err());
        let err = HashRing::new(&["s0", "s1", "s0"], 8).unwrap_err();
        assert!(err.contains("\"s0\"") && err.contains("0 and 2"), "{err}");
    }

    #[test]
    fn range_literals() {
        let arc = |lo, hi| Arc { lo, hi, shard: 0 };
        assert_eq!(arc(-5, 17).range_literal(), "[-5,17]");
        assert_eq!(arc(i64::MIN, 3).range_literal(), "(,3]");
        assert_eq!(arc(4, i64::MAX).range_literal(), "[4,)");
    }

    #[test]
    fn sql_predicates() {
        let arc = |lo, hi| Arc { lo, hi, shard: 0 };
        assert_eq!(
            arc(-5, 17).sql_predicate(KeyKind::Int, "id"),
            "hashint8extended(id, 0) BETWEEN -5 AND 17"
        );
        assert_eq!(
            arc(i64::MIN, 3).sql_predicate(KeyKind::Text, "name"),
            "hashtextextended(name, 0) <= 3"
        );
        assert_eq!(
            arc(4, i64::MAX).sql_predicate(KeyKind::Uuid, "u"),
            "uuid_hash_extended(u, 0) >= 4"
        );
        assert_eq!(
            arc(i64::MIN, i64::MAX).sql_predicate(KeyKind::Int, "id"),
            "true"
        );
        assert!(arc(1, 2).contains(1) && arc(1, 2).contains(2) && !arc(1, 2).contains(3));
    }

    #[test]
    #[should_panic(expected = "accepts only a u64")]
    fn ring_hasher_refuses_other_input() {
        PositionHasherBuilder.hash_one("not a position");
    }
}

//! Geographic sharding: a region column (country code, region name, ...)
//! mapped to shards by explicit lists, with a default shard for the rest.
//!
//! Matching is exact except for ASCII case: `"US"`, `"us"` and `"Us"` are the
//! same region, because region codes arrive from applications in whatever
//! case they were typed and ISO codes are conventionally case-insensitive.
//! Only ASCII letters are folded (no Unicode case mapping, no trimming), so
//! the rule is simple to state and to reproduce in SQL
//! (`lower(region COLLATE "C")` folds exactly the ASCII letters in a UTF-8
//! database). An unknown region is not an error: it goes to the default
//! shard, so new regions work before anyone maps them.

use std::collections::HashMap;

/// Validated region-to-shard map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoMap {
    /// Region, ASCII-lowercased -> (shard, spelling as configured).
    regions: HashMap<String, (usize, String)>,
    default_shard: usize,
}

impl GeoMap {
    /// Builds the map from `(shard index, regions of that shard)` pairs and
    /// the shard for unlisted regions.
    ///
    /// Rejects a region listed twice (also for the same shard, and also when
    /// the spellings differ only in ASCII case), naming the region and both
    /// shards, and rejects empty regions or regions with surrounding
    /// whitespace (they could never match what users mean).
    pub fn new<I, R, S>(assignments: I, default_shard: usize) -> Result<GeoMap, String>
    where
        I: IntoIterator<Item = (usize, R)>,
        R: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut regions: HashMap<String, (usize, String)> = HashMap::new();
        for (shard, list) in assignments {
            for region in list {
                let region = region.as_ref();
                if region.is_empty() {
                    return Err(format!("shard {shard} lists an empty region"));
                }
                if region.trim() != region {
                    return Err(format!(
                        "region {region:?} of shard {shard} has leading or trailing whitespace"
                    ));
                }
                let folded = region.to_ascii_lowercase();
                if let Some((other, spelling)) = regions.get(&folded) {
                    let as_written = if spelling == region {
                        String::new()
                    } else {
                        format!(" (as {spelling:?})")
                    };
                    return Err(if *other == shard {
                        format!("region {region:?} is listed twice for shard {shard}{as_written}")
                    } else {
                        format!(
                            "region {region:?} is listed for shard {other}{as_written} and for shard {shard}"
                        )
                    });
                }
                regions.insert(folded, (shard, region.to_string()));
            }
        }
        Ok(GeoMap {
            regions,
            default_shard,
        })
    }

    /// The shard explicitly assigned to `region`, if any.
    /// Every shard the map can send a region to, sorted.
    pub fn shards(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.regions.values().map(|(s, _)| *s).collect();
        v.push(self.default_shard);
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn lookup(&self, region: &str) -> Option<usize> {
        self.regions
            .get(&region.to_ascii_lowercase())
            .map(|(shard, _)| *shard)
    }

    /// The shard for `region`: its assigned shard, else the default shard.
    pub fn shard_for(&self, region: &str) -> usize {
        self.lookup(region).unwrap_or(self.default_shard)
    }

    /// The shard for regions not listed.
    pub fn default_shard(&self) -> usize {
        self.default_shard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GeoMap {
        GeoMap::new([(0, vec!["us", "ca"]), (1, vec!["de", "fr"])], 2).unwrap()
    }

    #[test]
    fn maps_listed_regions() {
        let m = sample();
        assert_eq!(m.shard_for("us"), 0);
        assert_eq!(m.shard_for("ca"), 0);
        assert_eq!(m.shard_for("de"), 1);
        assert_eq!(m.shard_for("fr"), 1);
        assert_eq!(m.lookup("fr"), Some(1));
        assert_eq!(m.default_shard(), 2);
    }

    #[test]
    fn ascii_case_insensitive() {
        let m = sample();
        assert_eq!(m.shard_for("US"), 0);
        assert_eq!(m.shard_for("Us"), 0);
        assert_eq!(m.shard_for("dE"), 1);
        let upper = GeoMap::new([(3, ["EU-West"])], 0).unwrap();
        assert_eq!(upper.shard_for("eu-west"), 3);
        assert_eq!(upper.shard_for("EU-WEST"), 3);
    }

    #[test]
    fn only_ascii_is_folded_and_nothing_is_trimmed() {
        let m = GeoMap::new([(1, ["émea"])], 0).unwrap();
        assert_eq!(m.shard_for("émea"), 1);
        assert_eq!(m.shard_for("éMEA"), 1);
        assert_eq!(m.shard_for("ÉMEA"), 0); // É is not ASCII: no folding
        assert_eq!(sample().shard_for(" us"), 2);
        assert_eq!(sample().shard_for("us "), 2);
    }

    #[test]
    fn unknown_regions_go_to_default() {
        let m = sample();
        assert_eq!(m.shard_for("jp"), 2);
        assert_eq!(m.shard_for(""), 2);
        assert_eq!(m.lookup("jp"), None);
        let empty = GeoMap::new(Vec::<(usize, Vec<&str>)>::new(), 5).unwrap();
        assert_eq!(empty.shard_for("us"), 5);
    }

    #[test]
    fn rejects_duplicates() {
        let err = GeoMap::new([(0, vec!["us", "ca"]), (1, vec!["de", "us"])], 2).unwrap_err();
        assert_eq!(err, "region \"us\" is listed for shard 0 and for shard 1");
        let err = GeoMap::new([(0, vec!["us"]), (1, vec!["US"])], 2).unwrap_err();
        assert_eq!(
            err,
            "region \"US\" is listed for shard 0 (as \"us\") and for shard 1"
        );
        let err = GeoMap::new([(0, vec!["us", "us"])], 2).unwrap_err();
        assert_eq!(err, "region \"us\" is listed twice for shard 0");
        // The same shard given twice is still one assignment per region.
        let err = GeoMap::new([(0, vec!["us"]), (0, vec!["Us"])], 2).unwrap_err();
        assert_eq!(err, "region \"Us\" is listed twice for shard 0 (as \"us\")");
    }

    #[test]
    fn rejects_empty_and_padded_regions() {
        assert_eq!(
            GeoMap::new([(1, [""])], 0).unwrap_err(),
            "shard 1 lists an empty region"
        );
        assert!(GeoMap::new([(1, [" us"])], 0).is_err());
        assert!(GeoMap::new([(1, ["us\t"])], 0).is_err());
    }
}

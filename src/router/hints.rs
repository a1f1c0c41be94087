//! Routing hints written by the application: a SQL comment
//! `/* shardwire: shard_key=42 */` or `/* shardwire: shard=s1 */` anywhere
//! in the statement text. Hints override what the parser would decide, for
//! statements the parser cannot route (INSERT ... SELECT, functions) or to
//! pin a statement to a shard.

use serde::{Deserialize, Serialize};

/// Where reads may go: `read_from` in the config, `role=` in a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// Every statement to the primary (the default: no replica staleness
    /// for anyone).
    Primary,
    /// Reads to a replica when one is fresh enough, else the primary.
    Replica,
    /// Reads to the primary or a replica, balanced.
    Any,
}

/// A hint found in a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Route as if the sharded table's key had this value.
    ShardKey(String),
    /// Route to this shard by name.
    Shard(String),
    /// `role=primary` or `role=replica`: where a read may go.
    Role(ReadFrom),
}

/// Hints in the comments of `sql`, in order. Unknown keys in a shardwire
/// comment are reported as errors rather than ignored, so a typo in a hint
/// never silently routes somewhere else.
pub fn parse_hints(sql: &str) -> Result<Vec<Hint>, String> {
    let mut hints = Vec::new();
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("*/") else { break };
        let body = after[..end].trim();
        rest = &after[end + 2..];
        let Some(spec) = body.strip_prefix("shardwire:") else {
            continue;
        };
        for item in spec
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                format!("shardwire hint \"{item}\" is not of the form name=value")
            })?;
            let v = v.trim_matches(|c| c == '\'' || c == '"').to_string();
            match k.trim() {
                "shard_key" => hints.push(Hint::ShardKey(v)),
                "shard" => hints.push(Hint::Shard(v)),
                "role" => hints.push(Hint::Role(match v.as_str() {
                    "primary" => ReadFrom::Primary,
                    "replica" => ReadFrom::Replica,
                    "any" => ReadFrom::Any,
                    _ => {
                        return Err(format!(
                            "shardwire hint role=\"{v}\" must be primary, replica or any"
                        ))
                    }
                })),
                other => {
                    return Err(format!(
                        "unknown shardwire hint \"{other}\" (known: shard_key, shard, role)"
                    ))
                }
            }
        }
    }
    Ok(hints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hints() {
        assert_eq!(
            parse_hints("/* shardwire: shard_key=42 */ select * from t").unwrap(),
            vec![Hint::ShardKey("42".into())]
        );
        assert_eq!(
            parse_hints("select 1 /* shardwire: shard=s1 */").unwrap(),
            vec![Hint::Shard("s1".into())]
        );
        assert_eq!(
            parse_hints("/*shardwire: shard_key='abc'*/ select").unwrap(),
            vec![Hint::ShardKey("abc".into())]
        );
        assert!(parse_hints("/* just a comment */ select 1")
            .unwrap()
            .is_empty());
        assert!(parse_hints("/* shardwire: shrad=s1 */").is_err());
        assert_eq!(
            parse_hints("/* shardwire: role=primary */ select 1").unwrap(),
            vec![Hint::Role(ReadFrom::Primary)]
        );
        assert!(parse_hints("/* shardwire: role=master */").is_err());
        assert!(parse_hints("/* unterminated").unwrap().is_empty());
    }
}

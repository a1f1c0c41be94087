//! `shardwire check`: the resolved topology as JSON, and config errors.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn check(args: &[&str], config: &std::path::Path) -> CmdOutput {
    run_cmd(
        Command::new(env!("CARGO_BIN_EXE_shardwire"))
            .arg("check")
            .arg("--config")
            .arg(config)
            .args(args),
        None,
        Duration::from_secs(30),
    )
}

#[test]
fn check_json_describes_the_cluster() {
    let c = cluster();
    let out = check(&["--json"], &c.config_path()).ok("shardwire check --json");
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.stdout));
    let shards = json["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 2, "{json:#}");
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(shard["name"], format!("s{i}"));
        let (primary, replica) = c.shard_ports(i as u16);
        let servers: Vec<(String, u64, String)> = shard["servers"]
            .as_array()
            .expect("servers array")
            .iter()
            .map(|s| {
                (
                    s["host"].as_str().expect("host").to_string(),
                    s["port"].as_u64().expect("port"),
                    s["role"].as_str().expect("role").to_string(),
                )
            })
            .collect();
        assert_eq!(
            servers,
            vec![
                (
                    "127.0.0.1".to_string(),
                    primary as u64,
                    "primary".to_string()
                ),
                (
                    "127.0.0.1".to_string(),
                    replica as u64,
                    "replica".to_string()
                ),
            ]
        );
    }
    assert_eq!(json["default_shard"], "s0");
    assert_eq!(json["databases"][0]["name"], "app");
    // The human-readable form agrees.
    let out = check(&[], &c.config_path()).ok("shardwire check");
    assert!(out.stdout.contains("is valid"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("127.0.0.1:{}", c.base_port)),
        "{}",
        out.stdout
    );
}

#[test]
fn check_rejects_unknown_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("pool.max_sise", "max_sise"),
        ("listen_adress", "listen_adress"),
    ];
    for (key, name) in cases {
        let mut config: toml::Value = toml::from_str(&cluster().config_text).expect("valid TOML");
        set(&mut config, key, 3);
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).expect("serialize")).expect("write");
        for args in [&["--json"][..], &[][..]] {
            let out = check(args, &path);
            assert!(!out.success(), "{key} accepted:\n{}", out.stdout);
            assert_eq!(out.status.code(), Some(2), "{key}: {}", out.stderr);
            assert!(
                out.stderr.contains(path.to_str().expect("utf-8")),
                "no file name: {}",
                out.stderr
            );
            assert!(out.stderr.contains(name), "no key name: {}", out.stderr);
            assert!(out.stdout.is_empty(), "{}", out.stdout);
        }
    }
    // `serve` refuses it the same way, before listening.
    let path = dir.path().join("max_sise.toml");
    let out = run_cmd(
        Command::new(env!("CARGO_BIN_EXE_shardwire"))
            .arg("serve")
            .arg("--config")
            .arg(&path),
        None,
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("max_sise"), "{}", out.stderr);
}

/// `[[tables]]` are checked and explained by `shardwire route`; `serve`
/// routes by them (tests/integration/routing.rs) but refuses them with
/// session pooling, which would pin a client to one shard.
#[test]
fn tables_are_explained_and_refused_with_session_pooling() {
    let c = cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tables.toml");
    let mut text = std::fs::read_to_string(c.config_path()).expect("cluster config");
    text.push_str("\n[[tables]]\nname = \"accounts\"\nkey = \"aid\"\nstrategy = \"hash\"\n");
    std::fs::write(&path, text).expect("write config");

    let out = check(&["--json"], &path).ok("check with tables");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["tables"][0]["strategy"], "hash", "{json:#}");

    let route = run_cmd(
        Command::new(env!("CARGO_BIN_EXE_shardwire"))
            .args(["route", "--config"])
            .arg(&path)
            .args(["select * from accounts where aid = $1", "--param", "42"]),
        None,
        Duration::from_secs(30),
    )
    .ok("shardwire route");
    let r: serde_json::Value = serde_json::from_str(&route.stdout).expect("route JSON");
    assert_eq!(r["table"], "accounts");
    assert_eq!(r["keys"][0], "42");
    let shard = r["shards"][0].as_str().expect("a shard");
    assert!(shard == "s0" || shard == "s1", "{r:#}");

    let session_path = dir.path().join("session.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &session_path,
        text.replace("mode = \"transaction\"", "mode = \"session\""),
    )
    .expect("write config");
    let serve = run_cmd(
        Command::new(env!("CARGO_BIN_EXE_shardwire"))
            .args(["serve", "--config"])
            .arg(&session_path),
        None,
        Duration::from_secs(30),
    );
    assert!(
        !serve.success(),
        "serve accepted [[tables]] with session pooling"
    );
    assert!(serve.stderr.contains("session pooling"), "{}", serve.stderr);
}

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

/// The Docker Compose cluster (docker-compose.yml, docker/) mirrors what
/// scripts/cluster.sh sets up; Docker cannot run here, so this checks the
/// files against cluster.sh and the shared cluster's shardwire.toml.
#[test]
fn docker_files_mirror_cluster_sh() {
    let root = repo_root();
    let docker_config = root.join("docker/shardwire.toml");

    // The proxy accepts it: 2 shards, each one primary and one replica.
    let out = check(&["--json"], &docker_config).ok("shardwire check --json docker/shardwire.toml");
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.stdout));
    assert_eq!(json["listen"], "0.0.0.0:6432", "{json:#}");
    assert_eq!(json["http_listen"], "0.0.0.0:6433", "{json:#}");
    let shards = json["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 2, "{json:#}");
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(shard["name"], format!("s{i}"), "{json:#}");
        let servers: Vec<(&str, u64, &str)> = shard["servers"]
            .as_array()
            .expect("servers array")
            .iter()
            .map(|s| {
                (
                    s["host"].as_str().expect("host"),
                    s["port"].as_u64().expect("port"),
                    s["role"].as_str().expect("role"),
                )
            })
            .collect();
        assert_eq!(
            servers,
            vec![
                (format!("s{i}-primary").as_str(), 5432, "primary"),
                (format!("s{i}-replica1").as_str(), 5432, "replica"),
            ],
            "{json:#}"
        );
    }

    // Apart from addresses, it is the config cluster.sh wrote: same keys,
    // pool, users, databases and shard names.
    fn without_addresses(text: &str) -> toml::Value {
        let mut v: toml::Value = toml::from_str(text).expect("valid TOML");
        let t = v.as_table_mut().expect("table");
        t.remove("listen").expect("listen");
        t.remove("http_listen").expect("http_listen");
        for shard in t["shards"].as_array_mut().expect("shards") {
            for server in shard["servers"].as_array_mut().expect("servers") {
                let s = server.as_table_mut().expect("server table");
                s.remove("host").expect("host");
                s.remove("port").expect("port");
            }
        }
        v
    }
    let docker_text = std::fs::read_to_string(&docker_config).expect("docker/shardwire.toml");
    assert_eq!(
        without_addresses(&docker_text),
        without_addresses(&cluster().config_text),
        "docker/shardwire.toml and cluster.sh's shardwire.toml differ"
    );

    // Every host is a compose service, and compose mounts the files it uses.
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).expect("compose file");
    let config: toml::Value = toml::from_str(&docker_text).expect("valid TOML");
    for shard in config["shards"].as_array().expect("shards") {
        for server in shard["servers"].as_array().expect("servers") {
            let host = server["host"].as_str().expect("host");
            assert!(
                compose.contains(&format!("\n  {host}:\n")),
                "{host} is not a service in docker-compose.yml"
            );
        }
    }
    assert!(compose.contains("\n  shardwire:\n"), "no shardwire service");
    for file in [
        "docker/shardwire.toml",
        "docker/init-primary.sh",
        "docker/replica-entrypoint.sh",
    ] {
        assert!(root.join(file).is_file(), "{file} missing");
        assert!(
            compose.contains(&format!("./{file}:")),
            "docker-compose.yml does not mount {file}"
        );
    }
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains(r#"CMD ["serve", "--config", "/etc/shardwire/shardwire.toml"]"#)
            && compose.contains("./docker/shardwire.toml:/etc/shardwire/shardwire.toml:ro"),
        "the image's config path and the compose mount disagree"
    );

    // Each setting cluster.sh gives its primaries is on the servers' command
    // line ("key = 'value'" there, "key=value" here).
    let script = std::fs::read_to_string(cluster_script()).expect("cluster.sh");
    let conf = script
        .split_once("primary_conf() {")
        .and_then(|(_, rest)| rest.split_once("\nEOF"))
        .expect("primary_conf in cluster.sh")
        .0;
    let mut settings = 0;
    for line in conf.lines().map(str::trim) {
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        if key.starts_with('#') || key == "include_if_exists" {
            continue;
        }
        let setting = format!("- {key}={}\n", value.trim_matches('\''));
        assert!(
            compose.contains(&setting),
            "docker-compose.yml lacks {setting:?} (cluster.sh: {line})"
        );
        settings += 1;
    }
    assert!(
        settings >= 4,
        "read no settings from cluster.sh's primary_conf"
    );

    // The shell scripts at least parse.
    for script in ["docker/init-primary.sh", "docker/replica-entrypoint.sh"] {
        run_cmd(
            Command::new("bash").arg("-n").arg(root.join(script)),
            None,
            Duration::from_secs(30),
        )
        .ok(&format!("bash -n {script}"));
    }
}

//! The import directions of DESIGN §2, checked on the source: every module
//! of `src/` may use only modules on layers below its own, so data flows
//! downward and no two modules need each other.
//!
//! The layers, bottom to top, and why each sits where it does:
//! 0. `protocol` (the wire format) and `sharding` (pure sharding
//!    functions): they need nothing.
//! 1. `router`: SQL to a routing decision; pure, no I/O.
//! 2. `config`: the validated configuration; it builds the router's table
//!    rules from the file, so it sits above the router.
//! 3. `backend` (server connections and pools) and `stats` (metrics and
//!    client registries): they read the config.
//! 4. `proxy` (the runtime root's shared state): config, pools, stats.
//!    Everything that runs holds it, so it sits below them.
//! 5. `execute` and `topology`: they run statements and shard maps on the
//!    pools the proxy holds.
//! 6. `rebalance`: moves data with the topology.
//! 7. `session`: one client, executing through execute/.
//! 8. `admin`: the console and HTTP endpoints, reading everything below.
//! 9. `frontend`: accepts a client and hands it to a session or the admin
//!    console.
//! 10. `cli`: subcommands that drive a running proxy.
//!
//! No cluster is needed: this reads files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, u32)] = &[
    ("protocol", 0),
    ("sharding", 0),
    ("router", 1),
    ("config", 2),
    ("backend", 3),
    ("stats", 3),
    ("proxy", 4),
    ("execute", 5),
    ("topology", 5),
    ("rebalance", 6),
    ("session", 7),
    ("admin", 8),
    ("frontend", 9),
    ("cli", 10),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/x.rs` and
/// `src/x/...` are `x`); None for `lib.rs` and `main.rs`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Every `crate::<module>` the code of `text` names (comments skipped).
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            // `shardwire_crate::` or `$crate::` are not this crate's paths.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            // `crate::{a::X, b}` names each module of the group.
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => top_level_items(group),
                None => vec![rest],
            };
            for item in names {
                let name: String = item
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    found.push(name);
                }
            }
        }
    }
    found
}

/// The comma-separated items of a `{...}` group up to its closing brace
/// (nested groups belong to their item).
fn top_level_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

#[test]
fn every_module_imports_only_from_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        *seen.entry(module.clone()).or_default() += 1;
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer in tests/module_layers.rs (add it where it belongs)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        for used in crate_paths(&text) {
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own => {}
                Some(l) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) uses `crate::{used}` (layer {l})",
                    file.display()
                )),
                // A crate-root item such as crate::VERSION.
                None if used.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && std::fs::metadata(src.join(format!("{used}.rs"))).is_err()
                    && std::fs::metadata(src.join(&used)).is_err() => {}
                None => wrong.push(format!(
                    "{}: `{module}` uses `crate::{used}`, which has no layer",
                    file.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against DESIGN §2's directions:\n{}",
        wrong.join("\n")
    );
    // The check saw the code it is about.
    for (m, _) in LAYERS {
        assert!(
            seen.contains_key(*m),
            "no source file of module `{m}` found"
        );
    }
}

#[test]
fn crate_paths_are_found_in_code_not_comments() {
    let text = "use crate::router::Plan;\n// crate::frontend in a comment\nlet x = crate::backend::conn::f();\nmacro $crate::x\nuse crate::{config::{A, B}, stats};";
    assert_eq!(
        crate_paths(text),
        vec!["router", "backend", "config", "stats"]
    );
}

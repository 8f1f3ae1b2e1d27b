//! The AWS provider's folders depend one way — `state` -> `handlers` -> `calls` — and no module
//! in them reaches back to one that reaches it (issue 18: `fleet_state` and the handlers, `gather`
//! and `ops` used to import each other). Read from the sources, as a reviewer would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const FOLDERS: [&str; 3] = ["calls", "handlers", "state"];

/// Module (`folder/name`) -> the modules of the three folders it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/provider/aws");
    let mut modules = BTreeMap::new();
    for folder in FOLDERS {
        for entry in std::fs::read_dir(root.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if name != "mod" {
                modules.insert(format!("{folder}/{name}"), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let names: Vec<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(module, text)| {
            let folder = module.split('/').next().unwrap();
            let uses = names
                .iter()
                .filter(|other| *other != module)
                .filter(|other| {
                    let (other_folder, other_name) = other.split_once('/').unwrap();
                    let mut spellings = vec![format!("aws::{other_folder}::{other_name}")];
                    let grouped = format!("aws::{other_folder}::{{");
                    if other_folder == folder {
                        spellings.push(format!("super::{other_name}"));
                    }
                    spellings.iter().any(|s| text.contains(&format!("{s}::")) || text.contains(&format!("{s};")))
                        || text.lines().any(|l| l.contains(&grouped) && l.contains(other_name))
                })
                .cloned()
                .collect();
            (module.clone(), uses)
        })
        .collect()
}

#[test]
fn the_aws_folders_depend_one_way_and_no_module_imports_one_that_imports_it() {
    let graph = graph();
    assert!(graph.len() >= 17, "modules found: {:?}", graph.keys());
    let rank = |m: &str| FOLDERS.iter().position(|f| m.starts_with(&format!("{f}/"))).unwrap();
    for (module, uses) in &graph {
        for used in uses {
            assert!(rank(used) <= rank(module), "{module} depends on {used}: against state -> handlers -> calls");
        }
    }
    // No cycle: every module can be placed after everything it uses.
    let mut placed: BTreeSet<&String> = BTreeSet::new();
    while placed.len() < graph.len() {
        let ready: Vec<&String> = graph
            .iter()
            .filter(|(m, uses)| !placed.contains(m) && uses.iter().all(|u| placed.contains(u)))
            .map(|(m, _)| m)
            .collect();
        let left: Vec<_> = graph.keys().filter(|m| !placed.contains(m)).collect();
        assert!(!ready.is_empty(), "a cycle among {left:?}: {graph:#?}");
        placed.extend(ready);
    }
    // What the graph must see, or the check could not fail.
    assert!(graph["state/fleet_state"].contains("handlers/ec2_fleet"), "{graph:#?}");
    assert!(graph["calls/ops"].contains("calls/gather"), "{graph:#?}");
}

//! The core's modules form no import cycle: every `crate::<module>` a top-level module
//! (with its sub-modules, tests and doc links) names must lie strictly below it. A cycle
//! fails this test with the modules involved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its files name as `crate::<name>`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

#[test]
fn core_modules_form_no_import_cycle() {
    let graph = graph();
    assert!(graph.len() > 20, "found the modules: {:?}", graph.keys());
    // Peel off modules whose dependencies are all peeled; whatever is left is in a cycle.
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    loop {
        let next: Vec<&str> = graph
            .iter()
            .filter(|(m, deps)| {
                !placed.contains(m.as_str()) && deps.iter().all(|d| placed.contains(d.as_str()))
            })
            .map(|(m, _)| m.as_str())
            .collect();
        if next.is_empty() {
            break;
        }
        placed.extend(next);
    }
    let stuck: BTreeMap<&String, &BTreeSet<String>> = graph
        .iter()
        .filter(|(m, _)| !placed.contains(m.as_str()))
        .collect();
    assert!(
        stuck.is_empty(),
        "modules in or above an import cycle: {stuck:#?}"
    );
}

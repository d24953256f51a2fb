//! The layout keeps one direction: imports between the top-level modules of `src/` form no
//! circle, the layers the README names import only downwards, and no source file grows past
//! 500 lines. Read from the `crate::` paths of every file (test modules left out), so a new
//! `use` that turns an arrow around fails here, not in review.
//!
//! `cargo test --test layout -- --nocapture` prints the module-to-module import table.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module → the modules it imports, each with the files that do.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// What each layer must never import.
const FORBIDDEN: &[(&str, &[&str])] = &[
    // The sans-IO core: no driver, no HTTP, no SDP, no edge, no handle above it.
    (
        "engine",
        &[
            "io", "http", "offer", "edge", "handle", "server", "selftest",
        ],
    ),
    // HTTP reaches the workers through the handle, never the driver.
    ("http", &["io"]),
    // An edge speaks the cluster protocol; HTTP serves it.
    ("edge", &["http"]),
    // The protocol between origin and edges is data both use.
    ("cluster", &["http", "edge", "engine", "io"]),
    // IDs are data, not media state.
    ("registry", &["engine", "http", "io"]),
    ("handle", &["io", "http"]),
];

const MAX_LINES: usize = 500;

#[test]
fn imports_between_modules_run_one_way() {
    let graph = graph(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path());
    print_table(&graph);
    assert!(
        graph.contains_key("http") && graph.contains_key("engine"),
        "{graph:?}"
    );
    let mut wrong: Vec<String> = graph
        .keys()
        .filter_map(|m| circle(&graph, m))
        .map(|c| format!("circle: {}", c.join(" → ")))
        .collect();
    for (from, banned) in FORBIDDEN {
        for to in *banned {
            if let Some(files) = graph.get(*from).and_then(|t| t.get(*to)) {
                wrong.push(format!("{from} imports {to}: {files:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_source_file_is_over_500_lines() {
    let mut long = Vec::new();
    for file in rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")) {
        let lines = fs::read_to_string(&file).expect("readable").lines().count();
        if lines > MAX_LINES {
            long.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

/// The import graph between the top-level modules of `src` (a folder or a file each; the
/// binaries' own trees are left out).
fn graph(src: &Path) -> Graph {
    let modules: BTreeSet<String> = fs::read_dir(src)
        .expect("src/")
        .map(|e| e.expect("entry").path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_owned();
            (p.is_dir() || p.extension().is_some_and(|e| e == "rs")).then_some(name)
        })
        .filter(|m| !["lib", "main", "bin"].contains(&m.as_str()))
        .collect();
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).expect("under src").to_path_buf();
        let Some(top) = rel
            .components()
            .next()
            .and_then(|c| Path::new(c.as_os_str()).file_stem())
            .and_then(|s| s.to_str())
        else {
            continue;
        };
        if !modules.contains(top) || rel.ends_with("tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable");
        for to in imported(without_tests(&text)) {
            if to != top && modules.contains(&to) {
                graph
                    .entry(top.to_owned())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    graph
}

/// A path of imports from `start` back to itself, if there is one.
fn circle(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut path = vec![start.to_owned()];
    let mut seen = BTreeSet::new();
    fn walk(
        graph: &Graph,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let at = path.last().expect("never empty").clone();
        for to in graph.get(&at).into_iter().flat_map(|t| t.keys()) {
            if to == start {
                path.push(to.clone());
                return true;
            }
            if seen.insert(to.clone()) {
                path.push(to.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(graph, start, &mut path, &mut seen).then_some(path)
}

/// The source before its `#[cfg(test)] mod tests` (kept at the end of a file).
fn without_tests(text: &str) -> &str {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "#[cfg(test)]"
            && text[at + line.len()..]
                .trim_start()
                .starts_with("mod tests")
        {
            return &text[..at];
        }
        at += line.len();
    }
    text
}

/// Every module named after `crate::`, in paths and in `use crate::{a, b::c}` groups.
fn imported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            // Top-level names of the group: after its start or a comma, before `::`.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.insert(head(item.trim()));
                        item.clear();
                    }
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
        } else {
            names.insert(head(rest));
        }
    }
    names
}

/// The identifier a path starts with.
fn head(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("a folder of src/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn print_table(graph: &Graph) {
    println!("module imports (number of files):");
    for (from, targets) in graph {
        let list: Vec<String> = targets
            .iter()
            .map(|(to, files)| format!("{to} ({})", files.len()))
            .collect();
        println!("  {from:<14} → {}", list.join(", "));
    }
}

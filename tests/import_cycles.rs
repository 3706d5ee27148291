//! No import cycles in src/: the modules form layers (ARCHITECTURE.md,
//! "Layers"), so each can be read, tested and replaced from the bottom up.
//!
//! Reads the sources, not the compiled crate: an edge is any path through
//! `crate::<module>` (or `super::<sibling>` inside a directory module) in
//! code outside `#[cfg(test)]` (items, and modules declared
//! `#[cfg(test)] mod name;`). Two graphs must be acyclic: the top-level
//! modules, and the files of each directory module (its `mod.rs`, which
//! joins them, aside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and without `#[cfg(test)]` items.
fn production_code(src: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0;
    let mut pending_test = false;
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("");
        if skip_depth.is_none() && code.trim_start().starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        let opens = code.matches('{').count() as i32;
        let closes = code.matches('}').count() as i32;
        if pending_test {
            pending_test = false;
            if opens == 0 {
                // `#[cfg(test)] mod tests;` or a one-line item.
                continue;
            }
            skip_depth = Some(depth);
        }
        depth += opens - closes;
        match skip_depth {
            Some(d) if depth <= d => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(code);
                out.push('\n');
            }
        }
    }
    out
}

/// Names that follow `prefix` in `code`, including each name of a
/// `prefix{a, b::c}` group.
fn referenced(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each item at the group's own depth.
            let (mut depth, mut item_start) = (0, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            names.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// Files that are modules declared `#[cfg(test)] mod name;`: test code.
fn test_only_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut test_only = Vec::new();
    for file in files {
        let src = std::fs::read_to_string(file).unwrap();
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "main.rs" | "mod.rs") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        let mut lines = src.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line == "#[cfg(test)]"
                && let Some(name) = lines
                    .clone()
                    .next()
                    .and_then(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
            {
                test_only.push(dir.join(format!("{name}.rs")));
                test_only.push(dir.join(name).join("mod.rs"));
            }
        }
    }
    test_only
}

fn graphs() -> (Graph, BTreeMap<String, Graph>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let test_only = test_only_files(&files);
    files.retain(|f| !test_only.contains(f));
    let mut top = Graph::new();
    let mut inner: BTreeMap<String, Graph> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let module = parts[0].clone();
        if module == "main" || module == "lib" || parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        let code = production_code(&std::fs::read_to_string(&file).unwrap());
        let edges = top.entry(module.clone()).or_default();
        edges.extend(referenced(&code, "crate::").into_iter().filter(|m| *m != module));
        if parts.len() == 2 && parts[1] != "mod" {
            let siblings = inner.entry(module.clone()).or_default();
            let mut uses = referenced(&code, "super::");
            uses.extend(referenced(&code, &format!("crate::{module}::")));
            siblings
                .entry(parts[1].clone())
                .or_default()
                .extend(uses.into_iter().filter(|m| *m != parts[1]));
        }
    }
    // Only edges to modules that exist (not to items such as `crate::now`).
    let known: BTreeSet<String> = top.keys().cloned().collect();
    for edges in top.values_mut() {
        edges.retain(|m| known.contains(m));
    }
    for graph in inner.values_mut() {
        let files: BTreeSet<String> = graph.keys().cloned().collect();
        for edges in graph.values_mut() {
            edges.retain(|m| files.contains(m));
        }
    }
    (top, inner)
}

/// A cycle of `graph` as a path `a -> b -> ... -> a`, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let (top, _) = graphs();
    assert!(top.len() > 10, "found only {:?}", top.keys());
    assert!(
        top["fs"].contains("journal"),
        "the reader missed an edge: {:?}",
        top["fs"]
    );
    if let Some(cycle) = find_cycle(&top) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn files_of_a_module_have_no_import_cycle() {
    let (_, inner) = graphs();
    for (module, graph) in &inner {
        if let Some(cycle) = find_cycle(graph) {
            panic!("import cycle in src/{module}/: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .into_iter()
        .map(|(from, to)| (from.to_string(), BTreeSet::from([to.to_string()])))
        .collect();
    assert_eq!(find_cycle(&graph).unwrap().join(" -> "), "a -> b -> c -> a");
    let code = production_code(
        "use crate::{a::{x, y}, b::c};\n#[cfg(test)]\nmod tests {\n use crate::z;\n}\nfn f() { crate::d::e() }\n",
    );
    assert_eq!(
        referenced(&code, "crate::"),
        BTreeSet::from(["a".into(), "b".into(), "d".into()])
    );
}

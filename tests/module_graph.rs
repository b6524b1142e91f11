//! The crate's modules depend on each other one way only (docs/architecture.md,
//! "Layers"): foundations, then domain, pipeline, transports, app, server. This test
//! reads every `crate::<module>` path in `src/` (tests excluded), builds the graph of
//! top-level modules, and fails on any cycle, naming the edges that make it. A cycle
//! means two modules can no longer be read or tested one without the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir` but `tests.rs` files, which hold a module's
/// `#[cfg(test)] mod tests;`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") && p.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(p);
        }
    }
}

/// The source without `#[cfg(test)]` modules and comments (tests may use anything).
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // Skip to the end of the item that follows: its balanced braces.
        let Some(open) = after.find('{') else { break };
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The top-level module a file belongs to (`src/proxy/pool.rs` -> `proxy`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "main" && name != "lib").then(|| name.to_string())
}

/// Every top-level module named after `crate::` in `code`, including those inside
/// `use crate::{a::X, b}` groups.
fn referenced(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find(';').unwrap_or(group.len());
            for item in group[..end].split([',', '{', '}']) {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if modules.contains(&name) {
                    found.insert(name);
                }
            }
            continue;
        }
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if modules.contains(&name) {
            found.insert(name);
        }
    }
    found
}

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    assert!(modules.len() > 10, "found only {modules:?}");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(from) = module_of(&src, f) else { continue };
        let code = production_code(&std::fs::read_to_string(f).unwrap());
        for to in referenced(&code, &modules) {
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // A cycle exists iff some module reaches itself; report each pair on one.
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for n in edges.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let mut cyclic = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if reaches(to).contains(from) {
                cyclic.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(cyclic.is_empty(), "module dependency cycle(s) through these edges: {cyclic:#?}");
}

#[test]
fn the_reader_finds_edges_and_cycles() {
    let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let code = production_code(
        "use crate::a::X;\nuse crate::{b::{Y, Z}, c};\n// crate::d\n#[cfg(test)]\nmod tests { use crate::c; }\n",
    );
    assert_eq!(referenced(&code, &modules), modules);
    let only_tests = production_code("fn f() {}\n#[cfg(test)]\nmod tests { use crate::a::X; }\n");
    assert!(referenced(&only_tests, &modules).is_empty());
}

/// Whether production code in `code` reads or writes the machine directly.
fn touches_the_machine(code: &str) -> Vec<&'static str> {
    ["std::fs", "tokio::fs", "std::env::var", "env::var(", "File::open", "File::create"]
        .into_iter()
        .filter(|p| code.contains(p))
        .collect()
}

/// Files and environment variables are read through `host::Host`, whose one real
/// implementation lives in `app` (docs/architecture.md, "Layers"); only `app`, the
/// demo (which stages its own files) and `main` (the CLI) may touch the machine.
#[test]
fn only_app_demo_and_main_touch_the_machine() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed = ["app.rs", "demo.rs", "main.rs"];
    let mut offenders = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if allowed.contains(&rel.as_str()) {
            continue;
        }
        let found = touches_the_machine(&production_code(&std::fs::read_to_string(f).unwrap()));
        if !found.is_empty() {
            offenders.push(format!("{rel}: {found:?}"));
        }
    }
    assert!(offenders.is_empty(), "direct file or environment access outside app, demo and main: {offenders:#?}");
}

#[test]
fn the_machine_check_sees_direct_access() {
    assert_eq!(touches_the_machine("let b = std::fs::read(p)?;"), ["std::fs"]);
    assert_eq!(touches_the_machine("std::env::var(\"X\")"), ["std::env::var", "env::var("]);
    assert!(
        touches_the_machine(&production_code(
            "// std::fs::read\n#[cfg(test)]\nmod t { fn f() { std::fs::read(\"x\"); } }\n"
        ))
        .is_empty()
    );
}

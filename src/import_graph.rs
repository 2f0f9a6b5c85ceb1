//! The file-level import graph of this workspace's crates, read from their `crate::` and
//! `super::` paths, and the cycles in it (compiled for tests only).
//!
//! Why a test: imports that run one way (handlers under the background services that drive
//! them, protocol pieces under the verifier) are what lets a newcomer read a file without
//! reading its callers first, and a cycle comes back with one innocent-looking `use`. The
//! rules are those of `import_cycles.py` (the review tool), so the two agree: a file's edges
//! are the longest module prefix of every `crate::…`/`super::…` path in it (grouped
//! `use crate::{a, b}` lines included), comments and the in-file `#[cfg(test)] mod tests`
//! block (and everything after it) left out, since a cycle through tests is no layering
//! problem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// Every file of a crate's source folder, by its module path (`lib.rs`/`main.rs`/`mod.rs`
/// name their folder's module).
fn module_files(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(src).expect("under src").with_extension("");
            let mut key: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(key.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                key.pop();
            }
            (key, p)
        })
        .collect()
}

/// The file that holds the longest module prefix of `path`.
fn resolve<'a>(mods: &'a BTreeMap<Vec<String>, PathBuf>, path: &[String]) -> Option<&'a PathBuf> {
    (1..=path.len()).rev().find_map(|n| mods.get(&path[..n]))
}

/// The import graph of the crate whose sources are in `src`: file → files it names.
pub fn edges(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let line_comment = Regex::new(r"//[^\n]*").expect("regex");
    let block_comment = Regex::new(r"(?s)/\*.*?\*/").expect("regex");
    let test_module = Regex::new(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{").expect("regex");
    let group = Regex::new(r"\buse\s+(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\};")
        .expect("regex");
    let path_re = Regex::new(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)").expect("regex");
    let ident = Regex::new(r"^[A-Za-z_]\w*$").expect("regex");
    let segments = |s: &str| -> Vec<String> {
        s.split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };

    let mods = module_files(src);
    let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = mods
        .values()
        .map(|p| (p.clone(), BTreeSet::new()))
        .collect();
    for (key, file) in &mods {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let text = line_comment.replace_all(&text, "");
        let text = block_comment.replace_all(&text, "");
        let text = match test_module.find(&text) {
            Some(m) => &text[..m.start()],
            None => &text[..],
        };
        let parent = &key[..key.len().saturating_sub(1)];
        let mut refs: Vec<(bool, Vec<String>)> = Vec::new();
        for c in group.captures_iter(text) {
            let prefix = segments(&c[2]);
            for item in c[3].split(',') {
                let item = item.trim().split(" as ").next().unwrap_or("").trim();
                let first = item.split("::").next().unwrap_or("");
                let first = first.split('{').next().unwrap_or("").trim();
                if ident.is_match(first) {
                    let mut path = prefix.clone();
                    path.push(first.to_string());
                    refs.push((&c[1] == "crate", path));
                }
            }
        }
        for c in path_re.captures_iter(text) {
            refs.push((&c[1] == "crate", segments(&c[2])));
        }
        for (from_root, path) in refs {
            let full = if from_root {
                path
            } else {
                parent.iter().cloned().chain(path).collect()
            };
            if let Some(target) = resolve(&mods, &full) {
                if target != file {
                    graph
                        .get_mut(file)
                        .expect("every file is a node")
                        .insert(target.clone());
                }
            }
        }
    }
    graph
}

/// The strongly connected components with more than one file (Tarjan), each sorted.
pub fn cycles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'g PathBuf, usize>,
        low: BTreeMap<&'g PathBuf, usize>,
        stack: Vec<&'g PathBuf>,
        on_stack: BTreeSet<&'g PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    impl<'g> Tarjan<'g> {
        fn strong(&mut self, v: &'g PathBuf) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.strong(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.strong(v);
        }
    }
    t.out
}

/// The source folders checked: this crate's `src/` and every `crates/*/src/`.
fn source_roots() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut roots = vec![root.join("src")];
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .map(|e| e.expect("directory entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    roots.extend(crates);
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(root: &Path, cycle: &[PathBuf]) -> String {
        cycle
            .iter()
            .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
            .collect::<Vec<_>>()
            .join(" <-> ")
    }

    #[test]
    fn no_import_cycles_between_the_files_of_any_crate() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
        let roots = source_roots();
        assert!(
            roots
                .iter()
                .any(|r| r.ends_with("crates/ams-signature/src")),
            "the protocol crate is checked too: {roots:?}"
        );
        let mut found = Vec::new();
        for root in &roots {
            let graph = edges(root);
            // the scanner reads real imports (a broken one would find no cycle either)
            assert!(
                graph.values().map(BTreeSet::len).sum::<usize>() > 0,
                "no imports found under {}",
                root.display()
            );
            found.extend(cycles(&graph).iter().map(|c| show(workspace, c)));
        }
        assert!(
            found.is_empty(),
            "import cycles between files (imports must run one way; move the shared item \
             into a file both can import, or put a trait beside the lower one):\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_scanner_follows_the_real_layering() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let graph = edges(&src);
        let out = &graph[&src.join("outbound.rs")];
        // plain, grouped and `super::` paths all count
        assert!(out.contains(&src.join("upstream.rs")), "{out:?}");
        assert!(out.contains(&src.join("hooks.rs")), "{out:?}");
        assert!(!out.contains(&src.join("reconcile.rs")), "{out:?}");
        assert!(graph[&src.join("config/build/mod.rs")]
            .iter()
            .any(|p| p.starts_with(src.join("config"))));
    }

    #[test]
    fn a_cycle_is_found_and_tests_and_comments_are_not_imports() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = dir.path();
        std::fs::create_dir(src.join("m")).expect("m/");
        let write = |name: &str, text: &str| std::fs::write(src.join(name), text).expect("write");
        write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod m;\n");
        // grouped, plain (longest module prefix) and `super::` paths close a cycle
        write("a.rs", "use crate::{b::B, c};\npub fn f() {}\n");
        write("b.rs", "pub struct B;\nfn f() {\n    crate::m::g();\n}\n");
        write(
            "m/mod.rs",
            "pub mod n;\npub fn g() {\n    super::a::f();\n}\n",
        );
        // a child that imports its parent is no cycle: `mod n;` is not an import
        write("m/n.rs", "use super::g;\n");
        // a comment and a test module naming c's callers are no imports
        write(
            "c.rs",
            "// crate::a::f\n/* crate::b */\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
        );
        let found = cycles(&edges(src));
        let names: Vec<String> = found.iter().map(|c| show(src, c)).collect();
        assert_eq!(names, ["a.rs <-> b.rs <-> m/mod.rs"], "{found:?}");
    }
}

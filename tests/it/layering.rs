//! The layers hold by folder, and the module graph has no circle, not even between two files
//! of one folder: each unit (a folder under `src/`, or a file at its root) uses only the
//! layers below its own, as docs/architecture.md's layer table says (this test reads the
//! table from there), and each file may use only files below it. Read from the source: a file uses another when it names an item
//! of it (`use` or an inline path, through `crate::`, `super::`, `self::` or a child module).
//! A folder's `mod.rs` declaring and re-exporting its files is not a use; a file naming an
//! item its parent re-exports uses the file that defines it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`session::store`) → source, test modules cut off.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let mut name = rel.to_string_lossy().replace('/', "::");
                if let Some(parent) = name.strip_suffix("::mod") {
                    name = parent.to_owned();
                }
                if name == "lib" {
                    name = "crate".into();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                out.insert(name, without_test_module(&path, text));
            }
        }
    }
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    walk(&root, &root, &mut out);
    out.remove("main");
    out
}

/// The file without its inline unit-test module (unit tests may use anything of their own
/// file's parents): the module must be the file's last item, so that cutting there leaves
/// nothing else unchecked. rustfmt puts a file's items at column 0 and a module's inside it
/// further in, so a line at column 0 after the module's start that opens an item is an item
/// after it (lines of a multi-line string there open none).
fn without_test_module(path: &Path, text: String) -> String {
    let start =
        ["#[cfg(test)]\nmod tests {", "#[cfg(all(test, unix))]\nmod tests {"].iter().filter_map(|m| text.find(m)).min();
    let Some(i) = start else { return text };
    let item = |l: &&str| {
        let words = ["pub", "fn ", "async ", "struct ", "enum ", "impl", "trait ", "type ", "const ", "static "];
        let more = ["use ", "mod ", "macro_rules!", "#[", "unsafe "];
        words.iter().chain(&more).any(|w| l.starts_with(w))
    };
    let after: Vec<&str> = text[i..].lines().skip(2).filter(item).collect();
    assert!(
        after.is_empty(),
        "{}: code after the unit-test module would go unchecked; put the module last ({after:?})",
        path.display()
    );
    text[..i].to_owned()
}

/// Names of the items a file defines (fn, struct, enum, trait, type, const, static, macro,
/// and the enums `label_enum!` makes: a line `    Name {`).
fn definitions(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in src.lines() {
        if let Some(name) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(" {")) {
            if name.starts_with(|c: char| c.is_ascii_uppercase()) && name.chars().all(|c| c.is_alphanumeric()) {
                out.insert(name.to_owned());
            }
        }
        let mut words = line.split_whitespace().skip_while(|w| w.starts_with("pub") || *w == "async" || *w == "unsafe");
        if let (Some(kind), Some(name)) = (words.next(), words.next()) {
            if ["fn", "struct", "enum", "trait", "type", "const", "static", "macro_rules!"].contains(&kind) {
                let name: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.insert(name);
            }
        }
    }
    out
}

/// Every path a file names: `use` trees expanded, and inline `a::b::c` paths. A folder's
/// facade, a re-export (`pub use`) of one of the file's own child modules, is not a use and is
/// left out; a re-export of anything else is a use like any other.
fn paths(src: &str) -> Vec<String> {
    let mut code: String = src.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let children: BTreeSet<&str> = src
        .lines()
        .filter_map(|l| l.trim_start().split_once("mod ").filter(|(vis, _)| vis.is_empty() || vis.starts_with("pub")))
        .filter_map(|(_, rest)| rest.strip_suffix(';'))
        .collect();
    for reexport in ["pub use ", "pub(crate) use ", "pub(super) use "] {
        let mut from = 0;
        while let Some(i) = code[from..].find(reexport).map(|i| from + i) {
            let end = code[i..].find(';').map_or(code.len(), |e| i + e + 1);
            let target = code[i + reexport.len()..end].trim_start();
            let target = target.strip_prefix("self::").unwrap_or(target);
            let first = target.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or_default();
            if children.contains(first) {
                code.replace_range(i..end, "");
                from = i;
            } else {
                // Kept: the `use` inside it is read below like any other.
                from = end;
            }
        }
    }
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use ") {
        let tail = &rest[i + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        let starts_word = i == 0 || !(rest.as_bytes()[i - 1].is_ascii_alphanumeric() || rest.as_bytes()[i - 1] == b'_');
        if starts_word {
            let tree: String = tail[..end].chars().filter(|c| !c.is_whitespace()).collect();
            expand("", &tree, &mut out);
        }
        rest = &tail[end..];
    }
    // Inline paths anywhere (types, calls): `crate::x::Y`, `super::Y`, `child::Y`.
    let bytes = code.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if (bytes[i].is_ascii_lowercase() || bytes[i] == b'_')
            && (i == 0 || !(word(bytes[i - 1]) || bytes[i - 1] == b':'))
        {
            let start = i;
            while i < bytes.len() && (word(bytes[i]) || bytes[i] == b':') {
                i += 1;
            }
            let p = code[start..i].trim_end_matches(':');
            if p.contains("::") {
                out.push(p.to_owned());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    match tree.find('{') {
        None => {
            // Whitespace is gone: `x as y` reads `xasy`; an alias only renames the last segment.
            let p = tree;
            let p = p.strip_suffix("::self").unwrap_or(p);
            out.push(format!("{prefix}{p}"));
        }
        Some(open) => {
            let (head, inner) = (&tree[..open], &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())]);
            let (mut depth, mut start) = (0, 0);
            let mut parts = Vec::new();
            for (j, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(&inner[start..j]);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            parts.push(&inner[start..]);
            for part in parts.into_iter().filter(|p| !p.is_empty()) {
                if part == "self" {
                    out.push(format!("{prefix}{}", head.trim_end_matches(':')));
                } else {
                    expand(&format!("{prefix}{head}"), part, out);
                }
            }
        }
    }
}

/// The file a path from module `from` lands in.
fn resolve(
    from: &str,
    path: &str,
    mods: &BTreeMap<String, String>,
    defs: &BTreeMap<String, BTreeSet<String>>,
) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    let here: Vec<String> = if from == "crate" { vec![] } else { from.split("::").map(str::to_owned).collect() };
    let (mut base, mut rest): (Vec<String>, &[&str]) = match segs[0] {
        "crate" => (vec![], &segs[1..]),
        "self" => (here.clone(), &segs[1..]),
        "super" => {
            let mut b = here.clone();
            let mut r = &segs[..];
            while r.first() == Some(&"super") {
                b.pop();
                r = &r[1..];
            }
            (b, r)
        }
        first => {
            let mut child = here.clone();
            child.push(first.to_owned());
            if mods.contains_key(&child.join("::")) {
                (here.clone(), &segs[..])
            } else {
                return None;
            }
        }
    };
    let name = |b: &[String]| if b.is_empty() { "crate".to_owned() } else { b.join("::") };
    while let Some(seg) = rest.first() {
        let mut next = base.clone();
        next.push((*seg).to_owned());
        if mods.contains_key(&name(&next)) {
            base = next;
            rest = &rest[1..];
            continue;
        }
        // An item: of this module, or re-exported from one of its files.
        let current = name(&base);
        if defs.get(&current).is_some_and(|d| d.contains(*seg)) {
            return Some(current);
        }
        let prefix = format!("{current}::");
        let child = mods.keys().find(|m| {
            m.strip_prefix(&prefix).is_some_and(|r| !r.contains("::")) && defs.get(*m).is_some_and(|d| d.contains(*seg))
        });
        return Some(child.cloned().unwrap_or(current));
    }
    Some(name(&base))
}

/// Module → the modules it uses.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let defs: BTreeMap<String, BTreeSet<String>> = mods.iter().map(|(m, s)| (m.clone(), definitions(s))).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, src) in &mods {
        for p in paths(src) {
            if let Some(to) = resolve(m, &p, &mods, &defs).filter(|to| to != m) {
                edges.entry(m.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// The layer table of docs/architecture.md, bottom first: the rows between its two marker
/// lines, each `| N | unit, unit |`.
fn layers() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).unwrap();
    let start = doc.find("<!-- layers: begin -->").expect("docs/architecture.md has the layer table");
    let end = doc.find("<!-- layers: end -->").expect("the layer table ends");
    let mut rows: Vec<(usize, Vec<String>)> = doc[start..end]
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let n = cells.get(1)?.parse().ok()?;
            let units = cells.get(2)?.split(',').map(|u| u.trim().trim_matches('`').trim_end_matches('/').to_owned());
            Some((n, units.filter(|u| !u.is_empty()).collect()))
        })
        .collect();
    rows.sort();
    assert!(rows.iter().enumerate().all(|(i, (n, _))| *n == i), "layers are numbered 0, 1, 2, …: {rows:?}");
    // Each unit of the source in exactly one row, and no row naming what is not there.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut listed = BTreeSet::new();
    for unit in rows.iter().flat_map(|(_, units)| units) {
        assert!(listed.insert(unit.clone()), "`{unit}` is in two rows of the layer table");
        assert!(
            src.join(unit).is_dir() || src.join(format!("{unit}.rs")).is_file(),
            "the layer table names `{unit}`, which is no folder or file under src/"
        );
    }
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if (path.is_dir() || path.extension().is_some_and(|e| e == "rs")) && name != "lib" && name != "main" {
            assert!(listed.contains(&name), "`{name}` is in no row of docs/architecture.md's layer table");
        }
    }
    rows.into_iter().map(|(_, units)| units).collect()
}

/// The unit a module belongs to: its folder under `src/`, or its file at the root.
fn unit(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn each_layer_uses_only_the_layers_below() {
    let layers = layers();
    let rank: BTreeMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(i, row)| row.iter().map(move |u| (u.as_str(), i))).collect();
    let edges = edges();
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        // lib.rs only declares the modules.
        if from == "crate" {
            continue;
        }
        let Some(&here) = rank.get(unit(from)) else {
            panic!("`{}` is in no row of docs/architecture.md's layer table", unit(from));
        };
        for to in tos {
            if unit(to) == unit(from) || to == "crate" {
                continue;
            }
            match rank.get(unit(to)) {
                None => panic!("`{}` is in no row of docs/architecture.md's layer table", unit(to)),
                Some(&there) if there >= here => {
                    wrong.push(format!("{from} -> {to} (layer {here} uses layer {there})"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layer order:\n{}", wrong.join("\n"));
    // Every unit of the source has its row, and the check sees what it should: the session
    // layer uses the shared store below it.
    for m in edges.keys().filter(|m| *m != "crate") {
        assert!(rank.contains_key(unit(m)), "{m}");
    }
    assert!(edges["session::cluster"].contains("shared"));
    assert!(rank["session"] > rank["shared"] && rank["edge"] > rank["ops"]);
}

#[test]
fn the_module_graph_has_no_circle() {
    let edges = edges();
    // Depth-first search for a back edge; report the circle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_owned(), 1);
        stack.push(m.to_owned());
        for to in edges.get(m).into_iter().flatten() {
            match state.get(to) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == to).unwrap_or(0);
                    let mut circle = stack[at..].to_vec();
                    circle.push(to.clone());
                    return Some(circle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(to, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in modules().keys() {
        if !state.contains_key(m) {
            if let Some(circle) = visit(m, &edges, &mut state, &mut Vec::new()) {
                panic!("a circle in the module graph: {}", circle.join(" -> "));
            }
        }
    }
    // The check sees the edges it should: the session store uses the sessions below it.
    assert!(edges["session::store"].contains("session::agent"), "{:?}", edges["session::store"]);
    assert!(edges["session::cluster"].contains("shared"), "{:?}", edges["session::cluster"]);
    assert!(!edges["session::agent"].contains("session::store"));
}

//! The module graph follows the architecture: each top-level module of `src/` imports only
//! from the layers below it (README, "How it works"), and no production code uses the test
//! fixtures. Read from the source text, so a new upward import fails here, not in review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom first. A module may use any module listed before it.
const LAYERS: &[&str] = &[
    "format",
    "assets",
    "engine",
    "generator",
    "tasks",
    "adapters",
    "training",
    "server",
    "eval",
    "bench",
    "cli",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/server/admin.rs` -> `server`).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Files that a `#[cfg(test)] mod NAME;` in `file` declares: test code as a whole.
fn test_children(file: &Path, text: &str) -> Vec<PathBuf> {
    let dir = file.parent().unwrap();
    let stem = file.file_stem().unwrap().to_string_lossy();
    // `mod.rs` and `lib.rs` children sit beside them, others in a folder named after the file.
    let base = if matches!(stem.as_ref(), "mod" | "lib" | "main") {
        dir.to_path_buf()
    } else {
        dir.join(stem.as_ref())
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]" && w[1].ends_with(';'))
        .filter_map(|w| w[1].trim_end_matches(';').rsplit(' ').next())
        .map(|name| base.join(format!("{name}.rs")))
        .collect()
}

/// `crate::NAME` references in code (not comments), with their line numbers and whether
/// they come after the file's first `#[cfg(test)]`, i.e. in test code.
fn crate_refs(text: &str) -> Vec<(usize, String, bool)> {
    crate_refs_from(text, false)
}

fn crate_refs_from(text: &str, test_file: bool) -> Vec<(usize, String, bool)> {
    let mut out = Vec::new();
    let mut in_tests = test_file;
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if line.trim_start().starts_with("#[cfg(test)]") {
            in_tests = true;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let name: String = rest[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `mistralrs_dnd::` style paths in `crate::` form only; skip `$crate::`.
            if !rest[..at].ends_with('$') && !name.is_empty() {
                out.push((i + 1, name, in_tests));
            }
            rest = &rest[at + 7..];
        }
    }
    out
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut test_files = Vec::new();
    for file in &files {
        test_children(file, &std::fs::read_to_string(file).unwrap())
            .into_iter()
            .for_each(|f| test_files.push(f));
    }
    let mut wrong = Vec::new();
    for file in &files {
        let me = top_module(&src, file);
        if matches!(me.as_str(), "lib" | "main" | "testing") {
            continue;
        }
        let Some(&mine) = rank.get(me.as_str()) else {
            wrong.push(format!("{}: module {me} has no layer", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, used, in_tests) in crate_refs_from(&text, test_files.contains(file)) {
            if used == "testing" {
                // The benches may serve the tests' tiny model (`bench overhead` measures the
                // layer's own cost on it); the server and the library never do.
                if !in_tests && me != "bench" {
                    wrong.push(format!(
                        "{}:{line}: production code uses crate::testing",
                        file.display()
                    ));
                }
                continue;
            }
            match rank.get(used.as_str()) {
                Some(&theirs) if theirs <= mine => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: {me} imports {used}, a layer above it",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{}:{line}: crate::{used} is no known module",
                    file.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_finds_test_only_child_modules() {
    let text = "mod a;\n#[cfg(test)]\nmod tests;\n#[cfg(test)]\npub(crate) mod fake;\n";
    assert_eq!(
        test_children(Path::new("src/engine/mod.rs"), text),
        vec![
            PathBuf::from("src/engine/tests.rs"),
            PathBuf::from("src/engine/fake.rs")
        ]
    );
    assert_eq!(
        test_children(
            Path::new("src/adapters/table.rs"),
            "#[cfg(test)]\nmod tests;"
        ),
        vec![PathBuf::from("src/adapters/table/tests.rs")]
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    let refs = crate_refs(
        "use crate::server::Config; // crate::cli\n#[cfg(test)]\nuse crate::testing::x;",
    );
    assert_eq!(
        refs,
        vec![
            (1, "server".to_string(), false),
            (3, "testing".to_string(), true)
        ]
    );
}

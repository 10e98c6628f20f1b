//! Every repository path the README and docs/*.md cite exists: the docs
//! must stand alone (no file outside the repository, no stale name).
//!
//! A cited path is a Markdown link target (relative to the citing file), or
//! any word starting with a top-level entry of the repository (`docs/...`,
//! `engine/...`, `scripts/...`, `Cargo.toml`, ...), in backticks or not. A
//! placeholder (`<family>`, `{a,b}`, `*`, `$X`) ends the path at the folder
//! before it, which must exist.

use std::path::{Path, PathBuf};

const TOP: &[&str] = &[
    "README.md",
    "Cargo.toml",
    "Cargo.lock",
    "LICENSE-MIT",
    "LICENSE-APACHE",
    ".ci/",
    "benches/",
    "docs/",
    "engine/",
    "kernels/",
    "models/",
    "scripts/",
    "tests/",
    "testutil/",
    "tools/",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./-".contains(c)
}

/// The part of a cited path that must exist: up to a placeholder's folder,
/// without sentence punctuation.
fn trim(path: &str, next: Option<char>) -> &str {
    let p = if next.is_some_and(|c| "<{*$".contains(c)) {
        &path[..path.rfind('/').map_or(0, |i| i + 1)]
    } else {
        path
    };
    p.trim_end_matches(['.', '-'])
}

/// Repository-relative paths cited in `text` (any word starting with a
/// top-level entry).
fn cited_top_level(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for (i, _) in text.char_indices() {
        let boundary = i == 0 || !path_char(text[..i].chars().next_back().unwrap_or(' '));
        if !boundary || !TOP.iter().any(|t| text[i..].starts_with(t)) {
            continue;
        }
        let len = text[i..]
            .find(|c: char| !path_char(c))
            .unwrap_or(text.len() - i);
        let next = text[i + len..].chars().next();
        let p = trim(&text[i..i + len], next);
        // `docs/` as part of a longer word (`docs/x`) counts; a bare `Cargo.tomls` does not
        let whole = TOP
            .iter()
            .any(|t| p.starts_with(t) && (t.ends_with('/') || p == *t));
        if whole && !p.is_empty() && bytes.get(i + len) != Some(&b'(') {
            out.push(p.to_string());
        }
    }
    out
}

/// Markdown link targets `](target)` that are files, not URLs or anchors.
fn links(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')')?];
            let target = target.split('#').next().unwrap_or("");
            let external = target.contains("://") || target.starts_with("mailto:");
            (!target.is_empty() && !external).then(|| target.to_string())
        })
        .collect()
}

fn docs() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut d: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    d.sort();
    files.extend(d);
    files
}

#[test]
fn every_cited_path_exists() {
    let root = root();
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in docs() {
        let text = std::fs::read_to_string(&file).expect("readable doc");
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for p in cited_top_level(&text) {
            checked += 1;
            if !root.join(&p).exists() {
                missing.push(format!("{name}: {p}"));
            }
        }
        let dir = file.parent().expect("doc folder");
        for l in links(&text) {
            checked += 1;
            if !dir.join(&l).exists() {
                missing.push(format!("{name}: link {l}"));
            }
        }
        assert!(
            !text.contains("shared/DESIGN.md") && !text.contains("/work/"),
            "{name} cites a file outside the repository"
        );
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the scanner broken?"
    );
    assert!(
        missing.is_empty(),
        "cited but missing:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scanner_finds_paths_links_and_placeholders() {
    let text = "See `docs/GPU.md`, engine/src/ops/<family>/mod.rs and \
                [the recipe](RECIPE.md#imagenet) or [site](https://x.org). \
                Files: `kernels/src/families/{a,b}.cu`; Cargo.toml. Not: subdocs/x, mydocs/";
    assert_eq!(
        cited_top_level(text),
        [
            "docs/GPU.md",
            "engine/src/ops/",
            "kernels/src/families/",
            "Cargo.toml"
        ]
    );
    assert_eq!(links(text), ["RECIPE.md"]);
}

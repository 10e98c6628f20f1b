//! docs/OPS.md's coverage table is the code's: for every op family folder,
//! the primitives of its trait (`mod.rs`) and which of them each backend
//! overrides (`cpu.rs`, `cuda.rs`); a primitive a backend does not override
//! returns `Error::Unsupported` there. The test fails when the table and the
//! code disagree and prints the table the code implies;
//! `SLMLP_BLESS=1 cargo test -p engine --lib coverage` writes it.

use std::fmt::Write;
use std::path::Path;

/// The `fn` names declared directly inside the block that opens with the
/// first line of `src` containing `header` (braces counted from there).
fn fns_in_block(src: &str, header: &str) -> Vec<String> {
    let Some(start) = src.find(header) else {
        return vec![];
    };
    let body = &src[start..];
    let (mut depth, mut names, mut line_start) = (0i32, vec![], true);
    let mut chars = body.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        if line_start && depth == 1 {
            let rest = body[i..].trim_start();
            if let Some(after) = rest.strip_prefix("fn ") {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
        line_start = ch == '\n';
    }
    names
}

/// The coverage table (markdown rows) implied by the sources under `ops`.
fn table(ops: &Path) -> String {
    let mut families: Vec<_> = std::fs::read_dir(ops)
        .expect("engine/src/ops")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("mod.rs").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    families.sort();
    let mut out = String::from("| family | primitive | cpu | cuda |\n|---|---|---|---|\n");
    for f in families {
        let read =
            |file: &str| std::fs::read_to_string(ops.join(&f).join(file)).unwrap_or_default();
        let m = read("mod.rs");
        let Some(tr) = m.find("pub trait ") else {
            continue;
        };
        let name: String = m[tr + 10..]
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        let cpu = fns_in_block(&read("cpu.rs"), &format!("impl {name} for Cpu"));
        let cuda = fns_in_block(&read("cuda.rs"), &format!("impl {name} for Cuda"));
        for p in fns_in_block(&m, &format!("pub trait {name}")) {
            let mark = |v: &[String]| if v.contains(&p) { "yes" } else { "-" };
            writeln!(out, "| {f} | {p} | {} | {} |", mark(&cpu), mark(&cuda)).unwrap();
        }
    }
    out
}

const BEGIN: &str = "<!-- coverage: begin -->\n";
const END: &str = "<!-- coverage: end -->";

#[test]
fn ops_md_lists_what_each_backend_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let want = table(&root.join("src/ops"));
    assert!(
        want.lines().count() > 20,
        "too few primitives found:\n{want}"
    );
    let doc_path = root.join("../docs/OPS.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/OPS.md");
    let (a, b) = (
        doc.find(BEGIN).expect("begin marker"),
        doc.find(END).expect("end marker"),
    );
    let have = &doc[a + BEGIN.len()..b];
    if have != want {
        if std::env::var("SLMLP_BLESS").is_ok_and(|v| v == "1") {
            let new = format!("{}{BEGIN}{want}{}", &doc[..a], &doc[b..]);
            std::fs::write(&doc_path, new).expect("write docs/OPS.md");
            return;
        }
        panic!("docs/OPS.md's coverage table is stale; the code implies:\n{want}");
    }
}

#[test]
fn a_block_lists_only_its_own_functions() {
    let src = "trait T {\n    fn a(&self) {\n        fn inner() {}\n    }\n    fn b(&self);\n}\nfn c() {}\n";
    assert_eq!(fns_in_block(src, "trait T"), vec!["a", "b"]);
    assert!(fns_in_block(src, "trait U").is_empty());
}

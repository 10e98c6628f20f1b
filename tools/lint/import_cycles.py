#!/usr/bin/env python3
"""Lists pairs of Rust modules that import each other (A uses B and B uses A).

A module is a source file (`foo.rs` or `foo/mod.rs`) of one crate. A use of
another module is any path `crate::a::b`, `super::x` or `self::x` in its
code (comments and string literals excluded); names re-exported at the crate
root (`crate::Tensor`) resolve to the module that defines them through the
root's `pub use` lines. A child module's own `mod` declaration is not a use.
Exit status 1 when a pair exists, listing each.

    python3 tools/lint/import_cycles.py engine/src models/src kernels/src
"""
import re
import sys
from pathlib import Path


def strip(src):
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    src = re.sub(r'"(\\.|[^"\\])*"', '""', src)
    return src


def module_of(root, path):
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def resolve(mods, base, segs):
    """The longest known module prefix of base + segs."""
    full = list(base) + segs
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return ()


def root_exports(root_src, mods):
    """crate-root names re-exported from a module: `pub use a::b::{X, Y};`"""
    out = {}
    for m in re.finditer(r"pub use ([\w:]+)::\{([^}]*)\};|pub use ([\w:]+)::(\w+);", root_src):
        if m.group(1):
            path, names = m.group(1), [n.strip().split(" as ")[-1] for n in m.group(2).split(",")]
        else:
            path, names = m.group(3), [m.group(4)]
        segs = [s for s in path.split("::") if s not in ("crate", "self")]
        target = resolve(mods, (), segs)
        for n in names:
            if n:
                out[n] = target
    return out


def crate_edges(root):
    files = [p for p in root.rglob("*.rs") if "bin" not in p.relative_to(root).parts]
    mods = {module_of(root, p): p for p in files}
    lib = root / "lib.rs"
    exports = root_exports(strip(lib.read_text()), mods) if lib.exists() else {}
    edges = {}
    for m, p in mods.items():
        src = strip(p.read_text())
        is_dir_mod = p.name in ("mod.rs", "lib.rs", "main.rs")
        deps = set()
        # expand `use a::{b, c::{d}}` one level so each path is seen
        for um in re.finditer(r"\b(crate|super|self)((?:::\w+)*)(?:::\{([^}]*)\})?", src):
            head, rest, group = um.group(1), um.group(2), um.group(3)
            segs = [s for s in rest.split("::") if s]
            if head == "crate":
                base = ()
            elif head == "self":
                base = m if is_dir_mod else m[:-1]
            else:  # super
                base = m[:-1] if is_dir_mod else m[:-2]
                while segs and segs[0] == "super":
                    segs, base = segs[1:], base[:-1]
            if not segs and not group:
                continue
            tails = [[]]
            if group:
                tails = [[s for s in g.strip().split("::") if s] for g in group.split(",")]
            for t in tails:
                full = segs + t
                target = resolve(mods, base, full)
                if target == () and full and full[0] in exports and head == "crate":
                    target = exports[full[0]]
                if head == "crate" and target == () and not segs and t and t[0] in exports:
                    target = exports[t[0]]
                if target != m and target != () and not (target[: len(m)] == m):
                    deps.add(target)
        edges[m] = deps
    return edges


def main(roots):
    bad = []
    for r in roots:
        root = Path(r)
        edges = crate_edges(root)
        for a, ds in edges.items():
            for b in ds:
                if a < b and a in edges.get(b, ()):
                    bad.append(f"{r}: {'::'.join(a) or 'crate'} <-> {'::'.join(b) or 'crate'}")
    for line in sorted(bad):
        print(line)
    print(f"{len(bad)} pair(s) of modules importing each other")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["engine/src", "models/src", "kernels/src"]))

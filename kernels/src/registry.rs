//! Every kernel file the crate ships, with the entry points it must export.
//!
//! One `Kernel` per `.cu` file (a kernel family), declared by the family's
//! own module with `kernel!` (`families/<name>.rs` beside
//! `families/<name>.cu`) and collected into [`KERNELS`] by `families/mod.rs`.
//! Its entry points are the extern "C" names a launcher looks up in the
//! CUBIN. The compile test checks both directions: every listed name is
//! compiled, and the file exports nothing unlisted.

pub use crate::families::KERNELS;

/// A CUDA C++ source file, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Short name: cache file names and error messages.
    pub name: &'static str,
    /// File under kernels/src/families/, the name NVRTC reports in diagnostics.
    pub file: &'static str,
    pub source: &'static str,
    pub entry_points: &'static [&'static str],
}

/// In-memory headers every kernel may `#include "name"`; part of the cache key.
pub const HEADERS: &[(&str, &str)] = &[("common.cuh", include_str!("families/common.cuh"))];

/// Expands `"name"` to `"name_f32", "name_f16", "name_bf16"`.
macro_rules! per_dtype {
    ($($n:literal),* $(,)?) => {
        [$(concat!($n, "_f32"), concat!($n, "_f16"), concat!($n, "_bf16")),*]
    };
}

macro_rules! entries {
    (typed [$($t:literal),* $(,)?] untyped [$($u:literal),* $(,)?]) => {{
        const TYPED: &[&str] = &per_dtype!($($t),*);
        const UNTYPED: &[&str] = &[$($u),*];
        const N: usize = TYPED.len() + UNTYPED.len();
        const ALL: [&str; N] = {
            let mut out = [""; N];
            let mut i = 0;
            while i < TYPED.len() {
                out[i] = TYPED[i];
                i += 1;
            }
            let mut j = 0;
            while j < UNTYPED.len() {
                out[i + j] = UNTYPED[j];
                j += 1;
            }
            out
        };
        &ALL
    }};
}

/// `kernel!("pool", typed [...] untyped [...])`: the registry entry of
/// `pool.cu`, embedded from the folder of the module that invokes it (a
/// family's `.rs` beside its `.cu`). `typed` names get the three dtype
/// suffixes, `untyped` ones are exported as written.
macro_rules! kernel {
    ($name:literal, $($rest:tt)*) => {
        $crate::registry::Kernel {
            name: $name,
            file: concat!($name, ".cu"),
            source: include_str!(concat!($name, ".cu")),
            entry_points: entries!($($rest)*),
        }
    };
}

/// The registry entry called `name`.
pub fn kernel(name: &str) -> crate::Result<&'static Kernel> {
    KERNELS
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| crate::Error::UnknownKernel {
            name: name.to_string(),
            known: KERNELS
                .iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The kernel file that exports entry point `entry`.
pub fn kernel_of_entry(entry: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.entry_points.contains(&entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_sources_follow_the_conventions() {
        let mut seen = HashSet::new();
        // (That each listed entry point is really exported is checked against
        // the compiled CUBIN's ptxas report in tests/compile.rs.)
        for k in KERNELS {
            assert!(k.source.contains("#include \"common.cuh\""), "{}", k.file);
            assert!(
                k.source.starts_with("// "),
                "{}: design comment first",
                k.file
            );
            for e in k.entry_points {
                assert!(seen.insert(*e), "entry point {e} listed twice");
            }
        }
        assert!(kernel("batchnorm").is_ok());
        assert!(kernel("nope")
            .unwrap_err()
            .to_string()
            .contains("batchnorm"));
        assert_eq!(
            kernel_of_entry("bn_fwd_apply_bf16").unwrap().name,
            "batchnorm"
        );
    }
}

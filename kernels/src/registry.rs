//! Every kernel file the crate ships, with the entry points it must export:
//! lookups over `KERNELS` by name and by entry point.
//!
//! One [`Kernel`] per `.cu` file (a kernel family), declared by the family's
//! own module with `kernel!` (`families/<name>.rs` beside
//! `families/<name>.cu`, the type and macro in [`crate::source`]) and
//! collected into `KERNELS` by `families/mod.rs` (re-exported at the crate
//! root). Its entry points are the extern "C" names a launcher looks up in
//! the CUBIN. The compile test checks both directions: every listed name is
//! compiled, and the file exports nothing unlisted.

use crate::families::KERNELS;
pub use crate::source::{Kernel, HEADERS};

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

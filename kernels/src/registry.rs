//! Every kernel file the crate ships, with the entry points it must export.
//!
//! One `Kernel` per `.cu` file (a kernel family); its entry points are the
//! extern "C" names a launcher looks up in the CUBIN. The compile test
//! checks both directions: every listed name is compiled, and the file
//! exports nothing unlisted.

/// A CUDA C++ source file, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Short name: cache file names and error messages.
    pub name: &'static str,
    /// File under kernels/cuda/, the name NVRTC reports in diagnostics.
    pub file: &'static str,
    pub source: &'static str,
    pub entry_points: &'static [&'static str],
}

/// In-memory headers every kernel may `#include "name"`; part of the cache key.
pub const HEADERS: &[(&str, &str)] = &[("common.cuh", include_str!("../cuda/common.cuh"))];

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

macro_rules! kernel {
    ($name:literal, $($rest:tt)*) => {
        Kernel {
            name: $name,
            file: concat!($name, ".cu"),
            source: include_str!(concat!("../cuda/", $name, ".cu")),
            entry_points: entries!($($rest)*),
        }
    };
}

pub const KERNELS: &[Kernel] = &[
    kernel!("batchnorm",
        typed ["bn_fwd_stats", "bn_fwd_finalize", "bn_fwd_apply", "bn_bwd_reduce", "bn_bwd_dx"]
        untyped ["bn_eval_prepare", "bn_bwd_finalize"]),
    kernel!("bn1d_relu",
        typed ["bn1d_relu_fwd", "bn1d_relu_bwd"]
        untyped []),
    kernel!("elementwise",
        typed ["add", "scale", "relu_fwd", "relu_bwd", "add_bcast"]
        untyped ["cast_f32_to_f16", "cast_f32_to_bf16", "cast_f16_to_f32", "cast_bf16_to_f32",
                 "cast_f16_to_bf16", "cast_bf16_to_f16"]),
    kernel!("reduce",
        typed ["sum_partial", "all_finite", "gap_fwd", "gap_bwd", "sum_cols", "sum_rows"]
        untyped ["sum_finalize", "unscale_check_f32"]),
    kernel!("pool",
        typed ["maxpool_fwd", "maxpool_bwd", "avgpool_fwd", "avgpool_bwd",
               "adaptive_avgpool_fwd", "adaptive_avgpool_bwd"]
        untyped []),
    kernel!("softmax_xent",
        typed ["xent_fwd", "xent_bwd"]
        untyped ["xent_finalize"]),
    kernel!("sgd",
        typed ["sgd_step"]
        untyped []),
    kernel!("copy",
        typed []
        untyped ["strided_copy_1", "strided_copy_2", "strided_copy_4", "strided_copy_8"]),
    kernel!("roi_align",
        typed ["roi_align_fwd", "roi_align_bwd"]
        untyped []),
    kernel!("nms",
        typed ["nms_mask"]
        untyped []),
];

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

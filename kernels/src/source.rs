//! The [`Kernel`] type (one embedded `.cu` file and the entry points it
//! must export), the in-memory headers and the `kernel!` macro each family
//! declares its entry with (`families/<name>.rs` beside
//! `families/<name>.cu`). It imports no family: `families/mod.rs` collects
//! the entries into `KERNELS` and [`crate::registry`] looks them up.

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
        $crate::source::Kernel {
            name: $name,
            file: concat!($name, ".cu"),
            source: include_str!(concat!($name, ".cu")),
            entry_points: entries!($($rest)*),
        }
    };
}

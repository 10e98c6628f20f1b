//! The one precision switch of the GPU libraries: whether f32 products
//! (cuBLASLt GEMMs, cuDNN convolutions) may use TF32 tensor cores (10-bit
//! mantissa inputs, f32 accumulation: ~3e-4 relative error instead of
//! ~1e-6). Off by default, which keeps f32 parity with the CPU;
//! `SLMLP_TF32=1` turns it on at start-up, [`set_tf32`] at any time (the
//! next GEMM or convolution sees it: algorithm caches are keyed by it).

use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static TF32: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Allows (true) or forbids (false) TF32 for f32 GEMMs and convolutions,
/// overriding `SLMLP_TF32`.
pub fn set_tf32(on: bool) {
    TF32.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether f32 GEMMs and convolutions may use TF32 (see [`set_tf32`]).
pub fn tf32() -> bool {
    match TF32.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = from_env(std::env::var("SLMLP_TF32").ok().as_deref());
            // a concurrent set_tf32 wins over the environment
            let _ = TF32.compare_exchange(
                UNKNOWN,
                if on { ON } else { OFF },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            TF32.load(Ordering::Relaxed) == ON
        }
    }
}

/// What `SLMLP_TF32` asks for: on only for "1".
fn from_env(v: Option<&str>) -> bool {
    v == Some("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_is_off_unless_asked_for() {
        assert!(from_env(Some("1")));
        assert!(!from_env(Some("0")));
        assert!(!from_env(Some("")));
        assert!(!from_env(None));
        // never switched on here: a GPU test running beside this one
        // would lose f32 parity
        set_tf32(false);
        assert!(!tf32());
    }
}

//! The counter-hash init: deterministic f32 weights that the Rust tests and
//! tools/golden/export_resnet50.py (its Python twin, documented there and in
//! tools/golden/README.md) build alike from parameter names, so fixtures of
//! networks too big to commit need no weight files.

use engine::nn::{Buffer, Param};
use engine::Tensor;

/// FNV-1a, 64 bit.
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The splitmix64 finaliser.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// u(name, j) = top 24 bits of splitmix64(fnv1a64(name) + j) / 2^23 - 1, in [-1, 1).
pub fn hash_uniform(name: &str, n: usize) -> impl Iterator<Item = f64> {
    let h = fnv1a64(name);
    (0..n as u64).map(move |j| (splitmix64(h.wrapping_add(j)) >> 40) as f64 / 8388608.0 - 1.0)
}

/// The f32 tensor the hash init gives `name` of shape `dims`
/// (kaiming-uniform conv/linear weights, BN weight 1 + 0.1u, biases 0.1u,
/// running mean 0.1u, running var 1 + 0.25(u + 1)), each value then
/// multiplied by `scale` in f32 (as torch multiplies an f32 tensor).
pub fn hash_init_value_scaled(name: &str, dims: &[usize], scale: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let f: Box<dyn Fn(f64) -> f64> = if name.ends_with(".running_mean") {
        Box::new(|u| 0.1 * u)
    } else if name.ends_with(".running_var") {
        Box::new(|u| 1.0 + 0.25 * (u + 1.0))
    } else if name.ends_with(".weight") && dims.len() >= 2 {
        let fan_in: usize = dims[1..].iter().product();
        let s = (6.0 / fan_in as f64).sqrt();
        Box::new(move |u| u * s)
    } else if name.ends_with(".weight") {
        Box::new(|u| 1.0 + 0.1 * u)
    } else if name.ends_with(".bias") {
        Box::new(|u| 0.1 * u)
    } else {
        panic!("no hash-init rule for {name}")
    };
    let v: Vec<f32> = hash_uniform(name, n).map(|u| f(u) as f32 * scale).collect();
    Tensor::from_vec(v, dims).unwrap()
}

/// [`hash_init_value_scaled`] with scale 1.
pub fn hash_init_value(name: &str, dims: &[usize]) -> Tensor {
    hash_init_value_scaled(name, dims, 1.0)
}

/// An f32 input of shape `dims` holding u(name, j) (exact in f32).
pub fn hash_input(name: &str, dims: &[usize]) -> Tensor {
    let n = dims.iter().product();
    let v: Vec<f32> = hash_uniform(name, n).map(|u| u as f32).collect();
    Tensor::from_vec(v, dims).unwrap()
}

/// Sets every parameter (scaled by `param_scale(name)`) and buffer (not
/// scaled) to its hash-init value.
pub fn hash_init(params: &[Param], buffers: &[Buffer], param_scale: impl Fn(&str) -> f64) {
    for p in params {
        let s = param_scale(p.name()) as f32;
        p.set(hash_init_value_scaled(p.name(), &p.dims(), s))
            .unwrap();
    }
    for b in buffers {
        let dims = b.get().dims().to_vec();
        b.set(hash_init_value(b.name(), &dims)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_in_range_and_deterministic() {
        let u: Vec<f64> = hash_uniform("layer1.0.conv1.weight", 1000).collect();
        assert!(u.iter().all(|v| (-1.0..1.0).contains(v)));
        assert_eq!(
            u,
            hash_uniform("layer1.0.conv1.weight", 1000).collect::<Vec<_>>()
        );
        assert_ne!(
            u[..4],
            hash_uniform("layer1.0.conv2.weight", 4).collect::<Vec<_>>()[..]
        );
        // fnv1a64's published test vector
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        let v = hash_init_value("bn.running_var", &[8])
            .to_vec_f64()
            .unwrap();
        assert!(v.iter().all(|x| (1.0..=1.5).contains(x)), "{v:?}");
    }
}

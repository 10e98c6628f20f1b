use super::*;

fn idx(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

fn arange(shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::arange(n, dtype).reshape(shape).unwrap()
}

#[test]
fn index_select_picks_slices_along_every_dim() {
    let x = arange(&[2, 3, 4], DType::F32);
    let y = x.index_select(1, &idx(&[2, 0, 2])).unwrap();
    assert_eq!(y.dims(), [2, 3, 4]);
    let want = [
        8., 9., 10., 11., 0., 1., 2., 3., 8., 9., 10., 11., //
        20., 21., 22., 23., 12., 13., 14., 15., 20., 21., 22., 23.,
    ];
    assert_eq!(y.to_vec_f64().unwrap(), want);
    let y = x.index_select(0, &idx(&[1])).unwrap();
    assert_eq!(
        y.to_vec_f64().unwrap(),
        (12..24).map(f64::from).collect::<Vec<_>>()
    );
    let y = x.index_select(2, &idx(&[3, 0])).unwrap();
    assert_eq!(y.dims(), [2, 3, 2]);
    assert_eq!(y.to_vec_f64().unwrap()[..4], [3., 0., 7., 4.]);
    // integer dtypes are moved exactly, and an empty index gives an empty dim
    let big = Tensor::from_vec(vec![i64::MAX, -7, 1 << 60], &[3]).unwrap();
    let y = big.index_select(0, &idx(&[2, 0])).unwrap();
    assert_eq!(y.to_vec::<i64>().unwrap(), vec![1 << 60, i64::MAX]);
    assert_eq!(x.index_select(1, &idx(&[])).unwrap().dims(), [2, 0, 4]);
}

#[test]
fn index_select_rejects_bad_indices() {
    let x = arange(&[2, 3], DType::F32);
    let e = x.index_select(1, &idx(&[0, 3])).unwrap_err().to_string();
    assert!(e.contains("index 3 (position 1) is out of range"), "{e}");
    let e = x.index_select(0, &idx(&[-1])).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let e = x.index_select(2, &idx(&[0])).unwrap_err().to_string();
    assert!(e.contains("dim 2 out of range"), "{e}");
    let f = Tensor::from_vec(vec![0.0f32], &[1]).unwrap();
    let e = x.index_select(0, &f).unwrap_err().to_string();
    assert!(e.contains("i64"), "{e}");
    let e = x.index_select(0, &idx(&[0, 1]).reshape(&[1, 2]).unwrap());
    assert!(e.unwrap_err().to_string().contains("1-D"));
}

/// d/dx sum(index_select(x) * w) by central differences (f64), with a
/// repeated index so two slices add into one row.
#[test]
fn index_select_gradient_matches_finite_differences() {
    let mut rng = crate::Rng::new(3);
    let shape = [3, 4, 2];
    let x = Tensor::randn(&shape, 0.0, 1.0, DType::F64, &mut rng);
    let index = idx(&[3, 1, 3, 0, 3]);
    let w = Tensor::randn(&[3, 5, 2], 0.0, 1.0, DType::F64, &mut rng);
    let f = |x: &Tensor| -> f64 {
        let y = x.index_select(1, &index).unwrap().to_vec_f64().unwrap();
        y.iter()
            .zip(w.to_vec_f64().unwrap())
            .map(|(a, b)| a * b)
            .sum()
    };
    let xg = x.requires_grad_().unwrap();
    let y = xg.index_select(1, &index).unwrap();
    y.backward_with(w.clone()).unwrap();
    let got = xg.grad().unwrap().to_vec_f64().unwrap();
    let base = x.to_vec_f64().unwrap();
    let h = 1e-6;
    for i in 0..base.len() {
        let at = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            f(&Tensor::from_vec(v, &shape).unwrap())
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (got[i] - fd).abs() <= 1e-6 + 1e-6 * fd.abs(),
            "{i}: {} vs {fd}",
            got[i]
        );
    }
    // row 2 is never selected: zero gradient; row 3 three times
    assert_eq!(got[4..6], [0.0, 0.0]);
}

#[test]
fn index_select_gradient_must_match_the_output() {
    let x = arange(&[2, 3], DType::F32).requires_grad_().unwrap();
    let y = x.index_select(1, &idx(&[0])).unwrap();
    let e = y
        .backward_with(Tensor::zeros(&[2, 2], DType::F32))
        .unwrap_err();
    assert!(e.to_string().contains("gradient"), "{e}");
}

#[test]
fn sort_is_stable_with_nan_largest() {
    let x = Tensor::from_vec(
        vec![0.5f32, f32::NAN, 2.0, 0.5, -0.0, 0.0, f32::NAN, -3.0],
        &[8],
    )
    .unwrap();
    let (v, i) = x.sort(true).unwrap();
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, 6, 2, 0, 3, 4, 5, 7]);
    assert!(v.to_vec_f64().unwrap()[..2].iter().all(|v| v.is_nan()));
    assert_eq!(
        v.to_vec_f64().unwrap()[2..],
        [2.0, 0.5, 0.5, 0.0, 0.0, -3.0]
    );
    let i = x.argsort(false).unwrap();
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![7, 4, 5, 0, 3, 2, 1, 6]);
}

#[test]
fn topk_takes_the_largest_of_each_last_dim_row() {
    let x = Tensor::from_vec(vec![1.0f64, 5.0, 3.0, 5.0, 9.0, -1.0, 0.0, 2.0], &[2, 4]).unwrap();
    let (v, i) = x.topk(2).unwrap();
    assert_eq!(v.dims(), [2, 2]);
    assert_eq!(v.to_vec_f64().unwrap(), vec![5.0, 5.0, 9.0, 2.0]);
    assert_eq!(i.to_vec::<i64>().unwrap(), vec![1, 3, 0, 3]);
    assert_eq!(i.dtype(), DType::I64);
    let (v, _) = x.to_dtype(DType::BF16).unwrap().topk(1).unwrap();
    assert_eq!(
        (v.dtype(), v.to_vec_f64().unwrap()),
        (DType::BF16, vec![5.0, 9.0])
    );
    assert_eq!(x.topk(0).unwrap().0.dims(), [2, 0]);
    let e = x.topk(5).unwrap_err().to_string();
    assert!(e.contains("k = 5 exceeds"), "{e}");
    let e = idx(&[1, 2]).topk(1).unwrap_err().to_string();
    assert!(e.contains("float dtype"), "{e}");
    assert!(Tensor::scalar(1.0f32).sort(true).is_err());
}

#[test]
fn parity_cases_run_on_the_cpu_reproducibly() {
    let mut cases = Vec::new();
    parity::cases(&mut crate::Rng::new(5), &mut cases);
    assert!(!cases.is_empty());
    for c in &cases {
        let (a, b) = ((c.run)(Device::Cpu).unwrap(), (c.run)(Device::Cpu).unwrap());
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            let (x, y) = (x.to_vec_f64().unwrap(), y.to_vec_f64().unwrap());
            assert!(
                x.iter()
                    .zip(&y)
                    .all(|(p, q)| p == q || (p.is_nan() && q.is_nan())),
                "{} {} {n}",
                c.op,
                c.label
            );
        }
    }
}

/// The CPU primitives check their indices themselves: an index out of
/// range that reached them (e.g. a device index downloaded for a host
/// tensor) is an error, never an out-of-bounds slice.
#[test]
fn cpu_primitives_reject_indices_out_of_range() {
    use crate::backend::Cpu;
    let x = arange(&[2, 3], DType::F32);
    for bad in [3, -1, i64::MAX, i64::MIN] {
        let e = Cpu
            .index_select(&x, 1, &idx(&[0, bad]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("index {bad} (position 1) is out of range")),
            "{e}"
        );
        let dy = Tensor::zeros(&[2, 2], DType::F32);
        let e = Cpu
            .index_select_backward(&dy, 1, &idx(&[bad, 0]), &[2, 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("position 0"), "{e}");
    }
    let y = Cpu.index_select(&x, 1, &idx(&[2, 0])).unwrap();
    assert_eq!(y.to_vec_f64().unwrap(), [2., 0., 5., 3.]);
}

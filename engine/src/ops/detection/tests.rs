use super::*;

#[test]
fn order_is_descending_stable_nan_first() {
    let s = [0.5, f64::NAN, 0.9, 0.5, f64::NAN, -1.0];
    assert_eq!(
        crate::ops::index::sort_order(&s, true),
        vec![1, 4, 2, 0, 3, 5]
    );
}

#[test]
fn roi_align_gradient_must_match_the_output() {
    let g = RoiGeom {
        nchw: [1, 2, 5, 5],
        k: 3,
        out: [2, 2],
        spatial_scale: 1.0,
        sampling_ratio: 2,
        aligned: true,
    };
    let x = (DType::F32, Device::Cpu);
    assert!(check_grad(&Tensor::zeros(&[3, 2, 2, 2], DType::F32), x, &g).is_ok());
    for dy in [
        Tensor::zeros(&[3, 2, 2, 2], DType::F64),
        Tensor::zeros(&[2, 2, 2, 2], DType::F32),
    ] {
        let e = check_grad(&dy, x, &g).unwrap_err().to_string();
        assert!(e.contains("gradient") && e.contains("[3, 2, 2, 2]"), "{e}");
    }
}

#[test]
fn nms_scores_must_be_one_per_box_on_the_boxes_device() {
    let b = Tensor::zeros(&[2, 4], DType::F32);
    let e = nms(&b, &Tensor::zeros(&[3], DType::F32), 0.5).unwrap_err();
    assert!(e.to_string().contains("[K] = [2]"), "{e}");
    let e = nms(&b, &Tensor::zeros(&[2], DType::F64), 0.5).unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
}

#[test]
fn parity_cases_run_on_the_cpu_reproducibly() {
    let mut cases = Vec::new();
    parity::cases(&mut crate::Rng::new(5), &mut cases);
    assert_eq!(cases.len(), 36);
    for c in cases.iter().filter(|c| c.dtype == DType::F32) {
        let (a, b) = ((c.run)(Device::Cpu).unwrap(), (c.run)(Device::Cpu).unwrap());
        for ((n, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(
                x.to_vec_f64().unwrap(),
                y.to_vec_f64().unwrap(),
                "{} {} {n}",
                c.op,
                c.label
            );
        }
    }
}

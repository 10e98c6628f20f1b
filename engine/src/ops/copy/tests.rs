//! Copies on the CPU, and the CUDA backend's answer where there is no GPU.

use crate::{DType, Device, Error, Tensor};

#[test]
fn casts_round_to_nearest_even_and_cast_gradients_back() {
    let x = Tensor::from_vec(vec![1.0f32, 1.0 + 1.0 / 256.0, -2.5], &[3])
        .unwrap()
        .requires_grad_()
        .unwrap();
    let y = x.to_dtype(DType::BF16).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one
    assert_eq!(y.to_vec_f64().unwrap(), vec![1.0, 1.0, -2.5]);
    y.backward_with(Tensor::ones(&[3], DType::BF16)).unwrap();
    assert_eq!(x.grad().unwrap().dtype(), DType::F32);
}

#[test]
fn contiguous_copies_a_transposed_view_in_row_major_order() {
    let x = Tensor::from_vec((0..6).map(|i| i as f32).collect(), &[2, 3]).unwrap();
    let t = x.transpose(0, 1).unwrap();
    assert!(!t.is_contiguous());
    let c = t.contiguous().unwrap();
    assert!(c.is_contiguous());
    assert_eq!(
        c.to_vec::<f32>().unwrap(),
        vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    );
}

#[test]
fn moving_to_a_gpu_gives_the_values_back_or_says_what_is_missing() {
    let t = Tensor::from_vec((0..24).map(|i| i as f32).collect(), &[1, 2, 3, 4]).unwrap();
    match t.to_device(Device::Cuda(0)) {
        Err(e) => assert!(matches!(e, Error::DeviceUnavailable { .. }), "{e}"),
        Ok(d) => {
            let back = d.to_device(Device::Cpu).unwrap();
            assert_eq!(back.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
        }
    }
}

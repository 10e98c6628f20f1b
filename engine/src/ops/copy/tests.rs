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

#[test]
fn a_queued_read_keeps_the_values_of_when_it_was_queued() {
    use crate::nn::Param;
    use crate::optim::{Optimizer, Sgd};
    // the read queued before an SGD step gives the values before it
    let v = vec![1.0f32, -2.0, 3.5, 0.25];
    let p = Param::new("w", Tensor::from_vec(v.clone(), &[2, 2]).unwrap(), false).unwrap();
    let read = p.get().queue_to_host().unwrap();
    p.set_grad(Some(Tensor::ones(&[2, 2], DType::F32)));
    Sgd::new(0.5, 0.0, 0.0).step(&[p.clone()]).unwrap();
    assert_eq!(
        p.get().to_vec::<f32>().unwrap(),
        vec![0.5, -2.5, 3.0, -0.25]
    );
    let got = read.wait().unwrap();
    assert_eq!((got.dims(), got.dtype()), (&[2usize, 2][..], DType::F32));
    assert_eq!(got.to_vec::<f32>().unwrap(), v);
}

#[test]
fn a_queued_read_of_a_view_is_row_major() {
    let x = Tensor::from_vec((0..12).map(|i| i as f32).collect(), &[3, 4]).unwrap();
    let t = x.transpose(0, 1).unwrap().narrow(0, 1, 2).unwrap();
    let got = t.queue_to_host().unwrap().wait().unwrap();
    assert!(got.is_contiguous());
    assert_eq!(got.dims(), &[2, 3]);
    assert_eq!(
        got.to_vec::<f32>().unwrap(),
        vec![1.0, 5.0, 9.0, 2.0, 6.0, 10.0]
    );
    let i = Tensor::from_vec(vec![7i64, -3], &[2]).unwrap();
    assert_eq!(
        i.queue_to_host()
            .unwrap()
            .wait()
            .unwrap()
            .to_vec::<i64>()
            .unwrap(),
        vec![7, -3]
    );
}

#[test]
fn the_queued_read_parity_case_reads_its_sources_on_the_cpu() {
    let mut cases = Vec::new();
    super::parity::cases(&mut crate::Rng::new(3), &mut cases);
    let case = cases.iter().find(|c| c.op == "to_host_queued").unwrap();
    let out = (case.run)(Device::Cpu).unwrap();
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["read 4", "read 3", "read 2", "read 1", "read 0"]);
    let dims: Vec<&[usize]> = out.iter().map(|(_, t)| t.dims()).collect();
    assert_eq!(dims, [&[20_000][..], &[6, 5], &[9], &[2, 3, 4, 5], &[37]]);
    assert_eq!(
        out[2].1.to_vec::<i64>().unwrap(),
        (0..9).map(|i| i * 7 - 20).collect::<Vec<i64>>()
    );
    assert_eq!(out[3].1.dtype(), DType::BF16);
}

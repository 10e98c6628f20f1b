//! Copies' GPU parity cases: casts between every pair of float storage
//! dtypes the GPU converts on the device, on 4-D (channels-last), long and
//! small shapes; queued reads to the host.

use crate::parity::{autograd, dims, Case, Input, Outputs};
use crate::{DType, Device, Result, Rng, Tensor};

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let pairs = [
        (DType::F32, DType::BF16),
        (DType::BF16, DType::F32),
        (DType::F32, DType::F16),
        (DType::F16, DType::F32),
        (DType::BF16, DType::F16),
        (DType::F16, DType::BF16),
    ];
    for (from, to) in pairs {
        for shape in [&[2usize, 13, 9, 7][..], &[1000][..], &[3, 7][..]] {
            let mut c = autograd(
                "cast",
                from,
                format!("{} ->{}", dims(shape), to.name()),
                rng.next_u64(),
                vec![Input::randn("x", shape, 3.0)],
                move |t| Ok(vec![("y".into(), t[0].to_dtype(to)?)]),
            );
            // both sides round to nearest even: the results must agree to
            // f32 precision
            c.threshold = Some(1e-5);
            out.push(c);
        }
    }
    queued_read_cases(rng, out);
    batch_upload_cases(rng, out);
}

/// `from_host` through the batch ring: uploads over the small ring's 1 MiB
/// (`cuda/upload_ring.rs`), several queued back to back before any is
/// used (f32 [3, 512, 1024] of 6 MiB, a u8 [4, 3, 256, 256] 4-D batch
/// permuted to channels-last, bf16 [1100, 1000]), the host buffers dropped
/// as soon as each upload returns; then the values read back. Exact.
fn batch_upload_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let seed = rng.next_u64();
    let run = move |device: Device| -> Result<Outputs> {
        let mut rng = Rng::new(seed);
        let pixels: Vec<u8> = (0..4 * 3 * 256 * 256)
            .map(|_| rng.below(256) as u8)
            .collect();
        let uploaded = [
            Tensor::randn(&[3, 512, 1024], 0.0, 1.0, DType::F32, &mut rng).to_device(device)?,
            Tensor::from_vec(pixels, &[4, 3, 256, 256])?.to_device(device)?,
            Tensor::randn(&[1100, 1000], 0.0, 1.0, DType::BF16, &mut rng).to_device(device)?,
        ];
        uploaded
            .into_iter()
            .enumerate()
            .map(|(i, t)| Ok((format!("upload {i}"), t.to_device(Device::Cpu)?)))
            .collect()
    };
    out.push(Case {
        op: "from_host",
        dtype: DType::F32,
        label:
            "batch ring: f32 [3,512,1024], u8 [4,3,256,256], bf16 [1100,1000], queued back to back"
                .into(),
        threshold: Some(0.0),
        run: Box::new(run),
    });
}

/// `queue_to_host`: reads of f32, bf16 (4-D, channels-last on a GPU, so
/// copied row-major first), i64, a narrowed view and a tensor over the
/// 64 KiB a GPU leaves queued, all queued before any is waited for, taken
/// in reverse order; on a GPU every source is then overwritten by a copy
/// queued behind the reads, which must not reach them. Exact.
fn queued_read_cases(rng: &mut Rng, out: &mut Vec<Case>) {
    let seed = rng.next_u64();
    let run = move |device: Device| -> Result<Outputs> {
        let mut rng = Rng::new(seed);
        let big = Tensor::randn(&[20_000], 0.0, 1.0, DType::F32, &mut rng);
        let sources = [
            Tensor::randn(&[37], 0.0, 1.0, DType::F32, &mut rng),
            Tensor::randn(&[2, 3, 4, 5], 0.0, 1.0, DType::BF16, &mut rng),
            Tensor::from_vec((0..9).map(|i| i * 7 - 20).collect::<Vec<i64>>(), &[9])?,
            Tensor::randn(&[6, 10], 0.0, 1.0, DType::F32, &mut rng),
            big,
        ]
        .iter()
        .map(|t| t.to_device(device))
        .collect::<Result<Vec<_>>>()?;
        let mut viewed = sources.to_vec();
        viewed[3] = sources[3].narrow(1, 2, 5)?;
        let reads = viewed
            .iter()
            .map(Tensor::queue_to_host)
            .collect::<Result<Vec<_>>>()?;
        if device != Device::Cpu {
            for t in &sources {
                crate::cuda::tensor::overwrite(
                    t,
                    &Tensor::zeros(t.dims(), t.dtype()).to_device(device)?,
                )?;
            }
        }
        let mut outs = Vec::new();
        for (i, r) in reads.into_iter().enumerate().rev() {
            outs.push((format!("read {i}"), r.wait()?));
        }
        Ok(outs)
    };
    out.push(Case {
        op: "to_host_queued",
        dtype: DType::F32,
        label:
            "f32 [37], bf16 [2,3,4,5], i64 [9], f32 [6,10] narrowed to [6,5], f32 [20000] (80 KB)"
                .into(),
        threshold: Some(0.0),
        run: Box::new(run),
    });
}

//! The CUDA hot paths as criterion benches, each printed against its
//! ceiling: fused BN+ReLU / BN+add+ReLU (N=256, bf16) as % of the measured
//! device-to-device copy bandwidth, bf16 GEMM and ResNet-50 convs as % of
//! the measured 8192^3 GEMM rate. The GPU check's `slmlp-gpu-bench` makes
//! the same measurements on the PyTorch keys (docs/GPU_CHECK.md); this is
//! the one to iterate with on a GPU machine that has Rust.
//!
//! `cargo bench -p slmlp-benches --bench cuda_ops`; with no usable GPU it
//! prints one line and exits at once.

#[path = "src/bin/gpu_common.rs"]
mod gpu_common;

use criterion::{Criterion, Throughput};
use engine::cuda::Gpu;
use engine::ops::Conv2dParams;
use engine::{DType, Device, Tensor};
use gpu_common::*;
use std::time::{Duration, Instant};

/// Runs `f` `iters` times between two synchronisations: criterion's
/// `iter_custom` for asynchronous device work.
fn timed(g: &Gpu, iters: u64, mut f: impl FnMut() -> engine::Result<()>) -> Duration {
    g.synchronize().expect("synchronize");
    let t = Instant::now();
    for _ in 0..iters {
        f().expect("the op under test failed");
    }
    g.synchronize().expect("synchronize");
    t.elapsed()
}

/// Backward timing: forwards prepared untimed in chunks of 16.
fn timed_bwd(
    g: &Gpu,
    iters: u64,
    mut fwd: impl FnMut() -> engine::Result<Tensor>,
    mut bwd: impl FnMut(Tensor) -> engine::Result<()>,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(16);
        let ys: Vec<Tensor> = (0..n).map(|_| fwd().expect("forward failed")).collect();
        g.synchronize().expect("synchronize");
        let t = Instant::now();
        for y in ys {
            bwd(y).expect("backward failed");
        }
        g.synchronize().expect("synchronize");
        total += t.elapsed();
        left -= n;
    }
    total
}

fn ceiling(g: &Gpu, f: impl FnMut(usize) -> engine::Result<()>) -> f64 {
    time_gpu(g, 3, 10, 50, 0.3, f)
        .expect("ceiling measurement")
        .ms_median
}

fn main() {
    if let Err(e) = engine::cuda::probe(0) {
        println!(
            "cuda_ops: skipped, no usable GPU: {}",
            e.to_string().split(';').next().unwrap_or("")
        );
        return;
    }
    let g = engine::cuda::gpu(0).expect("GPU 0 opens after a successful probe");
    let pool = DevicePool::new(1 << 28, DType::BF16, 5).expect("random input buffer");
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));

    // ceilings, measured the same way as the figures
    const COPY: usize = 1 << 30;
    let (src, dst) = (g.alloc(COPY).expect("alloc"), g.alloc(COPY).expect("alloc"));
    let flat = pool.take(&[1 << 28], 0).expect("pool view");
    let (pool_block, pool_at) = engine::cuda::tensor::block_of(&flat).expect("pool block");
    src.copy_from(0, pool_block, pool_at, 1 << 29)
        .and_then(|_| src.copy_from(1 << 29, pool_block, pool_at, 1 << 29))
        .expect("fill");
    let copy_gbps =
        2.0 * COPY as f64 / (ceiling(g, |_| dst.copy_from(0, &src, 0, COPY)) * 1e-3) / 1e9;
    let (a, b) = (
        pool.take(&[8192, 8192], 1).unwrap(),
        pool.take(&[8192, 8192], 2).unwrap(),
    );
    let gemm_tf = {
        let _ng = engine::no_grad();
        2.0 * 8192f64.powi(3) / (ceiling(g, |_| a.matmul(&b).map(drop)) * 1e-3) / 1e12
    };
    println!(
        "ceilings: d2d copy {copy_gbps:.0} GB/s, bf16 GEMM 8192^3 {gemm_tf:.0} TFLOP/s ({})",
        g.info.summary()
    );
    drop((src, dst));

    let mut grp = c.benchmark_group("bn_relu");
    for (h, w, ch) in [(56, 56, 256), (14, 14, 1024)] {
        let n = BN_BATCH;
        let e = n * h * w * ch;
        let x = pool
            .take(&[n, ch, h, w], 3)
            .unwrap()
            .requires_grad_()
            .unwrap();
        let dy = pool.take(&[n, ch, h, w], 4).unwrap();
        let wt = Tensor::ones(&[ch], DType::F32)
            .to_device(Device::Cuda(0))
            .unwrap()
            .requires_grad_()
            .unwrap();
        let bias = Tensor::zeros(&[ch], DType::F32)
            .to_device(Device::Cuda(0))
            .unwrap()
            .requires_grad_()
            .unwrap();
        let (rm, rv) = (
            Tensor::zeros(&[ch], DType::F32)
                .to_device(Device::Cuda(0))
                .unwrap(),
            Tensor::ones(&[ch], DType::F32)
                .to_device(Device::Cuda(0))
                .unwrap(),
        );
        let args = bn_train_args(&wt, &bias, &rm, &rv);
        for fwd in [true, false] {
            let bytes = bn_bytes(e, false, fwd);
            grp.throughput(Throughput::Bytes(bytes as u64));
            let name = format!("{}/{h}x{w}x{ch}", if fwd { "fwd" } else { "bwd" });
            let mut last = Duration::ZERO;
            let mut its = 0;
            grp.bench_function(&name, |bch| {
                bch.iter_custom(|iters| {
                    let d = if fwd {
                        timed(g, iters, || x.batch_norm_relu(&args).map(drop))
                    } else {
                        timed_bwd(
                            g,
                            iters,
                            || Ok(x.batch_norm_relu(&args)?.out),
                            |y| {
                                y.backward_with(dy.clone())?;
                                for t in [&x, &wt, &bias] {
                                    t.set_grad(None);
                                }
                                Ok(())
                            },
                        )
                    };
                    (last, its) = (d, iters);
                    d
                })
            });
            let gbps = bytes as f64 * its as f64 / last.as_secs_f64().max(1e-12) / 1e9;
            println!(
                "bn_relu {name}: {gbps:.0} GB/s = {:.0}% of copy ({copy_gbps:.0} GB/s)",
                100.0 * gbps / copy_gbps
            );
        }
    }
    grp.finish();

    let mut grp = c.benchmark_group("gemm_conv");
    {
        let x = pool.take(&[256, 2048], 5).unwrap();
        let wp = pool
            .take(&[2048, 2048], 6)
            .unwrap()
            .permute(&[1, 0])
            .unwrap();
        let flops = 2.0 * 256.0 * 2048.0 * 2048.0;
        let mut last = (Duration::ZERO, 1);
        let _ng = engine::no_grad();
        grp.bench_function("gemm/proj/fwd", |bch| {
            bch.iter_custom(|iters| {
                let d = timed(g, iters, || x.matmul(&wp).map(drop));
                last = (d, iters);
                d
            })
        });
        let tf = flops * last.1 as f64 / last.0.as_secs_f64().max(1e-12) / 1e12;
        println!(
            "gemm/proj/fwd: {tf:.0} TFLOP/s = {:.0}% of square GEMM",
            100.0 * tf / gemm_tf
        );
    }
    for s in resnet50_convs().into_iter().filter(|s| {
        [
            "3x3_64-64_s1_56x56",
            "1x1_256-64_s1_56x56",
            "3x3_512-512_s1_7x7",
        ]
        .contains(&s.tag().as_str())
    }) {
        let x = pool.take(&[256, s.cin, s.h, s.w], 7).unwrap();
        let w = pool.take(&[s.cout, s.cin, s.k, s.k], 8).unwrap();
        let p = Conv2dParams {
            stride: [s.stride; 2],
            padding: [s.pad; 2],
            ..Conv2dParams::default()
        };
        let mut last = (Duration::ZERO, 1);
        let _ng = engine::no_grad();
        grp.bench_function(format!("conv/{}/fwd", s.tag()), |bch| {
            bch.iter_custom(|iters| {
                let d = timed(g, iters, || x.conv2d(&w, None, p).map(drop));
                last = (d, iters);
                d
            })
        });
        let tf = s.flops(256) * last.1 as f64 / last.0.as_secs_f64().max(1e-12) / 1e12;
        println!(
            "conv/{}/fwd: {tf:.0} TFLOP/s = {:.0}% of square GEMM",
            s.tag(),
            100.0 * tf / gemm_tf
        );
    }
    grp.finish();
    c.final_summary();
}

//! The CPU reference backend's hot kernels against the machine's ceiling:
//! first the measured f32 FMA peak on all cores, then GEMM and conv2d
//! (forward, backward-data, backward-weight) at the ResNet-18 CIFAR shapes
//! (batch 64), each printed as GFLOP/s and % of that peak, and finally the
//! conv time of one whole ResNet-18 CIFAR training step and, layer by layer,
//! of one step of the built-in study's quick model (width 16, batch 128,
//! 1x28x28: the narrow layers).
//!
//! Then the quick model's BatchNorm layers (`quick_bn`): forward and
//! backward of each BN(+ReLU, +add+ReLU) shape of its step, as GB/s of the
//! tensor passes they must make against one-core copy bandwidth.
//!
//! Then its residual joins (`quick_joins`): each block input's gradient is
//! the first convolution's input gradient plus what the identity or the
//! downsampling convolution gave; timed computed-then-added (the autograd
//! engine's sum) and written into the summed gradient (what the
//! convolution's backward does when it is offered it).
//!
//! FLOPs count 2 per multiply-add. `cargo bench -p slmlp-benches --bench cpu_kernels`
//! (`-- quick_convs` runs only the quick model's conv table, `-- quick_bn`
//! only its BatchNorm table, `-- quick_joins` only the joins, `-- r50_convs`
//! only the convs of a ResNet-50 step at batch 8, `-- r50_wgrad` only their
//! weight gradients.)

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use engine::ops::{gemm, Conv2dParams, MatRef};
use engine::{DType, Rng, Tensor};
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BATCH: usize = 64;

// ---- the ceiling ----

/// f32 GFLOP/s of the FMA loop on every rayon thread at once, best of 3
/// (`engine::profile::measure_cpu_fma_peak`, docs/PERF.md's "Ceiling").
fn peak() -> f64 {
    static PEAK: OnceLock<f64> = OnceLock::new();
    *PEAK.get_or_init(|| {
        let (flops, isa) = engine::profile::measure_cpu_fma_peak();
        let best = flops / 1e9;
        println!(
            "f32 FMA peak ({isa}, {} threads): {best:.1} GFLOP/s",
            rayon::current_num_threads()
        );
        best
    })
}

fn report(name: &str, flops: f64, secs: f64) {
    let g = flops / secs / 1e9;
    println!(
        "{name:<44} {:>9.3} ms {g:>7.1} GFLOP/s {:>5.1}% of peak",
        secs * 1e3,
        100.0 * g / peak()
    );
}

/// Best (minimum) seconds of `routine` over `reps` runs after one warm-up;
/// `setup` (untimed) makes each run's input. The minimum, because on a
/// shared 2-vCPU VM noise only ever adds time; criterion's own statistics
/// follow each line.
fn time<S, R>(reps: usize, mut setup: impl FnMut() -> S, mut routine: impl FnMut(S) -> R) -> f64 {
    black_box(routine(setup()));
    let t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = setup();
            let start = Instant::now();
            black_box(routine(s));
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.into_iter().fold(f64::INFINITY, f64::min)
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    g
}

// ---- GEMM ----

fn bench_gemm(c: &mut Criterion) {
    peak();
    let mut g = configure(c, "gemm_f32");
    let mut rng = Rng::new(1);
    for (m, k, n) in [(512, 512, 512), (1024, 1024, 1024), (128, 1152, 4096)] {
        let a = Tensor::randn(&[m * k], 0.0, 1.0, DType::F32, &mut rng)
            .to_vec::<f32>()
            .unwrap();
        let b = Tensor::randn(&[k * n], 0.0, 1.0, DType::F32, &mut rng)
            .to_vec::<f32>()
            .unwrap();
        let mut dst = vec![0.0f32; m * n];
        let run = |dst: &mut [f32]| {
            let am = MatRef {
                data: &a,
                rows: m,
                cols: k,
                row_stride: k,
                col_stride: 1,
            };
            let bm = MatRef {
                data: &b,
                rows: k,
                cols: n,
                row_stride: n,
                col_stride: 1,
            };
            gemm(dst, am, bm, false, 0).expect("m x k and k x n operands of their own buffers");
        };
        let flops = 2.0 * (m * k * n) as f64;
        report(
            &format!("gemm {m}x{k}x{n}"),
            flops,
            time(7, || (), |_| run(&mut dst)),
        );
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(format!("{m}x{k}x{n}"), |bch| bch.iter(|| run(&mut dst)));
    }
    g.finish();
}

// ---- conv2d ----

#[derive(Clone, Copy)]
struct ConvShape {
    batch: usize,
    cin: usize,
    cout: usize,
    hw: usize,
    k: usize,
    stride: usize,
}

impl ConvShape {
    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: [self.stride; 2],
            padding: [self.k / 2; 2],
            ..Default::default()
        }
    }
    fn out_hw(&self) -> usize {
        (self.hw + 2 * (self.k / 2) - self.k) / self.stride + 1
    }
    /// FLOPs of the forward, and of each of the two backward products.
    fn flops(&self) -> f64 {
        2.0 * (self.batch * self.cout * self.out_hw().pow(2) * self.cin * self.k * self.k) as f64
    }
    fn name(&self) -> String {
        format!(
            "[{},{},{},{}] {}x{} s{} ->{}",
            self.batch, self.cin, self.hw, self.hw, self.k, self.k, self.stride, self.cout
        )
    }
    fn tensors(&self) -> (Tensor, Tensor, Tensor) {
        let mut rng = Rng::new(7);
        let x = Tensor::randn(
            &[self.batch, self.cin, self.hw, self.hw],
            0.0,
            1.0,
            DType::F32,
            &mut rng,
        );
        let std = (2.0 / (self.cin * self.k * self.k) as f64).sqrt();
        let w = Tensor::randn(
            &[self.cout, self.cin, self.k, self.k],
            0.0,
            std,
            DType::F32,
            &mut rng,
        );
        let o = self.out_hw();
        let gy = Tensor::randn(
            &[self.batch, self.cout, o, o],
            0.0,
            1.0,
            DType::F32,
            &mut rng,
        );
        (x, w, gy)
    }
}

/// The graph for one backward: the forward runs untimed; which of x and
/// w require grad decides which gradients the backward computes.
fn conv_graph(x: &Tensor, w: &Tensor, s: ConvShape, grad_x: bool, grad_w: bool) -> Tensor {
    let leaf = |t: &Tensor, on: bool| {
        if on {
            t.requires_grad_().unwrap()
        } else {
            t.clone()
        }
    };
    leaf(x, grad_x)
        .conv2d(&leaf(w, grad_w), None, s.params())
        .unwrap()
}

fn bench_conv(c: &mut Criterion) {
    peak();
    let shapes = [64, 128, 256, 512].map(|ch| ConvShape {
        batch: BATCH,
        cin: ch,
        cout: ch,
        hw: 2048 / ch,
        k: 3,
        stride: 1,
    });
    let mut g = configure(c, "conv2d_f32_b64");
    for s in shapes {
        let (x, w, gy) = s.tensors();
        let p = s.params();
        g.throughput(Throughput::Elements(s.flops() as u64));
        report(
            &format!("conv fwd {}", s.name()),
            s.flops(),
            time(5, || (), |_| x.conv2d(&w, None, p).unwrap()),
        );
        g.bench_function(format!("fwd {}", s.name()), |b| {
            b.iter(|| x.conv2d(&w, None, p).unwrap())
        });
        for (what, gx, gw) in [("bwd-data", true, false), ("bwd-weight", false, true)] {
            let setup = || conv_graph(&x, &w, s, gx, gw);
            let run = |y: Tensor| y.backward_with(gy.clone()).unwrap();
            report(
                &format!("conv {what} {}", s.name()),
                s.flops(),
                time(5, setup, run),
            );
            g.bench_function(format!("{what} {}", s.name()), |b| {
                b.iter_batched(setup, run, BatchSize::PerIteration)
            });
        }
    }
    g.finish();
}

/// `(cin, cout, hw, k, stride)` -> the conv shape at `batch`.
fn shapes_of(batch: usize) -> impl Fn(usize, usize, usize, usize, usize) -> ConvShape {
    move |cin, cout, hw, k, stride| ConvShape {
        batch,
        cin,
        cout,
        hw,
        k,
        stride,
    }
}

/// The conv shapes of a CIFAR-stem ResNet-18 of width `w` on `cin`x`hw`x`hw`
/// images, with their counts per step; the first is the stem.
fn resnet18_layers(batch: usize, cin: usize, hw: usize, w: usize) -> Vec<(usize, ConvShape)> {
    let cs = shapes_of(batch);
    let (h2, h3, h4) = (hw.div_ceil(2), hw.div_ceil(4), hw.div_ceil(8));
    vec![
        (1, cs(cin, w, hw, 3, 1)),
        (4, cs(w, w, hw, 3, 1)),
        (1, cs(w, 2 * w, hw, 3, 2)),
        (3, cs(2 * w, 2 * w, h2, 3, 1)),
        (1, cs(w, 2 * w, hw, 1, 2)),
        (1, cs(2 * w, 4 * w, h2, 3, 2)),
        (3, cs(4 * w, 4 * w, h3, 3, 1)),
        (1, cs(2 * w, 4 * w, h2, 1, 2)),
        (1, cs(4 * w, 8 * w, h3, 3, 2)),
        (3, cs(8 * w, 8 * w, h4, 3, 1)),
        (1, cs(4 * w, 8 * w, h3, 1, 2)),
    ]
}

/// Times every conv of one training step (`layers` from [`resnet18_layers`]
/// or [`resnet50_layers`]),
/// one line per shape, then their weighted sum.
fn step_convs(label: &str, layers: &[(usize, ConvShape)]) {
    let (mut fwd, mut bwd, mut flops) = (0.0, 0.0, 0.0);
    for (i, &(count, s)) in layers.iter().enumerate() {
        let (x, w, gy) = s.tensors();
        let grad_x = i > 0;
        let f = time(5, || (), |_| x.conv2d(&w, None, s.params()).unwrap());
        let b = time(
            5,
            || conv_graph(&x, &w, s, grad_x, true),
            |y| y.backward_with(gy.clone()).unwrap(),
        );
        let n = count as f64;
        let layer_flops = s.flops() * if grad_x { 3.0 } else { 2.0 };
        report(&format!("{label} {count}x {} fwd", s.name()), s.flops(), f);
        report(
            &format!("{label} {count}x {} bwd", s.name()),
            layer_flops - s.flops(),
            b,
        );
        fwd += n * f;
        bwd += n * b;
        flops += n * layer_flops;
    }
    report(
        &format!("{label}: all convs of a train step"),
        flops,
        fwd + bwd,
    );
    println!(
        "  of which forward {:.1} ms, backward {:.1} ms",
        fwd * 1e3,
        bwd * 1e3
    );
}

/// Every conv of a CIFAR-stem ResNet-18 at batch 64: the conv share of one
/// training step (the stem needs no grad of its input).
fn resnet18_convs(_c: &mut Criterion) {
    step_convs("resnet18-cifar b64", &resnet18_layers(BATCH, 3, 32, 64));
}

/// The same for the built-in study's quick model: width 16, batch 128 of
/// 1x28x28 (`benches/pretrain_step.rs` times its whole step).
fn quick_convs(_c: &mut Criterion) {
    step_convs("quick w16 b128", &resnet18_layers(128, 1, 28, 16));
}

/// The distinct conv shapes of an ImageNet ResNet-50 (torchvision's: the
/// stride on the 3x3) at `batch` 224x224 images, with their counts per step.
fn resnet50_layers(batch: usize) -> Vec<(usize, ConvShape)> {
    let cs = shapes_of(batch);
    let mut layers = vec![(1, cs(3, 64, 224, 7, 2))];
    // (input width, bottleneck width, blocks, input plane, first stride)
    for (cin, w, blocks, hw, stride) in [
        (64, 64, 3, 56, 1),
        (256, 128, 4, 56, 2),
        (512, 256, 6, 28, 2),
        (1024, 512, 3, 14, 2),
    ] {
        let (out, hw2) = (4 * w, hw / stride);
        layers.extend([
            (1, cs(cin, w, hw, 1, 1)),
            (1, cs(w, w, hw, 3, stride)),
            (blocks, cs(w, out, hw2, 1, 1)),
            (1, cs(cin, out, hw, 1, stride)),
            (blocks - 1, cs(out, w, hw2, 1, 1)),
            (blocks - 1, cs(w, w, hw2, 3, 1)),
        ]);
    }
    layers.retain(|&(count, _)| count > 0);
    layers
}

/// Every conv of a ResNet-50 step at batch 8 (224x224), forward and
/// backward (both gradients but the stem's input gradient).
fn r50_convs(_c: &mut Criterion) {
    step_convs("r50 b8", &resnet50_layers(8));
}

/// The weight gradients of a ResNet-50 step at batch 8 (224x224), one line
/// per distinct shape, then their sum: the small planes of layer3 and
/// layer4 hold few output pixels per image against large weights.
fn r50_wgrad(_c: &mut Criterion) {
    let (mut total, mut flops) = (0.0, 0.0);
    for (count, s) in resnet50_layers(8) {
        let (x, w, gy) = s.tensors();
        let t = time(
            5,
            || conv_graph(&x, &w, s, false, true),
            |y| y.backward_with(gy.clone()).unwrap(),
        );
        report(
            &format!("r50 b8 {count}x {} bwd-weight", s.name()),
            s.flops(),
            t,
        );
        total += count as f64 * t;
        flops += count as f64 * s.flops();
    }
    report("r50 b8: all weight gradients of a step", flops, total);
}

// ---- BatchNorm ----

/// Bytes per second of a plain copy on one thread (best of 5 over 64 MiB):
/// the ceiling of a bandwidth-bound pass on this machine.
fn copy_bandwidth() -> f64 {
    static BW: OnceLock<f64> = OnceLock::new();
    *BW.get_or_init(|| {
        let n = 16 << 20;
        let src = vec![1.0f32; n];
        let mut dst = vec![0.0f32; n];
        let secs = time(5, || (), |_| dst.copy_from_slice(black_box(&src)));
        let bw = 2.0 * 4.0 * n as f64 / secs;
        println!(
            "copy bandwidth (1 thread, read + write): {:.1} GB/s",
            bw / 1e9
        );
        bw
    })
}

/// One BatchNorm layer of a step: `count` layers of shape [batch, c, hw, hw]
/// with `fuse` after the normalisation.
#[derive(Clone, Copy)]
struct BnShape {
    count: usize,
    batch: usize,
    c: usize,
    hw: usize,
    fuse: engine::ops::Fuse,
}

impl BnShape {
    fn elems(&self) -> usize {
        self.batch * self.c * self.hw * self.hw
    }
    /// Tensor passes the op cannot avoid (one read or write of x's size
    /// each): forward reads x twice (statistics, then normalise) and writes
    /// y (+ reads the residual); backward reads x and dy for the sums and
    /// again for dx, writes dx (+ writes the residual's gradient).
    fn passes(&self) -> (f64, f64) {
        match self.fuse {
            engine::ops::Fuse::AddRelu => (4.0, 6.0),
            _ => (3.0, 5.0),
        }
    }
    fn name(&self) -> String {
        let f = match self.fuse {
            engine::ops::Fuse::None => "bn",
            engine::ops::Fuse::Relu => "bn+relu",
            engine::ops::Fuse::AddRelu => "bn+add+relu",
        };
        format!("{}x {f} {}x{}x{}", self.count, self.c, self.hw, self.hw)
    }
}

/// The BatchNorm layers of the quick model's step (CIFAR-stem ResNet-18,
/// width 16, batch 128, 1x28x28), with their counts.
fn quick_bn_layers() -> Vec<BnShape> {
    use engine::ops::Fuse::{AddRelu, None, Relu};
    let s = |count, c, hw, fuse| BnShape {
        count,
        batch: 128,
        c,
        hw,
        fuse,
    };
    vec![
        s(3, 16, 28, Relu),
        s(2, 16, 28, AddRelu),
        s(2, 32, 14, Relu),
        s(2, 32, 14, AddRelu),
        s(1, 32, 14, None),
        s(2, 64, 7, Relu),
        s(2, 64, 7, AddRelu),
        s(1, 64, 7, None),
        s(2, 128, 4, Relu),
        s(2, 128, 4, AddRelu),
        s(1, 128, 4, None),
    ]
}

/// Times forward and backward (gradients of x, weight, bias and the
/// residual) of every BatchNorm of the quick model's step: one line per
/// shape, then the sums.
fn quick_bn(_c: &mut Criterion) {
    let bw = copy_bandwidth();
    let line = |name: &str, bytes: f64, secs: f64| {
        println!(
            "{name:<40} {:>8.3} ms {:>6.1} GB/s {:>5.1}% of copy",
            secs * 1e3,
            bytes / secs / 1e9,
            100.0 * bytes / secs / bw
        );
    };
    let mut rng = Rng::new(7);
    let (mut fwd, mut bwd) = (0.0, 0.0);
    for s in quick_bn_layers() {
        let dims = [s.batch, s.c, s.hw, s.hw];
        let x = Tensor::randn(&dims, 0.0, 1.0, DType::F32, &mut rng);
        let res = Tensor::randn(&dims, 0.0, 1.0, DType::F32, &mut rng);
        let gy = Tensor::randn(&dims, 0.0, 1.0, DType::F32, &mut rng);
        let w = Tensor::randn(&[s.c], 0.0, 1.0, DType::F32, &mut rng);
        let b = Tensor::randn(&[s.c], 0.0, 1.0, DType::F32, &mut rng);
        let (rm, rv) = (
            Tensor::zeros(&[s.c], DType::F32),
            Tensor::ones(&[s.c], DType::F32),
        );
        let run = |x: &Tensor, w: &Tensor, b: &Tensor, res: &Tensor| {
            let a = engine::ops::BatchNormArgs {
                weight: w,
                bias: b,
                running_mean: &rm,
                running_var: &rv,
                training: true,
                momentum: 0.1,
                eps: 1e-5,
            };
            match s.fuse {
                engine::ops::Fuse::None => x.batch_norm(&a),
                engine::ops::Fuse::Relu => x.batch_norm_relu(&a),
                engine::ops::Fuse::AddRelu => x.batch_norm_add_relu(res, &a),
            }
            .unwrap()
            .out
        };
        let f = time(5, || (), |_| run(&x, &w, &b, &res));
        let grad = |t: &Tensor| t.requires_grad_().unwrap();
        let bk = time(
            5,
            || run(&grad(&x), &grad(&w), &grad(&b), &grad(&res)),
            |y| y.backward_with(gy.clone()).unwrap(),
        );
        let (pf, pb) = s.passes();
        let bytes = 4.0 * s.elems() as f64;
        line(&format!("{} fwd", s.name()), pf * bytes, f);
        line(&format!("{} bwd", s.name()), pb * bytes, bk);
        let n = s.count as f64;
        fwd += n * f;
        bwd += n * bk;
    }
    println!(
        "quick w16 b128: all BatchNorms of a train step {:.1} ms (forward {:.1}, backward {:.1})",
        (fwd + bwd) * 1e3,
        fwd * 1e3,
        bwd * 1e3
    );
}

// ---- residual joins ----

/// The residual joins of the quick model's step, with their counts: the
/// first convolution of each block whose input gradient is added to the
/// gradient the identity (stride 1) or the downsampling 1x1 (stride 2)
/// already gave the block's input.
fn quick_joins(_c: &mut Criterion) {
    use engine::backend::Cpu;
    use engine::ops::conv::{Conv2dGeom, ConvOps};
    let cs = |cin, cout, hw, stride| ConvShape {
        batch: 128,
        cin,
        cout,
        hw,
        k: 3,
        stride,
    };
    let joins = [
        (2, cs(16, 16, 28, 1)),
        (1, cs(16, 32, 28, 2)),
        (1, cs(32, 32, 14, 1)),
        (1, cs(32, 64, 14, 2)),
        (1, cs(64, 64, 7, 1)),
        (1, cs(64, 128, 7, 2)),
        (1, cs(128, 128, 4, 1)),
    ];
    let (mut then_add, mut into) = (0.0, 0.0);
    for (count, s) in joins {
        let (x, w, dy) = s.tensors();
        let oh = s.out_hw();
        let g = Conv2dGeom {
            n: s.batch,
            cin: s.cin,
            h: s.hw,
            w: s.hw,
            cout: s.cout,
            kh: 3,
            kw: 3,
            oh,
            ow: oh,
            p: s.params(),
        };
        let summed = x.to_vec::<f32>().unwrap();
        let fresh = || Tensor::from_vec(summed.clone(), x.dims()).unwrap();
        let a = time(5, fresh, |acc| {
            let dx = Cpu.conv2d_backward_data(&dy, &w, &g, None).unwrap();
            acc.add(&dx).unwrap()
        });
        let b = time(5, fresh, |acc| {
            Cpu.conv2d_backward_data(&dy, &w, &g, Some(acc)).unwrap()
        });
        println!(
            "{:<40} then added {:>7.3} ms, written into the sum {:>7.3} ms",
            format!("{count}x join {}", s.name()),
            a * 1e3,
            b * 1e3
        );
        then_add += count as f64 * a;
        into += count as f64 * b;
    }
    println!(
        "quick w16 b128: the input gradients at all residual joins of a step: then added {:.1} ms, written into the sum {:.1} ms",
        then_add * 1e3,
        into * 1e3
    );
}

/// A table's bench function.
type Table = fn(&mut Criterion);

/// The tables that can run alone, each selected by its name as an
/// argument; with none named, everything runs (the GEMM and conv tables
/// first).
const TABLES: [(&str, Table); 5] = [
    ("quick_convs", quick_convs),
    ("quick_bn", quick_bn),
    ("quick_joins", quick_joins),
    ("r50_convs", r50_convs),
    ("r50_wgrad", r50_wgrad),
];

fn tables(c: &mut Criterion) {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| TABLES.iter().any(|(name, _)| name == a))
        .collect();
    if named.is_empty() {
        bench_gemm(c);
        bench_conv(c);
        resnet18_convs(c);
    }
    for (name, table) in TABLES {
        if named.is_empty() || named.iter().any(|a| a == name) {
            table(c);
        }
    }
}

criterion_group!(benches, tables);
criterion_main!(benches);

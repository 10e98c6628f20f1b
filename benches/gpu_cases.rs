//! The parity cases of slmlp-gpu-check (benches/src/bin/gpu_check.rs) that
//! are not one op: whole-network gradients, and the eval-mode forward the
//! commands that only read a network run (forward, analyze, transfer), and a
//! Mask R-CNN training step. Single ops register their cases
//! with their family (engine/src/ops/<family>/parity.rs); these use the same
//! [`Case`] form, so the runner treats both alike.

use engine::nn::Module;
use engine::parity::{Case, Outputs};
use engine::{DType, Device, Error, Result, Rng, Tensor};
use models::inspect::forward_outputs;
use models::{NetConfig, ProjectorConfig, Stem, SupervisedNet};
use std::cell::OnceCell;
use std::rc::Rc;

/// Named values on the host: the loss, the logits, every parameter's gradient.
type Values = Vec<(String, Vec<f64>)>;

/// Every case slmlp-gpu-check runs: the engine's op parity cases, then the
/// model, detector and CUDA-graph cases of this file.
pub fn all_cases(seed: u64) -> Vec<Case> {
    let mut cases = engine::ops::parity_cases(seed);
    cases.extend(model_cases(seed));
    cases.extend(detector_cases(seed));
    cases.extend(graph_cases(seed));
    cases
}

/// `model_grads`: a whole network's forward and backward, the loss, the
/// logits and every parameter's gradient (SL-MLP ResNet-18, width 8, both
/// stems; f32 and bf16 each). Catches what single-op cases cannot: gradient
/// accumulation across branches, layouts handed from op to op, the model's
/// dtype casts.
///
/// How it is judged (measured on the H100, 2026-11-26):
/// - every item's error is relative to its largest value floored at 1e-3
///   of the whole case's; an item that is zero up to f32 rounding (the
///   Linear bias in front of a BatchNorm has an exactly-zero gradient, so
///   both sides hold rounding noise there, ~1e-9 in f32) is relative to
///   the case's largest value ([`units`]);
/// - f32 against the CPU f32 at 1e-4 (summation order through ~20 layers),
///   on a draw with no ReLU or max-pool kink within rounding ([`Net::draw`]);
/// - bf16 against the CPU **f32** truth, next to the CPU's own bf16 error.
///   Rounding every activation to bf16 moves the gradients of these narrow
///   nets (batch 8, BatchNorm over as few as 8 values) far: over 60 seeds
///   on the emulator (2026-12-04) the CPU's per-item error had a median of
///   0.35 (CIFAR stem) and 0.46 (ImageNet stem) of the item's largest
///   value and reached 1.8 and 4.0, and the device's errors had the same
///   distribution. One item's error is then mostly noise: the earlier
///   judgement, each item at most 3x the CPU's + 0.03, failed 3 of those
///   120 cases (2.23-2.25, on items where the CPU happened to land close
///   to f32), and the H100 run of 2026-11-26 once (dlayer4.1.conv2.weight).
///   So the device passes when the sum of its item errors is at most 2x
///   the CPU's (the ratio was 0.77-1.39 over 100 seeds) and no item's
///   error exceeds 3x the CPU's + 0.6 (a gross error: a lost gradient, a
///   wrong scale); a NaN or infinity fails as everywhere. This case can
///   only see gross errors: bf16 conversions that truncate instead of
///   rounding to nearest (a mutation of the emulator) moved its ratio to at
///   most 1.38, inside the noise; the op cases (`cast`, the convolutions)
///   and `detector_grads` caught that.
///
/// The runner compares the two sides' outputs by max|dut - cpu| / max|cpu|,
/// so each case returns values for which that measure is the judgement
/// above (see [`WholeModel::f32_outputs`] and [`WholeModel::bf16_outputs`]).
///
/// `model_eval`: the same networks in eval mode (BatchNorm on running
/// statistics that one training-mode batch on the host moved away from 0
/// and 1), through `models::inspect::forward_outputs`: the logits and the
/// pooled features, judged the same way.
pub fn model_cases(seed: u64) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    let mut cases = Vec::new();
    for (stem, hw, eval) in [
        (Stem::Cifar, 12usize, false),
        (Stem::ImageNet, 32, false),
        (Stem::Cifar, 12, true),
        (Stem::ImageNet, 32, true),
    ] {
        let net = Rc::new(Net {
            stem,
            hw,
            eval,
            seed: rng.next_u64(),
            draw: OnceCell::new(),
            truth: OnceCell::new(),
        });
        let op = if eval { "model_eval" } else { "model_grads" };
        let label = format!("resnet18 w8 {stem:?} sl-mlp [8,3,{hw},{hw}]");
        let n = net.clone();
        cases.push(Case {
            op,
            dtype: DType::F32,
            label: label.clone(),
            threshold: Some(1e-4),
            run: Box::new(move |device| n.f32_outputs(device)),
        });
        cases.push(Case {
            op,
            dtype: DType::BF16,
            label: format!("{label}, error vs CPU f32"),
            threshold: Some(2.0),
            run: Box::new(move |device| net.bf16_outputs(device, 2.0)),
        });
    }
    cases
}

/// `train_step_graph`: the CUDA graph training step
/// (`Trainer::with_cuda_graph`) against the ordinary step, on the same
/// GPU in one process: an SL-MLP ResNet-18 (width 8, CIFAR stem) trained 9
/// steps from the same weights on the same batches of 8 12x12 images, the
/// learning rate changing every step (warmup, then cosine). The graph run
/// takes 2 ordinary steps, records the third and replays it, runs the
/// seventh batch (5 images) as an ordinary step and records again for the
/// last two; f32, bf16 and f16 (whose loss scale, skips and scale
/// updates live on the device: `amp::ScaleOnDevice`). Outputs: every
/// parameter, BatchNorm buffer, step loss and skipped-step flag of the
/// graph run minus the ordinary run's, which must be 0: a replay runs
/// the very kernels, algorithms and arguments of an ordinary step (cuDNN
/// restricted to deterministic algorithms for the case). A learning rate or
/// running statistic the graph kept from its capture shows up here. The
/// CPU side trains ordinarily twice, so its differences are 0 as well.
/// Once the graphs are dropped the stream must have left every capture
/// (`cuStreamIsCapturing`), else the case fails.
///
/// `train_step_overlapped`: the same, the graph run's steps also
/// overlapped (`Trainer::step_overlapped`: each step queued, replay
/// included, before the last one's values are read back), so a read that
/// the next replay overwrote, or that went to the wrong step, shows up in
/// the losses and skip flags. The CPU side compares overlapped CPU steps
/// with ordinary ones.
pub fn graph_cases(seed: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    for (op, overlap, how) in [
        ("train_step_graph", false, "graph"),
        ("train_step_overlapped", true, "graph overlapped"),
    ] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            cases.push(Case {
                op,
                dtype,
                label: format!("resnet18 w8 Cifar sl-mlp [8,3,12,12], 9 steps (2 ordinary, recorded, a batch of 5 between), {how} minus ordinary"),
                threshold: Some(0.0),
                run: Box::new(move |device| graph_minus_ordinary(seed, dtype, device, overlap)),
            });
        }
    }
    cases
}

fn graph_minus_ordinary(seed: u64, dtype: DType, device: Device, overlap: bool) -> Result<Outputs> {
    use models::train::{TrainOptions, Trainer};
    const STEPS: usize = 9;
    let precision = match dtype {
        DType::BF16 => engine::amp::Precision::Bf16,
        DType::F16 => engine::amp::Precision::F16,
        _ => engine::amp::Precision::F32,
    };
    let train = |graph: bool, overlap: bool| -> Result<Values> {
        let mut rng = Rng::new(seed);
        let mut cfg = NetConfig::new("resnet18", 10)?;
        cfg.width = 8;
        cfg.stem = Stem::Cifar;
        cfg.projector = Some(ProjectorConfig::parse("d", 64)?);
        let net = SupervisedNet::new(cfg, &mut rng)?;
        net.to_device(device)?;
        let opts = TrainOptions {
            steps: STEPS,
            lr: 0.05,
            warmup_steps: 3,
            precision,
            ..TrainOptions::default()
        };
        let mut t = Trainer::new(&net, opts, Default::default());
        if graph {
            t = t.with_cuda_graph()?;
        }
        let mut logs = Vec::new();
        for k in 0..STEPS {
            let n = if k == 6 { 5 } else { 8 };
            let x = Tensor::randn(&[n, 3, 12, 12], 0.0, 1.0, DType::F32, &mut rng);
            let y = Tensor::from_vec((0..n).map(|_| rng.below(10) as i64).collect(), &[n])?;
            if overlap {
                logs.extend(t.step_overlapped(&x, &y)?);
            } else {
                logs.push(t.step(&x, &y)?);
            }
        }
        logs.extend(t.finish_in_flight()?);
        let mut out = Values::new();
        for (k, log) in logs.iter().enumerate() {
            out.push((format!("loss step {k}"), vec![log.loss]));
            // f16: whether the device skipped the step (loss scaling)
            let skipped = log.skipped.unwrap_or(false);
            out.push((
                format!("skipped step {k}"),
                vec![f64::from(u8::from(skipped))],
            ));
        }
        for p in net.params() {
            out.push((p.name().to_string(), host(&p.get())?));
        }
        for b in net.buffers() {
            out.push((b.name().to_string(), host(&b.get())?));
        }
        Ok(out)
    };
    let was = engine::cuda::dnn::deterministic();
    engine::cuda::dnn::set_deterministic(true);
    let runs = train(false, false).and_then(|a| Ok((a, train(device != Device::Cpu, overlap)?)));
    engine::cuda::dnn::set_deterministic(was);
    let (ordinary, graph) = runs?;
    // the graphs are dropped: the stream must have left every capture, in
    // the driver's view as in the engine's
    if let Device::Cuda(i) = device {
        if !engine::cuda::gpu(i)?.out_of_capture()? {
            return Err(engine::Error::arg(
                "train_step_graph",
                "the stream is still capturing after the run",
            ));
        }
    }
    ordinary
        .iter()
        .zip(&graph)
        .map(|((name, a), (_, b))| {
            let d: Vec<f64> = a.iter().zip(b).map(|(a, b)| b - a).collect();
            let n = d.len();
            Ok((name.clone(), Tensor::from_vec(d, &[n])?))
        })
        .collect()
}

/// `detector_grads`: a small Mask R-CNN (ResNet-18 width 8, FPN 16, 3
/// classes) trained one step on two 64x64 images with two boxes each: the
/// five losses and every trainable parameter's gradient, f32 on both sides.
/// The RPN and RoI samplers draw from the same seed on both devices, and
/// the proposals come from the device's objectness, so an NMS near-tie that
/// the two devices break differently changes the sampled RoIs: the case
/// then fails on the losses, naming them. Judged as `model_grads`' f32
/// (error relative to the case's largest value, floored at 1e-3 of it) at
/// 1e-3, chosen before any GPU run: RoIAlign's backward sums with atomics in
/// a device-chosen order.
///
/// The bf16 case computes under autocast (`MaskRcnn::set_compute_dtype`)
/// and is judged as `model_grads`' bf16: the item errors against the CPU
/// **f32** truth, next to the CPU's own bf16 errors (each at most 3x the
/// CPU's + 0.6), but their sum at most 1.5x the CPU's: this network's bf16
/// noise is far smaller (the ratio was 0.89-1.03 over 40 seeds on the
/// emulator, and 1.7-4.8 with bf16 conversions that truncate).
/// bf16 objectness moves the proposals, and so the sampled RoIs, on either
/// device; the judgement asks only that the device's bf16 strays no further
/// from f32 than the CPU's does.
pub fn detector_cases(seed: u64) -> Vec<Case> {
    let det = Rc::new(Detector {
        seed,
        truth: OnceCell::new(),
    });
    let label = "mask r-cnn resnet18 w8 fpn16 [2,3,64,64], 2 boxes each";
    let d = det.clone();
    vec![
        Case {
            op: "detector_grads",
            dtype: DType::F32,
            label: label.into(),
            threshold: Some(1e-3),
            run: Box::new(move |device| d.f32_outputs(device)),
        },
        Case {
            op: "detector_grads",
            dtype: DType::BF16,
            label: format!("{label}, autocast, error vs CPU f32"),
            threshold: Some(2.0),
            run: Box::new(move |device| det.bf16_outputs(device, 1.5)),
        },
    ]
}

/// The network and batch of `detector_grads`, with its CPU truth.
struct Detector {
    seed: u64,
    truth: OnceCell<std::result::Result<Values, String>>,
}

impl WholeModel for Detector {
    fn truth_cell(&self) -> &OnceCell<std::result::Result<Values, String>> {
        &self.truth
    }

    /// One training step computing in `dtype` (autocast) on `device`.
    fn run(&self, device: Device, dtype: DType) -> Result<Values> {
        use models::detection::data::DetTarget;
        use models::detection::mask_rcnn::{MaskRcnn, MaskRcnnConfig};
        let mut rng = Rng::new(self.seed);
        let mut model = MaskRcnn::new(
            MaskRcnnConfig {
                arch: "resnet18".into(),
                width: 8,
                num_classes: 3,
                fpn_channels: 16,
                representation_size: 32,
                trainable_layers: 5,
                in_channels: 3,
            },
            &mut rng,
        )?;
        model.set_compute_dtype(dtype)?;
        model.to_device(device)?;
        let (h, w) = (64, 64);
        let images = Tensor::randn(&[2, 3, h, w], 0.0, 1.0, DType::F32, &mut rng);
        let rects = [
            [[4usize, 6, 30, 40], [20, 10, 60, 30]],
            [[0, 0, 40, 50], [30, 34, 62, 63]],
        ];
        let targets: Vec<DetTarget> = rects
            .iter()
            .map(|rs| DetTarget {
                boxes: rs.iter().map(|r| r.map(|v| v as f32)).collect(),
                labels: vec![1, 2],
                masks: rs
                    .iter()
                    .map(|r| {
                        (0..h * w)
                            .map(|i| {
                                u8::from(
                                    (r[0]..r[2]).contains(&(i % w))
                                        && (r[1]..r[3]).contains(&(i / w)),
                                )
                            })
                            .collect()
                    })
                    .collect(),
                image_id: 0,
                orig_size: (h, w),
                size: (h, w),
            })
            .collect();
        let losses = model.forward_train(
            &images.to_device(device)?,
            &[(h, w); 2],
            &targets,
            &mut Rng::new(self.seed ^ 1),
        )?;
        losses.total()?.backward()?;
        let mut outs: Values = [
            ("loss_classifier", &losses.classifier),
            ("loss_box_reg", &losses.box_reg),
            ("loss_mask", &losses.mask),
            ("loss_objectness", &losses.objectness),
            ("loss_rpn_box_reg", &losses.rpn_box_reg),
        ]
        .into_iter()
        .map(|(n, t)| Ok((n.to_string(), host(t)?)))
        .collect::<Result<_>>()?;
        push_grads(&mut outs, &model.trainable_params())?;
        Ok(outs)
    }
}

/// Each item of `got` divided by its error unit (see [`units`]), followed
/// by a 1: the runner's max|dut - cpu| / max|cpu| is then
/// max|dut - cpu| / unit, as every value of the CPU side is at most 1.
fn scaled(truth: &Values, got: &Values) -> Result<Outputs> {
    let mut outs = Outputs::new();
    for ((name, _), unit) in truth.iter().zip(units(truth)) {
        let mut v: Vec<f64> = find(got, name)?.iter().map(|x| x / unit).collect();
        v.push(1.0);
        let n = v.len();
        outs.push((name.clone(), Tensor::from_vec(v, &[n])?));
    }
    Ok(outs)
}

/// Added to each bf16 item's error so that the runner's |e_dut - e_cpu| /
/// (e_cpu + 0.3) <= 2 is e_dut <= 3 e_cpu + 0.6: a gross error on one item
/// (a wrong scale, a gradient lost), beyond what bf16's noise does.
const BF16_OFFSET: f64 = 0.3;

/// One network of a `model_grads` or `model_eval` case, with its CPU f32
/// truth once computed.
struct Net {
    stem: Stem,
    hw: usize,
    eval: bool,
    seed: u64,
    /// The seed of the weights and batch both devices run ([`Net::draw`]).
    draw: OnceCell<std::result::Result<u64, String>>,
    truth: OnceCell<std::result::Result<Values, String>>,
}

/// How a `model_grads` draw is screened for kinks ([`Net::draw`]): the
/// input is moved by ±`KINK_STEP` of each value along `KINK_DIRECTIONS`
/// random directions, and the CPU's f32 gradients must change linearly
/// (half their second difference, in the units of [`units`], at most
/// `KINK_LIMIT`, the f32 case's own bound); at most `MAX_DRAWS` draws.
const KINK_STEP: f64 = 3e-6;
const KINK_DIRECTIONS: u64 = 2;
const KINK_LIMIT: f64 = 1e-4;
const MAX_DRAWS: usize = 12;

impl Net {
    /// The seed both devices build the network and batch from. Eval cases
    /// (forward only, continuous in the input) take `seed` itself.
    ///
    /// A gradient is not continuous in the input: where a ReLU's
    /// pre-activation or a max-pool window's two largest values are within
    /// rounding of each other, the two devices' rounding can put the kink
    /// on different sides, and every gradient upstream of it moves by
    /// O(1e-2) (a flipped mask passes or drops a whole element), which no
    /// bound could tell from a bug; the op cases keep their inputs away
    /// from such points by construction
    /// (engine/src/ops/batchnorm/parity.rs). A whole network cannot be
    /// built that way, so its draws are screened: seeds are drawn from
    /// `seed` until one's CPU gradients move linearly when the input moves
    /// by ±`KINK_STEP` (see the constants). Measured on the
    /// emulator (2026-12-04): without the screen 3 of 241 f32 cases failed
    /// this way (1.7e-1, 6.2e-3, 1.2e-1), and the CPU's own f32 gradients
    /// left its f64 ones by more than 1e-4 in 21 of 3000 draws; the screen
    /// sets aside each of those 24 draws, and 36 % (CIFAR stem) and 20 %
    /// (ImageNet stem) of all draws. With it, seeds 1-300 passed all 600
    /// f32 cases (at most 5 draws for one case; about 0.3 s more a run).
    fn draw(&self) -> Result<u64> {
        let chosen = self.draw.get_or_init(|| {
            if self.eval {
                return Ok(self.seed);
            }
            let mut seeds = Rng::new(self.seed);
            let mut seed = self.seed;
            let mut jumps = Vec::new();
            for _ in 0..MAX_DRAWS {
                let jump = self.kink_jump(seed).map_err(|e| e.to_string())?;
                if jump <= KINK_LIMIT {
                    return Ok(seed);
                }
                eprintln!(
                    "model_grads resnet18 w8 {:?}: draw {} set aside, its CPU gradients \
                     jump by {jump:.1e} (limit {KINK_LIMIT:e}) when the input moves by \
                     ±{KINK_STEP:e}: a kink within rounding",
                    self.stem,
                    jumps.len()
                );
                jumps.push(format!("{jump:.1e}"));
                seed = seeds.next_u64();
            }
            Err(format!(
                "no draw of {MAX_DRAWS} had gradients that move linearly within ±{KINK_STEP:e} \
                 of the input (jumps {}): a kink within rounding in each",
                jumps.join(", ")
            ))
        });
        chosen.clone().map_err(Error::Autograd)
    }

    /// The largest nonlinear move of the CPU's f32 gradients for draw
    /// `seed` under input moves of ±`KINK_STEP` (see [`Net::draw`]).
    fn kink_jump(&self, seed: u64) -> Result<f64> {
        let base = self.run_draw(seed, Device::Cpu, DType::F32, None)?;
        let units = units(&base);
        let mut worst = 0.0f64;
        for d in 0..KINK_DIRECTIONS {
            let plus = self.run_draw(seed, Device::Cpu, DType::F32, Some((KINK_STEP, d)))?;
            let minus = self.run_draw(seed, Device::Cpu, DType::F32, Some((-KINK_STEP, d)))?;
            for (((name, b), unit), p) in base.iter().zip(&units).zip(&plus) {
                // half the second difference: the midpoint of the two moves
                // against the base (infinite for a NaN or unequal sizes)
                let m = find(&minus, name)?;
                let mid: Vec<f64> = p.1.iter().zip(m).map(|(p, m)| (p + m) / 2.0).collect();
                worst = worst.max(max_abs_diff(&mid, b) / unit);
            }
        }
        Ok(worst)
    }
}

impl WholeModel for Net {
    fn truth_cell(&self) -> &OnceCell<std::result::Result<Values, String>> {
        &self.truth
    }

    /// Forward and backward (eval: forward only) in `dtype` on `device`
    /// (the same weights and batch, [`Net::draw`]'s, on every call).
    fn run(&self, device: Device, dtype: DType) -> Result<Values> {
        self.run_draw(self.draw()?, device, dtype, None)
    }
}

impl Net {
    /// [`WholeModel::run`] for draw `seed`, the input moved by `nudge`:
    /// (h, d) multiplies each value by 1 + h n, n from direction d's
    /// standard normals.
    fn run_draw(
        &self,
        seed: u64,
        device: Device,
        dtype: DType,
        nudge: Option<(f64, u64)>,
    ) -> Result<Values> {
        let mut rng = Rng::new(seed);
        let mut cfg = NetConfig::new("resnet18", 10)?;
        cfg.width = 8;
        cfg.stem = self.stem;
        cfg.projector = Some(ProjectorConfig::parse("d", 64)?);
        let net = SupervisedNet::new(cfg, &mut rng)?;
        let shape = [8, 3, self.hw, self.hw];
        let mut x = Tensor::randn(&shape, 0.0, 1.0, DType::F32, &mut rng);
        if let Some((h, d)) = nudge {
            let mut dir = Rng::new(seed ^ (d + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let v: Vec<f32> = x
                .to_vec_f64()?
                .iter()
                .map(|&v| (v * (1.0 + h * dir.normal())) as f32)
                .collect();
            x = Tensor::from_vec(v, &shape)?;
        }
        if self.eval {
            // running statistics from one training-mode batch, on the host
            {
                let _ng = engine::no_grad();
                net.set_training(true);
                net.forward(&x.scale(2.0)?)?;
            }
            net.to_device(device)?;
            let input = x.to_device(device)?;
            return forward_outputs(&net, &input, dtype, false)?
                .into_iter()
                .map(|(name, t)| Ok((name, host(&t)?)))
                .collect();
        }
        net.to_device(device)?;
        net.set_training(true);
        let labels: Vec<i64> = (0..8).map(|i| (i * 3 % 10) as i64).collect();
        let labels = Tensor::from_vec(labels, &[8])?;
        let input = x.to_device(device)?.to_dtype(dtype)?;
        let logits = net.forward(&input)?.to_dtype(DType::F32)?;
        let loss = logits.cross_entropy(&labels.to_device(device)?, 0.1, None)?;
        loss.backward()?;
        let mut outs = vec![
            ("loss".to_string(), host(&loss.detach())?),
            ("logits".to_string(), host(&logits.detach())?),
        ];
        push_grads(&mut outs, &net.params())?;
        Ok(outs)
    }
}

/// A whole-network case: its values from one run per (device, dtype),
/// judged against its CPU f32 run.
trait WholeModel {
    /// The values of a run computing in `dtype` on `device` (the same
    /// weights and batch on every call).
    fn run(&self, device: Device, dtype: DType) -> Result<Values>;
    fn truth_cell(&self) -> &OnceCell<std::result::Result<Values, String>>;

    /// The CPU f32 run, computed on first use.
    fn truth(&self) -> Result<&Values> {
        self.truth_cell()
            .get_or_init(|| self.run(Device::Cpu, DType::F32).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Autograd(format!("CPU f32 truth: {e}")))
    }

    /// The f32 run against the truth, as [`scaled`].
    fn f32_outputs(&self, device: Device) -> Result<Outputs> {
        scaled(self.truth()?, &self.run(device, DType::F32)?)
    }

    /// Per item, the bf16 run's error against the CPU f32 truth in units of
    /// [`units`], plus [`BF16_OFFSET`]; then the sum of the errors, which
    /// the CPU (the reference side) returns times `sum_ratio` / 3, so that
    /// the runner's |s_dut - s'| / s' <= 2 is s_dut <= sum_ratio * s_cpu:
    /// the device's bf16 paths as a whole stray no further from f32 than
    /// that multiple of the CPU's.
    fn bf16_outputs(&self, device: Device, sum_ratio: f64) -> Result<Outputs> {
        let truth = self.truth()?;
        let got = self.run(device, DType::BF16)?;
        let mut outs = Outputs::new();
        let mut sum = 0.0;
        for ((name, t), unit) in truth.iter().zip(units(truth)) {
            let e = max_abs_diff(find(&got, name)?, t) / unit;
            sum += e;
            outs.push((name.clone(), Tensor::scalar(e + BF16_OFFSET)));
        }
        if device == Device::Cpu {
            sum *= sum_ratio / 3.0;
        }
        outs.push(("sum of item errors".into(), Tensor::scalar(sum)));
        Ok(outs)
    }
}

/// Each item's error unit: its largest magnitude, floored at 1e-3 of the
/// whole case's. An item that is zero up to f32 rounding (at most 1e-6 of
/// the case's largest value: the gradient of a Linear bias in front of a
/// BatchNorm, exactly zero in exact arithmetic) is measured in the case's
/// largest value instead: both devices hold only rounding noise there,
/// summed in another order on each, so one's noise is no yardstick for the
/// other's (at an H100's 132 SMs the emulator's bf16 noise on
/// `dprojector.0.bias` was 2.5x the CPU's), while a real gradient leaking
/// in would still be seen against the case's scale.
fn units(truth: &Values) -> Vec<f64> {
    let scale = truth.iter().map(|(_, v)| max_abs(v)).fold(0.0, f64::max);
    truth
        .iter()
        .map(|(_, v)| match max_abs(v) {
            m if m <= 1e-6 * scale => scale,
            m => m.max(1e-3 * scale),
        })
        .map(|u| u.max(1e-30))
        .collect()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// max|a - b|; infinite for a NaN, an unequal infinity or unequal lengths.
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = if x == y { 0.0 } else { (x - y).abs() };
        if d.is_nan() {
            return f64::INFINITY;
        }
        worst = worst.max(d);
    }
    worst
}

fn find<'a>(values: &'a Values, name: &str) -> Result<&'a [f64]> {
    values
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .ok_or_else(|| Error::Autograd(format!("{name} missing from the run")))
}

/// Appends every param's gradient as `d<name>`; a param without one is
/// an error.
fn push_grads(outs: &mut Values, params: &[engine::nn::Param]) -> Result<()> {
    for p in params {
        let g = p
            .get()
            .grad()
            .ok_or_else(|| Error::Autograd(format!("no gradient reached {}", p.name())))?;
        outs.push((format!("d{}", p.name()), host(&g)?));
    }
    Ok(())
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_vec_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_floored_and_nan_is_infinite() {
        // its own largest value; floored at 1e-3 of the case's; zero up to
        // f32 rounding (at most 1e-6 of the case's): the case's
        let truth: Values = vec![
            ("a".into(), vec![-4.0, 2.0]),
            ("b".into(), vec![1e-5]),
            ("c".into(), vec![0.0]),
            ("d".into(), vec![-2e-6, 1e-9]),
        ];
        assert_eq!(units(&truth), vec![4.0, 4e-3, 4.0, 4.0]);
        assert_eq!(max_abs_diff(&[1.0, 2.5], &[1.0, 2.0]), 0.5);
        assert_eq!(max_abs_diff(&[f64::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(max_abs_diff(&[f64::INFINITY], &[f64::INFINITY]), 0.0);
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }

    /// The CIFAR net of `model_cases(274)`: its first draw has a kink
    /// within f32 rounding, so that the CPU's own f32 and f64 gradients
    /// differ far beyond the f32 bound, as a GPU's could. The screen sets
    /// it aside and takes a draw where they agree.
    #[test]
    fn a_draw_with_a_kink_within_rounding_is_set_aside() {
        let net = Net {
            stem: Stem::Cifar,
            hw: 12,
            eval: false,
            seed: Rng::new(274).next_u64(),
            draw: OnceCell::new(),
            truth: OnceCell::new(),
        };
        let f32_vs_f64 = |seed| {
            let exact = net.run_draw(seed, Device::Cpu, DType::F64, None).unwrap();
            let got = net.run_draw(seed, Device::Cpu, DType::F32, None).unwrap();
            exact
                .iter()
                .zip(units(&exact))
                .map(|((name, v), unit)| max_abs_diff(find(&got, name).unwrap(), v) / unit)
                .fold(0.0, f64::max)
        };
        let first = net.seed;
        assert!(f32_vs_f64(first) > 1e-2, "{}", f32_vs_f64(first));
        assert!(net.kink_jump(first).unwrap() > KINK_LIMIT);
        let chosen = net.draw().unwrap();
        assert_ne!(chosen, first);
        assert!(net.kink_jump(chosen).unwrap() <= KINK_LIMIT);
        assert!(f32_vs_f64(chosen) < 1e-4, "{}", f32_vs_f64(chosen));
        // eval cases keep their draw: a forward is continuous in the input
        let eval = Net {
            eval: true,
            draw: OnceCell::new(),
            truth: OnceCell::new(),
            ..net
        };
        assert_eq!(eval.draw().unwrap(), first);
    }
}

//! A training step recorded once as a CUDA graph and replayed every step
//! after (`Trainer::with_cuda_graph`, `slmlp pretrain --cuda-graph`): one
//! launch instead of the step's several hundred, no host work between them.
//! [`GraphPlan`] decides which steps run ordinarily, record or replay.
//!
//! What a replay needs from the host, written before each one: the batch
//! into the static input tensors the graph reads ([`StepGraph::load`]), and
//! the step's learning rate into the optimizer's device scalar
//! (`Sgd::stage_lr`). What it gives back: the one tensor the step reads
//! anyway, [loss, misses, non-finite flag] ([`StepGraph::read`]).
//!
//! The labels are checked on the host before they are loaded: the captured
//! cross-entropy cannot read its own target check back.

use engine::cuda::graph::Graph;
use engine::cuda::tensor as ct;
use engine::{DType, Device, Error, Result, Tensor};

/// Ordinary steps before a step is recorded: the first creates the
/// momentum, both fill the cuDNN and cuBLASLt searches' caches (a
/// recording cannot time anything).
pub const GRAPH_WARMUP_STEPS: usize = 2;

/// What a step does under `Trainer::with_cuda_graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GraphAction {
    /// An ordinary step (the warm-up, or a batch of a new shape).
    Ordinary,
    /// Record the step, then replay it.
    Record,
    /// Replay the recorded step.
    Replay,
}

/// Which steps run ordinarily, record or replay: [`GRAPH_WARMUP_STEPS`]
/// ordinary ones, then a recording and replays. A batch that does not fit
/// the recorded step (an epoch's short last one) drops it. A batch shape
/// is only recorded once an ordinary step of that shape has run (the
/// search caches then hold its problems); until then it runs ordinarily.
#[derive(Debug, Default)]
pub(crate) struct GraphPlan {
    ordinary: usize,
    /// The batch shapes ordinary steps have run.
    warm: Vec<Vec<usize>>,
    /// Recordings and replays so far (a recording is replayed at once).
    pub(crate) recordings: usize,
    pub(crate) replays: usize,
}

impl GraphPlan {
    /// The next step's action for a batch of `shape`, given whether a
    /// recorded step exists and fits the batch; and whether the recorded
    /// step must be dropped first.
    pub(crate) fn next(&mut self, fits: Option<bool>, shape: &[usize]) -> (GraphAction, bool) {
        if fits == Some(true) {
            self.replays += 1;
            return (GraphAction::Replay, false);
        }
        let drop = fits.is_some();
        if self.ordinary < GRAPH_WARMUP_STEPS || !self.warm.iter().any(|w| w == shape) {
            self.ordinary += 1;
            if !self.warm.iter().any(|w| w == shape) {
                self.warm.push(shape.to_vec());
            }
            return (GraphAction::Ordinary, drop);
        }
        self.recordings += 1;
        self.replays += 1;
        (GraphAction::Record, drop)
    }
}

/// A recorded step and the tensors it reads and writes.
pub(crate) struct StepGraph {
    pub(crate) graph: Graph,
    /// Static inputs: the images (the dims of the batches recorded, in the
    /// dtype the step computes in), the i64 labels for the loss and the
    /// same as f32 for the misses.
    pub(crate) images: Tensor,
    /// The dtype of the batches recorded, before their cast.
    pub(crate) batch_dtype: DType,
    pub(crate) labels: Tensor,
    pub(crate) labels_f32: Tensor,
    /// [loss, misses, flag], rewritten by each replay.
    pub(crate) read: Tensor,
    /// The logits' class count, which the labels are checked against.
    pub(crate) classes: usize,
}

/// The static inputs of a step on `device` for batches like `images` and
/// `labels`: fresh device tensors (never the caller's own storage, which
/// goes back to the allocator after the step). Float images are held in
/// `compute`, the dtype the step casts them to: [`StepGraph::load`] casts
/// each batch as the step would have, and the recorded cast is none, so
/// the graph holds no copy of the batch in its own dtype (for f32 images
/// and a bf16 step, 154 MB fewer at ResNet-50's batch 256: docs/PERF.md).
pub(crate) fn static_inputs(
    device: Device,
    images: &Tensor,
    labels: &Tensor,
    compute: DType,
) -> Result<(Tensor, Tensor, Tensor)> {
    let Device::Cuda(ordinal) = device else {
        return Err(Error::arg("cuda graph", "a CUDA graph step needs a GPU"));
    };
    let gpu = engine::cuda::gpu(ordinal)?;
    let n = labels.numel();
    Ok((
        ct::empty(gpu, images.dims(), held_dtype(images.dtype(), compute))?,
        ct::empty(gpu, &[n], DType::I64)?,
        ct::empty(gpu, &[n], DType::F32)?,
    ))
}

/// The dtype the static images hold batches of `batch` in.
fn held_dtype(batch: DType, compute: DType) -> DType {
    if batch.is_float() {
        compute
    } else {
        batch
    }
}

/// The host labels of a batch as i64, each checked against `classes`.
pub(crate) fn checked_labels(labels: &Tensor, classes: usize) -> Result<Vec<i64>> {
    let y = labels.to_device(Device::Cpu)?.to_vec::<i64>()?;
    if let Some((i, l)) = y
        .iter()
        .enumerate()
        .find(|&(_, &l)| l < 0 || l as u64 >= classes as u64)
    {
        return Err(Error::arg(
            "train",
            format!("label {l} of sample {i} is outside the model's {classes} classes"),
        ));
    }
    Ok(y)
}

impl StepGraph {
    /// Whether a batch of these images and labels fits the recorded step.
    pub(crate) fn fits(&self, images: &Tensor, labels: &Tensor) -> bool {
        images.dims() == self.images.dims()
            && images.dtype() == self.batch_dtype
            && labels.dims() == self.labels.dims()
    }

    /// Writes a batch into the static inputs (queued; no wait).
    pub(crate) fn load(&self, images: &Tensor, labels: &Tensor) -> Result<()> {
        let y = checked_labels(labels, self.classes)?;
        let device = self.images.device();
        let x = images.to_device(device)?.to_dtype(self.images.dtype())?;
        ct::overwrite(&self.images, &x)?;
        let y64: Vec<u8> = y.iter().flat_map(|l| l.to_ne_bytes()).collect();
        let y32: Vec<u8> = y.iter().flat_map(|&l| (l as f32).to_ne_bytes()).collect();
        ct::write_bytes(&self.labels, &y64)?;
        ct::write_bytes(&self.labels_f32, &y32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_outside_the_classes_are_refused_by_name() {
        let y = Tensor::from_vec(vec![0i64, 4, 2], &[3]).unwrap();
        assert_eq!(checked_labels(&y, 5).unwrap(), vec![0, 4, 2]);
        let e = checked_labels(&y, 4).unwrap_err().to_string();
        assert!(
            e.contains("label 4 of sample 1") && e.contains("4 classes"),
            "{e}"
        );
        let y = Tensor::from_vec(vec![-1i64], &[1]).unwrap();
        assert!(checked_labels(&y, 4).is_err());
    }

    #[test]
    fn the_plan_warms_up_records_replays_and_records_again_after_a_misfit() {
        use GraphAction::*;
        let mut plan = GraphPlan::default();
        let (a, b, c) = (&[8, 3, 4, 4][..], &[5, 3, 4, 4][..], &[6, 3, 4, 4][..]);
        // (recorded step exists and fits?, batch shape) -> (action, drop it first)
        let mut run = |fits, shape| plan.next(fits, shape);
        assert_eq!(run(None, a), (Ordinary, false));
        assert_eq!(run(None, a), (Ordinary, false));
        assert_eq!(run(None, a), (Record, false));
        assert_eq!(run(Some(true), a), (Replay, false));
        // a short batch of a new shape: dropped, an ordinary step
        assert_eq!(run(Some(false), b), (Ordinary, true));
        // another new shape: ordinary again (its searches are not cached)
        assert_eq!(run(None, c), (Ordinary, false));
        // back to a shape that ran: recorded at once, and replayed
        assert_eq!(run(None, a), (Record, false));
        assert_eq!(run(Some(true), a), (Replay, false));
        // a misfit of a shape that ran before is recorded directly
        assert_eq!(run(Some(false), b), (Record, true));
        assert_eq!(run(Some(false), a), (Record, true));
        // 10 steps: 4 ordinary, 4 recordings (each replayed), 2 more replays
        assert_eq!((plan.recordings, plan.replays), (4, 6));
    }

    #[test]
    fn static_inputs_need_a_gpu() {
        let x = Tensor::zeros(&[2, 1, 4, 4], DType::F32);
        let y = Tensor::from_vec(vec![0i64, 1], &[2]).unwrap();
        assert!(static_inputs(Device::Cpu, &x, &y, DType::BF16).is_err());
    }

    #[test]
    fn float_batches_are_held_in_the_compute_dtype() {
        assert_eq!(held_dtype(DType::F32, DType::BF16), DType::BF16);
        assert_eq!(held_dtype(DType::F32, DType::F32), DType::F32);
        assert_eq!(held_dtype(DType::BF16, DType::F16), DType::F16);
        assert_eq!(held_dtype(DType::U8, DType::BF16), DType::U8);
    }
}

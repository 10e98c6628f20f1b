//! Learning-rate schedules: pure functions of the step (iteration) index, so
//! a resumed run recomputes its rate from the step alone.

pub trait LrSchedule: Send + Sync {
    fn lr(&self, step: usize) -> f64;
}

impl<S: LrSchedule + ?Sized> LrSchedule for Box<S> {
    fn lr(&self, step: usize) -> f64 {
        (**self).lr(step)
    }
}

/// The same rate at every step.
#[derive(Clone, Debug)]
pub struct Constant(pub f64);

impl LrSchedule for Constant {
    fn lr(&self, _step: usize) -> f64 {
        self.0
    }
}

/// Half-cosine from `base_lr` at step 0 to `final_lr` at `total_steps`, then
/// constant: `final + (base - final) * (1 + cos(pi * step / total)) / 2`
/// (PyTorch's `CosineAnnealingLR` with `eta_min = final_lr`).
#[derive(Clone, Debug)]
pub struct Cosine {
    pub base_lr: f64,
    pub total_steps: usize,
    pub final_lr: f64,
}

impl LrSchedule for Cosine {
    fn lr(&self, step: usize) -> f64 {
        if step >= self.total_steps {
            return self.final_lr;
        }
        let t = step as f64 / self.total_steps as f64;
        self.final_lr
            + (self.base_lr - self.final_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// `base_lr * gamma^k` with k the number of milestones <= step (PyTorch's
/// `MultiStepLR`: the rate drops at the milestone step itself).
#[derive(Clone, Debug)]
pub struct StepDecay {
    pub base_lr: f64,
    pub milestones: Vec<usize>,
    pub gamma: f64,
}

impl LrSchedule for StepDecay {
    fn lr(&self, step: usize) -> f64 {
        let k = self.milestones.iter().filter(|&&m| m <= step).count();
        self.base_lr * self.gamma.powi(k as i32)
    }
}

/// Linear warmup multiplying an inner schedule (detectron2's
/// `WarmupMultiStepLR` / `WarmupCosineLR` rule): for `step < warmup_steps`,
///
/// ```text
/// lr = inner.lr(step) * (start_factor + (1 - start_factor) * step / warmup_steps)
/// ```
///
/// and `inner.lr(step)` afterwards. The inner schedule is not shifted: it
/// counts from step 0, so a cosine over the whole run keeps its length.
#[derive(Clone, Debug)]
pub struct Warmup<S> {
    pub inner: S,
    pub warmup_steps: usize,
    pub start_factor: f64,
}

impl<S: LrSchedule> LrSchedule for Warmup<S> {
    fn lr(&self, step: usize) -> f64 {
        let base = self.inner.lr(step);
        if step >= self.warmup_steps {
            return base;
        }
        let alpha = step as f64 / self.warmup_steps as f64;
        base * (self.start_factor + (1.0 - self.start_factor) * alpha)
    }
}

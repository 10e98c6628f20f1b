//! Reverse-mode autograd.
//!
//! Each op that sees an input requiring grad records a `Node`: the autograd
//! handles of its inputs (not the inputs themselves, so forward activations
//! are not kept alive by the graph) and a backward closure that owns exactly
//! the tensors it saved. `backward()` sorts the graph topologically and runs
//! each closure once; running it consumes it, so saved tensors and consumed
//! gradients are freed as soon as they are no longer needed (PyTorch's
//! `retain_graph=False`). Leaves (parameters) accumulate into a `GradSlot`;
//! a hook ([`on_grad_ready`]) hears of each leaf as soon as its gradient is
//! final (data parallelism starts summing it over the ranks then).
//!
//! A tensor used by several ops gets the sum of their gradients. The engine
//! adds each new one to the sum so far, except for ops recorded with
//! [`record_accumulating`], which are handed the sum so far ([`Pending`])
//! and add their gradient into it themselves: a convolution's input
//! gradient accumulates into a residual join's gradient in place (cuDNN and
//! cuBLASLt with beta = 1, the CPU GEMMs onto it) instead of a separate
//! add over the whole tensor.

pub use crate::tensor::Pending;
use crate::tensor::{GradMeta, GradSlot, Node};
use crate::{Error, Result, Tensor};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Called with a leaf's [`Tensor::grad_slot_id`] once its gradient is final.
pub type GradReadyHook = Box<dyn FnMut(usize) -> Result<()>>;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    static GRAD_READY: RefCell<Option<GradReadyHook>> = const { RefCell::new(None) };
}

/// Runs `f` with `hook` called, during each backward pass on this thread,
/// for every leaf the pass reaches as soon as no later node of the pass
/// can add to its gradient (its last contribution accumulated), in the
/// order the pass finishes them. An error of the hook ends the pass.
pub fn on_grad_ready<T>(hook: GradReadyHook, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let prev = GRAD_READY.with(|h| h.replace(Some(hook)));
    let out = f();
    GRAD_READY.with(|h| *h.borrow_mut() = prev);
    out
}

/// The hook of [`on_grad_ready`], if any, taken for one backward pass (and
/// put back by `Drop`), so that nothing is borrowed while it runs.
struct ReadyHook(Option<GradReadyHook>);

impl ReadyHook {
    fn take() -> ReadyHook {
        ReadyHook(GRAD_READY.with(|h| h.borrow_mut().take()))
    }
    fn ready(&mut self, slot: &Arc<GradSlot>) -> Result<()> {
        match &mut self.0 {
            Some(h) => h(Arc::as_ptr(slot) as usize),
            None => Ok(()),
        }
    }
}

impl Drop for ReadyHook {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            GRAD_READY.with(|s| *s.borrow_mut() = Some(h));
        }
    }
}

pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Disables graph recording until dropped (inference, optimizer updates,
/// and inside backward closures).
pub struct NoGradGuard {
    prev: bool,
}

pub fn no_grad() -> NoGradGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { prev }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Attaches a backward closure to `out` when grad mode is on and some input
/// requires grad; otherwise returns `out` untouched. The closure gets the
/// gradient of `out` and returns one gradient (or None) per input.
pub fn record(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + 'static,
) -> Tensor {
    record_accumulating(out, name, inputs, move |g, _| backward(g))
}

/// As [`record`], for a backward that can add an input's gradient into the
/// sum already accumulated for that input (`Pending::take`).
pub fn record_accumulating(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    backward: impl FnOnce(&Tensor, &mut Pending) -> Result<Vec<Option<Tensor>>> + Send + 'static,
) -> Tensor {
    if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    let node = Node {
        name,
        parents: inputs.iter().map(|t| t.grad_meta().cloned()).collect(),
        inputs: inputs
            .iter()
            .map(|t| (t.dims().to_vec(), t.dtype()))
            .collect(),
        backward: Mutex::new(Some(Box::new(backward))),
    };
    out.with_grad_meta(Some(GradMeta::Node(Arc::new(node))))
}

/// The sum of two gradients of one tensor, `prev + g`: the engine's
/// accumulation, and what a backward that took a [`Pending`] gradient it
/// cannot add into in place returns.
pub fn accumulate(prev: Option<Tensor>, g: Tensor) -> Result<Tensor> {
    match prev {
        Some(p) => p.add(&g),
        None => Ok(g),
    }
}

fn topo_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // iterative post-order DFS: deep networks must not overflow the stack
    let mut stack: Vec<(Arc<Node>, bool)> = vec![(root.clone(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if expanded {
            order.push(node);
            continue;
        }
        if !seen.insert(Arc::as_ptr(&node)) {
            continue;
        }
        stack.push((node.clone(), true));
        for p in node.parents.iter().flatten() {
            if let GradMeta::Node(n) = p {
                if !seen.contains(&Arc::as_ptr(n)) {
                    stack.push((n.clone(), false));
                }
            }
        }
    }
    order
}

fn run_backward(root: &Tensor, seed: Tensor) -> Result<()> {
    if crate::profile::active() {
        crate::profile::backward_starts(root.device());
    }
    let of = match root.grad_meta() {
        Some(GradMeta::Node(n)) => format!("the output of `{}`", n.name),
        _ => "a tensor".to_string(),
    };
    if seed.dims() != root.dims() {
        return Err(Error::shape(
            "backward",
            format!(
                "gradient shape {:?} != shape {:?} of {of}",
                seed.dims(),
                root.dims()
            ),
        ));
    }
    if seed.dtype() != root.dtype() || seed.device() != root.device() {
        return Err(Error::Autograd(format!(
            "backward: gradient {:?} {} on {} for {of}, {:?} {} on {}",
            seed.dims(),
            seed.dtype(),
            seed.device(),
            root.dims(),
            root.dtype(),
            root.device()
        )));
    }
    let _guard = no_grad();
    let mut hook = ReadyHook::take();
    let root_node = match root.grad_meta() {
        None => {
            return Err(Error::Autograd(
                "backward() on a tensor that does not require grad (no parameter or \
                 requires_grad input reaches it, or it was computed under no_grad)"
                    .into(),
            ))
        }
        Some(GradMeta::Leaf(slot)) => {
            slot.accumulate(seed)?;
            return hook.ready(slot);
        }
        Some(GradMeta::Node(n)) => n.clone(),
    };
    let order = topo_order(&root_node);
    // the leaves whose last contribution comes from the k-th node run
    let mut last: HashMap<*const GradSlot, (usize, Arc<GradSlot>)> = HashMap::new();
    for (k, node) in order.iter().rev().enumerate() {
        for p in node.parents.iter().flatten() {
            if let GradMeta::Leaf(slot) = p {
                last.insert(Arc::as_ptr(slot), (k, slot.clone()));
            }
        }
    }
    let mut finished: Vec<Vec<Arc<GradSlot>>> = vec![Vec::new(); order.len()];
    for (k, slot) in last.into_values() {
        finished[k].push(slot);
    }
    // a node's parents in their order, so that the hook hears of them in
    // the same order on every run
    for (k, node) in order.iter().rev().enumerate() {
        let rank = |s: &Arc<GradSlot>| {
            node.parents
                .iter()
                .position(|p| matches!(p, Some(GradMeta::Leaf(l)) if Arc::ptr_eq(l, s)))
        };
        finished[k].sort_by_key(rank);
    }
    let mut grads: HashMap<*const Node, Tensor> = HashMap::new();
    grads.insert(Arc::as_ptr(&root_node), seed);
    for (k, node) in order.iter().rev().enumerate() {
        let Some(grad) = grads.remove(&Arc::as_ptr(node)) else {
            for slot in &finished[k] {
                hook.ready(slot)?;
            }
            continue;
        };
        let f = node.backward.lock().unwrap().take().ok_or_else(|| {
            Error::Autograd(format!(
                "backward through `{}` a second time: its saved tensors were freed by the \
                 first backward; run the forward pass again",
                node.name
            ))
        })?;
        // The ops the closure runs are traced themselves (one level deeper).
        let ran = match grad.device() {
            crate::Device::Cpu => "cpu",
            crate::Device::Cuda(_) => "cuda",
        };
        // the gradients summed so far of the inputs that are other ops'
        // outputs, each offered once
        let mut pending = Pending(vec![None; node.parents.len()]);
        for (i, parent) in node.parents.iter().enumerate() {
            if let Some(GradMeta::Node(n)) = parent {
                pending.0[i] = grads.remove(&Arc::as_ptr(n));
            }
        }
        let offered: Vec<bool> = pending.0.iter().map(Option::is_some).collect();
        let input_grads = crate::trace::op(node.name, "backward", ran, &[&grad], || {
            f(&grad, &mut pending)
        })?;
        drop(grad);
        // what was offered and not taken goes back
        let mut taken = vec![false; offered.len()];
        for (i, (parent, p)) in node.parents.iter().zip(&mut pending.0).enumerate() {
            match (parent, p.take()) {
                (Some(GradMeta::Node(n)), Some(p)) => {
                    grads.insert(Arc::as_ptr(n), p);
                }
                _ => taken[i] = offered[i],
            }
        }
        if input_grads.len() != node.parents.len() {
            return Err(Error::Autograd(format!(
                "`{}` returned {} gradients for {} inputs",
                node.name,
                input_grads.len(),
                node.parents.len()
            )));
        }
        for (i, ((parent, g), (shape, dtype))) in node
            .parents
            .iter()
            .zip(input_grads)
            .zip(&node.inputs)
            .enumerate()
        {
            // taken: the gradient returned already holds the sum so far
            let (Some(parent), Some(g)) = (parent, g) else {
                if taken[i] {
                    return Err(Error::Autograd(format!(
                        "`{}` took input {i}'s accumulated gradient and returned none",
                        node.name
                    )));
                }
                continue;
            };
            if g.dims() != shape.as_slice() || g.dtype() != *dtype {
                return Err(Error::Autograd(format!(
                    "`{}` produced a gradient {:?} {} for an input {:?} {}",
                    node.name,
                    g.dims(),
                    g.dtype(),
                    shape,
                    dtype
                )));
            }
            match parent {
                GradMeta::Leaf(slot) => slot.accumulate(g)?,
                GradMeta::Node(n) => {
                    let key = Arc::as_ptr(n);
                    let acc = accumulate(grads.remove(&key), g)?;
                    grads.insert(key, acc);
                }
            }
        }
        for slot in &finished[k] {
            hook.ready(slot)?;
        }
    }
    Ok(())
}

impl Tensor {
    /// Backpropagates from a one-element tensor (seed 1).
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward() needs a one-element tensor (a loss), got shape {:?}; use backward_with",
                self.dims()
            )));
        }
        let seed = Tensor::ones(self.dims(), self.dtype()).to_device(self.device())?;
        run_backward(self, seed)
    }

    /// Backpropagates an upstream gradient of this tensor's shape, dtype
    /// and device.
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        run_backward(self, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    /// `y = 3 * x` recorded with `record_accumulating`: its backward takes
    /// x's gradient so far when offered (and says so in `took`) and adds its
    /// own, 3 * g, into it.
    fn triple(x: &Tensor, took: Arc<Mutex<Vec<bool>>>) -> Tensor {
        let y = x.scale(3.0).unwrap().detach();
        record_accumulating(y, "triple", &[x], move |g, pending| {
            let prev = pending.take(0);
            took.lock().unwrap().push(prev.is_some());
            Ok(vec![Some(accumulate(prev, g.scale(3.0)?)?)])
        })
    }

    /// x = 2a feeds `triple` and a multiply by triple's output, so the
    /// multiply runs first and `triple` adds into its gradient of x:
    /// d/da (3x * x) = 2 * 6x = 24 at a = 1.
    #[test]
    fn an_accumulating_backward_gets_the_sum_so_far() {
        let a = Tensor::full(&[4], 1.0, DType::F64)
            .requires_grad_()
            .unwrap();
        let took = Arc::new(Mutex::new(Vec::new()));
        let x = a.scale(2.0).unwrap();
        let y = triple(&x, took.clone()).mul(&x).unwrap();
        y.sum_all().unwrap().backward().unwrap();
        assert_eq!(*took.lock().unwrap(), vec![true]);
        assert_eq!(a.grad().unwrap().to_vec::<f64>().unwrap(), vec![24.0; 4]);
        // alone, nothing is offered
        let a2 = Tensor::full(&[4], 1.0, DType::F64)
            .requires_grad_()
            .unwrap();
        let x2 = a2.scale(2.0).unwrap();
        triple(&x2, took.clone())
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(*took.lock().unwrap(), vec![true, false]);
        assert_eq!(a2.grad().unwrap().to_vec::<f64>().unwrap(), vec![6.0; 4]);
    }

    /// An input listed twice is offered its sum once; a backward that takes
    /// a sum and returns no gradient for it is an error, not a lost sum.
    #[test]
    fn pending_sums_are_offered_once_and_never_dropped() {
        let a = Tensor::full(&[2], 1.0, DType::F64)
            .requires_grad_()
            .unwrap();
        let x = a.scale(2.0).unwrap();
        let offered = Arc::new(Mutex::new(Vec::new()));
        let seen = offered.clone();
        let y = record_accumulating(x.mul(&x).unwrap().detach(), "square", &[&x, &x], {
            let x = x.detach();
            move |g, pending| {
                let (p0, p1) = (pending.take(0), pending.take(1));
                seen.lock().unwrap().push((p0.is_some(), p1.is_some()));
                let d = g.mul(&x)?;
                Ok(vec![Some(accumulate(p0, d.clone())?), Some(d)])
            }
        });
        // x also feeds a multiply by the square, which runs first
        y.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(*offered.lock().unwrap(), vec![(true, false)]);
        // d/da x^3 = 2 * 3x^2 = 24 at a = 1
        assert_eq!(a.grad().unwrap().to_vec::<f64>().unwrap(), vec![24.0; 2]);

        let a = Tensor::full(&[2], 1.0, DType::F64)
            .requires_grad_()
            .unwrap();
        let x = a.scale(2.0).unwrap();
        let lost = record_accumulating(x.detach(), "drops", &[&x], |_, pending| {
            let _ = pending.take(0);
            Ok(vec![None])
        });
        let e = lost
            .mul(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`drops` took input 0's accumulated gradient"),
            "{e}"
        );
    }

    /// The hook hears of each leaf once, after its last contribution: `a`
    /// feeds the last op run (the first op of the forward) and an earlier
    /// one, `b` only the first op run.
    #[test]
    fn grad_ready_fires_once_per_leaf_after_its_last_contribution() {
        let leaf = |v: f32| {
            Tensor::full(&[3], v as f64, DType::F32)
                .requires_grad_()
                .unwrap()
        };
        let (a, b) = (leaf(2.0), leaf(3.0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let (ia, ib) = (a.grad_slot_id().unwrap(), b.grad_slot_id().unwrap());
        let (ga, gb) = (a.clone(), b.clone());
        let hook: GradReadyHook = Box::new(move |slot| {
            // the gradient is already final when the hook runs
            let g = if slot == ia { ga.grad() } else { gb.grad() };
            log.lock()
                .unwrap()
                .push((slot, g.unwrap().to_vec::<f32>()?));
            Ok(())
        });
        // y = sum((a * a) * b): d/da = 2ab = 12, d/db = a^2 = 4
        on_grad_ready(hook, || a.mul(&a)?.mul(&b)?.sum_all()?.backward()).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![(ib, vec![4.0; 3]), (ia, vec![12.0; 3])],
            "b is final after the last multiply, a after the first"
        );
        // outside on_grad_ready nothing is called
        a.mul(&b).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(seen.len(), 2);
    }
}

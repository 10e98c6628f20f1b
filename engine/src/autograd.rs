//! Reverse-mode autograd.
//!
//! Each op that sees an input requiring grad records a `Node`: the autograd
//! handles of its inputs (not the inputs themselves, so forward activations
//! are not kept alive by the graph) and a backward closure that owns exactly
//! the tensors it saved. `backward()` sorts the graph topologically and runs
//! each closure once; running it consumes it, so saved tensors and consumed
//! gradients are freed as soon as they are no longer needed (PyTorch's
//! `retain_graph=False`). Leaves (parameters) accumulate into a `GradSlot`.

use crate::{Error, Result, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send>;

/// Where a tensor's gradient goes.
#[derive(Clone)]
pub enum GradMeta {
    Leaf(Arc<GradSlot>),
    Node(Arc<Node>),
}

/// The accumulated gradient of a leaf tensor.
#[derive(Default)]
pub struct GradSlot {
    grad: Mutex<Option<Tensor>>,
}

impl GradSlot {
    pub fn get(&self) -> Option<Tensor> {
        self.grad.lock().unwrap().clone()
    }
    pub fn set(&self, g: Option<Tensor>) {
        *self.grad.lock().unwrap() = g;
    }
    fn accumulate(&self, g: Tensor) -> Result<()> {
        let mut slot = self.grad.lock().unwrap();
        *slot = Some(match slot.take() {
            Some(prev) => prev.add(&g)?,
            None => g,
        });
        Ok(())
    }
}

pub struct Node {
    name: &'static str,
    parents: Vec<Option<GradMeta>>,
    input_shapes: Vec<Vec<usize>>,
    backward: Mutex<Option<BackwardFn>>,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
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
    if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    let node = Node {
        name,
        parents: inputs.iter().map(|t| t.grad_meta().cloned()).collect(),
        input_shapes: inputs.iter().map(|t| t.dims().to_vec()).collect(),
        backward: Mutex::new(Some(Box::new(backward))),
    };
    out.with_grad_meta(Some(GradMeta::Node(Arc::new(node))))
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

pub(crate) fn run_backward(root: &Tensor, seed: Tensor) -> Result<()> {
    if seed.dims() != root.dims() {
        return Err(Error::shape(
            "backward",
            format!(
                "gradient shape {:?} != tensor shape {:?}",
                seed.dims(),
                root.dims()
            ),
        ));
    }
    let _guard = no_grad();
    let root_node = match root.grad_meta() {
        None => {
            return Err(Error::Autograd(
                "backward() on a tensor that does not require grad (no parameter or \
                 requires_grad input reaches it, or it was computed under no_grad)"
                    .into(),
            ))
        }
        Some(GradMeta::Leaf(slot)) => return slot.accumulate(seed),
        Some(GradMeta::Node(n)) => n.clone(),
    };
    let order = topo_order(&root_node);
    let mut grads: HashMap<*const Node, Tensor> = HashMap::new();
    grads.insert(Arc::as_ptr(&root_node), seed);
    for node in order.iter().rev() {
        let Some(grad) = grads.remove(&Arc::as_ptr(node)) else {
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
        let input_grads = crate::trace::op(node.name, "backward", ran, &[&grad], || f(&grad))?;
        drop(grad);
        if input_grads.len() != node.parents.len() {
            return Err(Error::Autograd(format!(
                "`{}` returned {} gradients for {} inputs",
                node.name,
                input_grads.len(),
                node.parents.len()
            )));
        }
        for ((parent, g), shape) in node.parents.iter().zip(input_grads).zip(&node.input_shapes) {
            let (Some(parent), Some(g)) = (parent, g) else {
                continue;
            };
            if g.dims() != shape.as_slice() {
                return Err(Error::Autograd(format!(
                    "`{}` produced a gradient of shape {:?} for an input of shape {:?}",
                    node.name,
                    g.dims(),
                    shape
                )));
            }
            match parent {
                GradMeta::Leaf(slot) => slot.accumulate(g)?,
                GradMeta::Node(n) => {
                    let key = Arc::as_ptr(n);
                    let acc = match grads.remove(&key) {
                        Some(prev) => prev.add(&g)?,
                        None => g,
                    };
                    grads.insert(key, acc);
                }
            }
        }
    }
    Ok(())
}

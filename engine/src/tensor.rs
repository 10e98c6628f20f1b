//! The tensor: a shared storage (crate::storage), a strided view of it and
//! (optionally) its autograd handle, with the graph's data types; the ops
//! (crate::ops) and autograd (crate::autograd) add their methods in their
//! own modules. Cloning is cheap (one `Arc`).

use crate::cuda::storage::DeviceStorage;
use crate::layout::Layout;
use crate::{CpuStorage, DType, Device, Element, Error, Float, Result, Rng, Storage};
use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    id: u64,
    storage: Arc<Storage>,
    layout: Layout,
    device: Device,
    grad: Option<GradMeta>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor[{:?}, {}, {}]",
            self.dims(),
            self.dtype(),
            self.device()
        )
    }
}

impl Tensor {
    pub(crate) fn from_parts(storage: Arc<Storage>, layout: Layout) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            device: storage.device(),
            storage,
            layout,
            grad: None,
        }))
    }

    /// A tensor over GPU storage (cuda::tensor builds these).
    pub(crate) fn from_device_parts(storage: DeviceStorage, layout: Layout) -> Tensor {
        Tensor::from_parts(Arc::new(Storage::Cuda(storage)), layout)
    }

    pub fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if storage.len() != n {
            return Err(Error::shape(
                "from_storage",
                format!(
                    "{} elements cannot have shape {shape:?} ({n} elements)",
                    storage.len()
                ),
            ));
        }
        Ok(Tensor::from_parts(
            Arc::new(storage),
            Layout::contiguous(shape),
        ))
    }

    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(T::into_storage(data), shape)
    }

    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A 0-d tensor.
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor::from_parts(Arc::new(T::into_storage(vec![v])), Layout::contiguous(&[]))
    }

    /// Data computed in `T` stored as `dtype` (rounds to f16/bf16 when asked).
    pub(crate) fn from_compute<T: Element>(data: Vec<T>, shape: &[usize], dtype: DType) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        let s = T::into_storage(data);
        let s = match s {
            Storage::Cpu(c) if dtype != T::DTYPE => Storage::Cpu(c.cast(dtype)),
            s => s,
        };
        Tensor::from_parts(Arc::new(s), Layout::contiguous(shape))
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_parts(
            Arc::new(Storage::Cpu(CpuStorage::zeros(dtype, n))),
            Layout::contiguous(shape),
        )
    }

    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_compute(vec![value; n], shape, dtype)
    }

    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }

    /// Zeros of this tensor's shape and dtype, on the host.
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.dims(), self.dtype())
    }

    /// Normal(mean, std) samples drawn in f64 and rounded to `dtype`.
    pub fn randn(shape: &[usize], mean: f64, std: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| mean + std * rng.normal()).collect();
        Tensor::from_compute(v, shape, dtype)
    }

    /// Uniform samples in [lo, hi).
    pub fn rand(shape: &[usize], lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect();
        Tensor::from_compute(v, shape, dtype)
    }

    pub fn arange(n: usize, dtype: DType) -> Tensor {
        Tensor::from_compute((0..n).map(|i| i as f64).collect(), &[n], dtype)
    }

    // ---- accessors ----

    /// Unique per tensor object; views and copies get new ids.
    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn dims(&self) -> &[usize] {
        &self.0.layout.shape
    }
    pub fn rank(&self) -> usize {
        self.dims().len()
    }
    /// Size of dim `d`, with a clear error when out of range.
    pub fn dim(&self, d: usize) -> Result<usize> {
        self.dims().get(d).copied().ok_or_else(|| {
            Error::shape(
                "dim",
                format!("dim {d} out of range for shape {:?}", self.dims()),
            )
        })
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.0.storage.dtype()
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn strides(&self) -> &[usize] {
        &self.0.layout.strides
    }
    pub fn storage(&self) -> &Arc<Storage> {
        &self.0.storage
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    // ---- data access ----

    /// The elements in row-major order; borrowed when already contiguous.
    /// Host tensors only: a GPU tensor is a clear error (download it with
    /// `to_device(Device::Cpu)`).
    pub fn data<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        self.0.storage.cpu("data")?;
        let s = T::slice(&self.0.storage)
            .ok_or_else(|| Error::dtype("data", T::DTYPE.name(), self.dtype()))?;
        let l = &self.0.layout;
        if l.is_contiguous() {
            return Ok(Cow::Borrowed(&s[l.offset..l.offset + l.numel()]));
        }
        let mut out = Vec::with_capacity(l.numel());
        l.for_each_index(|i| out.push(s[i]));
        Ok(Cow::Owned(out))
    }

    /// The elements as compute type `T`: f16/bf16 storage is widened to f32.
    pub fn float_data<T: Float>(&self) -> Result<Cow<'_, [T]>> {
        self.0.storage.cpu("float_data")?;
        match self.dtype() {
            d if d == T::DTYPE => self.data::<T>(),
            DType::F16 | DType::BF16 if T::DTYPE == DType::F32 => {
                let c = self.host_contiguous();
                let wide = c.0.storage.cpu("float_data")?.cast(DType::F32);
                let v = T::from_storage(Storage::Cpu(wide)).expect("cast to f32");
                Ok(Cow::Owned(v))
            }
            d => Err(Error::dtype("float_data", T::DTYPE.name(), d)),
        }
    }

    /// Whether this handle is the only one to its data: no other tensor,
    /// view or clone shares the storage, so an op may write into it.
    pub(crate) fn is_sole_owner(&self) -> bool {
        Arc::strong_count(&self.0) == 1
            && Arc::weak_count(&self.0) == 0
            && Arc::strong_count(&self.0.storage) == 1
            && Arc::weak_count(&self.0.storage) == 0
    }

    /// Whether the tensor covers its whole storage in row-major order.
    fn is_whole_storage(&self) -> bool {
        let l = &self.0.layout;
        l.is_contiguous() && l.offset == 0 && self.0.storage.len() == self.numel()
    }

    /// The elements as compute type `T`, row-major: a host tensor's own
    /// vector when this is its sole owner and it is stored dense as `T`
    /// (no copy), else a copy ([`Tensor::float_data`]).
    pub(crate) fn into_float_vec<T: Float>(self) -> Result<Vec<T>> {
        let own = self.device() == Device::Cpu && self.dtype() == T::DTYPE;
        if own && self.is_whole_storage() && self.is_sole_owner() {
            if let Ok(inner) = Arc::try_unwrap(self.0) {
                if let Ok(s) = Arc::try_unwrap(inner.storage) {
                    if let Some(v) = T::from_storage(s) {
                        return Ok(v);
                    }
                }
            }
            unreachable!("the sole owner of a host storage of dtype T unwraps it to a Vec<T>");
        }
        Ok(self.float_data::<T>()?.into_owned())
    }

    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.data::<T>()?.into_owned())
    }

    /// Any dtype, converted to f64 (exact for every dtype but i64 > 2^53).
    /// A GPU tensor is downloaded first; a failing download is the error.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        if self.device() != Device::Cpu {
            return self.to_device(Device::Cpu)?.to_vec_f64();
        }
        let Storage::Cpu(s) = self.0.storage.as_ref() else {
            unreachable!("a host tensor has host storage");
        };
        Ok(crate::with_storage!(s, v => {
            let mut out = Vec::with_capacity(self.numel());
            self.0.layout.for_each_index(|i| out.push(v[i].to_f64()));
            out
        }))
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor of shape {:?} is not one element", self.dims()),
            ));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// A row-major copy of a host tensor with no autograd (no copy when
    /// already compact). The CPU backend's strided copy.
    pub(crate) fn host_contiguous(&self) -> Tensor {
        let Storage::Cpu(s) = self.0.storage.as_ref() else {
            panic!(
                "host_contiguous on a {} tensor: a CPU backend path got a GPU tensor",
                self.device()
            );
        };
        if self.is_contiguous() && self.0.layout.offset == 0 && s.len() == self.numel() {
            return self.detach();
        }
        let s = crate::with_storage!(s, v => {
            let mut out = Vec::with_capacity(self.numel());
            self.0.layout.for_each_index(|i| out.push(v[i]));
            Element::into_storage(out)
        });
        Tensor::from_parts(Arc::new(s), Layout::contiguous(self.dims()))
    }

    // ---- autograd ----

    pub(crate) fn grad_meta(&self) -> Option<&GradMeta> {
        self.0.grad.as_ref()
    }

    pub(crate) fn with_grad_meta(&self, grad: Option<GradMeta>) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            device: self.0.device,
            grad,
        }))
    }

    /// A view with the same data on a different layout, carrying no autograd.
    pub(crate) fn view(&self, layout: Layout) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage: self.0.storage.clone(),
            layout,
            device: self.0.device,
            grad: None,
        }))
    }

    pub fn requires_grad(&self) -> bool {
        self.0.grad.is_some()
    }

    /// The same data cut from the graph.
    pub fn detach(&self) -> Tensor {
        self.with_grad_meta(None)
    }

    /// A leaf that accumulates its gradient (`grad()`), like a parameter.
    /// Only float tensors can require grad.
    pub fn requires_grad_(&self) -> Result<Tensor> {
        if !self.dtype().is_float() {
            return Err(Error::dtype("requires_grad", "a float dtype", self.dtype()));
        }
        Ok(self.with_grad_meta(Some(GradMeta::Leaf(Arc::new(GradSlot::default())))))
    }

    /// The same data as a leaf accumulating into this tensor's grad slot:
    /// used by optimizers to replace a parameter's value and keep its grad.
    pub fn with_same_grad_slot(&self, value: Tensor) -> Tensor {
        match &self.0.grad {
            Some(GradMeta::Leaf(slot)) => value.with_grad_meta(Some(GradMeta::Leaf(slot.clone()))),
            _ => value.detach(),
        }
    }

    /// The accumulated gradient of a leaf; None before any backward.
    pub fn grad(&self) -> Option<Tensor> {
        match &self.0.grad {
            Some(GradMeta::Leaf(slot)) => slot.get(),
            _ => None,
        }
    }

    pub fn set_grad(&self, g: Option<Tensor>) {
        if let Some(GradMeta::Leaf(slot)) = &self.0.grad {
            slot.set(g);
        }
    }

    /// Which gradient slot a leaf accumulates into (what the hook of
    /// `autograd::on_grad_ready` is called with); None for a non-leaf.
    pub fn grad_slot_id(&self) -> Option<usize> {
        match &self.0.grad {
            Some(GradMeta::Leaf(slot)) => Some(Arc::as_ptr(slot) as usize),
            _ => None,
        }
    }
}

/// A node's backward: the gradient of its output and the gradients
/// already summed for its inputs that it may add its own into (see
/// [`Pending`]); returns one gradient (or None) per input.
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &mut Pending) -> Result<Vec<Option<Tensor>>> + Send>;

/// The gradients other ops already produced for a node's inputs, when the
/// node runs its backward (`crate::autograd`): input `i`'s is offered when
/// `i` is the output of another op (not a leaf), some op run before gave it
/// a gradient, and no earlier input of the node is the same tensor.
pub struct Pending(pub(crate) Vec<Option<Tensor>>);

impl Pending {
    /// Takes input `i`'s sum so far. The backward then owes input `i` a
    /// gradient that includes it: it adds its own into the tensor taken
    /// (in place when nothing else holds it) and returns the result.
    pub fn take(&mut self, i: usize) -> Option<Tensor> {
        self.0.get_mut(i).and_then(Option::take)
    }
}

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
    pub(crate) fn accumulate(&self, g: Tensor) -> Result<()> {
        let mut slot = self.grad.lock().unwrap();
        *slot = Some(match slot.take() {
            Some(prev) => prev.add(&g)?,
            None => g,
        });
        Ok(())
    }
}

/// One recorded op: where its inputs' gradients go and the closure that
/// computes them (crate::autograd runs it).
pub struct Node {
    pub(crate) name: &'static str,
    pub(crate) parents: Vec<Option<GradMeta>>,
    /// Each input's shape and dtype: the gradient it gets must match.
    pub(crate) inputs: Vec<(Vec<usize>, DType)>,
    pub(crate) backward: Mutex<Option<BackwardFn>>,
}

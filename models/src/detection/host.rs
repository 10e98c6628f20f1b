//! Where the detector reads tensors back to the host.
//!
//! The RPN runs on the tensors' device from the head to the losses:
//! anchors, per-level top-k, decoding, proposal selection and NMS, anchor
//! matching and sampling, box targets. It reads once per call: the
//! proposals with their per-image counts and the sampled anchor counts.
//! The ROI heads' matching and sampling (a few thousand proposals per
//! image) and the post-processing of detections run on the host, in
//! torchvision's order; the convolutions, RoIAlign, heads, losses and mask
//! paste run on the device. Every read of a
//! tensor's values goes through [`read`] or [`read_f64`], which count it:
//! on a GPU each one is a device-to-host copy that waits for the stream,
//! so [`traffic`]'s `reads` is the number of host round trips a training or
//! inference iteration makes. Tensors built on the host from those values
//! (targets, masks) go to the device with [`to_device_of`], counted as
//! `uploads`; what an engine op uploads itself from host values (the RoIs
//! of the poolers, the mask paste's tap tables) is counted with
//! [`count_uploads`]. The counts are the same on the CPU, where they measure
//! what a GPU run would do.

use engine::{Float, Result, Tensor};
use std::cell::Cell;

thread_local! {
    static TRAFFIC: Cell<Traffic> = const { Cell::new(Traffic { reads: 0, uploads: 0 }) };
}

/// How many tensors the detector has read back to the host, and built on
/// the host for the device, on this thread so far (the difference over an
/// iteration is that iteration's traffic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub reads: usize,
    pub uploads: usize,
}

pub fn traffic() -> Traffic {
    TRAFFIC.with(Cell::get)
}

fn count(read: usize, upload: usize) {
    TRAFFIC.with(|t| {
        let c = t.get();
        t.set(Traffic {
            reads: c.reads + read,
            uploads: c.uploads + upload,
        })
    });
}

/// `t`'s values on the host as `T` (f16/bf16 widened to f32), detached;
/// one round trip.
pub(crate) fn read<T: Float>(t: &Tensor) -> Result<Vec<T>> {
    count(1, 0);
    Ok(t.detach()
        .to_device(engine::Device::Cpu)?
        .float_data::<T>()?
        .into_owned())
}

/// `t`'s values on the host as f64, any dtype; one round trip.
pub(crate) fn read_f64(t: &Tensor) -> Result<Vec<f64>> {
    count(1, 0);
    t.to_vec_f64()
}

/// `t` (built on the host) on `like`'s device; one upload (no copy when
/// that is the host).
pub(crate) fn to_device_of(t: Tensor, like: &Tensor) -> Result<Tensor> {
    count(0, 1);
    t.to_device(like.device())
}

/// Counts `n` uploads an engine op makes of host tensors it is given
/// (`multiscale_roi_align` uploads its RoIs and their level indices,
/// `paste_masks` its boxes' tap tables).
pub(crate) fn count_uploads(n: usize) {
    count(0, n);
}

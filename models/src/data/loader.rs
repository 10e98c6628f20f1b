//! The image loader: a `Dataset` turned into shuffled, augmented,
//! normalised `[B, C, size, size]` batches with their labels. The order,
//! the per-sample randomness, threads and prefetch are `pipeline.rs`'s.
//!
//! Where the pixel work runs is a choice (`PixelWork`). On the host the
//! workers decode and transform into f32 batches. On a device the workers
//! decode and draw each sample's random crop, shift and flip
//! (`Transform::plan`), and the consumer's thread hands u8 pixels and the
//! crops to `engine::ops::augment` on the device, which writes the batch
//! there in the compute dtype: a GPU run then uploads a quarter of the
//! bytes (u8, not f32) and no CPU thread resizes. A dataset held in memory
//! (`Dataset::packed`) goes to the device once, and a batch then uploads
//! only its crops. The batches are the same in every mode: the same random
//! draws, and the op is the host transform's own pixel path.

use super::pipeline::{Batches, DataLoader, LoaderOptions, Source};
use super::transform::{Augment, Transform};
use super::{Dataset, Image};
use engine::ops::augment::{crop_resize_normalize, Crop, CropBatch};
use engine::{DType, Device, Error, Result, Rng, Tensor};
use std::sync::Arc;

/// The largest in-memory dataset a device-mode loader keeps on the device
/// (larger ones upload each batch's images).
pub const MAX_RESIDENT_BYTES: usize = 4 << 30;

pub struct Batch {
    /// Position of this batch in its epoch.
    pub index: usize,
    /// [B, C, size, size], normalised: f32 on the host, or the device
    /// mode's dtype on its device.
    pub images: Tensor,
    /// [B] i64, on the host.
    pub labels: Tensor,
    /// Dataset index of each sample. Fewer than the batch size when samples
    /// were unreadable (skipped).
    pub indices: Vec<usize>,
    /// Device mode, between the workers' collate and the consumer's finish:
    /// the packed u8 images (None when the dataset is resident) and the
    /// crops.
    pending: Option<(Option<Vec<u8>>, Vec<Crop>)>,
}

/// Where a loader does its transform's pixel work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelWork {
    /// Decode, crop, resize and normalise on the loader's threads: f32
    /// batches on the host.
    Host,
    /// Decode and draw the random choices on the loader's threads; crop,
    /// resize and normalise on `device`, rounded to `dtype` (f32, f16 or
    /// bf16). Not for the antialiased centre crop of evaluation.
    Device { device: Device, dtype: DType },
}

impl PixelWork {
    /// The default for training on `device` in `dtype`: the device's own
    /// when it is a GPU, the host's on the CPU.
    pub fn for_training(device: Device, dtype: DType) -> PixelWork {
        match device {
            Device::Cpu => PixelWork::Host,
            Device::Cuda(_) => PixelWork::Device { device, dtype },
        }
    }
}

/// One loaded sample and its label.
pub enum LoadedImage {
    /// Host mode: the transformed CHW image.
    Pixels(Vec<f32>, i64),
    /// Device mode: the decoded image (None when the dataset is resident)
    /// and its crop (offset 0 in the image, or its offset in the resident
    /// pixels).
    Raw(Option<Image>, Crop, i64),
}

/// The device side of a device-mode loader.
struct OnDevice {
    device: Device,
    dtype: DType,
    /// The dataset's packed pixels on `device`, with their image size.
    resident: Option<(Tensor, usize, usize)>,
}

/// A labelled-image dataset with its transform: what a `Loader` reads.
pub struct ImageSource {
    ds: Arc<dyn Dataset>,
    transform: Transform,
    on_device: Option<OnDevice>,
}

impl ImageSource {
    fn crop_batch(&self, crops: Vec<Crop>, dtype: DType) -> CropBatch {
        CropBatch {
            channels: self.ds.channels(),
            size: self.transform.size,
            crops,
            mean: self.transform.mean.clone(),
            std: self.transform.std.clone(),
            dtype,
        }
    }
}

impl Source for ImageSource {
    type Sample = LoadedImage;
    type Batch = Batch;
    const NAME: &'static str = "loader";

    fn num_samples(&self) -> usize {
        self.ds.len()
    }

    fn load(&self, index: usize, rng: &mut Rng) -> Result<Self::Sample> {
        let label = self.ds.label(index) as i64;
        let Some(dev) = &self.on_device else {
            let img = self.ds.get(index)?;
            let mut out = vec![0f32; self.transform.output_len(self.ds.channels())];
            self.transform.apply(&img, rng, &mut out)?;
            return Ok(LoadedImage::Pixels(out, label));
        };
        let no_plan = || Error::arg("loader", "this transform has no device form");
        if let Some((_, h, w)) = dev.resident {
            let offset = self.ds.packed_offset(index).ok_or_else(|| {
                Error::arg("loader", format!("sample {index} has no packed pixels"))
            })?;
            let crop = self.transform.plan(h, w, rng).ok_or_else(no_plan)?;
            return Ok(LoadedImage::Raw(None, Crop { offset, ..crop }, label));
        }
        let img = self.ds.get(index)?;
        let c = self.ds.channels();
        if img.channels != c || img.pixels.len() != img.height * img.width * c {
            return Err(Error::shape(
                "loader",
                format!(
                    "image {}x{}x{} (HxWxC) with {} bytes in a {c}-channel dataset",
                    img.height,
                    img.width,
                    img.channels,
                    img.pixels.len()
                ),
            ));
        }
        let crop = self
            .transform
            .plan(img.height, img.width, rng)
            .ok_or_else(no_plan)?;
        Ok(LoadedImage::Raw(Some(img), crop, label))
    }

    fn describe(&self, index: usize) -> String {
        self.ds.describe(index)
    }

    fn collate(
        &self,
        index: usize,
        samples: Vec<Self::Sample>,
        indices: Vec<usize>,
    ) -> Result<Batch> {
        let (n, c, s) = (samples.len(), self.ds.channels(), self.transform.size);
        let mut labels = Vec::with_capacity(n);
        let mut images = Vec::new();
        let (mut packed, mut crops) = (Vec::new(), Vec::new());
        for sample in samples {
            match sample {
                LoadedImage::Pixels(px, label) => {
                    images.extend(px);
                    labels.push(label);
                }
                LoadedImage::Raw(img, crop, label) => {
                    let crop = match img {
                        Some(img) => {
                            let offset = packed.len();
                            packed.extend(img.pixels);
                            Crop { offset, ..crop }
                        }
                        None => crop,
                    };
                    crops.push(crop);
                    labels.push(label);
                }
            }
        }
        let (images, pending) = match &self.on_device {
            None => (Tensor::from_vec(images, &[n, c, s, s])?, None),
            Some(dev) => {
                let packed = dev.resident.is_none().then_some(packed);
                // replaced by `finish` before anyone sees the batch
                (Tensor::zeros(&[0], DType::U8), Some((packed, crops)))
            }
        };
        Ok(Batch {
            index,
            images,
            labels: Tensor::from_vec(labels, &[n])?,
            indices,
            pending,
        })
    }

    fn batch_index(batch: &Batch) -> usize {
        batch.index
    }

    /// Device mode: uploads the batch's u8 images (unless resident) and
    /// runs the pixel work on the device.
    fn finish(&self, mut batch: Batch) -> Result<Batch> {
        let (Some(dev), Some((packed, crops))) = (&self.on_device, batch.pending.take()) else {
            return Ok(batch);
        };
        let pixels = match (&dev.resident, packed) {
            (Some((t, _, _)), _) => t.clone(),
            (None, Some(p)) => {
                let len = p.len();
                Tensor::from_vec(p, &[len])?.to_device(dev.device)?
            }
            (None, None) => return Err(Error::arg("loader", "a device batch without its pixels")),
        };
        batch.images = crop_resize_normalize(&pixels, &self.crop_batch(crops, dev.dtype))?;
        Ok(batch)
    }
}

/// Shuffled, augmented, normalised batches of a `Dataset`.
pub type Loader = DataLoader<ImageSource>;

impl Loader {
    /// Checks the options against the dataset: it must be non-empty, `batch`
    /// positive, and the transform valid for its channel count (one mean and
    /// std per channel). The pixel work runs on the host.
    pub fn new(ds: Arc<dyn Dataset>, transform: Transform, opts: LoaderOptions) -> Result<Loader> {
        Loader::with_pixel_work(ds, transform, opts, PixelWork::Host)
    }

    /// As `new`, with the pixel work where `work` says. A device-mode
    /// loader over an in-memory dataset of at most `MAX_RESIDENT_BYTES`
    /// uploads it here, once.
    pub fn with_pixel_work(
        ds: Arc<dyn Dataset>,
        transform: Transform,
        opts: LoaderOptions,
        work: PixelWork,
    ) -> Result<Loader> {
        transform.check(ds.channels()).map_err(|e| {
            Error::arg(
                "loader",
                format!("transform for a {}-channel dataset: {e}", ds.channels()),
            )
        })?;
        let on_device = match work {
            PixelWork::Host => None,
            PixelWork::Device { device, dtype } => {
                if matches!(transform.augment, Augment::ResizeCenterCrop { .. }) {
                    return Err(Error::arg(
                        "loader",
                        "the antialiased resize + centre crop runs on the host only",
                    ));
                }
                if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
                    return Err(Error::dtype("loader", "an f32, f16 or bf16 batch", dtype));
                }
                let resident = match ds.packed() {
                    Some(p) if p.pixels.len() <= MAX_RESIDENT_BYTES => {
                        let t = Tensor::from_slice(p.pixels, &[p.pixels.len()])?;
                        Some((t.to_device(device)?, p.height, p.width))
                    }
                    _ => None,
                };
                Some(OnDevice {
                    device,
                    dtype,
                    resident,
                })
            }
        };
        let source = ImageSource {
            ds,
            transform,
            on_device,
        };
        DataLoader::with_source(source, opts)
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.source().ds
    }

    /// Whether the dataset's pixels live on the device (device mode over an
    /// in-memory dataset).
    pub fn resident(&self) -> bool {
        matches!(&self.source().on_device, Some(d) if d.resident.is_some())
    }
}

/// The batches of one epoch; see `DataLoader::epoch`.
pub type EpochIter = Batches<Batch>;

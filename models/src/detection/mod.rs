//! Object detection: Mask R-CNN as torchvision builds it and the COCO tools
//! around it.
//!
//! - COCO: masks as RLE (`rle`), instances and results files (`coco_json`)
//!   and the evaluation protocol (`coco_eval`), each reproducing
//!   pycocotools exactly so that numbers reported here can be compared with
//!   published ones;
//! - the model: ResNet + FPN backbone (`fpn`), region proposals (`anchors`,
//!   `box_coder`, `matcher`, `sampler`, `rpn`), the box branch
//!   (`roi_heads`), the mask branch (`mask_head`) and the whole detector
//!   with its training losses and inference (`mask_rcnn`);
//! - data: COCO folders to padded batches with targets (`data`) and the
//!   built-in benchmark of Fashion-MNIST items pasted on canvases (`synth`).
//!
//! Training, evaluation and drawing with a trained model are `crate::detect`.

pub mod anchors;
pub mod box_coder;
pub mod coco_eval;
pub mod coco_json;
pub mod data;
pub mod fpn;
pub mod host;
pub mod mask_head;
pub mod mask_rcnn;
pub mod matcher;
pub mod rle;
pub mod roi_heads;
pub mod rpn;
pub mod sampler;
pub mod synth;

pub use coco_eval::{evaluate_files, CocoEval, IouMatrix, IouType, Params};
pub use coco_json::{CocoCategory, CocoGt, CocoImage, Detection, GtAnnotation, Segmentation};
pub use host::{traffic, Traffic};
pub use rle::{bbox_iou, rle_iou, Rle};

use engine::{DType, Error, Result};

/// The dtype the detector's box math, RoIAlign, losses and host reads use
/// for feature maps computed in `features`: f64 stays f64; f32, bf16 and
/// f16 give f32. This is torchvision's autocast: the convolutions and
/// linear layers run in the half dtype, while RoIAlign, box coding and the
/// losses (cross-entropy, BCE-with-logits, smooth-L1) run in f32.
pub fn box_dtype(op: &'static str, features: DType) -> Result<DType> {
    match features {
        DType::F64 => Ok(DType::F64),
        DType::F32 | DType::BF16 | DType::F16 => Ok(DType::F32),
        d => Err(Error::dtype(op, "float feature maps", d)),
    }
}

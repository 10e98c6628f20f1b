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

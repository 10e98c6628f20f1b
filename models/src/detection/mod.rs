//! Object detection support: COCO masks (RLE), COCO JSON files and the COCO
//! evaluation protocol, each reproducing pycocotools exactly so that numbers
//! reported here can be compared with published ones.

pub mod anchors;
pub mod box_coder;
pub mod coco_eval;
pub mod coco_json;
pub mod data;
pub mod fpn;
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
pub use rle::{bbox_iou, rle_iou, Rle};

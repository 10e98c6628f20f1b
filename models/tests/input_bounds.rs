//! Bounds on sizes taken from files, and the data faults the fault corpus
//! (fault_corpus.rs) found, each checked at the library level: decoded
//! image size, the resize before a centre crop, truncated JPEGs, symlink
//! loops and non-UTF-8 names in image folders, network sizes from
//! checkpoint metadata, mask sizes and file names from COCO JSON.

use engine::Rng;
use models::data::{Dataset, Image, ImageFolder, Transform};
use models::detection::coco_json::Segmentation;
use models::detection::{rle_iou, CocoGt, Rle};
use models::{NetConfig, ProjectorConfig};
use std::collections::BTreeMap;
use std::path::Path;
use testutil::TempDir;

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(w, h, image::Rgb([9, 99, 199]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn folder_with(root: &Path, extra: &[(&str, Vec<u8>)]) {
    for class in ["a", "b"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        std::fs::write(root.join(class).join("0.png"), png(4, 4)).unwrap();
    }
    for (name, bytes) in extra {
        std::fs::write(root.join("a").join(name), bytes).unwrap();
    }
}

#[test]
fn symlink_loops_and_repeated_links_add_no_images() {
    let tmp = TempDir::new("bounds-loop");
    folder_with(&tmp.0, &[]);
    std::os::unix::fs::symlink("..", tmp.0.join("a/up")).unwrap();
    std::os::unix::fs::symlink(".", tmp.0.join("b/self")).unwrap();
    std::os::unix::fs::symlink(tmp.0.join("b"), tmp.0.join("a/b-again")).unwrap();
    let ds = ImageFolder::open(&tmp.0).unwrap();
    // a: its own image, then b's through the link (each real folder once)
    assert_eq!(
        ds.len(),
        3,
        "{:?}",
        (0..ds.len()).map(|i| ds.describe(i)).collect::<Vec<_>>()
    );
}

#[test]
fn a_class_folder_named_in_latin1_is_read() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = TempDir::new("bounds-latin1");
    folder_with(&tmp.0, &[]);
    std::fs::rename(
        tmp.0.join("b"),
        tmp.0.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
    )
    .unwrap();
    let ds = ImageFolder::open(&tmp.0).unwrap();
    assert_eq!(ds.classes(), ["a", "caf\u{fffd}"]);
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.get(1).unwrap().width, 4);
}

#[test]
fn truncated_jpegs_and_huge_headers_are_unreadable_samples() {
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 7]))
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = jpeg.into_inner();
    // a PNG claiming 100000 x 100000 pixels: the decoder's limits refuse it
    let mut huge = png(1, 1);
    huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let tmp = TempDir::new("bounds-decode");
    folder_with(
        &tmp.0,
        &[
            ("1-whole.jpg", jpeg.clone()),
            ("2-cut.jpg", jpeg[..jpeg.len() * 2 / 3].to_vec()),
            ("3-huge.png", huge),
        ],
    );
    let ds = ImageFolder::open(&tmp.0).unwrap();
    assert_eq!(ds.get(1).unwrap().height, 64);
    let cut = ds.get(2).unwrap_err().to_string();
    assert!(
        cut.contains("2-cut.jpg") && cut.contains("truncated JPEG"),
        "{cut}"
    );
    let huge = ds.get(3).unwrap_err().to_string();
    assert!(
        huge.contains("3-huge.png") && huge.contains("limit"),
        "{huge}"
    );
}

#[test]
fn a_centre_crop_of_an_extreme_aspect_ratio_is_refused_not_allocated() {
    let t = Transform::imagenet_eval(224);
    let strip = Image {
        channels: 3,
        height: 30000,
        width: 1,
        pixels: vec![0; 30000 * 3],
    };
    let mut out = vec![0f32; t.output_len(3)];
    let e = t
        .apply(&strip, &mut Rng::new(0), &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("30000x1") && e.contains("aspect ratio"), "{e}");
    let e = Transform::imagenet_eval(100_000)
        .check(3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4096"), "{e}");
}

#[test]
fn network_sizes_are_bounded_and_checked_against_the_tensors() {
    let mut c = NetConfig::new("resnet18", 10).unwrap();
    c.width = 100_000;
    assert!(c.check().unwrap_err().to_string().contains("width"));
    c.width = 4;
    c.num_classes = 4_000_000_000;
    assert!(c.check().unwrap_err().to_string().contains("num_classes"));
    c.num_classes = 10;
    c.projector = Some(ProjectorConfig::parse("100000000", 0).unwrap());
    assert!(c.check().unwrap_err().to_string().contains("projector"));
    c.projector = Some(ProjectorConfig::parse("d+16", 32).unwrap());
    c.check().unwrap();
    let mut header: BTreeMap<String, Vec<usize>> = c.key_shapes().unwrap().into_iter().collect();
    assert_eq!(header["layer4.1.conv2.weight"], [32, 32, 3, 3]);
    assert_eq!(header["projector.3.weight"], [16, 32]);
    assert_eq!(header["fc.weight"], [10, 16]);
    c.check_shapes(&header).unwrap();
    header.insert("fc.weight".into(), vec![7, 16]);
    header.remove("conv1.weight");
    let e = c.check_shapes(&header).unwrap_err().to_string();
    assert!(
        e.contains("fc.weight is [7, 16]") && e.contains("conv1.weight [4, 3, 7, 7] is missing"),
        "{e}"
    );
}

#[test]
fn masks_of_2_to_the_32_pixels_are_refused_and_iou_always_ends() {
    let e = Rle::from_polygon(&[0.0, 0.0, 5.0, 0.0, 5.0, 5.0], 65536, 65536).unwrap_err();
    assert!(e.to_string().contains("4294967296 pixels"), "{e}");
    assert!(Rle::from_counts(vec![0], 65536, 65536).is_err());
    // runs that add up to different totals (only constructible directly)
    // used to make the walk spin; it now stops at the end of the shorter
    let a = Rle {
        h: 4,
        w: 4,
        counts: vec![2, 14],
    };
    let b = Rle {
        h: 4,
        w: 4,
        counts: vec![2, 4],
    };
    assert_eq!(rle_iou(&[a], &[b], &[false]), [1.0]);
}

fn gt_with(file_name: &str, segmentation: serde_json::Value) -> engine::Result<CocoGt> {
    let v = serde_json::json!({
        "images": [{"id": 1, "height": 8, "width": 8, "file_name": file_name}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4],
            "area": 16, "segmentation": segmentation}],
        "categories": [{"id": 1}],
    });
    CocoGt::from_value(&v, "gt.json")
}

#[test]
fn coco_file_names_stay_inside_the_image_folder() {
    let square = serde_json::json!([[1, 1, 5, 1, 5, 5, 1, 5]]);
    gt_with("sub/a.png", square.clone()).unwrap();
    for bad in ["/etc/passwd", "../a.png", "sub/../../a.png"] {
        let e = gt_with(bad, square.clone()).unwrap_err().to_string();
        assert!(
            e.contains("file_name") && e.contains("relative"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn polygons_train_cannot_use_are_left_out_of_segm_evaluation() {
    use models::detection::{CocoEval, IouType};
    for seg in [
        serde_json::json!([[1, 1]]),
        serde_json::json!([]),
        serde_json::json!([[1, 1, 4, 4], [1, 1, 5, 1, 5, 5]]),
    ] {
        let gt = gt_with("a.png", seg.clone()).unwrap();
        let s = gt.annotations[0].segmentation.as_ref().unwrap();
        assert!(s.check().is_err() && s.to_rle(8, 8).is_err(), "{seg}");
        let e = CocoEval::evaluate(&gt, &[], IouType::Segm).unwrap();
        assert!(e.summary().contains("Average Precision"));
    }
    assert!(Segmentation::Polygons(vec![vec![1.0, 1.0, 4.0, 4.0]])
        .check()
        .is_ok());
}

#[test]
fn detector_metadata_sizes_are_bounded_before_anything_is_built() {
    use models::detect::DetectSpec;
    use models::detection::mask_rcnn::MaskRcnnConfig;
    let spec = DetectSpec {
        config: MaskRcnnConfig {
            arch: "resnet18".into(),
            width: 4,
            num_classes: 3,
            fpn_channels: 8,
            representation_size: 16,
            trainable_layers: 3,
            in_channels: 3,
        },
        min_size: 64,
        max_size: 96,
        category_ids: vec![1, 2],
        category_names: vec!["a".into(), "b".into()],
    };
    let src = Path::new("det.safetensors");
    assert_eq!(
        DetectSpec::from_metadata(&spec.to_metadata(), src).unwrap(),
        spec
    );
    for (key, value) in [
        ("width", "100000"),
        ("num_classes", "4000000000"),
        ("fpn_channels", "0"),
        ("max_size", "1000000"),
        ("channels", "-3"),
    ] {
        let mut meta = spec.to_metadata();
        meta.insert(format!("detect.{key}"), value.into());
        let e = DetectSpec::from_metadata(&meta, src)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("detect.{key}")) && e.contains(value),
            "{e}"
        );
    }
}

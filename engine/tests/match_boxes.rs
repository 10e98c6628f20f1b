//! The matching op (`engine::ops::detection::match_boxes`) against
//! torchvision's `Matcher` and the RPN's / ROI heads' label rules
//! (tools/golden/make_matcher_fixtures.py): a 1/32-grid quality matrix with
//! ties in rows and columns, columns below and between the thresholds and a
//! gt matched only as a low-quality match; a real IoU matrix of gt boxes
//! against anchors; the grid with NaN. Both rules, in f64, f32 and bf16
//! (torch compares in the tensor's dtype): every match and label must be
//! identical.

use engine::ops::detection::{match_boxes, MatchRule};
use engine::Tensor;
use std::collections::BTreeMap;
use testutil::Golden;

/// The fixture's tensors and its rules by name.
fn fixture(name: &str) -> (BTreeMap<String, Tensor>, BTreeMap<String, MatchRule>) {
    let fx = Golden::golden(name);
    let rules = fx.meta("params")["rules"]
        .as_object()
        .expect("rules")
        .iter()
        .map(|(k, v)| {
            let rule = MatchRule {
                high_threshold: v[0].as_f64().unwrap(),
                low_threshold: v[1].as_f64().unwrap(),
                allow_low_quality_matches: v[2].as_bool().unwrap(),
            };
            (k.clone(), rule)
        })
        .collect();
    (fx.ck.tensors, rules)
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.to_vec::<i64>().unwrap()
}

#[test]
fn match_boxes_matches_torchvision() {
    let mut checked = 0;
    for name in [
        "detection_matcher_grid",
        "detection_matcher_iou",
        "detection_matcher_nan",
    ] {
        let (fx, rules) = fixture(name);
        assert_eq!(rules["rpn"], MatchRule::RPN);
        assert_eq!(rules["roi"], MatchRule::ROI_HEADS);
        let gt_labels = &fx["in.gt_labels"];
        for (rule_name, rule) in &rules {
            for (dt, input) in [
                ("f64", "in.quality"),
                ("f32", "in.quality_f32"),
                ("bf16", "in.quality_bf16"),
            ] {
                let q = &fx[input];
                let key = |what: &str| format!("{what}.{rule_name}.{dt}");
                let (m, anchors) = match_boxes(q, *rule, None).unwrap();
                let (m2, proposals) = match_boxes(q, *rule, Some(gt_labels)).unwrap();
                let at = format!("{name} {rule_name} {dt}");
                assert_eq!(i64s(&m), i64s(&fx[&key("matches")]), "matches {at}");
                assert_eq!(i64s(&m2), i64s(&m), "matches with labels {at}");
                assert_eq!(i64s(&anchors), i64s(&fx[&key("anchors")]), "anchors {at}");
                assert_eq!(
                    i64s(&proposals),
                    i64s(&fx[&key("proposals")]),
                    "proposals {at}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 2 * 3);
}

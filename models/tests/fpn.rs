//! The FPN against torchvision's FeaturePyramidNetwork + LastLevelMaxPool
//! (fixtures: tools/golden/make_fpn_fixtures.py): outputs of all five levels
//! and the gradients reaching the backbone maps, for exactly halving and odd
//! map sizes; and the ResNet stage outputs it consumes.

use engine::checkpoint::load;
use engine::nn::Module;
use engine::{DType, Rng, Tensor};
use models::detection::fpn::Fpn;
use models::{ResNet, ResNetConfig};
use std::collections::BTreeMap;
use std::path::Path;

fn fixture() -> BTreeMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fpn/fpn.safetensors");
    load(&p).unwrap().tensors
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

#[test]
fn fpn_matches_torchvision() {
    let fx = fixture();
    let fpn = Fpn::new("fpn", &[8, 16, 32, 64], 16, &mut Rng::new(0)).unwrap();
    let params = fpn.params();
    assert_eq!(params.len(), 16);
    for p in &params {
        let want = &fx[p.name()];
        assert_eq!(p.dims(), want.dims(), "{}", p.name());
        p.set(want.clone()).unwrap();
    }
    for case in ["even", "odd"] {
        let xs: Vec<Tensor> = (0..4)
            .map(|i| {
                fx[&format!("{case}.x{i}")]
                    .to_dtype(DType::F64)
                    .unwrap()
                    .requires_grad_()
                    .unwrap()
            })
            .collect();
        let outs = fpn.forward(&xs).unwrap();
        assert_eq!(outs.len(), 5);
        let mut loss: Option<Tensor> = None;
        for (i, o) in outs.iter().enumerate() {
            let want = &fx[&format!("{case}.out{i}")];
            assert_eq!(o.dims(), want.dims(), "{case} level {i}");
            let e = rel_err(&o.to_vec_f64().unwrap(), &want.to_vec_f64().unwrap());
            assert!(e < 1e-6, "{case} level {i}: rel err {e}");
            let r = fx[&format!("{case}.r{i}")].to_dtype(DType::F64).unwrap();
            let term = o.mul(&r).unwrap().sum_all().unwrap();
            loss = Some(match loss {
                Some(l) => l.add(&term).unwrap(),
                None => term,
            });
        }
        loss.unwrap().backward().unwrap();
        for (i, x) in xs.iter().enumerate() {
            let g = x.grad().expect("input grad");
            let e = rel_err(
                &g.to_vec_f64().unwrap(),
                &fx[&format!("{case}.grad_x{i}")].to_vec_f64().unwrap(),
            );
            assert!(e < 1e-6, "{case} grad of C{}: rel err {e}", i + 2);
        }
    }
    let err = fpn
        .forward(&[Tensor::zeros(&[1, 8, 4, 4], DType::F32)])
        .unwrap_err();
    assert!(
        err.to_string().contains("expected 4 backbone maps"),
        "{err}"
    );
}

#[test]
fn resnet_stage_outputs_are_c2_to_c5() {
    let mut c = ResNetConfig::resnet18(10).with_widths([4, 8, 16, 32]);
    c.num_classes = None;
    let net = ResNet::new("backbone.body", c, &mut Rng::new(1)).unwrap();
    let x = Tensor::randn(&[1, 3, 64, 96], 0.0, 1.0, DType::F32, &mut Rng::new(2));
    let cs = net.stage_outputs(&x).unwrap();
    let dims: Vec<Vec<usize>> = cs.iter().map(|t| t.dims().to_vec()).collect();
    assert_eq!(
        dims,
        [
            vec![1, 4, 16, 24],
            vec![1, 8, 8, 12],
            vec![1, 16, 4, 6],
            vec![1, 32, 2, 3]
        ]
    );
    // the last stage's output pooled is exactly the encoder's features
    let f = net.features(&x).unwrap().to_vec_f64().unwrap();
    let pooled = cs[3]
        .adaptive_avg_pool2d([1, 1])
        .unwrap()
        .flatten(1)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    assert_eq!(f, pooled);
    assert!(net.params()[0].name().starts_with("backbone.body.conv1"));
}

//! Pooled encoder features of a whole dataset: the input of every transfer
//! and analysis step.

use crate::data::Loader;
use crate::eval::Features;
use crate::SupervisedNet;
use engine::amp::Precision;
use engine::nn::Module;
use engine::{DType, Device, Error, Result};

/// Runs `net`'s encoder in eval mode over one pass of `loader` (which should
/// not shuffle or augment) and returns the globally pooled features with the
/// loader's labels. Computes on the net's device in `precision` (batches are
/// uploaded, features come back to the host), returns f32.
pub fn extract_features(
    net: &SupervisedNet,
    loader: &Loader,
    precision: Precision,
) -> Result<Features> {
    extract(net, loader, precision, false)
}

/// As [`extract_features`], but the features after the projector (the
/// encoder's pooled features when the net has none): the transfer features
/// of an SL network whose encoder ends in the projector's MLP, the
/// matched-parameter control of `experiment --ablation`.
pub fn extract_projected(
    net: &SupervisedNet,
    loader: &Loader,
    precision: Precision,
) -> Result<Features> {
    extract(net, loader, precision, true)
}

fn extract(
    net: &SupervisedNet,
    loader: &Loader,
    precision: Precision,
    projected: bool,
) -> Result<Features> {
    let _ng = engine::no_grad();
    net.set_training(false);
    let projector = net.projector.as_ref().filter(|_| projected);
    let d = projector.map_or(net.feature_dim(), |p| p.config.out_dim(net.feature_dim()));
    let device = net.device();
    let mut x = Vec::new();
    let mut labels = Vec::new();
    let result = (|| {
        for batch in loader.epoch(0, 0) {
            let batch = batch?;
            let mut f = net.features(
                &batch
                    .images
                    .to_device(device)?
                    .to_dtype(precision.compute_dtype())?,
            )?;
            if let Some(p) = projector {
                f = p.forward(&f)?;
            }
            let f = f.to_dtype(DType::F32)?.to_device(Device::Cpu)?;
            x.extend_from_slice(&f.to_vec::<f32>()?);
            labels.extend(
                batch
                    .labels
                    .to_vec::<i64>()?
                    .into_iter()
                    .map(|l| l as usize),
            );
        }
        Ok(())
    })();
    net.set_training(true);
    result?;
    if labels.is_empty() {
        return Err(Error::arg(
            "extract_features",
            "the dataset yielded no images",
        ));
    }
    Ok(Features {
        n: labels.len(),
        d,
        x,
        labels,
        classes: loader.dataset().classes().to_vec(),
    })
}

//! Cross-entropy's GPU parity cases: small and ImageNet-sized class counts,
//! label smoothing, ignored rows. Softmax, BCE-with-logits and smooth-L1
//! have no GPU path.

use crate::parity::{autograd_with, Case, DTYPES};
use crate::{Rng, Tensor};

pub fn cases(rng: &mut Rng, out: &mut Vec<Case>) {
    // (N, classes, label smoothing, rows with the ignore index)
    let ce: [(usize, usize, f64, usize); 4] = [
        (8, 10, 0.0, 0),
        (64, 1000, 0.1, 0),
        (13, 7, 0.0, 3),
        (256, 1000, 0.0, 0),
    ];
    for dtype in DTYPES {
        for (n, k, ls, ignored) in ce {
            let draw = move |rng: &mut Rng| {
                let logits = Tensor::randn(&[n, k], 0.0, 2.0, dtype, rng);
                let mut tg: Vec<i64> = (0..n).map(|_| rng.below(k) as i64).collect();
                for t in tg.iter_mut().take(ignored) {
                    *t = -100;
                }
                rng.shuffle(&mut tg);
                let targets = Tensor::from_vec(tg, &[n]).expect("[N] targets");
                vec![("logits", logits, true), ("targets", targets, false)]
            };
            let ignore = (ignored > 0).then_some(-100);
            let label = format!(
                "[{n},{k}] ls{ls}{}",
                if ignored > 0 {
                    format!(" ignore {ignored}")
                } else {
                    String::new()
                }
            );
            let f = move |t: &[Tensor]| {
                Ok(vec![(
                    "loss".into(),
                    t[0].cross_entropy(&t[1], ls, ignore)?,
                )])
            };
            out.push(autograd_with(
                "cross_entropy",
                dtype,
                label,
                rng.next_u64(),
                draw,
                f,
            ));
        }
    }
}

//! Per-element closeness, as `torch.testing.assert_close`: element i passes
//! when `|actual[i] - expected[i]| <= atol + rtol * |expected[i]|`. NaN in
//! either side fails (unless [`Tol::equal_nan`] and both are NaN), and an
//! infinity passes only against the same infinity, so a result that is
//! all NaN can never pass. Lengths (and, for tensors, shapes) must match.

use engine::{DType, Tensor};
use std::fmt;

/// The tolerances of one comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
    /// NaN against NaN at the same index passes.
    pub equal_nan: bool,
}

impl Tol {
    /// `atol + rtol * |expected|`, NaN never equal.
    pub const fn new(atol: f64, rtol: f64) -> Tol {
        Tol {
            atol,
            rtol,
            equal_nan: false,
        }
    }

    /// The same bounds with NaN == NaN.
    pub const fn equal_nan(self) -> Tol {
        Tol {
            equal_nan: true,
            ..self
        }
    }

    /// The allowed |actual - expected| at `expected`.
    pub fn bound(&self, expected: f64) -> f64 {
        self.atol + self.rtol * expected.abs()
    }

    /// |actual - expected| / bound: 0 for equal values (infinities included),
    /// at most 1 when the pair passes, infinite for a non-finite mismatch.
    pub fn ratio(&self, actual: f64, expected: f64) -> f64 {
        if actual == expected || (self.equal_nan && actual.is_nan() && expected.is_nan()) {
            return 0.0;
        }
        if !actual.is_finite() || !expected.is_finite() {
            return f64::INFINITY;
        }
        let (diff, bound) = ((actual - expected).abs(), self.bound(expected));
        if bound > 0.0 {
            diff / bound
        } else {
            f64::INFINITY
        }
    }
}

/// The unit roundoff of a float dtype (half its machine epsilon).
pub fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON / 2.0,
        DType::F32 => f32::EPSILON as f64 / 2.0,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        other => panic!("no unit roundoff for {other:?}"),
    }
}

/// Bounds for a sum of `terms` products of O(1) values whose inputs were
/// rounded to `dtype` (accumulated in f32 or better), then the result
/// rounded to `dtype`, against the exact value: atol 6 sqrt(terms) u (about
/// seven standard deviations of the summed input rounding), rtol 2u (the
/// output rounding).
pub fn rounding_tol(dtype: DType, terms: usize) -> Tol {
    let u = unit_roundoff(dtype);
    Tol::new(6.0 * (terms as f64).sqrt() * u, 2.0 * u)
}

/// The element nearest to (or farthest beyond) its bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Worst {
    pub index: usize,
    pub actual: f64,
    pub expected: f64,
    pub bound: f64,
    /// |actual - expected| / bound (see [`Tol::ratio`]).
    pub ratio: f64,
}

/// The outcome of a comparison: passed, or why not.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// What was compared, for messages.
    pub what: String,
    pub tol: Tol,
    /// A length or shape mismatch; no element was compared.
    pub mismatch: Option<String>,
    /// How many elements were compared.
    pub len: usize,
    /// How many of them failed.
    pub failed: usize,
    /// The element with the largest ratio (the first of equals); `None`
    /// when nothing was compared.
    pub worst: Option<Worst>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.mismatch.is_none() && self.failed == 0
    }

    /// The worst |actual - expected| / bound (0 when nothing was compared).
    pub fn ratio(&self) -> f64 {
        self.worst.map_or(0.0, |w| w.ratio)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Tol { atol, rtol, .. } = self.tol;
        if let Some(m) = &self.mismatch {
            return write!(f, "{}: {m}", self.what);
        }
        let verdict = if self.passed() {
            format!("all {} elements", self.len)
        } else {
            format!("{} of {} elements not", self.failed, self.len)
        };
        write!(
            f,
            "{}: {verdict} within {atol:.1e} + {rtol:.1e} * |expected|",
            self.what
        )?;
        if let Some(w) = self.worst {
            write!(
                f,
                "; worst [{}]: actual {:e}, expected {:e}, |diff| {:.3e} vs bound {:.3e}",
                w.index,
                w.actual,
                w.expected,
                (w.actual - w.expected).abs(),
                w.bound
            )?;
        }
        Ok(())
    }
}

/// Compares element by element; `Ok` when every element passes. Both
/// variants carry the report (the `Ok` one for logging the worst error).
pub fn check_close<A, B>(
    what: &str,
    actual: &[A],
    expected: &[B],
    tol: Tol,
) -> Result<Report, Report>
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    let mut report = Report {
        what: what.to_string(),
        tol,
        mismatch: None,
        len: 0,
        failed: 0,
        worst: None,
    };
    if actual.len() != expected.len() {
        report.mismatch = Some(format!(
            "{} elements, expected {}",
            actual.len(),
            expected.len()
        ));
        return Err(report);
    }
    report.len = actual.len();
    for (index, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (actual, expected): (f64, f64) = (a.into(), e.into());
        let ratio = tol.ratio(actual, expected);
        if ratio > 1.0 {
            report.failed += 1;
        }
        if report.worst.is_none_or(|w| ratio > w.ratio) {
            report.worst = Some(Worst {
                index,
                actual,
                expected,
                bound: tol.bound(expected),
                ratio,
            });
        }
    }
    if report.passed() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Panics with the report unless every element passes; returns the report.
pub fn assert_close<A, B>(what: &str, actual: &[A], expected: &[B], atol: f64, rtol: f64) -> Report
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    assert_close_with(what, actual, expected, Tol::new(atol, rtol))
}

/// [`assert_close`] with a [`Tol`].
pub fn assert_close_with<A, B>(what: &str, actual: &[A], expected: &[B], tol: Tol) -> Report
where
    A: Copy + Into<f64>,
    B: Copy + Into<f64>,
{
    check_close(what, actual, expected, tol).unwrap_or_else(|r| panic!("{r}"))
}

/// [`check_close`] on two tensors of the same shape (any float dtype).
pub fn check_tensor_close(
    what: &str,
    actual: &Tensor,
    expected: &Tensor,
    tol: Tol,
) -> Result<Report, Report> {
    if actual.dims() != expected.dims() {
        return Err(Report {
            what: what.to_string(),
            tol,
            mismatch: Some(format!(
                "shape {:?}, expected {:?}",
                actual.dims(),
                expected.dims()
            )),
            len: 0,
            failed: 0,
            worst: None,
        });
    }
    check_close(
        what,
        &actual.to_vec_f64().unwrap(),
        &expected.to_vec_f64().unwrap(),
        tol,
    )
}

/// [`assert_close`] on two tensors of the same shape.
pub fn assert_tensor_close(
    what: &str,
    actual: &Tensor,
    expected: &Tensor,
    atol: f64,
    rtol: f64,
) -> Report {
    check_tensor_close(what, actual, expected, Tol::new(atol, rtol))
        .unwrap_or_else(|r| panic!("{r}"))
}

/// Asserts that `param` has a gradient close to `expected` (which must not
/// be all zero, so the comparison means something); `what` names it in
/// messages. Returns the report.
pub fn assert_grad_close(
    what: &str,
    param: &engine::nn::Param,
    expected: &[f64],
    atol: f64,
    rtol: f64,
) -> Report {
    let got = param
        .grad()
        .expect("every head parameter gets a gradient")
        .to_vec_f64()
        .unwrap();
    assert!(expected.iter().any(|&v| v != 0.0), "{what} is all zero");
    assert_close(what, &got, expected, atol, rtol)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Tol = Tol::new(1e-6, 1e-3);

    #[test]
    fn bound_is_atol_plus_rtol_times_expected() {
        // bound at 100 is 1e-6 + 0.1
        assert!(check_close("x", &[100.1], &[100.0], T).is_ok());
        assert!(check_close("x", &[100.2], &[100.0], T).is_err());
        // relative to the expected side, not the actual one
        assert!(check_close("x", &[0.0], &[1e-3], T).is_err());
        assert!(check_close("x", &[1.5e-6], &[0.0], T).is_err());
        assert!(check_close("x", &[0.5e-6], &[0.0], T).is_ok());
        // f32 and f64 mix
        assert!(check_close("x", &[1.0f32, 2.0], &[1.0f64, 2.0], T).is_ok());
    }

    #[test]
    fn nan_fails() {
        let nan = [f64::NAN; 4];
        let r = check_close("all nan", &nan, &[1.0, 2.0, 3.0, 4.0], T).unwrap_err();
        assert_eq!(r.failed, 4);
        assert_eq!(r.worst.unwrap().index, 0);
        assert!(check_close("x", &[1.0], &[f64::NAN], T).is_err());
        assert!(check_close("x", &[f64::NAN], &[f64::NAN], T).is_err());
        assert!(check_close("x", &[f64::NAN], &[f64::NAN], T.equal_nan()).is_ok());
        assert!(check_close("x", &[f64::NAN], &[1.0], T.equal_nan()).is_err());
    }

    #[test]
    fn infinities_must_match() {
        let inf = f64::INFINITY;
        assert!(check_close("x", &[inf, -inf], &[inf, -inf], T).is_ok());
        assert!(check_close("x", &[inf], &[-inf], T).is_err());
        assert!(check_close("x", &[inf], &[1e300], T).is_err());
        assert!(check_close("x", &[1.0], &[inf], T).is_err());
        // zero tolerance still passes exact equality
        assert!(check_close("x", &[inf, 2.0], &[inf, 2.0], Tol::new(0.0, 0.0)).is_ok());
        assert!(check_close("x", &[2.0], &[2.0 + 1e-15], Tol::new(0.0, 0.0)).is_err());
    }

    #[test]
    fn lengths_and_shapes_must_match() {
        let r = check_close("len", &[1.0, 2.0], &[1.0], T).unwrap_err();
        assert_eq!(r.mismatch.as_deref(), Some("2 elements, expected 1"));
        assert!(check_close::<f64, f64>("empty", &[], &[], T).is_ok());
        let a = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let b = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0], &[4]).unwrap();
        assert!(check_tensor_close("shape", &a, &b, T).is_err());
        assert!(check_tensor_close("same", &a, &a, T).is_ok());
    }

    #[test]
    fn the_message_names_the_worst_element() {
        let r = check_close("logits", &[1.0, 5.0, 2.5], &[1.0, 2.0, 2.0], T).unwrap_err();
        assert_eq!(r.failed, 2);
        let w = r.worst.unwrap();
        assert_eq!((w.index, w.actual, w.expected), (1, 5.0, 2.0));
        let msg = r.to_string();
        for part in [
            "logits",
            "2 of 3",
            "[1]",
            "actual 5e0",
            "expected 2e0",
            "bound",
        ] {
            assert!(msg.contains(part), "{part} not in {msg}");
        }
        // a non-finite mismatch is worst, wherever it is
        let r = check_close("x", &[1.5, f64::NAN], &[1.0, 1.0], T).unwrap_err();
        assert_eq!(r.worst.unwrap().index, 1);
    }

    #[test]
    #[should_panic(expected = "probe: 1 of 2 elements not within")]
    fn assert_close_panics() {
        assert_close("probe", &[1.0, f64::NAN], &[1.0, 1.0], 1.0, 1.0);
    }

    #[test]
    fn passing_report_keeps_the_worst_ratio() {
        let r = check_close("x", &[1.0005, 2.0], &[1.0, 2.0], T).unwrap();
        assert!(r.passed() && r.ratio() > 0.4 && r.ratio() < 0.6, "{r}");
        assert!(r.to_string().contains("all 2 elements within"));
    }
}

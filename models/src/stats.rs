//! Statistics of paired comparisons over replicates (the study's
//! SL-MLP − SL differences): Student's t distribution (two-sided p-values
//! and quantiles), the paired t summary with its 95% interval and
//! standardised effect size, and Holm's step-down correction for a family
//! of tests.

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error ~1e-15).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection: Γ(x) Γ(1-x) = π / sin(πx)
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |s, (i, c)| s + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        for num in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + num * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + num / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b), x in [0, 1].
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // the fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// P(|T| >= |t|) for Student's t with `dof` degrees of freedom.
pub fn t_two_sided_p(t: f64, dof: f64) -> f64 {
    if t.is_nan() || dof <= 0.0 {
        return f64::NAN;
    }
    incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))
}

/// The two-sided `level` quantile of Student's t: the q with
/// P(|T| <= q) = level (level 0.95 gives 4.303 for 2 dof).
pub fn t_quantile(level: f64, dof: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1e6);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_two_sided_p(mid, dof) > 1.0 - level {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// A paired comparison over n replicates: the differences' mean, sample
/// std, 95% interval of the mean, t statistic and two-sided p-value
/// (n - 1 dof), the standardised effect size d_z = mean / std, and how many
/// differences are positive.
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    pub ci95: (f64, f64),
    pub t: f64,
    pub p: f64,
    pub d_z: f64,
    pub positive: usize,
}

/// The paired t-test of `diffs` (one value per replicate). With fewer than
/// two values, or zero spread, the interval, t, p and d_z are NaN.
pub fn paired(diffs: &[f64]) -> Paired {
    let (mean, std) = crate::report::mean_std(diffs);
    let n = diffs.len();
    let positive = diffs.iter().filter(|&&d| d > 0.0).count();
    if n < 2 || std == 0.0 {
        return Paired {
            n,
            mean,
            std,
            ci95: (f64::NAN, f64::NAN),
            t: f64::NAN,
            p: f64::NAN,
            d_z: f64::NAN,
            positive,
        };
    }
    let se = std / (n as f64).sqrt();
    let dof = (n - 1) as f64;
    let half = t_quantile(0.95, dof) * se;
    let t = mean / se;
    Paired {
        n,
        mean,
        std,
        ci95: (mean - half, mean + half),
        t,
        p: t_two_sided_p(t, dof),
        d_z: mean / std,
        positive,
    }
}

/// Holm's step-down adjusted p-values (same order as `p`): the i-th
/// smallest is multiplied by (m - i), made monotone, capped at 1. A NaN
/// p-value stays NaN and does not count in m.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let m = order.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rtol: f64) -> bool {
        (a - b).abs() <= 1e-12 + rtol * b.abs()
    }

    #[test]
    fn t_distribution_matches_scipy() {
        // scipy.stats: 2 * t.sf(t, dof) and t.ppf(0.975, dof)
        for (t, dof, p) in [
            (2.0, 5.0, 0.10193947882985835),
            (4.303, 2.0, 0.0499925249852145),
            (0.5, 29.0, 0.6208480841937812),
            (10.0, 9.0, 3.578237431924736e-06),
            (1.0, 1.0, 0.5000000000000001),
        ] {
            let got = t_two_sided_p(t, dof);
            assert!(close(got, p, 1e-9), "t {t} dof {dof}: {got} vs {p}");
        }
        for (dof, q) in [
            (1.0, 12.706204736174694),
            (2.0, 4.302652729749462),
            (9.0, 2.262157162798205),
            (29.0, 2.045229642132703),
            (100.0, 1.9839715185235518),
        ] {
            let got = t_quantile(0.95, dof);
            assert!(close(got, q, 1e-9), "dof {dof}: {got} vs {q}");
        }
    }

    #[test]
    fn paired_summary() {
        let p = paired(&[1.0, 2.0, 3.0]);
        assert_eq!((p.n, p.positive), (3, 3));
        assert!(close(p.mean, 2.0, 1e-15) && close(p.std, 1.0, 1e-15));
        assert!(close(p.t, 2.0 * 3f64.sqrt(), 1e-12));
        // scipy.stats.ttest_1samp([1, 2, 3], 0).pvalue
        assert!(close(p.p, 0.07417990022744862, 1e-9), "{}", p.p);
        assert!(close(p.ci95.0, 2.0 - 4.302652729749462 / 3f64.sqrt(), 1e-9));
        assert!(paired(&[1.0]).p.is_nan() && paired(&[1.0, 1.0]).p.is_nan());
    }

    #[test]
    fn holm_adjustment() {
        // statsmodels multipletests(method="holm") on these p-values
        let adj = holm(&[0.01, 0.04, 0.03, 0.005, f64::NAN]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, w) in adj.iter().zip(want) {
            assert!(close(*a, w, 1e-12), "{adj:?}");
        }
        assert!(adj[4].is_nan());
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
    }
}

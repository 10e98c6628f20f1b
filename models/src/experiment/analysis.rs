//! What `experiment` reports: the measures of each run, the per-run records
//! `--resume` reads back, and the paired comparisons over replicates with
//! their tables.

use super::{ExperimentArgs, Plan, Variant, PRIMARY};
use crate::eval::plot::{line_charts_png, Chart, Series};
use crate::eval::FeatureMetrics;
use crate::report::{mean_std, write_json};
use crate::stats::{holm, paired, Paired};
use engine::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// How a measure enters the analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The one measure declared before the runs; tested alone.
    Primary,
    /// Tested, with Holm's correction over all secondary measures.
    Secondary,
    /// Reported, not tested (feature norms, dead dimensions).
    Descriptive,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Primary => "primary",
            Kind::Secondary => "secondary",
            Kind::Descriptive => "descriptive",
        }
    }
    fn parse(s: &str) -> Option<Kind> {
        [Kind::Primary, Kind::Secondary, Kind::Descriptive]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// One number a run produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Measure {
    pub key: String,
    pub label: String,
    pub value: f64,
    pub kind: Kind,
}

impl Measure {
    fn new(key: &str, label: &str, value: f64, kind: Kind) -> Measure {
        Measure {
            key: key.into(),
            label: label.into(),
            value,
            kind,
        }
    }
    pub fn primary(key: &str, label: &str, value: f64) -> Measure {
        Measure::new(key, label, value, Kind::Primary)
    }
    pub fn secondary(key: &str, label: &str, value: f64) -> Measure {
        Measure::new(key, label, value, Kind::Secondary)
    }
    pub fn descriptive(key: &str, label: &str, value: f64) -> Measure {
        Measure::new(key, label, value, Kind::Descriptive)
    }
}

/// The value of `key` in `m` (NaN when absent).
pub fn value(m: &[Measure], key: &str) -> f64 {
    m.iter()
        .find(|x| x.key == key)
        .map_or(f64::NAN, |x| x.value)
}

/// The feature statistics of one test set as measures: the discriminative
/// ratio and its two parts (inter-class distance over intra-class
/// variation) and redundancy are tested; the dead dimensions and the mean
/// norm are descriptive.
pub fn feature_measures(set: &str, label: &str, x: &FeatureMetrics) -> Vec<Measure> {
    vec![
        Measure::secondary(
            &format!("{set}.phi"),
            &format!("{label}: discriminative ratio"),
            x.discriminative_ratio,
        ),
        Measure::secondary(
            &format!("{set}.inter"),
            &format!("{label}: inter-class distance"),
            x.inter_class_distance,
        ),
        Measure::secondary(
            &format!("{set}.intra"),
            &format!("{label}: intra-class variation"),
            x.intra_class_variation,
        ),
        Measure::secondary(
            &format!("{set}.redundancy"),
            &format!("{label}: feature redundancy"),
            x.redundancy,
        ),
        Measure::descriptive(
            &format!("{set}.dead_dims"),
            &format!("{label}: dead or constant dims (of {})", x.d),
            x.dead_dims as f64,
        ),
        Measure::descriptive(
            &format!("{set}.norm"),
            &format!("{label}: mean feature norm"),
            x.mean_norm,
        ),
    ]
}

/// The measures of one (split, seed, variant, epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub split: usize,
    pub seed: u64,
    pub variant: String,
    pub epoch: usize,
    pub measures: Vec<Measure>,
    /// Pretraining time and the probes' chosen hyperparameters.
    pub details: Value,
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "split": self.split, "seed": self.seed, "variant": self.variant, "epoch": self.epoch,
            "measures": self.measures.iter().map(|m| json!({
                "key": m.key, "label": m.label, "value": m.value, "kind": m.kind.name(),
            })).collect::<Vec<_>>(),
            "details": self.details,
        })
    }

    fn from_json(v: &Value) -> Option<Run> {
        let measures = v["measures"]
            .as_array()?
            .iter()
            .map(|m| {
                Some(Measure::new(
                    m["key"].as_str()?,
                    m["label"].as_str()?,
                    m["value"].as_f64().unwrap_or(f64::NAN),
                    Kind::parse(m["kind"].as_str()?)?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Run {
            split: v["split"].as_u64()? as usize,
            seed: v["seed"].as_u64()?,
            variant: v["variant"].as_str()?.into(),
            epoch: v["epoch"].as_u64()? as usize,
            measures,
            details: v["details"].clone(),
        })
    }

    /// Writes the runs of one variant of a replicate with the settings that
    /// produced them.
    pub fn write_all(path: &Path, settings: &Value, runs: &[Run]) -> Result<()> {
        let runs: Vec<Value> = runs.iter().map(Run::to_json).collect();
        write_json(path, &json!({"settings": settings, "runs": runs}))
    }

    /// The runs recorded at `path` if it exists and was written with
    /// `settings`; `None` means they must be run.
    pub fn read_all(path: &Path, settings: &Value) -> Result<Option<Vec<Run>>> {
        Ok(crate::report::read_record(path, settings)?.and_then(|v| {
            v["runs"]
                .as_array()
                .and_then(|r| r.iter().map(Run::from_json).collect::<Option<Vec<_>>>())
        }))
    }
}

/// A results file and its markdown.
pub struct Report {
    pub json: Value,
    pub markdown: String,
}

/// One measure compared between variants `a` and `b` over the replicates
/// both have (paired by split, seed and epoch).
struct Comparison {
    key: String,
    label: String,
    kind: Kind,
    a: Vec<f64>,
    b: Vec<f64>,
    diff: Paired,
    /// Holm-adjusted p over the comparison's secondary measures.
    p_holm: f64,
}

/// Every measure of `b - a` at `epoch` (`None`: each run's only epoch).
fn compare(runs: &[Run], a: &str, b: &str, epoch: Option<usize>) -> Vec<Comparison> {
    let pick = |v: &str| -> BTreeMap<(usize, u64, usize), &Run> {
        runs.iter()
            .filter(|r| r.variant == v && epoch.is_none_or(|e| r.epoch == e))
            .map(|r| ((r.split, r.seed, r.epoch), r))
            .collect()
    };
    let (ra, rb) = (pick(a), pick(b));
    let pairs: Vec<(&Run, &Run)> = ra
        .iter()
        .filter_map(|(k, x)| rb.get(k).map(|y| (*x, *y)))
        .collect();
    let Some((first, _)) = pairs.first() else {
        return Vec::new();
    };
    let mut out: Vec<Comparison> = first
        .measures
        .iter()
        .map(|m| {
            let col = |r: &Run| value(&r.measures, &m.key);
            let va: Vec<f64> = pairs.iter().map(|(x, _)| col(x)).collect();
            let vb: Vec<f64> = pairs.iter().map(|(_, y)| col(y)).collect();
            let d: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| y - x).collect();
            Comparison {
                key: m.key.clone(),
                label: m.label.clone(),
                kind: m.kind,
                a: va,
                b: vb,
                diff: paired(&d),
                p_holm: f64::NAN,
            }
        })
        .collect();
    let secondary: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].kind == Kind::Secondary)
        .collect();
    let adjusted = holm(&secondary.iter().map(|&i| out[i].diff.p).collect::<Vec<_>>());
    for (&i, p) in secondary.iter().zip(adjusted) {
        out[i].p_holm = p;
    }
    out
}

fn stats_json(v: &[f64]) -> Value {
    let (mean, std) = mean_std(v);
    json!({"mean": mean, "std": std, "values": v})
}

fn comparison_json(c: &Comparison) -> Value {
    let d = &c.diff;
    json!({
        "label": c.label, "kind": c.kind.name(), "a": stats_json(&c.a), "b": stats_json(&c.b),
        "difference": {
            "n": d.n, "mean": d.mean, "std": d.std, "ci95": [d.ci95.0, d.ci95.1], "t": d.t,
            "p": d.p, "p_holm": c.p_holm, "d_z": d.d_z, "positive": d.positive,
        },
    })
}

fn comparisons_json(cs: &[Comparison]) -> Value {
    cs.iter()
        .map(|c| (c.key.clone(), comparison_json(c)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn ms(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    if v.len() > 1 {
        format!("{m:.3} ± {s:.3}")
    } else {
        format!("{m:.3}")
    }
}

fn pv(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn ci(d: &Paired) -> String {
    if d.ci95.0.is_nan() {
        "–".into()
    } else {
        format!("{:+.3} .. {:+.3}", d.ci95.0, d.ci95.1)
    }
}

/// The configuration and provenance every results file starts with.
fn header_json(
    a: &ExperimentArgs,
    plan: &Plan,
    mode: &str,
    variants: &[Variant],
    seconds: f64,
) -> Value {
    json!({
        "provenance": crate::run_dir::provenance(),
        "mode": mode,
        "config": {
            "arch": a.arch, "width": a.width, "splits": plan.splits, "seeds": plan.seeds,
            "first_seed": a.compute.seed, "epochs": plan.epochs, "per_class": plan.per_class,
            "transfer_per_class": plan.transfer_per_class, "eval_per_class": plan.eval_per_class,
            "batch": a.batch, "lr": a.lr, "k": a.k, "quick": a.quick,
            "precision": format!("{:?}", a.compute.precision), "device": a.compute.device.to_string(),
        },
        "primary": PRIMARY,
        "variants": variants.iter().map(|v| json!({
            "key": v.key, "label": v.label, "projector": v.projector, "projected": v.projected,
        })).collect::<Vec<_>>(),
        "seconds": seconds,
    })
}

/// `p`: the provenance `header_json` recorded.
fn header_markdown(
    title: &str,
    a: &ExperimentArgs,
    plan: &Plan,
    seconds: f64,
    p: &Value,
) -> String {
    format!(
        "# {title}\n\n{} width {}, {} epoch(s) on {} Fashion-MNIST images per seen class; split(s) {}; seeds {}..{}; transfer sets {} per class, test sets {} per class; {}. {:.0} min.\n\nCommand: `{}`; commit {}; {} ({} logical cores); {}.\n\n",
        a.arch,
        a.width,
        plan.epochs,
        plan.per_class.map_or("all".into(), |p| p.to_string()),
        plan.splits.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", "),
        a.compute.seed,
        a.compute.seed + plan.seeds as u64 - 1,
        plan.transfer_per_class.map_or("all".into(), |p| p.to_string()),
        plan.eval_per_class.map_or("all".into(), |p| p.to_string()),
        format!("{:?}", a.compute.precision).to_lowercase(),
        seconds / 60.0,
        p["argv"].as_array().map_or(String::new(), |v| v
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(" ")),
        p["commit"].as_str().unwrap_or("unknown"),
        p["machine"]["cpu"].as_str().unwrap_or("unknown CPU"),
        p["machine"]["logical_cores"],
        p["utc"].as_str().unwrap_or(""),
    )
}

/// The report of `mode` ("results", "ablation" or "curve").
pub fn report(
    a: &ExperimentArgs,
    plan: &Plan,
    mode: &str,
    variants: &[Variant],
    runs: &[Run],
    seconds: f64,
) -> Result<Report> {
    let mut json = header_json(a, plan, mode, variants, seconds);
    json["runs"] = runs.iter().map(Run::to_json).collect::<Vec<_>>().into();
    let markdown = match mode {
        "ablation" => ablation(a, plan, variants, runs, seconds, &mut json),
        "curve" => curve(a, plan, runs, seconds, &mut json)?,
        _ => study(a, plan, runs, seconds, &mut json),
    };
    Ok(Report { json, markdown })
}

fn study(a: &ExperimentArgs, plan: &Plan, runs: &[Run], seconds: f64, json: &mut Value) -> String {
    let cs = compare(runs, "sl", "sl-mlp", None);
    json["comparison"] = comparisons_json(&cs);
    let mut md = header_markdown(
        "SL vs SL-MLP on the built-in benchmark",
        a,
        plan,
        seconds,
        &json["provenance"],
    );
    if let Some(p) = cs.iter().find(|c| c.kind == Kind::Primary) {
        let d = &p.diff;
        md += &format!(
            "**Primary measure** (declared before the runs): {}. SL {}, SL-MLP {}; SL-MLP − SL = **{:+.3}** points, 95% interval {}, t = {:.2}, p = {}, d_z = {:.2}; SL-MLP ahead in {} of {} replicates.\n\n",
            p.label, ms(&p.a), ms(&p.b), d.mean, ci(d), d.t, pv(d.p), d.d_z, d.positive, d.n
        );
    }
    md += "| quantity | SL | SL-MLP | SL-MLP − SL | 95% interval | d_z | p | p (Holm) | SL-MLP ahead |\n|---|---|---|---|---|---|---|---|---|\n";
    for c in &cs {
        let d = &c.diff;
        md += &format!(
            "| {}{} | {} | {} | {:+.3} | {} | {} | {} | {} | {}/{} |\n",
            c.label,
            if c.kind == Kind::Primary {
                " (primary)"
            } else {
                ""
            },
            ms(&c.a),
            ms(&c.b),
            d.mean,
            ci(d),
            if d.d_z.is_nan() {
                "–".into()
            } else {
                format!("{:+.2}", d.d_z)
            },
            if c.kind == Kind::Descriptive {
                "–".into()
            } else {
                pv(d.p)
            },
            pv(c.p_holm),
            d.positive,
            d.n
        );
    }
    md += "\nMean ± sample std over replicates (split x seed); the difference is paired per replicate (same initial encoder and data order for both methods). p: two-sided paired t-test; p (Holm): adjusted over all secondary quantities; descriptive rows are not tested. d_z: mean difference / its std.\n\n";
    md += "## Primary measure per replicate\n\n| split | seed | SL | SL-MLP | SL-MLP − SL |\n|---|---|---|---|---|\n";
    for r in runs.iter().filter(|r| r.variant == "sl") {
        let other = runs
            .iter()
            .find(|o| o.variant == "sl-mlp" && (o.split, o.seed) == (r.split, r.seed));
        if let Some(o) = other {
            let (x, y) = (value(&r.measures, PRIMARY), value(&o.measures, PRIMARY));
            md += &format!(
                "| {} | {} | {x:.3} | {y:.3} | {:+.3} |\n",
                plan.splits[r.split],
                r.seed,
                y - x
            );
        }
    }
    md
}

fn ablation(
    a: &ExperimentArgs,
    plan: &Plan,
    variants: &[Variant],
    runs: &[Run],
    seconds: f64,
    json: &mut Value,
) -> String {
    let mut md = header_markdown("Projector ablations", a, plan, seconds, &json["provenance"]);
    md += "Each variant against SL, paired per replicate. The p-values of the six comparisons of the primary measure are Holm-adjusted together.\n\n";
    md += "| variant | transfer (%) | − SL | 95% interval | p | p (Holm) | seen test acc (%) | seen φ | seen redundancy | unseen φ | mean distance |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    let mut comps = serde_json::Map::new();
    let mut rows = Vec::new();
    for v in variants {
        let of = |key: &str| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.variant == v.key)
                .map(|r| value(&r.measures, key))
                .collect()
        };
        let distance: Vec<f64> = runs
            .iter()
            .filter(|r| r.variant == v.key)
            .map(|r| {
                let d: Vec<f64> = r
                    .measures
                    .iter()
                    .filter(|m| m.key.ends_with(".distance"))
                    .map(|m| m.value)
                    .collect();
                d.iter().sum::<f64>() / d.len() as f64
            })
            .collect();
        let primary = (v.key != "sl")
            .then(|| compare(runs, "sl", v.key, None))
            .and_then(|cs| {
                comps.insert(v.key.to_string(), comparisons_json(&cs));
                cs.into_iter().find(|c| c.kind == Kind::Primary)
            });
        rows.push((
            v,
            of(PRIMARY),
            primary,
            of("seen_accuracy"),
            of("seen.phi"),
            of("seen.redundancy"),
            of("unseen.phi"),
            distance,
        ));
    }
    let adjusted = holm(
        &rows
            .iter()
            .filter_map(|r| r.2.as_ref().map(|c| c.diff.p))
            .collect::<Vec<_>>(),
    );
    let mut adjusted = adjusted.into_iter();
    let mut holm_json = serde_json::Map::new();
    for (v, t, c, val, phi, red, uphi, dist) in rows {
        let (diff, interval, p, ph) = match &c {
            Some(c) => {
                let ph = adjusted.next().unwrap_or(f64::NAN);
                holm_json.insert(v.key.to_string(), ph.into());
                (
                    format!("{:+.3}", c.diff.mean),
                    ci(&c.diff),
                    pv(c.diff.p),
                    pv(ph),
                )
            }
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
        };
        md += &format!(
            "| {} | {} | {diff} | {interval} | {p} | {ph} | {} | {} | {} | {} | {} |\n",
            v.label,
            ms(&t),
            ms(&val),
            ms(&phi),
            ms(&red),
            ms(&uphi),
            ms(&dist)
        );
    }
    json["comparisons"] = comps.into();
    json["primary_p_holm"] = holm_json.into();
    md += "\ntransfer: the primary measure (mean of tuned linear and k-NN accuracy over the unseen classes, MNIST and UCI digits). φ: discriminative ratio (inter-class distance / intra-class variation) of the test features; mean distance: the feature distribution distance from the seen classes, averaged over the three targets. Mean ± sample std over replicates.\n";
    md
}

fn curve(
    a: &ExperimentArgs,
    plan: &Plan,
    runs: &[Run],
    seconds: f64,
    json: &mut Value,
) -> Result<String> {
    let mut md = header_markdown(
        "Training-length curve: SL vs SL-MLP after each epoch",
        a,
        plan,
        seconds,
        &json["provenance"],
    );
    md += "| epoch | SL transfer | SL-MLP transfer | − SL | 95% interval | SL seen φ | SL-MLP seen φ | SL unseen φ | SL-MLP unseen φ | SL distance | SL-MLP distance |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    let keys = [
        (PRIMARY, "transfer (%)"),
        ("seen.phi", "seen classes: discriminative ratio"),
        ("unseen.phi", "unseen classes: discriminative ratio"),
        ("mnist.distance", "MNIST: distance to the seen classes"),
    ];
    let mut series: Vec<[Vec<[f64; 2]>; 2]> = vec![[Vec::new(), Vec::new()]; keys.len()];
    let mut per_epoch = Vec::new();
    for epoch in 1..=plan.epochs {
        let cs = compare(runs, "sl", "sl-mlp", Some(epoch));
        let get = |k: &str| cs.iter().find(|c| c.key == k);
        let (Some(t), Some(phi), Some(uphi), Some(dist)) = (
            get(PRIMARY),
            get("seen.phi"),
            get("unseen.phi"),
            get("mnist.distance"),
        ) else {
            continue;
        };
        md += &format!(
            "| {epoch} | {} | {} | {:+.3} | {} | {} | {} | {} | {} | {} | {} |\n",
            ms(&t.a),
            ms(&t.b),
            t.diff.mean,
            ci(&t.diff),
            ms(&phi.a),
            ms(&phi.b),
            ms(&uphi.a),
            ms(&uphi.b),
            ms(&dist.a),
            ms(&dist.b)
        );
        for (i, (k, _)) in keys.iter().enumerate() {
            if let Some(c) = get(k) {
                series[i][0].push([epoch as f64, mean_std(&c.a).0]);
                series[i][1].push([epoch as f64, mean_std(&c.b).0]);
            }
        }
        per_epoch.push(json!({"epoch": epoch, "comparison": comparisons_json(&cs)}));
    }
    json["epochs"] = per_epoch.into();
    let charts: Vec<Chart> = keys
        .iter()
        .zip(series)
        .map(|((_, title), [sl, mlp])| Chart {
            title: title.to_string(),
            x_label: "epoch".into(),
            series: vec![
                Series {
                    name: "SL".into(),
                    points: sl,
                },
                Series {
                    name: "SL-MLP".into(),
                    points: mlp,
                },
            ],
        })
        .collect();
    let png = a.out.join("curve.png");
    line_charts_png(
        &png,
        &charts,
        &["SL".into(), "SL-MLP".into()],
        "SL vs SL-MLP after each epoch (seed means)",
    )?;
    md += "\nThe models after each epoch of one cosine schedule (not separate shorter schedules); mean ± sample std over seeds; the difference is paired per seed. Plot: curve.png.\n";
    Ok(md)
}

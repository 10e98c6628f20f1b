//! Views of a dataset: some of its classes (relabelled), or a fixed number
//! of samples per class. Nothing is copied; indices map to the parent's.

use super::pipeline::derive_seed;
use super::{Dataset, Image};
use engine::{Error, Result, Rng};
use std::sync::Arc;

pub struct Subset {
    parent: Arc<dyn Dataset>,
    /// Parent index of each sample, in increasing order.
    indices: Vec<usize>,
    /// `relabel[parent_label]` = our label (None: the class is not kept).
    relabel: Vec<Option<usize>>,
    classes: Vec<String>,
}

impl Subset {
    /// The samples of `parent` whose class is listed in `keep`, in the
    /// parent's order, relabelled so that `keep[j]` becomes label `j` (class
    /// names follow). Out-of-range or repeated classes and an empty list are
    /// errors.
    pub fn classes(parent: Arc<dyn Dataset>, keep: &[usize]) -> Result<Subset> {
        let n_classes = parent.classes().len();
        if keep.is_empty() {
            return Err(Error::arg("subset", "no classes to keep"));
        }
        let mut relabel = vec![None; n_classes];
        for (new, &old) in keep.iter().enumerate() {
            if old >= n_classes {
                return Err(Error::arg(
                    "subset",
                    format!("class {old} is out of range: the dataset has {n_classes} classes"),
                ));
            }
            if relabel[old].replace(new).is_some() {
                return Err(Error::arg("subset", format!("class {old} is listed twice")));
            }
        }
        let indices = (0..parent.len())
            .filter(|&i| relabel[parent.label(i)].is_some())
            .collect();
        let classes = keep.iter().map(|&c| parent.classes()[c].clone()).collect();
        Ok(Subset {
            parent,
            indices,
            relabel,
            classes,
        })
    }

    /// At most `n` samples of each class of `parent`, labels unchanged. When a
    /// class has more than `n`, which ones are kept is a uniform random choice
    /// drawn from `Rng::new(derive_seed(&[seed, class]))` (a Fisher-Yates
    /// shuffle of the class's indices, first `n` taken); the kept samples stay
    /// in the parent's order.
    pub fn per_class(parent: Arc<dyn Dataset>, n: usize, seed: u64) -> Subset {
        let n_classes = parent.classes().len();
        let mut by_class = vec![Vec::new(); n_classes];
        for i in 0..parent.len() {
            by_class[parent.label(i)].push(i);
        }
        let mut indices = Vec::new();
        for (class, mut members) in by_class.into_iter().enumerate() {
            if members.len() > n {
                Rng::new(derive_seed(&[seed, class as u64])).shuffle(&mut members);
                members.truncate(n);
            }
            indices.extend(members);
        }
        indices.sort_unstable();
        let classes = parent.classes().to_vec();
        Subset {
            parent,
            indices,
            relabel: (0..n_classes).map(Some).collect(),
            classes,
        }
    }

    /// The parent's samples at `indices` (strictly increasing, in range),
    /// labels unchanged.
    pub fn of_indices(parent: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Subset> {
        if indices.windows(2).any(|w| w[0] >= w[1]) || indices.last() >= Some(&parent.len()) {
            return Err(Error::arg(
                "subset",
                format!(
                    "indices must be strictly increasing and below {}",
                    parent.len()
                ),
            ));
        }
        let n_classes = parent.classes().len();
        let classes = parent.classes().to_vec();
        Ok(Subset {
            parent,
            indices,
            relabel: (0..n_classes).map(Some).collect(),
            classes,
        })
    }

    /// Parent index of each sample.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    pub fn parent(&self) -> &Arc<dyn Dataset> {
        &self.parent
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> usize {
        self.relabel[self.parent.label(self.indices[index])]
            .expect("subset holds only kept classes")
    }
    fn channels(&self) -> usize {
        self.parent.channels()
    }
    fn get(&self, index: usize) -> Result<Image> {
        let parent_index = *self.indices.get(index).ok_or_else(|| {
            Error::arg(
                "subset",
                format!(
                    "index {index} out of range for {} samples",
                    self.indices.len()
                ),
            )
        })?;
        self.parent.get(parent_index)
    }
    fn describe(&self, index: usize) -> String {
        self.parent.describe(self.indices[index])
    }
    fn packed(&self) -> Option<super::Packed<'_>> {
        self.parent.packed()
    }
    fn packed_offset(&self, index: usize) -> Option<usize> {
        self.parent.packed_offset(*self.indices.get(index)?)
    }
}

/// Parses a class list such as `"0-4"`, `"Sandal,sneaker,9"` or
/// `"3, 1"` against `names`: comma-separated items, each a class name
/// (case-insensitive, whole item, so names containing '-' work), an index,
/// or an inclusive index range `a-b` with `a <= b`. Returns the indices in the
/// order given. Empty items, out-of-range indices, repeats and unknown names
/// are errors (the latter listing the valid names).
pub fn parse_classes(spec: &str, names: &[String]) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    let mut push = |c: usize, item: &str| -> Result<()> {
        if c >= names.len() {
            return Err(Error::arg(
                "classes",
                format!("'{item}': class {c} is out of range (0..{})", names.len()),
            ));
        }
        if out.contains(&c) {
            return Err(Error::arg(
                "classes",
                format!("'{item}': class {c} ({}) is listed twice", names[c]),
            ));
        }
        out.push(c);
        Ok(())
    };
    for raw in spec.split(',') {
        let item = raw.trim();
        if item.is_empty() {
            return Err(Error::arg(
                "classes",
                format!("empty item in class list '{spec}'"),
            ));
        }
        if let Some(c) = names.iter().position(|n| n.eq_ignore_ascii_case(item)) {
            push(c, item)?;
        } else if let Ok(c) = item.parse::<usize>() {
            push(c, item)?;
        } else if let Some((a, b)) = item.split_once('-').and_then(|(a, b)| {
            Some((
                a.trim().parse::<usize>().ok()?,
                b.trim().parse::<usize>().ok()?,
            ))
        }) {
            if a > b {
                return Err(Error::arg(
                    "classes",
                    format!("'{item}': empty range ({a} > {b})"),
                ));
            }
            for c in a..=b {
                push(c, item)?;
            }
        } else {
            return Err(Error::arg(
                "classes",
                format!("unknown class '{item}'; valid names: {}", names.join(", ")),
            ));
        }
    }
    Ok(out)
}

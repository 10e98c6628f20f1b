//! Shape, strides and offset of a tensor view over its storage, plus the
//! broadcasting rules (NumPy's: align trailing dims, size 1 stretches).

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Storage index of every element, in row-major order of the view.
    pub fn for_each_index(&self, mut f: impl FnMut(usize)) {
        let n = self.numel();
        if n == 0 {
            return;
        }
        if self.is_contiguous() {
            (self.offset..self.offset + n).for_each(f);
            return;
        }
        let rank = self.shape.len();
        let (inner_len, inner_stride) = (self.shape[rank - 1], self.strides[rank - 1]);
        let outer = &self.shape[..rank - 1];
        let mut idx = vec![0usize; outer.len()];
        loop {
            let base = self.offset
                + idx
                    .iter()
                    .zip(&self.strides)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            for j in 0..inner_len {
                f(base + j * inner_stride);
            }
            // odometer increment over the outer dims
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < outer[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }

    /// This view's strides as seen from `out_shape` after broadcasting
    /// (broadcast dims get stride 0).
    pub fn broadcast_to(&self, out_shape: &[usize]) -> Result<Layout> {
        let lead = out_shape
            .len()
            .checked_sub(self.shape.len())
            .ok_or_else(|| {
                Error::shape(
                    "broadcast",
                    format!("cannot broadcast {:?} to {:?}", self.shape, out_shape),
                )
            })?;
        let mut strides = vec![0; out_shape.len()];
        for (i, (&d, &s)) in self.shape.iter().zip(&self.strides).enumerate() {
            let o = out_shape[lead + i];
            if d == o {
                strides[lead + i] = s;
            } else if d != 1 {
                return Err(Error::shape(
                    "broadcast",
                    format!("cannot broadcast {:?} to {:?}", self.shape, out_shape),
                ));
            }
        }
        Ok(Layout {
            shape: out_shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }
}

pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::shape(
                    op,
                    format!("shapes {a:?} and {b:?} do not broadcast"),
                ))
            }
        };
    }
    Ok(out)
}

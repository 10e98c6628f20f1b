//! Shape, strides and offset of a tensor view over its storage, the
//! broadcasting rules (NumPy's: align trailing dims, size 1 stretches) and
//! the geometry of 2-D convolutions.

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

/// The strides of `shape` under the GPU convention (PyTorch's
/// channels_last): NHWC storage for rank 4, row-major otherwise.
pub fn gpu_strides(shape: &[usize]) -> Vec<usize> {
    if shape.len() == 4 {
        let (c, h, w) = (shape[1], shape[2], shape[3]);
        vec![h * w * c, 1, w * c, c]
    } else {
        contiguous_strides(shape)
    }
}

impl Layout {
    /// Whether the strides are the GPU convention's (`gpu_strides`; size-1
    /// dims may carry any stride).
    pub fn has_gpu_strides(&self) -> bool {
        let want = gpu_strides(&self.shape);
        self.shape
            .iter()
            .zip(self.strides.iter().zip(&want))
            .all(|(&d, (s, w))| d == 1 || s == w)
    }

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

/// The hyper-parameters of a 2-D convolution, as PyTorch names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// The output plane [oh, ow] of input `x` [n, c, h, w] convolved with
    /// `filter` [k, c/groups, r, s], or an error naming `op` on zero
    /// strides/dilations/groups, channels the groups do not divide, a filter
    /// that does not fit, or a kernel larger than the padded input.
    pub fn output_hw(
        &self,
        op: &'static str,
        x: [usize; 4],
        filter: [usize; 4],
    ) -> Result<[usize; 2]> {
        let [_, c, h, w] = x;
        let [k, cg, r, s] = filter;
        if self.groups == 0 || self.stride.contains(&0) || self.dilation.contains(&0) {
            return Err(Error::arg(
                op,
                format!("groups, stride and dilation must be >= 1, got {self:?}"),
            ));
        }
        if c % self.groups != 0 || k % self.groups != 0 {
            return Err(Error::arg(
                op,
                format!(
                    "groups = {} must divide both input channels {c} and output channels {k}",
                    self.groups
                ),
            ));
        }
        if cg != c / self.groups || r == 0 || s == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "weight {filter:?} does not fit input {x:?} with groups = {}: expected [Cout, {}, kh >= 1, kw >= 1]",
                    self.groups,
                    c / self.groups
                ),
            ));
        }
        let [sh, sw] = self.stride;
        let ([ph, pw], [dh, dw]) = (self.padding, self.dilation);
        Ok([
            out_size(op, h, r, sh, ph, dh)?,
            out_size(op, w, s, sw, pw, dw)?,
        ])
    }
}

/// The hyper-parameters of a transposed 2-D convolution, as PyTorch names
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    /// Extra rows/columns added at the bottom/right of the output (each
    /// below the stride or the dilation of its axis).
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Default for ConvTranspose2dParams {
    fn default() -> Self {
        Conv2dParams::default().into()
    }
}

/// No output padding.
impl From<Conv2dParams> for ConvTranspose2dParams {
    fn from(p: Conv2dParams) -> Self {
        ConvTranspose2dParams {
            stride: p.stride,
            padding: p.padding,
            output_padding: [0, 0],
            dilation: p.dilation,
            groups: p.groups,
        }
    }
}

impl ConvTranspose2dParams {
    /// The parameters of the convolution this one is the adjoint of.
    pub fn conv(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }
}

/// `floor((size + 2p - d(k-1) - 1) / s) + 1`, or an error when the (padded)
/// input is smaller than the (dilated) kernel. Convolutions and pooling.
pub(crate) fn out_size(
    op: &'static str,
    size: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
) -> Result<usize> {
    let span = d * (k - 1) + 1;
    if size + 2 * p < span {
        return Err(Error::shape(
            op,
            format!("kernel of extent {span} (size {k}, dilation {d}) is larger than the padded input {size} + 2*{p}"),
        ));
    }
    Ok((size + 2 * p - span) / s + 1)
}

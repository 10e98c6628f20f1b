//! COCO run-length encoded masks, bit-for-bit as pycocotools' `maskApi.c`.
//!
//! A mask of `h` rows and `w` columns is read in column-major order (down the
//! first column, then the next); `counts` alternates run lengths of 0s and 1s
//! and always starts with a (possibly empty) run of 0s. Every function here
//! follows the corresponding C routine step by step, including its integer
//! rounding, so masks, areas, boxes and IoUs equal pycocotools' exactly.

use engine::{Error, Result};

/// A binary mask as COCO run lengths (column-major, first run counts zeros).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rle {
    pub h: u32,
    pub w: u32,
    pub counts: Vec<u32>,
}

/// `(int)x` as compiled on x86-64: truncation toward zero, and the "integer
/// indefinite" value `i32::MIN` for NaN or out-of-range inputs.
fn c_int(x: f64) -> i32 {
    if x.is_nan() || x >= 2147483648.0 || x <= -2147483649.0 {
        i32::MIN
    } else {
        x as i32
    }
}

// A polygon of huge coordinates would allocate a boundary of billions of points
// in maskApi; we refuse instead of exhausting memory.
const MAX_POLY_POINTS: u64 = 1 << 27;

/// Most pixels a mask may have: its run lengths are 32-bit, as in maskApi,
/// so `h * w` must fit in a u32 (larger sizes would wrap and make runs
/// that never add up).
pub const MAX_MASK_PIXELS: u64 = u32::MAX as u64;

/// An error unless an `h x w` mask has at most `MAX_MASK_PIXELS` pixels.
pub fn check_mask_size(h: u32, w: u32) -> Result<()> {
    let n = h as u64 * w as u64;
    if n > MAX_MASK_PIXELS {
        return Err(Error::arg(
            "rle",
            format!(
                "a {h}x{w} mask has {n} pixels, more than {MAX_MASK_PIXELS} (32-bit run lengths)"
            ),
        ));
    }
    Ok(())
}

impl Rle {
    /// Run lengths from `counts` (as in an uncompressed COCO RLE); errors
    /// unless they add up to `h * w`.
    pub fn from_counts(counts: Vec<u32>, h: u32, w: u32) -> Result<Rle> {
        check_mask_size(h, w)?;
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        if total != h as u64 * w as u64 {
            return Err(Error::arg(
                "rle",
                format!(
                    "run lengths add up to {total}, expected h*w = {h}*{w} = {}",
                    h as u64 * w as u64
                ),
            ));
        }
        Ok(Rle { h, w, counts })
    }

    /// An empty (all-zero) mask; `h * w` must fit in a u32
    /// (`check_mask_size`).
    pub fn empty(h: u32, w: u32) -> Rle {
        Rle {
            h,
            w,
            counts: vec![h * w],
        }
    }

    /// Encodes a row-major `h x w` mask (`mask[y * w + x]`, nonzero = inside)
    /// as maskApi `rleEncode` encodes the column-major version of it.
    pub fn encode(mask: &[u8], h: u32, w: u32) -> Result<Rle> {
        check_mask_size(h, w)?;
        let (hu, wu) = (h as usize, w as usize);
        if mask.len() != hu * wu {
            return Err(Error::shape(
                "rle encode",
                format!("mask has {} values, expected h*w = {h}*{w}", mask.len()),
            ));
        }
        let mut counts = Vec::new();
        let (mut prev, mut run) = (false, 0u32);
        for x in 0..wu {
            for y in 0..hu {
                let v = mask[y * wu + x] != 0;
                if v != prev {
                    counts.push(run);
                    run = 0;
                    prev = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        Ok(Rle { h, w, counts })
    }

    /// The row-major `h x w` mask (1 inside, 0 outside). Runs past `h * w` are
    /// cut off, missing ones read as 0.
    pub fn decode(&self) -> Vec<u8> {
        let (h, w) = (self.h as usize, self.w as usize);
        let mut out = vec![0u8; h * w];
        let mut pos = 0usize;
        let mut v = 0u8;
        for &c in &self.counts {
            if v == 1 {
                for p in pos..(pos + c as usize).min(h * w) {
                    out[(p % h) * w + p / h] = 1;
                }
            }
            pos += c as usize;
            v ^= 1;
        }
        out
    }

    /// The compressed `counts` string of maskApi `rleToString`: each count
    /// (from the fourth on, minus the count two before it) in LEB128-like
    /// groups of 5 bits plus a continuation bit, as characters 48..=111.
    pub fn to_compressed(&self) -> String {
        let mut s = String::with_capacity(self.counts.len() * 2);
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = c as i64;
            if i > 2 {
                x -= self.counts[i - 2] as i64;
            }
            loop {
                let mut ch = (x & 0x1f) as u8;
                x >>= 5;
                let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    ch |= 0x20;
                }
                s.push((ch + 48) as char);
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// Parses a compressed `counts` string (maskApi `rleFrString`); errors on
    /// characters outside 48..=111, a truncated group, or run lengths that do
    /// not add up to `h * w`.
    pub fn from_compressed(s: &str, h: u32, w: u32) -> Result<Rle> {
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::with_capacity(bytes.len());
        let mut p = 0;
        while p < bytes.len() {
            let (mut x, mut k, mut more) = (0i64, 0u32, true);
            while more {
                let Some(&b) = bytes.get(p) else {
                    return Err(Error::arg(
                        "rle",
                        format!("compressed counts {s:?} end inside a number"),
                    ));
                };
                if !(48..=111).contains(&b) || k >= 12 {
                    return Err(Error::arg(
                        "rle",
                        format!("invalid compressed counts {s:?} at byte {p}"),
                    ));
                }
                let c = (b - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                more = c & 0x20 != 0;
                p += 1;
                k += 1;
                if !more && c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
            }
            let m = counts.len();
            if m > 2 {
                x += counts[m - 2] as i64;
            }
            counts.push(x as u32);
        }
        Rle::from_counts(counts, h, w)
    }

    /// Number of pixels inside (maskApi `rleArea`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// `[x, y, width, height]` of the mask as maskApi `rleToBbox` computes it,
    /// including its quirk: a run of 1s spanning two columns makes the box
    /// span all rows. An empty mask gives all zeros.
    pub fn to_bbox(&self) -> [f64; 4] {
        let (h, w) = (self.h, self.w);
        let m = self.counts.len() / 2 * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (w, h, 0u32, 0u32);
        let (mut cc, mut xp) = (0u32, 0u32);
        for j in 0..m {
            cc = cc.wrapping_add(self.counts[j]);
            let t = cc.wrapping_sub((j % 2) as u32);
            let y = t % h;
            let x = (t - y) / h;
            if j % 2 == 0 {
                xp = x;
            } else if xp < x {
                ys = 0;
                ye = h - 1;
            }
            xs = xs.min(x);
            xe = xe.max(x);
            ys = ys.min(y);
            ye = ye.max(y);
        }
        [
            xs as f64,
            ys as f64,
            xe.wrapping_sub(xs).wrapping_add(1) as f64,
            ye.wrapping_sub(ys).wrapping_add(1) as f64,
        ]
    }

    /// Rasterises one polygon `[x0, y0, x1, y1, ...]` exactly as maskApi
    /// `rleFrPoly`: vertices are scaled by 5 and rounded (`(int)(5x + 0.5)`),
    /// the boundary is traced densely, and a pixel column `x` gets the rows
    /// from the rounded-up boundary crossings of the line `x + 0.5`. An odd
    /// trailing coordinate is ignored; fewer than one vertex gives an empty mask.
    pub fn from_polygon(xy: &[f64], h: u32, w: u32) -> Result<Rle> {
        check_mask_size(h, w)?;
        let k = xy.len() / 2;
        if k == 0 {
            return Ok(Rle::empty(h, w));
        }
        let scale = 5.0f64;
        let mut x: Vec<i32> = (0..k).map(|j| c_int(scale * xy[2 * j] + 0.5)).collect();
        let mut y: Vec<i32> = (0..k).map(|j| c_int(scale * xy[2 * j + 1] + 0.5)).collect();
        x.push(x[0]);
        y.push(y[0]);
        let mut total: u64 = 0;
        for j in 0..k {
            let dx = (x[j] as i64 - x[j + 1] as i64).unsigned_abs();
            let dy = (y[j] as i64 - y[j + 1] as i64).unsigned_abs();
            total += dx.max(dy) + 1;
        }
        if total > MAX_POLY_POINTS {
            return Err(Error::arg(
                "rle polygon",
                format!("polygon boundary has {total} points at 5x scale (coordinates too large?)"),
            ));
        }
        let (mut u, mut v): (Vec<i32>, Vec<i32>) = (
            Vec::with_capacity(total as usize),
            Vec::with_capacity(total as usize),
        );
        for j in 0..k {
            let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
            let dx = xe.wrapping_sub(xs).wrapping_abs();
            let dy = ys.wrapping_sub(ye).wrapping_abs();
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if flip {
                std::mem::swap(&mut xs, &mut xe);
                std::mem::swap(&mut ys, &mut ye);
            }
            let s = if dx >= dy {
                ye.wrapping_sub(ys) as f64 / dx as f64
            } else {
                xe.wrapping_sub(xs) as f64 / dy as f64
            };
            if dx >= dy {
                for d in 0..=dx {
                    let t = if flip { dx - d } else { d };
                    u.push(t.wrapping_add(xs));
                    v.push(c_int(ys as f64 + s * t as f64 + 0.5));
                }
            } else {
                for d in 0..=dy {
                    let t = if flip { dy - d } else { d };
                    v.push(t.wrapping_add(ys));
                    u.push(c_int(xs as f64 + s * t as f64 + 0.5));
                }
            }
        }
        // Points where the boundary crosses a pixel column's centre line, downsampled.
        let mut a: Vec<u32> = Vec::new();
        for j in 1..u.len() {
            if u[j] == u[j - 1] {
                continue;
            }
            let xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
            let xd = (xd + 0.5) / scale - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > (w as f64 - 1.0) {
                continue;
            }
            let yd = if v[j] < v[j - 1] { v[j] } else { v[j - 1] } as f64;
            let mut yd = (yd + 0.5) / scale - 0.5;
            if yd < 0.0 {
                yd = 0.0;
            } else if yd > h as f64 {
                yd = h as f64;
            }
            let yd = yd.ceil();
            a.push(((xd as i32).wrapping_mul(h as i32).wrapping_add(yd as i32)) as u32);
        }
        a.push(h.wrapping_mul(w));
        a.sort_unstable();
        let mut p = 0u32;
        for t in a.iter_mut() {
            let cur = *t;
            *t = t.wrapping_sub(p);
            p = cur;
        }
        // Two crossings at the same place cancel: merge the runs around a zero.
        let mut b: Vec<u32> = Vec::with_capacity(a.len());
        let mut j = 0;
        b.push(a[j]);
        j += 1;
        while j < a.len() {
            if a[j] > 0 {
                b.push(a[j]);
                j += 1;
            } else {
                j += 1;
                if j < a.len() {
                    *b.last_mut().unwrap() += a[j];
                    j += 1;
                }
            }
        }
        Ok(Rle { h, w, counts: b })
    }

    /// The mask of box `[x, y, width, height]` (maskApi `rleFrBbox`: the
    /// box's four corners rasterised as a polygon).
    pub fn from_bbox(bb: [f64; 4], h: u32, w: u32) -> Result<Rle> {
        let (xs, ys) = (bb[0], bb[1]);
        let (xe, ye) = (xs + bb[2], ys + bb[3]);
        Rle::from_polygon(&[xs, ys, xs, ye, xe, ye, xe, ys], h, w)
    }

    /// The union of `rles` (maskApi `rleMerge` with `intersect = 0`); errors if
    /// the list is empty or the sizes differ.
    pub fn merge(rles: &[Rle]) -> Result<Rle> {
        let Some(first) = rles.first() else {
            return Err(Error::arg("rle merge", "no masks to merge"));
        };
        let (h, w) = (first.h, first.w);
        let mut cnts = first.counts.clone();
        for (i, b) in rles.iter().enumerate().skip(1) {
            if b.h != h || b.w != w {
                return Err(Error::shape(
                    "rle merge",
                    format!("mask {i} is {}x{}, mask 0 is {h}x{w}", b.h, b.w),
                ));
            }
            let a = std::mem::take(&mut cnts);
            if a.is_empty() || b.counts.is_empty() {
                return Err(Error::arg("rle merge", "a mask has no run lengths"));
            }
            let (mut ca, mut cb) = (a[0], b.counts[0]);
            let (mut v, mut va, mut vb) = (false, false, false);
            let (mut ia, mut ib, mut cc, mut ct) = (1usize, 1usize, 0u32, 1u32);
            while ct > 0 {
                let c = ca.min(cb);
                cc += c;
                ct = 0;
                ca -= c;
                if ca == 0 && ia < a.len() {
                    ca = a[ia];
                    ia += 1;
                    va = !va;
                }
                ct += ca;
                cb -= c;
                if cb == 0 && ib < b.counts.len() {
                    cb = b.counts[ib];
                    ib += 1;
                    vb = !vb;
                }
                ct += cb;
                let vp = v;
                v = va || vb;
                if v != vp || ct == 0 {
                    cnts.push(cc);
                    cc = 0;
                }
            }
        }
        Ok(Rle { h, w, counts: cnts })
    }
}

/// IoU of boxes `[x, y, w, h]` as maskApi `bbIou`, row-major `dt.len() x
/// gt.len()` (`out[d * gt.len() + g]`). For a crowd gt the union is the
/// detection's area alone. Non-overlapping boxes give 0.
pub fn bbox_iou(dt: &[[f64; 4]], gt: &[[f64; 4]], iscrowd: &[bool]) -> Vec<f64> {
    let n = gt.len();
    let mut o = vec![0.0; dt.len() * n];
    for (g, gb) in gt.iter().enumerate() {
        let ga = gb[2] * gb[3];
        let crowd = iscrowd.get(g).copied().unwrap_or(false);
        for (d, db) in dt.iter().enumerate() {
            let da = db[2] * db[3];
            let w = (db[2] + db[0]).min(gb[2] + gb[0]) - db[0].max(gb[0]);
            if w <= 0.0 {
                continue;
            }
            let h = (db[3] + db[1]).min(gb[3] + gb[1]) - db[1].max(gb[1]);
            if h <= 0.0 {
                continue;
            }
            let i = w * h;
            let u = if crowd { da } else { da + ga - i };
            o[d * n + g] = i / u;
        }
    }
    o
}

/// A walk over one mask's runs for `rle_iou`: `left` pixels remain in the
/// current run, whose value is `on` (the first run is 0s).
struct Runs<'a> {
    counts: &'a [u32],
    next: usize,
    left: u64,
    on: bool,
}

impl<'a> Runs<'a> {
    fn new(counts: &'a [u32]) -> Runs<'a> {
        Runs {
            counts,
            next: 1,
            left: counts[0] as u64,
            on: false,
        }
    }

    /// Consumes `c` pixels of the current run, moving to the next run when
    /// it ends (if there is one).
    fn advance(&mut self, c: u64) {
        self.left -= c;
        if self.left == 0 && self.next < self.counts.len() {
            self.left = self.counts[self.next] as u64;
            self.next += 1;
            self.on = !self.on;
        }
    }

    /// No pixels left in this run nor any run after it.
    fn done(&self) -> bool {
        self.left == 0 && self.next == self.counts.len()
    }
}

/// Mask IoU as maskApi `rleIou`, row-major `dt.len() x gt.len()`: pairs whose
/// `to_bbox` boxes do not overlap are 0 without looking at pixels, pairs of
/// different sizes are -1, a crowd gt divides the intersection by the
/// detection's area.
pub fn rle_iou(dt: &[Rle], gt: &[Rle], iscrowd: &[bool]) -> Vec<f64> {
    let db: Vec<[f64; 4]> = dt.iter().map(Rle::to_bbox).collect();
    let gb: Vec<[f64; 4]> = gt.iter().map(Rle::to_bbox).collect();
    let mut o = bbox_iou(&db, &gb, iscrowd);
    let n = gt.len();
    for (g, gr) in gt.iter().enumerate() {
        let crowd = iscrowd.get(g).copied().unwrap_or(false);
        for (d, dr) in dt.iter().enumerate() {
            if o[d * n + g] <= 0.0 {
                continue;
            }
            if dr.h != gr.h || dr.w != gr.w {
                o[d * n + g] = -1.0;
                continue;
            }
            let (mut ra, mut rb) = (Runs::new(&dr.counts), Runs::new(&gr.counts));
            // maskApi walks until both masks are used up; stopping when
            // either is keeps masks whose runs add up to different totals
            // (impossible for checked sizes) from spinning forever.
            let (mut i, mut u) = (0u64, 0u64);
            while !(ra.done() || rb.done()) {
                let c = ra.left.min(rb.left);
                if ra.on || rb.on {
                    u += c;
                    if ra.on && rb.on {
                        i += c;
                    }
                }
                ra.advance(c);
                rb.advance(c);
            }
            if i == 0 {
                u = 1;
            } else if crowd {
                u = dr.area();
            }
            o[d * n + g] = i as f64 / u as f64;
        }
    }
    o
}

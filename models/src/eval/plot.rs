//! Scatter plots of 2-D embeddings and line charts of training curves as
//! PNG, drawn by hand into an RGB buffer (no plotting dependency): framed,
//! autoscaled panels, a title over each, a main title and a colour legend.

use engine::{Error, Result};
use std::path::Path;

/// One embedding to draw: `points[i]` has class `labels[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    pub points: Vec<[f64; 2]>,
    pub labels: Vec<usize>,
}

/// Qualitative class colours: matplotlib's tab10, then tab20's light
/// variants. Class `c` gets `PALETTE[c % 20]` (more than 20 classes repeat
/// colours).
pub const PALETTE: [[u8; 3]; 20] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
    [174, 199, 232],
    [255, 187, 120],
    [152, 223, 138],
    [255, 152, 150],
    [197, 176, 213],
    [196, 156, 148],
    [247, 182, 210],
    [199, 199, 199],
    [219, 219, 141],
    [158, 218, 229],
];

pub fn class_color(c: usize) -> [u8; 3] {
    PALETTE[c % PALETTE.len()]
}

pub const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [0, 0, 0];
const FRAME: [u8; 3] = [80, 80, 80];

/// Each panel is a PANEL x PANEL square below the main title band.
pub const PANEL: usize = 520;
/// Height of the band holding the main title.
pub const TITLE_BAND: usize = 44;
const MAIN_SCALE: usize = 3;
const TEXT_SCALE: usize = 2;
/// Panel title baseline offset and frame inset within a panel.
const PANEL_TITLE_Y: usize = 6;
const FRAME_TOP: usize = 30;
const FRAME_INSET: usize = 10;
/// Data never touches the frame.
const DATA_MARGIN: f64 = 14.0;
const POINT_RADIUS: i64 = 3;
const LEGEND_ROW: usize = 24;
const SWATCH: usize = 14;

/// Writes `panels` side by side (each `PANEL` px square) under `title`,
/// with a legend of `class_names` (colour swatch + name) below, as an 8-bit
/// RGB PNG at `path`.
///
/// Each panel is scaled to its own points with equal x/y scale (distances
/// look as they are), centred in its frame with a margin; points are filled
/// discs of radius 3 px coloured `class_color(label)`, drawn in index order.
/// Text uses an embedded 5x7 bitmap font at 2x (3x for the main title);
/// characters outside printable ASCII draw as '?', and text past the image
/// edge is clipped. The file is written to a temporary name in the same
/// folder, synced, then renamed over `path`, so readers never see half a
/// PNG.
///
/// Errors if `panels` is empty, a panel's points and labels differ in
/// length, a label has no class name, a coordinate is not finite, or the
/// file cannot be written.
pub fn scatter_png(
    path: &Path,
    panels: &[Panel],
    class_names: &[String],
    title: &str,
) -> Result<()> {
    const OP: &str = "scatter_png";
    if panels.is_empty() {
        return Err(Error::arg(
            OP,
            format!("{}: no panels to draw", path.display()),
        ));
    }
    for (k, p) in panels.iter().enumerate() {
        if p.points.len() != p.labels.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "panel {k} ({:?}) has {} points but {} labels",
                    p.title,
                    p.points.len(),
                    p.labels.len()
                ),
            ));
        }
        if let Some(l) = p.labels.iter().find(|&&l| l >= class_names.len()) {
            return Err(Error::arg(
                OP,
                format!(
                    "panel {k} ({:?}): label {l} has no name ({} class names)",
                    p.title,
                    class_names.len()
                ),
            ));
        }
        if let Some(i) = p
            .points
            .iter()
            .position(|q| !(q[0].is_finite() && q[1].is_finite()))
        {
            return Err(Error::arg(
                OP,
                format!("panel {k} ({:?}): point {i} is {:?}", p.title, p.points[i]),
            ));
        }
    }
    let width = PANEL * panels.len();
    let legend = legend_layout(class_names, width);
    let height = TITLE_BAND + PANEL + legend.rows * LEGEND_ROW + 8;
    let mut img = Canvas::new(width, height);

    let main_w = text_width(title, MAIN_SCALE);
    img.text(width.saturating_sub(main_w) / 2, 10, title, MAIN_SCALE, INK);
    for (k, p) in panels.iter().enumerate() {
        draw_panel(&mut img, k * PANEL, TITLE_BAND, p);
    }
    for (c, &(x, row)) in legend.pos.iter().enumerate() {
        let y = TITLE_BAND + PANEL + row * LEGEND_ROW;
        img.rect(x, y, SWATCH, SWATCH, class_color(c));
        img.text(x + SWATCH + 6, y, &class_names[c], TEXT_SCALE, INK);
    }
    write_atomic(path, &img)
}

fn draw_panel(img: &mut Canvas, x0: usize, y0: usize, p: &Panel) {
    let tw = text_width(&p.title, TEXT_SCALE);
    img.text(
        x0 + PANEL.saturating_sub(tw) / 2,
        y0 + PANEL_TITLE_Y,
        &p.title,
        TEXT_SCALE,
        INK,
    );
    let (fx, fy) = (x0 + FRAME_INSET, y0 + FRAME_TOP);
    let (fw, fh) = (PANEL - 2 * FRAME_INSET, PANEL - FRAME_TOP - FRAME_INSET);
    img.outline(fx, fy, fw, fh, FRAME);
    if p.points.is_empty() {
        return;
    }
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for q in &p.points {
        for a in 0..2 {
            lo[a] = lo[a].min(q[a]);
            hi[a] = hi[a].max(q[a]);
        }
    }
    let (aw, ah) = (fw as f64 - 2.0 * DATA_MARGIN, fh as f64 - 2.0 * DATA_MARGIN);
    let (rx, ry) = (hi[0] - lo[0], hi[1] - lo[1]);
    let scale = match (rx > 0.0, ry > 0.0) {
        (true, true) => (aw / rx).min(ah / ry),
        (true, false) => aw / rx,
        (false, true) => ah / ry,
        (false, false) => 1.0,
    };
    let (mx, my) = (0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]));
    let (cx, cy) = (fx as f64 + 0.5 * fw as f64, fy as f64 + 0.5 * fh as f64);
    for (q, &l) in p.points.iter().zip(&p.labels) {
        // Image rows grow downwards; the plot's y axis grows upwards.
        let px = (cx + (q[0] - mx) * scale).round() as i64;
        let py = (cy - (q[1] - my) * scale).round() as i64;
        img.disc(px, py, POINT_RADIUS, class_color(l));
    }
}

struct Legend {
    /// Top-left x and row index of each class's entry.
    pos: Vec<(usize, usize)>,
    rows: usize,
}

/// Entries flow left to right and wrap at the image width.
fn legend_layout(names: &[String], width: usize) -> Legend {
    let (mut x, mut row) = (FRAME_INSET, 0);
    let mut pos = Vec::with_capacity(names.len());
    for name in names {
        let w = SWATCH + 6 + text_width(name, TEXT_SCALE) + 24;
        if x > FRAME_INSET && x + w > width {
            x = FRAME_INSET;
            row += 1;
        }
        pos.push((x, row));
        x += w;
    }
    Legend {
        rows: if names.is_empty() { 0 } else { row + 1 },
        pos,
    }
}

fn text_width(s: &str, scale: usize) -> usize {
    s.chars().count() * GLYPH_ADVANCE * scale
}

struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            rgb: BACKGROUND.repeat(w * h),
        }
    }

    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let o = 3 * (y as usize * self.w + x as usize);
            self.rgb[o..o + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx as i64, yy as i64, c);
            }
        }
    }

    fn outline(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        self.rect(x, y, w, 1, c);
        self.rect(x, y + h - 1, w, 1, c);
        self.rect(x, y, 1, h, c);
        self.rect(x + w - 1, y, 1, h, c);
    }

    fn disc(&mut self, cx: i64, cy: i64, r: i64, c: [u8; 3]) {
        for dy in -r..=r {
            for dx in -r..=r {
                // r^2 + r rounds the rim so small discs look round.
                if dx * dx + dy * dy <= r * r + r {
                    self.put(cx + dx, cy + dy, c);
                }
            }
        }
    }

    /// A 2 px wide segment from `a` to `b`.
    fn line(&mut self, a: (i64, i64), b: (i64, i64), c: [u8; 3]) {
        let n = (b.0 - a.0).abs().max((b.1 - a.1).abs()).max(1);
        for i in 0..=n {
            let x = a.0 + (b.0 - a.0) * i / n;
            let y = a.1 + (b.1 - a.1) * i / n;
            self.rect(x.max(0) as usize, y.max(0) as usize, 2, 2, c);
        }
    }

    /// Draws `s` with its top-left corner at (x, y).
    fn text(&mut self, x: usize, y: usize, s: &str, scale: usize, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let gx = x + k * GLYPH_ADVANCE * scale;
            for (col, bits) in g.iter().enumerate() {
                for row in 0..7 {
                    if bits >> row & 1 == 1 {
                        self.rect(gx + col * scale, y + row * scale, scale, scale, c);
                    }
                }
            }
        }
    }
}

fn write_atomic(path: &Path, img: &Canvas) -> Result<()> {
    let size = (img.w, img.h);
    crate::report::write_png(path, &img.rgb, size, png::ColorType::Rgb, "plot")
}

/// One named curve of a chart: (x, y) points in x order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<[f64; 2]>,
}

/// One panel of line charts: a title, the x axis' name and the curves.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

/// Writes `charts` as PNG panels (`PANEL` px square, two per row) under
/// `title`, series `k` of every chart drawn in `class_color(k)` and named in
/// one legend below (so the same run has the same colour everywhere).
/// Each panel is scaled to its finite points (others are left out), with
/// the y range and the x range printed at the axes; a chart without
/// points says so. Written atomically like `scatter_png`.
pub fn line_charts_png(path: &Path, charts: &[Chart], names: &[String], title: &str) -> Result<()> {
    if charts.is_empty() {
        return Err(Error::arg(
            "line_charts_png",
            format!("{}: no charts to draw", path.display()),
        ));
    }
    let cols = charts.len().min(2);
    let rows = charts.len().div_ceil(cols);
    let width = PANEL * cols;
    let legend = legend_layout(names, width);
    let height = TITLE_BAND + PANEL * rows + legend.rows * LEGEND_ROW + 8;
    let mut img = Canvas::new(width, height);
    let main_w = text_width(title, MAIN_SCALE);
    img.text(width.saturating_sub(main_w) / 2, 10, title, MAIN_SCALE, INK);
    for (k, chart) in charts.iter().enumerate() {
        draw_chart(
            &mut img,
            (k % cols) * PANEL,
            TITLE_BAND + (k / cols) * PANEL,
            chart,
        );
    }
    for (c, &(x, row)) in legend.pos.iter().enumerate() {
        let y = TITLE_BAND + PANEL * rows + row * LEGEND_ROW;
        img.rect(x, y, SWATCH, SWATCH, class_color(c));
        img.text(x + SWATCH + 6, y, &names[c], TEXT_SCALE, INK);
    }
    write_atomic(path, &img)
}

/// A number in at most 9 characters for an axis label.
fn axis_number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn draw_chart(img: &mut Canvas, x0: usize, y0: usize, chart: &Chart) {
    let tw = text_width(&chart.title, TEXT_SCALE);
    img.text(
        x0 + PANEL.saturating_sub(tw) / 2,
        y0 + PANEL_TITLE_Y,
        &chart.title,
        TEXT_SCALE,
        INK,
    );
    // room for the y labels on the left and the x labels below
    let (fx, fy) = (x0 + FRAME_INSET, y0 + FRAME_TOP + 14);
    let (fw, fh) = (
        PANEL - 2 * FRAME_INSET,
        PANEL - FRAME_TOP - 14 - FRAME_INSET - 20,
    );
    img.outline(fx, fy, fw, fh, FRAME);
    let finite = |q: &&[f64; 2]| q[0].is_finite() && q[1].is_finite();
    let all: Vec<&[f64; 2]> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite))
        .collect();
    if all.is_empty() {
        img.text(fx + 12, fy + fh / 2, "no data", TEXT_SCALE, INK);
        return;
    }
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for q in &all {
        for a in 0..2 {
            lo[a] = lo[a].min(q[a]);
            hi[a] = hi[a].max(q[a]);
        }
    }
    let span = |a: usize| if hi[a] > lo[a] { hi[a] - lo[a] } else { 1.0 };
    let (aw, ah) = (fw as f64 - 2.0 * DATA_MARGIN, fh as f64 - 2.0 * DATA_MARGIN);
    let at = |q: &[f64; 2]| {
        (
            (fx as f64 + DATA_MARGIN + (q[0] - lo[0]) / span(0) * aw).round() as i64,
            (fy as f64 + DATA_MARGIN + (1.0 - (q[1] - lo[1]) / span(1)) * ah).round() as i64,
        )
    };
    img.text(fx + 4, fy - 14, &axis_number(hi[1]), TEXT_SCALE, FRAME);
    img.text(fx + 4, fy + fh + 4, &axis_number(lo[1]), TEXT_SCALE, FRAME);
    let x_text = format!(
        "{}: {} .. {}",
        chart.x_label,
        axis_number(lo[0]),
        axis_number(hi[0])
    );
    let xw = text_width(&x_text, TEXT_SCALE);
    img.text(
        fx + fw.saturating_sub(xw),
        fy + fh + 4,
        &x_text,
        TEXT_SCALE,
        FRAME,
    );
    for (k, s) in chart.series.iter().enumerate() {
        let pts: Vec<(i64, i64)> = s.points.iter().filter(finite).map(at).collect();
        if let [one] = pts[..] {
            img.disc(one.0, one.1, POINT_RADIUS, class_color(k));
        }
        for w in pts.windows(2) {
            img.line(w[0], w[1], class_color(k));
        }
    }
}

/// Columns per glyph plus one blank column between characters.
const GLYPH_ADVANCE: usize = 6;

/// The 5x7 bitmap of `ch`: five column bytes, bit r set = pixel in row r
/// (row 0 at the top). Non-printable or non-ASCII characters map to '?'.
pub fn glyph(ch: char) -> [u8; 5] {
    let code = ch as u32;
    let i = if (0x20..=0x7E).contains(&code) {
        (code - 0x20) as usize
    } else {
        ('?' as u32 - 0x20) as usize
    };
    FONT[i]
}

/// Printable ASCII 0x20..=0x7E in the classic 5x7 LCD layout.
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x00, 0x00, 0x5F, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], // #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x05, 0x03, 0x00, 0x00], // '
    [0x00, 0x1C, 0x22, 0x41, 0x00], // (
    [0x00, 0x41, 0x22, 0x1C, 0x00], // )
    [0x14, 0x08, 0x3E, 0x08, 0x14], // *
    [0x08, 0x08, 0x3E, 0x08, 0x08], // +
    [0x00, 0x50, 0x30, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], // 0
    [0x00, 0x42, 0x7F, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4B, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3C, 0x4A, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1E], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x56, 0x36, 0x00, 0x00], // ;
    [0x08, 0x14, 0x22, 0x41, 0x00], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x00, 0x41, 0x22, 0x14, 0x08], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3E], // @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], // A
    [0x7F, 0x49, 0x49, 0x49, 0x36], // B
    [0x3E, 0x41, 0x41, 0x41, 0x22], // C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], // D
    [0x7F, 0x49, 0x49, 0x49, 0x41], // E
    [0x7F, 0x09, 0x09, 0x09, 0x01], // F
    [0x3E, 0x41, 0x49, 0x49, 0x7A], // G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], // H
    [0x00, 0x41, 0x7F, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3F, 0x01], // J
    [0x7F, 0x08, 0x14, 0x22, 0x41], // K
    [0x7F, 0x40, 0x40, 0x40, 0x40], // L
    [0x7F, 0x02, 0x0C, 0x02, 0x7F], // M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], // N
    [0x3E, 0x41, 0x41, 0x41, 0x3E], // O
    [0x7F, 0x09, 0x09, 0x09, 0x06], // P
    [0x3E, 0x41, 0x51, 0x21, 0x5E], // Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7F, 0x01, 0x01], // T
    [0x3F, 0x40, 0x40, 0x40, 0x3F], // U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], // V
    [0x3F, 0x40, 0x38, 0x40, 0x3F], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x07, 0x08, 0x70, 0x08, 0x07], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x7F, 0x41, 0x41, 0x00], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // backslash
    [0x00, 0x41, 0x41, 0x7F, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7F, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7F], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7E, 0x09, 0x01, 0x02], // f
    [0x0C, 0x52, 0x52, 0x52, 0x3E], // g
    [0x7F, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7D, 0x40, 0x00], // i
    [0x20, 0x40, 0x44, 0x3D, 0x00], // j
    [0x7F, 0x10, 0x28, 0x44, 0x00], // k
    [0x00, 0x41, 0x7F, 0x40, 0x00], // l
    [0x7C, 0x04, 0x18, 0x04, 0x78], // m
    [0x7C, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0x7C, 0x14, 0x14, 0x14, 0x08], // p
    [0x08, 0x14, 0x14, 0x18, 0x7C], // q
    [0x7C, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3F, 0x44, 0x40, 0x20], // t
    [0x3C, 0x40, 0x40, 0x20, 0x7C], // u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], // v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x0C, 0x50, 0x50, 0x50, 0x3C], // y
    [0x44, 0x64, 0x54, 0x4C, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7F, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_are_distinct_and_fit_seven_rows() {
        for (i, g) in FONT.iter().enumerate() {
            assert!(g.iter().all(|b| b & 0x80 == 0), "glyph {i} uses row 7");
            if i > 0 {
                assert!(
                    g.iter().any(|&b| b != 0),
                    "glyph {:?} is blank",
                    (0x20 + i as u8) as char
                );
            }
            for (j, h) in FONT.iter().enumerate().skip(i + 1) {
                assert_ne!(g, h, "glyphs {i} and {j} are identical");
            }
        }
        assert_eq!(glyph('\u{e9}'), glyph('?'));
    }

    #[test]
    fn legend_wraps_at_the_width() {
        let names: Vec<String> = (0..10).map(|c| format!("class number {c}")).collect();
        let l = legend_layout(&names, PANEL);
        assert!(l.rows > 1);
        for (k, &(x, _)) in l.pos.iter().enumerate() {
            let w = SWATCH + 6 + text_width(&names[k], TEXT_SCALE);
            assert!(x + w <= PANEL, "entry {k} overflows");
        }
    }
}

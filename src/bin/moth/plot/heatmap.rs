//! PNG heatmaps of square class-distance matrices (the paper's Fig. 7).
//!
//! Rows are the source (victim) class, columns the target class. Every cell
//! is filled with a colour from the chosen [`Scale`] and shows its value as
//! text; diagonal cells (a class has no distance to itself) and non-finite
//! values are drawn grey. Row labels sit on the left, column labels on top
//! (rotated when they do not fit a cell), the title above everything and a
//! colour bar with its end values on the right.
//!
//! Drawing and text go through [`super::canvas`].

use std::path::Path;

use moth::{Error, Result};

use super::canvas::{encode, Canvas};
use super::font::{text_h, text_w};

/// Colour scale choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Values from the matrix minimum to its maximum, dark to bright
    /// (viridis-like).
    Sequential,
    /// Blue for negative, white for 0, red for positive, symmetric around 0;
    /// meant for before/after differences.
    Diverging,
}

/// What to draw and how.
#[derive(Debug, Clone, Copy)]
pub struct HeatmapSpec<'a> {
    /// Title drawn above the heatmap; may be empty.
    pub title: &'a str,
    /// One class name per row/column, in matrix order (truncated to 8
    /// characters when drawn).
    pub labels: &'a [String],
    /// Colour scale.
    pub scale: Scale,
    /// Side length of one cell in pixels (at least 1).
    pub cell_px: u32,
}

/// Renders `matrix` (rows = source class, columns = target class) as an RGB8
/// PNG and returns the encoded bytes.
///
/// Fails with [`Error::Input`] when the matrix is empty or not square, when
/// `spec.labels` does not hold one label per row, or when `spec.cell_px` is 0
/// or makes the image unreasonably large.
pub fn render_png(matrix: &[Vec<f64>], spec: &HeatmapSpec) -> Result<Vec<u8>> {
    validate(matrix, spec)?;
    let canvas = draw(matrix, spec);
    encode(&canvas)
}

/// Renders `matrix` like [`render_png`] and writes the PNG to `path`.
pub fn write_png(path: &Path, matrix: &[Vec<f64>], spec: &HeatmapSpec) -> Result<()> {
    let bytes = render_png(matrix, spec)?;
    std::fs::write(path, bytes)
        .map_err(|e| Error::io(format!("writing heatmap {}", path.display()), e))
}

/// Largest allowed grid side (n * cell_px) in pixels.
const MAX_GRID_PX: u64 = 16_384;
/// Labels longer than this are truncated.
const MAX_LABEL_CHARS: usize = 8;
/// Outer margin in pixels.
const MARGIN: i64 = 8;
/// Gap between the image parts in pixels.
const GAP: i64 = 6;

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
/// Diagonal and non-finite cells.
const GREY: [u8; 3] = [160, 160, 160];
const OUTLINE: [u8; 3] = [90, 90, 90];

/// Viridis, 5 stops, dark to bright.
const VIRIDIS: [[f64; 3]; 5] = [
    [68.0, 1.0, 84.0],
    [59.0, 82.0, 139.0],
    [33.0, 145.0, 140.0],
    [94.0, 201.0, 98.0],
    [253.0, 231.0, 37.0],
];
/// RdBu, 5 stops, from -1 (blue) through 0 (white) to +1 (red).
const RDBU: [[f64; 3]; 5] = [
    [33.0, 102.0, 172.0],
    [146.0, 197.0, 222.0],
    [247.0, 247.0, 247.0],
    [244.0, 165.0, 130.0],
    [178.0, 24.0, 43.0],
];

fn validate(matrix: &[Vec<f64>], spec: &HeatmapSpec) -> Result<()> {
    let n = matrix.len();
    if n == 0 {
        return Err(Error::input("heatmap: the matrix is empty"));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, r)| r.len() != n) {
        return Err(Error::input(format!(
            "heatmap: the matrix is not square: row {i} has {} entries, expected {n}",
            row.len()
        )));
    }
    if spec.labels.len() != n {
        return Err(Error::input(format!(
            "heatmap: {} labels for a {n}x{n} matrix",
            spec.labels.len()
        )));
    }
    if spec.cell_px == 0 {
        return Err(Error::input("heatmap: cell_px must be at least 1"));
    }
    let grid = n as u64 * u64::from(spec.cell_px);
    if grid > MAX_GRID_PX {
        return Err(Error::input(format!(
            "heatmap: {n} cells of {} px make a {grid} px grid, more than {MAX_GRID_PX}",
            spec.cell_px
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Colours and value text

/// Piecewise-linear interpolation between equally spaced stops, `t` in 0..=1.
fn interpolate(stops: &[[f64; 3]], t: f64) -> [u8; 3] {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let segments = (stops.len() - 1) as f64;
    let pos = t * segments;
    let i = (pos.floor() as usize).min(stops.len() - 2);
    let f = pos - i as f64;
    let mut out = [0u8; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let v = stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f;
        *o = v.round().clamp(0.0, 255.0) as u8;
    }
    out
}

fn luminance(c: [u8; 3]) -> f64 {
    0.299 * f64::from(c[0]) + 0.587 * f64::from(c[1]) + 0.114 * f64::from(c[2])
}

/// Black text on bright cells, white text on dark ones.
fn text_colour(background: [u8; 3]) -> [u8; 3] {
    if luminance(background) > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

/// The value range a scale maps to colours.
#[derive(Debug, Clone, Copy)]
enum Range {
    /// No finite off-diagonal value: nothing to map.
    Empty,
    /// Sequential: minimum and maximum.
    MinMax(f64, f64),
    /// Diverging: the largest magnitude.
    Symmetric(f64),
}

impl Range {
    fn of(matrix: &[Vec<f64>], scale: Scale) -> Range {
        let values = matrix.iter().enumerate().flat_map(|(i, row)| {
            row.iter()
                .enumerate()
                .filter(move |&(j, v)| j != i && v.is_finite())
                .map(|(_, &v)| v)
        });
        let (mut lo, mut hi, mut any) = (f64::INFINITY, f64::NEG_INFINITY, false);
        for v in values {
            lo = lo.min(v);
            hi = hi.max(v);
            any = true;
        }
        match (any, scale) {
            (false, _) => Range::Empty,
            (true, Scale::Sequential) => Range::MinMax(lo, hi),
            (true, Scale::Diverging) => Range::Symmetric(lo.abs().max(hi.abs())),
        }
    }

    /// Colour of a finite value.
    fn colour(self, v: f64) -> [u8; 3] {
        match self {
            Range::Empty => GREY,
            Range::MinMax(lo, hi) => {
                let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                interpolate(&VIRIDIS, t)
            }
            Range::Symmetric(m) => {
                let t = if m > 0.0 { v / m } else { 0.0 };
                interpolate(&RDBU, (t.clamp(-1.0, 1.0) + 1.0) / 2.0)
            }
        }
    }

    /// Value shown at fraction `f` (0 = bottom, 1 = top) of the colour bar.
    fn bar_value(self, f: f64) -> f64 {
        match self {
            Range::Empty => 0.0,
            Range::MinMax(lo, hi) => lo + f * (hi - lo),
            Range::Symmetric(m) => m * (2.0 * f - 1.0),
        }
    }

    /// Colour-bar labels with their fraction of the bar height (1 = top).
    fn bar_labels(self) -> Vec<(String, f64)> {
        match self {
            Range::Empty => vec![("n/a".into(), 1.0)],
            Range::MinMax(lo, hi) => {
                vec![(fmt_value(hi, false), 1.0), (fmt_value(lo, false), 0.0)]
            }
            Range::Symmetric(m) => vec![
                (fmt_value(m, true), 1.0),
                ("0".into(), 0.5),
                (fmt_value(-m, true), 0.0),
            ],
        }
    }
}

/// A value as cell text: one decimal when |v| < 10, else rounded to an
/// integer; `signed` adds a '+' to positive values.
fn fmt_value(v: f64, signed: bool) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = if v.abs() < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    };
    let is_zero = s
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.');
    match (is_zero, s.strip_prefix('-')) {
        (true, Some(unsigned)) => unsigned.to_string(),
        (false, None) if signed => format!("+{s}"),
        _ => s,
    }
}

fn truncate_label(label: &str) -> String {
    label.chars().take(MAX_LABEL_CHARS).collect()
}

// ---------------------------------------------------------------------------
// Layout and drawing

/// Where everything goes, in pixels.
#[derive(Debug, Clone)]
struct Layout {
    width: i64,
    height: i64,
    cell: i64,
    label_scale: i64,
    title_scale: i64,
    title_y: i64,
    /// Column labels end (exclusive) at this y.
    col_label_bottom: i64,
    col_labels_vertical: bool,
    grid_x: i64,
    grid_y: i64,
    bar_x: i64,
    bar_w: i64,
    bar_label_x: i64,
}

impl Layout {
    fn new(n: usize, labels: &[String], title: &str, range: Range, cell_px: u32) -> Layout {
        let cell = i64::from(cell_px);
        let label_scale = if cell >= 40 { 2 } else { 1 };
        let title_scale = label_scale + 1;

        let label_w = labels
            .iter()
            .map(|l| text_w(l, label_scale))
            .max()
            .unwrap_or(0);
        let col_labels_vertical = label_w > cell - 2;
        let col_h = if col_labels_vertical {
            label_w
        } else {
            text_h(label_scale)
        };
        let title_h = if title.is_empty() {
            0
        } else {
            text_h(title_scale) + GAP
        };

        let title_y = MARGIN;
        let col_label_bottom = MARGIN + title_h + col_h;
        let grid_x = MARGIN + label_w + GAP;
        let grid_y = col_label_bottom + GAP;
        let grid = n as i64 * cell;

        let bar_x = grid_x + grid + 2 * GAP;
        let bar_w = (cell / 3).max(8);
        let bar_label_x = bar_x + bar_w + GAP;
        let bar_label_w = range
            .bar_labels()
            .iter()
            .map(|(s, _)| text_w(s, label_scale))
            .max()
            .unwrap_or(0);

        let width =
            (bar_label_x + bar_label_w + MARGIN).max(2 * MARGIN + text_w(title, title_scale));
        // The colour-bar labels may be taller than a tiny grid.
        let height = grid_y + grid.max(text_h(label_scale)) + MARGIN;
        Layout {
            width,
            height,
            cell,
            label_scale,
            title_scale,
            title_y,
            col_label_bottom,
            col_labels_vertical,
            grid_x,
            grid_y,
            bar_x,
            bar_w,
            bar_label_x,
        }
    }

    /// Top-left pixel of cell (row, col).
    fn cell_origin(&self, row: usize, col: usize) -> (i64, i64) {
        (
            self.grid_x + col as i64 * self.cell,
            self.grid_y + row as i64 * self.cell,
        )
    }
}

/// Largest text scale at which `text` fits inside a cell with a 2 px margin
/// all round, if any.
fn cell_text_scale(text: &str, cell: i64) -> Option<i64> {
    let max = (cell / 20).clamp(1, 3);
    (1..=max)
        .rev()
        .find(|&s| text_w(text, s) + 4 <= cell && text_h(s) + 4 <= cell)
}

fn draw(matrix: &[Vec<f64>], spec: &HeatmapSpec) -> Canvas {
    let n = matrix.len();
    let labels: Vec<String> = spec.labels.iter().map(|l| truncate_label(l)).collect();
    let range = Range::of(matrix, spec.scale);
    let lay = Layout::new(n, &labels, spec.title, range, spec.cell_px);
    let mut cv = Canvas::new(lay.width, lay.height);
    let (ls, cell) = (lay.label_scale, lay.cell);

    // Title, centred.
    if !spec.title.is_empty() {
        let x = (lay.width - text_w(spec.title, lay.title_scale)) / 2;
        cv.text(x, lay.title_y, spec.title, lay.title_scale, BLACK);
    }

    // Row labels (right-aligned) and column labels.
    for (i, label) in labels.iter().enumerate() {
        let (cx, cy) = lay.cell_origin(i, i);
        let x = lay.grid_x - GAP - text_w(label, ls);
        cv.text(x, cy + (cell - text_h(ls)) / 2, label, ls, BLACK);
        if lay.col_labels_vertical {
            let x = cx + (cell - text_h(ls)) / 2;
            cv.text_vertical(x, lay.col_label_bottom, label, ls, BLACK);
        } else {
            let x = cx + (cell - text_w(label, ls)) / 2;
            cv.text(x, lay.col_label_bottom - text_h(ls), label, ls, BLACK);
        }
    }

    // Cells.
    let signed = spec.scale == Scale::Diverging;
    for (i, row) in matrix.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let (x, y) = lay.cell_origin(i, j);
            if i == j {
                cv.fill_rect(x, y, cell, cell, GREY);
                continue;
            }
            let bg = if v.is_finite() { range.colour(v) } else { GREY };
            cv.fill_rect(x, y, cell, cell, bg);
            let text = fmt_value(v, signed);
            if let Some(s) = cell_text_scale(&text, cell) {
                let tx = x + (cell - text_w(&text, s)) / 2;
                let ty = y + (cell - text_h(s)) / 2;
                cv.text(tx, ty, &text, s, text_colour(bg));
            }
        }
    }

    // Colour bar, top = maximum.
    let grid = n as i64 * cell;
    for k in 0..grid {
        let f = if grid > 1 {
            1.0 - k as f64 / (grid - 1) as f64
        } else {
            1.0
        };
        let c = match range {
            Range::Empty => GREY,
            _ => range.colour(range.bar_value(f)),
        };
        cv.fill_rect(lay.bar_x, lay.grid_y + k, lay.bar_w, 1, c);
    }
    cv.outline(lay.bar_x, lay.grid_y, lay.bar_w, grid, OUTLINE);
    let span = (grid - text_h(ls)).max(0);
    for (text, f) in range.bar_labels() {
        let y = lay.grid_y + ((1.0 - f) * span as f64).round() as i64;
        cv.text(lay.bar_label_x, y, &text, ls, BLACK);
    }
    cv
}

#[cfg(test)]
#[path = "heatmap_tests.rs"]
mod tests;

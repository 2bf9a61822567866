//! Heatmaps of square class-distance matrices (the paper's Fig. 7).
//!
//! Rows are the source (victim) class, top to bottom; columns the target
//! class, left to right; both axes say so. Each cell is coloured from the
//! chosen [`Scale`] and shows its value, every cell in the same font size;
//! the diagonal (a class has no distance to itself) and unmeasured cells
//! are grey. A colour bar on the right says what the colours mean, with its
//! unit.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use moth::{Error, Result};

use super::{fmt_value, interpolate, DrawResult, Figure, FONT};

/// Colour scale choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Values from the matrix minimum to its maximum, dark to bright
    /// (viridis).
    Sequential,
    /// Blue for negative, white for 0, red for positive, symmetric around 0;
    /// for before/after differences.
    Diverging,
}

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
/// Diagonal and unmeasured cells.
pub const GREY: RGBColor = RGBColor(170, 170, 170);

/// Font size of every label, tick and cell value, in pixels.
const TEXT_PX: u32 = 15;
/// Width of the colour-bar column.
const BAR_AREA: u32 = 150;
/// Largest class count drawn (cells would be too small to read).
const MAX_CLASSES: usize = 100;

/// A heatmap ready to draw.
pub struct Heatmap<'a> {
    title: &'a str,
    matrix: &'a [Vec<f64>],
    labels: &'a [String],
    scale: Scale,
    unit: &'a str,
    range: (f64, f64),
    cell: u32,
    label_px: u32,
}

impl<'a> Heatmap<'a> {
    /// Checks the matrix (square, one label per row, at most
    /// [`MAX_CLASSES`]) and lays the figure out. `unit` captions the colour
    /// bar.
    pub fn new(
        title: &'a str,
        matrix: &'a [Vec<f64>],
        labels: &'a [String],
        scale: Scale,
        unit: &'a str,
    ) -> Result<Self> {
        let n = matrix.len();
        if n == 0 || n > MAX_CLASSES {
            return Err(Error::input(format!(
                "heatmap: {n} classes (1 to {MAX_CLASSES} can be drawn)"
            )));
        }
        if let Some((i, row)) = matrix.iter().enumerate().find(|(_, r)| r.len() != n) {
            return Err(Error::input(format!(
                "heatmap: the matrix is not square: row {i} has {} entries, expected {n}",
                row.len()
            )));
        }
        if labels.len() != n {
            return Err(Error::input(format!(
                "heatmap: {} labels for a {n}x{n} matrix",
                labels.len()
            )));
        }
        let range = value_range(matrix, scale);
        // Cells wide enough for the longest value at TEXT_PX (about 0.6 em
        // per character), and for a readable grid.
        let widest = off_diagonal(matrix)
            .map(|v| fmt_value(v, scale == Scale::Diverging).chars().count())
            .max()
            .unwrap_or(3) as u32;
        let cell = (widest * TEXT_PX * 6 / 10 + 12)
            .max(44)
            .max(640 / n as u32)
            .min(96);
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as u32;
        let label_px = longest * TEXT_PX * 6 / 10 + 12;
        Ok(Heatmap {
            title,
            matrix,
            labels,
            scale,
            unit,
            range,
            cell,
            label_px,
        })
    }

    /// The colour of a finite value.
    pub fn colour(&self, v: f64) -> RGBColor {
        let (lo, hi) = self.range;
        match self.scale {
            Scale::Sequential => {
                let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                interpolate(&VIRIDIS, t)
            }
            Scale::Diverging => {
                let t = if hi > 0.0 { v / hi } else { 0.0 };
                interpolate(&RDBU, (t.clamp(-1.0, 1.0) + 1.0) / 2.0)
            }
        }
    }

    /// The colour of cell (row, column) and its text.
    pub fn cell(&self, row: usize, col: usize) -> (RGBColor, String) {
        let v = self.matrix[row][col];
        if row == col {
            (GREY, String::new())
        } else if v.is_finite() {
            (self.colour(v), fmt_value(v, self.scale == Scale::Diverging))
        } else {
            (GREY, "n/a".into())
        }
    }

    fn n(&self) -> usize {
        self.matrix.len()
    }

    fn draw_grid<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let n = self.n();
        let last = n as i32 - 1;
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, (FONT, TEXT_PX + 5))
            .margin(12)
            .x_label_area_size(self.label_px + 24)
            .y_label_area_size(self.label_px + 24)
            .build_cartesian_2d((0..last).into_segmented(), (0..last).into_segmented())?;
        // Row 0 is drawn at the top, in segment n - 1.
        let row_name = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(k) => self
                .labels
                .get((last - k) as usize)
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&row_name)
            .y_label_style((FONT, TEXT_PX))
            .x_desc("target class")
            .y_desc("source class")
            .axis_desc_style((FONT, TEXT_PX))
            .draw()?;
        let (xs, ys) = chart.plotting_area().get_pixel_range();
        super::column_labels(area, self.labels, xs, ys.end, TEXT_PX)?;
        let edge = |k: usize| match k < n {
            true => SegmentValue::Exact(k as i32),
            false => SegmentValue::Last,
        };
        // Row 0 at the top: row i occupies segment n - 1 - i.
        let cells: Vec<(usize, usize)> = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).collect();
        chart.draw_series(cells.iter().map(|&(i, j)| {
            let (colour, _) = self.cell(i, j);
            Rectangle::new(
                [(edge(j), edge(n - 1 - i)), (edge(j + 1), edge(n - i))],
                colour.filled(),
            )
        }))?;
        let centred = Pos::new(HPos::Center, VPos::Center);
        chart.draw_series(cells.iter().map(|&(i, j)| {
            let (colour, text) = self.cell(i, j);
            let ink: &'static RGBColor = if luminance(colour) > 140.0 {
                &BLACK
            } else {
                &WHITE
            };
            Text::new(
                text,
                (
                    SegmentValue::CenterOf(j as i32),
                    SegmentValue::CenterOf((n - 1 - i) as i32),
                ),
                TextStyle::from((FONT, TEXT_PX).into_font())
                    .color(ink)
                    .pos(centred),
            )
        }))?;
        Ok(())
    }

    /// The colour bar: the scale's range top to bottom, its unit beside it.
    fn draw_bar<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (lo, hi) = match self.scale {
            Scale::Sequential => self.range,
            Scale::Diverging => (-self.range.1, self.range.1),
        };
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 1.0, lo + 1.0)
        };
        let top = TEXT_PX as i32 + 5 + 24;
        let bottom = self.label_px as i32 + 24 + 12;
        let area = area.margin(top, bottom, 8, 8);
        let mut chart = ChartBuilder::on(&area)
            .y_label_area_size(0)
            .right_y_label_area_size(56)
            .build_cartesian_2d(0.0..1.0, lo..hi)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .y_label_formatter(&|v| fmt_value(*v, self.scale == Scale::Diverging))
            .y_label_style((FONT, TEXT_PX))
            .y_desc(self.unit)
            .axis_desc_style((FONT, TEXT_PX))
            .draw()?;
        let steps = 120;
        chart.draw_series((0..steps).map(|k| {
            let a = lo + (hi - lo) * k as f64 / steps as f64;
            let b = lo + (hi - lo) * (k + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], self.colour((a + b) / 2.0).filled())
        }))?;
        Ok(())
    }
}

impl Figure for Heatmap<'_> {
    fn size(&self) -> (u32, u32) {
        let grid = self.n() as u32 * self.cell;
        let side = self.label_px + 24 + 24;
        let title = TEXT_PX + 5 + 24;
        let w = side + grid + BAR_AREA;
        let h = title + grid + side;
        (w.max(self.title.chars().count() as u32 * 12 + BAR_AREA), h)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (w, _) = self.size();
        let (grid, bar) = area.split_horizontally(w - BAR_AREA);
        self.draw_grid(&grid)?;
        self.draw_bar(&bar)
    }
}

fn luminance(c: RGBColor) -> f64 {
    0.299 * f64::from(c.0) + 0.587 * f64::from(c.1) + 0.114 * f64::from(c.2)
}

fn off_diagonal(matrix: &[Vec<f64>]) -> impl Iterator<Item = f64> + '_ {
    matrix.iter().enumerate().flat_map(|(i, row)| {
        row.iter()
            .enumerate()
            .filter(move |&(j, v)| j != i && v.is_finite())
            .map(|(_, &v)| v)
    })
}

/// Sequential: (min, max) of the finite off-diagonal values; diverging:
/// (0, largest magnitude). (0, 0) when nothing was measured.
fn value_range(matrix: &[Vec<f64>], scale: Scale) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in off_diagonal(matrix) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 0.0);
    }
    match scale {
        Scale::Sequential => (lo, hi),
        Scale::Diverging => (0.0, lo.abs().max(hi.abs())),
    }
}

#[cfg(test)]
#[path = "heatmap_tests.rs"]
mod tests;

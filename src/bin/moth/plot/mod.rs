//! The figures moth writes, drawn with `plotters`, each as PNG and SVG:
//! class-distance heatmaps (the paper's Fig. 7), the before/after bar chart
//! of per-class mean distances, line charts (the hardening curve of a run,
//! and the trigger sizes of one pair over training, the paper's Fig. 6).
//!
//! Text is set in DejaVu Sans, shipped in `assets/fonts/` (Bitstream Vera
//! licence, beside it) and compiled in, so PNGs look the same on every
//! machine without system fonts. SVGs name the family and let the viewer
//! draw it.

pub mod bars;
pub mod curves;
pub mod heatmap;

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use moth::{Error, Result};

/// The font every figure uses.
const FONT_BYTES: &[u8] = include_bytes!("../../../../assets/fonts/DejaVuSans.ttf");
/// The family name figures ask for.
pub const FONT: &str = "sans-serif";

/// Registers the shipped font with plotters, once per process.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are the committed font file, parsed at every start; a
        // parse failure would be a broken checkout, and PNG text would then
        // fail with plotters' own error where it is drawn.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// A figure that can be drawn on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws on `area` (already filled white).
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// What drawing returns: plotters' error for the backend.
pub type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn drawing_error(e: impl std::fmt::Display) -> Error {
    Error::encode("a figure", e)
}

/// The figure as PNG bytes (RGB, 8 bits).
pub fn render_png(fig: &impl Figure) -> Result<Vec<u8>> {
    register_font();
    let (w, h) = fig.size();
    let mut pixels = vec![255u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        area.fill(&WHITE).map_err(drawing_error)?;
        fig.draw(&area).map_err(drawing_error)?;
        area.present().map_err(drawing_error)?;
    }
    let image = image::RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| Error::encode("a figure", "the pixel buffer has the wrong size"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::encode("a PNG image", e))?;
    Ok(out.into_inner())
}

/// The figure as an SVG document.
pub fn render_svg(fig: &impl Figure) -> Result<String> {
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, fig.size()).into_drawing_area();
        area.fill(&WHITE).map_err(drawing_error)?;
        fig.draw(&area).map_err(drawing_error)?;
        area.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

/// Writes `STEM.png` and `STEM.svg`; returns the PNG's path.
pub fn write(stem: &Path, fig: &impl Figure) -> Result<PathBuf> {
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    write(&png, &render_png(fig)?)?;
    write(&svg, render_svg(fig)?.as_bytes())?;
    Ok(png)
}

/// A value as figure text: one decimal below 10, else an integer; `signed`
/// writes a '+' before positive values; a rounded zero has no sign.
pub fn fmt_value(v: f64, signed: bool) -> String {
    if v.is_nan() {
        return "n/a".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = if v.abs() < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    };
    let zero = s
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.');
    match (zero, s.strip_prefix('-')) {
        (true, Some(unsigned)) => unsigned.to_string(),
        (false, None) if signed => format!("+{s}"),
        _ => s,
    }
}

/// An axis tick: whole numbers without decimals, others with up to two.
pub fn tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{:.0}", v)
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The colour at `t` in 0..=1 along equally spaced `stops`.
pub fn interpolate(stops: &[[f64; 3]], t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let pos = t * (stops.len() - 1) as f64;
    let i = (pos.floor() as usize).min(stops.len() - 2);
    let f = pos - i as f64;
    let c = |k: usize| (stops[i][k] + (stops[i + 1][k] - stops[i][k]) * f).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

/// Names under the columns of a chart whose plotting area spans `x` (in
/// pixels of `area`) and ends at `bottom`: turned a quarter clockwise and
/// hanging from the axis, so that long names neither collide nor get cut.
/// (plotters centres rotated axis labels on the axis, which hides half of
/// each name under the plot.)
pub fn column_labels<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    labels: &[String],
    x: std::ops::Range<i32>,
    bottom: i32,
    text_px: u32,
) -> DrawResult<DB> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let style = TextStyle::from((FONT, text_px).into_font())
        .transform(FontTransform::Rotate90)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let width = f64::from(x.end - x.start) / labels.len().max(1) as f64;
    for (j, label) in labels.iter().enumerate() {
        let cx = x.start + ((j as f64 + 0.5) * width).round() as i32;
        area.draw_text(label, &style, (cx, bottom + 8))?;
    }
    Ok(())
}

/// Line and bar colours, in series order (blue, orange, green, red).
pub const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_written_in_a_table() {
        assert_eq!(fmt_value(2.71, false), "2.7");
        assert_eq!(fmt_value(123.4, false), "123");
        assert_eq!(fmt_value(2.0, true), "+2.0");
        assert_eq!(fmt_value(-0.01, true), "0.0");
        assert_eq!(fmt_value(-12.0, true), "-12");
        assert_eq!(fmt_value(f64::NAN, false), "n/a");
        assert_eq!(tick(&300.0), "300");
        assert_eq!(tick(&0.25), "0.25");
        assert_eq!(tick(&2.5), "2.5");
    }

    #[test]
    fn colours_run_along_the_stops() {
        let stops = [[0.0, 0.0, 0.0], [255.0, 255.0, 255.0]];
        assert_eq!(interpolate(&stops, 0.0), RGBColor(0, 0, 0));
        assert_eq!(interpolate(&stops, 1.0), RGBColor(255, 255, 255));
        assert_eq!(interpolate(&stops, 0.5), RGBColor(128, 128, 128));
        assert_eq!(interpolate(&stops, 7.0), RGBColor(255, 255, 255));
    }
}

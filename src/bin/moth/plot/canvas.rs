//! An RGB8 raster with clipped rectangles, lines and bitmap text, and its
//! PNG encoding: what the heatmaps and curves are drawn on. Text uses the
//! small embedded 5x7 font of [`super::font`] at an integer scale, so
//! plotting needs nothing beyond the `png` encoder.

use moth::{Error, Result};

use super::font::{glyph, GLYPH_W};

/// An RGB8 image with clipped drawing.
pub(super) struct Canvas {
    pub(super) w: i64,
    pub(super) h: i64,
    pub(super) px: Vec<u8>,
}

impl Canvas {
    pub(super) fn new(w: i64, h: i64) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; (w * h * 3) as usize],
        }
    }

    pub(super) fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        let (x0, x1) = (x.max(0), (x + w).min(self.w));
        let (y0, y1) = (y.max(0), (y + h).min(self.h));
        for yy in y0..y1 {
            for xx in x0..x1 {
                let i = ((yy * self.w + xx) * 3) as usize;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// 1 px outline just outside the rectangle.
    pub(super) fn outline(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        self.fill_rect(x - 1, y - 1, w + 2, 1, c);
        self.fill_rect(x - 1, y + h, w + 2, 1, c);
        self.fill_rect(x - 1, y, 1, h, c);
        self.fill_rect(x + w, y, 1, h, c);
    }

    /// A straight line of the given thickness from (x0, y0) to (x1, y1),
    /// drawn as squares along the longer axis.
    pub(super) fn line(&mut self, from: (i64, i64), to: (i64, i64), thick: i64, c: [u8; 3]) {
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        let n = dx.abs().max(dy.abs()).max(1);
        for i in 0..=n {
            let x = from.0 + (dx * i + n / 2) / n;
            let y = from.1 + (dy * i + n / 2) / n;
            self.fill_rect(x - thick / 2, y - thick / 2, thick, thick, c);
        }
    }

    /// Horizontal text with its top-left corner at (x, y).
    pub(super) fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: [u8; 3]) {
        glyph_blocks(text, scale, |u, v| {
            self.fill_rect(x + u, y + v, scale, scale, c)
        });
    }

    /// Text rotated 90° counter-clockwise (reading bottom to top), its left
    /// edge at `x` and its start at the exclusive bottom edge `y_bottom`.
    pub(super) fn text_vertical(
        &mut self,
        x: i64,
        y_bottom: i64,
        text: &str,
        scale: i64,
        c: [u8; 3],
    ) {
        glyph_blocks(text, scale, |u, v| {
            self.fill_rect(x + v, y_bottom - u - scale, scale, scale, c)
        });
    }
}

/// Calls `block(u, v)` for every lit font pixel, (u, v) being its offset
/// from the top-left of upright text.
fn glyph_blocks(text: &str, scale: i64, mut block: impl FnMut(i64, i64)) {
    for (k, ch) in text.chars().enumerate() {
        let left = k as i64 * (GLYPH_W + 1) * scale;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                    block(left + col * scale, row as i64 * scale);
                }
            }
        }
    }
}

/// The canvas as PNG bytes. A failure here is the encoder's, not the
/// caller's input.
pub(super) fn encode(cv: &Canvas) -> Result<Vec<u8>> {
    let png_err = |e: png::EncodingError| Error::encode("a PNG image", e);
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, cv.w as u32, cv.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&cv.px).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
    }
    Ok(out)
}

//! Line charts of trigger sizes over training steps, one panel per run side
//! by side with a shared y axis: the paper's Fig. 6 (symmetric against
//! asymmetric hardening of one pair, each direction a line).

use std::path::Path;

use moth::{Error, Result};

use super::canvas::{encode, Canvas};
use super::font::{text_h, text_w};

/// One line: a label for the legend and its (step, value) points in order.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (x, y) points, x increasing.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title and its lines.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Drawn above the panel.
    pub title: String,
    /// At most [`COLOURS`]`.len()` lines.
    pub series: Vec<Series>,
}

/// Line colours, in series order (blue, orange, green, red).
const COLOURS: [[u8; 3]; 4] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];
const BLACK: [u8; 3] = [0, 0, 0];
const GREY: [u8; 3] = [200, 200, 200];
const PANEL_W: i64 = 420;
const PANEL_H: i64 = 300;
const MARGIN: i64 = 60;
const SCALE: i64 = 2;

/// Renders the panels side by side under `title` as PNG bytes. Fails when
/// there is no panel, a panel has no point or more lines than colours, or a
/// value is not finite.
pub fn render_png(title: &str, y_label: &str, panels: &[Panel]) -> Result<Vec<u8>> {
    let (x_range, y_range) = ranges(panels)?;
    let width = MARGIN + panels.len() as i64 * (PANEL_W + MARGIN);
    let height = 2 * MARGIN + PANEL_H + legend_height(panels);
    let mut cv = Canvas::new(width, height);
    cv.text(MARGIN, 12, title, SCALE, BLACK);
    cv.text_vertical(8, MARGIN + PANEL_H, y_label, SCALE, BLACK);
    for (i, panel) in panels.iter().enumerate() {
        let left = MARGIN + i as i64 * (PANEL_W + MARGIN);
        draw_panel(&mut cv, left, panel, x_range, y_range);
    }
    encode(&cv)
}

/// Renders like [`render_png`] and writes the PNG to `path`.
pub fn write_png(path: &Path, title: &str, y_label: &str, panels: &[Panel]) -> Result<()> {
    let bytes = render_png(title, y_label, panels)?;
    std::fs::write(path, bytes)
        .map_err(|e| Error::io(format!("writing plot {}", path.display()), e))
}

fn legend_height(panels: &[Panel]) -> i64 {
    let lines = panels.iter().map(|p| p.series.len()).max().unwrap_or(0) as i64;
    lines * (text_h(SCALE) + 6)
}

/// The x and y ranges over all panels (y from 0, so sizes compare), after
/// checking the input.
fn ranges(panels: &[Panel]) -> Result<((f64, f64), (f64, f64))> {
    if panels.is_empty() {
        return Err(Error::input("plot: no panel to draw"));
    }
    let mut x = (f64::INFINITY, f64::NEG_INFINITY);
    let mut y_max = 0.0_f64;
    for p in panels {
        if p.series.len() > COLOURS.len() {
            return Err(Error::input(format!(
                "plot: panel '{}' has {} lines, at most {} can be told apart",
                p.title,
                p.series.len(),
                COLOURS.len()
            )));
        }
        for &(px, py) in p.series.iter().flat_map(|s| &s.points) {
            if !px.is_finite() || !py.is_finite() {
                return Err(Error::input(format!(
                    "plot: panel '{}' has a non-finite point",
                    p.title
                )));
            }
            x = (x.0.min(px), x.1.max(px));
            y_max = y_max.max(py);
        }
    }
    if !x.0.is_finite() {
        return Err(Error::input("plot: no point to draw"));
    }
    let x = if x.1 > x.0 { x } else { (x.0 - 1.0, x.0 + 1.0) };
    let y_max = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
    Ok((x, (0.0, y_max)))
}

fn draw_panel(cv: &mut Canvas, left: i64, panel: &Panel, xr: (f64, f64), yr: (f64, f64)) {
    let top = MARGIN;
    let to_px = |(x, y): (f64, f64)| {
        let fx = (x - xr.0) / (xr.1 - xr.0);
        let fy = (y - yr.0) / (yr.1 - yr.0);
        (
            left + (fx * (PANEL_W - 1) as f64).round() as i64,
            top + PANEL_H - 1 - (fy * (PANEL_H - 1) as f64).round() as i64,
        )
    };
    for k in 1..4 {
        cv.fill_rect(left, top + k * PANEL_H / 4, PANEL_W, 1, GREY);
    }
    cv.outline(left, top, PANEL_W, PANEL_H, BLACK);
    cv.text(left, top - text_h(SCALE) - 6, &panel.title, SCALE, BLACK);
    for (s, colour) in panel.series.iter().zip(COLOURS) {
        for w in s.points.windows(2) {
            cv.line(to_px(w[0]), to_px(w[1]), 2, colour);
        }
        if let [only] = s.points.as_slice() {
            let (x, y) = to_px(*only);
            cv.fill_rect(x - 2, y - 2, 5, 5, colour);
        }
    }
    axis_labels(cv, left, xr, yr);
    legend(cv, left, panel);
}

fn axis_labels(cv: &mut Canvas, left: i64, xr: (f64, f64), yr: (f64, f64)) {
    let below = MARGIN + PANEL_H + 6;
    cv.text(left, below, &format!("{:.0}", xr.0), SCALE, BLACK);
    let end = format!("{:.0}", xr.1);
    cv.text(
        left + PANEL_W - text_w(&end, SCALE),
        below,
        &end,
        SCALE,
        BLACK,
    );
    let step = "step";
    cv.text(
        left + (PANEL_W - text_w(step, SCALE)) / 2,
        below,
        step,
        SCALE,
        BLACK,
    );
    let top = format!("{:.1}", yr.1);
    cv.text(left + 4, MARGIN + 4, &top, SCALE, BLACK);
}

fn legend(cv: &mut Canvas, left: i64, panel: &Panel) {
    let mut y = MARGIN + PANEL_H + text_h(SCALE) + 16;
    for (s, colour) in panel.series.iter().zip(COLOURS) {
        cv.fill_rect(left, y + 2, 20, 4, colour);
        cv.text(left + 28, y, &s.label, SCALE, BLACK);
        y += text_h(SCALE) + 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info.width, info.height, buf)
    }

    fn panel(title: &str, lines: &[&[(f64, f64)]]) -> Panel {
        Panel {
            title: title.into(),
            series: lines
                .iter()
                .enumerate()
                .map(|(i, p)| Series {
                    label: format!("line {i}"),
                    points: p.to_vec(),
                })
                .collect(),
        }
    }

    fn count_colour(img: &(u32, u32, Vec<u8>), c: [u8; 3]) -> usize {
        img.2.chunks(3).filter(|p| *p == c).count()
    }

    #[test]
    fn panels_sit_side_by_side_and_every_line_is_drawn_in_its_colour() {
        let a = panel(
            "symmetric",
            &[&[(0.0, 1.0), (10.0, 5.0)], &[(0.0, 2.0), (10.0, 6.0)]],
        );
        let b = panel("asymmetric", &[&[(0.0, 1.0), (10.0, 3.0)]]);
        let one = decode(&render_png("t", "size", std::slice::from_ref(&a)).unwrap());
        let two = decode(&render_png("t", "size", &[a, b]).unwrap());
        assert_eq!(two.0 - one.0, (PANEL_W + MARGIN) as u32);
        assert!(count_colour(&one, COLOURS[0]) > 100);
        assert!(count_colour(&one, COLOURS[1]) > 100);
        assert!(count_colour(&two, COLOURS[0]) > count_colour(&one, COLOURS[0]));
        assert_eq!(count_colour(&one, COLOURS[2]), 0);
    }

    #[test]
    fn a_rising_line_ends_higher_than_it_starts() {
        let p = panel("p", &[&[(0.0, 0.0), (100.0, 10.0)]]);
        let img = decode(&render_png("", "", &[p]).unwrap());
        let rows: Vec<usize> = (0..img.1 as usize)
            .filter(|&y| {
                let row = &img.2[y * img.0 as usize * 3..(y + 1) * img.0 as usize * 3];
                row.chunks(3).any(|px| px == COLOURS[0])
            })
            .collect();
        let col_of = |y: usize| {
            let row = &img.2[y * img.0 as usize * 3..(y + 1) * img.0 as usize * 3];
            row.chunks(3).position(|px| px == COLOURS[0]).unwrap()
        };
        // The topmost coloured row (largest value) lies right of the lowest
        // plotted row (the first point): the line rises to the right.
        let (top, bottom) = (
            rows[0],
            *rows
                .iter()
                .rev()
                .find(|&&y| y < MARGIN as usize + PANEL_H as usize)
                .unwrap(),
        );
        assert!(col_of(top) > col_of(bottom), "{top} {bottom}");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(render_png("t", "y", &[]).is_err());
        assert!(render_png("t", "y", &[panel("p", &[])]).is_err());
        assert!(render_png("t", "y", &[panel("p", &[&[(0.0, f64::NAN)]])]).is_err());
        let five: Vec<&[(f64, f64)]> = vec![&[(0.0, 1.0)]; 5];
        assert!(render_png("t", "y", &[panel("p", &five)]).is_err());
    }
}

//! Line charts over training steps, panels side by side: the paper's Fig. 6
//! (the trigger sizes of one pair under symmetric and asymmetric hardening,
//! on one y scale) and a run's hardening curve (mean trigger size and
//! held-out accuracy per step, each on its own scale).

use plotters::coord::Shift;
use plotters::prelude::*;

use moth::{Error, Result};

use super::{DrawResult, Figure, FONT, PALETTE};

const TEXT_PX: u32 = 15;
const PANEL_W: u32 = 460;
const PANEL_H: u32 = 340;

/// One line: a legend label and its (x, y) points, x increasing.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, what its y axis shows, its lines.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Drawn above the panel.
    pub title: String,
    /// The y axis title, with its unit.
    pub y_desc: String,
    /// At most [`PALETTE`]`.len()` lines.
    pub series: Vec<Series>,
}

/// Panels side by side.
pub struct Lines {
    title: String,
    x_desc: String,
    panels: Vec<Panel>,
    /// One y range for all panels (so that they compare), else each its own.
    shared_y: bool,
    x_range: (f64, f64),
    y_ranges: Vec<(f64, f64)>,
}

impl Lines {
    /// Checks the panels: at least one, each line finite, at most as many
    /// lines as colours, some point somewhere. y axes start at 0.
    pub fn new(title: &str, x_desc: &str, panels: Vec<Panel>, shared_y: bool) -> Result<Self> {
        if panels.is_empty() {
            return Err(Error::input("plot: no panel to draw"));
        }
        let mut x = (f64::INFINITY, f64::NEG_INFINITY);
        let mut y_max = Vec::new();
        for p in &panels {
            if p.series.len() > PALETTE.len() {
                return Err(Error::input(format!(
                    "plot: panel '{}' has {} lines, at most {} can be told apart",
                    p.title,
                    p.series.len(),
                    PALETTE.len()
                )));
            }
            let mut top = 0.0_f64;
            for &(px, py) in p.series.iter().flat_map(|s| &s.points) {
                if !px.is_finite() || !py.is_finite() {
                    return Err(Error::input(format!(
                        "plot: panel '{}' has a non-finite point",
                        p.title
                    )));
                }
                x = (x.0.min(px), x.1.max(px));
                top = top.max(py);
            }
            y_max.push(if top > 0.0 { top * 1.08 } else { 1.0 });
        }
        if !x.0.is_finite() {
            return Err(Error::input("plot: no point to draw"));
        }
        let x_range = if x.1 > x.0 { x } else { (x.0 - 1.0, x.0 + 1.0) };
        let shared = y_max.iter().fold(0.0_f64, |m, &v| m.max(v));
        let y_ranges = y_max
            .iter()
            .map(|&m| (0.0, if shared_y { shared } else { m }))
            .collect();
        Ok(Lines {
            title: title.to_string(),
            x_desc: x_desc.to_string(),
            panels,
            shared_y,
            x_range,
            y_ranges,
        })
    }

    /// The y range panel `i` is drawn on.
    #[cfg(test)]
    pub fn y_range(&self, i: usize) -> (f64, f64) {
        self.y_ranges[i]
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        i: usize,
    ) -> DrawResult<DB> {
        let panel = &self.panels[i];
        let (y0, y1) = self.y_ranges[i];
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT, TEXT_PX + 2))
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(if i == 0 || !self.shared_y { 64 } else { 40 })
            .build_cartesian_2d(self.x_range.0..self.x_range.1, y0..y1)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc(self.x_desc.as_str())
            .y_desc(panel.y_desc.as_str())
            .label_style((FONT, TEXT_PX))
            .x_label_formatter(&super::tick)
            .y_label_formatter(&super::tick)
            .axis_desc_style((FONT, TEXT_PX))
            .draw()?;
        for (s, colour) in panel.series.iter().zip(PALETTE) {
            let style = ShapeStyle::from(colour).stroke_width(2);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))?
                .label(s.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            // Points stay visible where a line has one point or gaps.
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 2, colour.filled())))?;
        }
        if panel.series.iter().any(|s| !s.label.is_empty()) {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font((FONT, TEXT_PX))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    }
}

impl Figure for Lines {
    fn size(&self) -> (u32, u32) {
        (self.panels.len() as u32 * PANEL_W, PANEL_H + 40)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let area = area.titled(&self.title, (FONT, TEXT_PX + 5))?;
        for (i, cell) in area.split_evenly((1, self.panels.len())).iter().enumerate() {
            self.draw_panel(cell, i)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{render_png, render_svg};

    fn panel(title: &str, lines: &[&[(f64, f64)]]) -> Panel {
        Panel {
            title: title.into(),
            y_desc: "trigger size".into(),
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

    fn count(png: &[u8], c: RGBColor) -> usize {
        let img = image::load_from_memory(png).unwrap().into_rgb8();
        img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn panels_sit_side_by_side_and_every_line_is_drawn_in_its_colour() {
        let a = panel(
            "symmetric",
            &[&[(0.0, 1.0), (10.0, 5.0)], &[(0.0, 2.0), (10.0, 6.0)]],
        );
        let b = panel("asymmetric", &[&[(0.0, 1.0), (10.0, 3.0)]]);
        let one = Lines::new("t", "step", vec![a.clone()], true).unwrap();
        let two = Lines::new("t", "step", vec![a, b], true).unwrap();
        assert_eq!(two.size().0 - one.size().0, PANEL_W);
        let (p1, p2) = (render_png(&one).unwrap(), render_png(&two).unwrap());
        assert!(count(&p1, PALETTE[0]) > 100 && count(&p1, PALETTE[1]) > 100);
        assert!(count(&p2, PALETTE[0]) > count(&p1, PALETTE[0]));
        assert_eq!(count(&p1, PALETTE[2]), 0);
        let svg = render_svg(&two).unwrap();
        for want in ["symmetric", "asymmetric", "line 1", "step", "trigger size"] {
            assert!(svg.contains(want), "{want}");
        }
    }

    #[test]
    fn y_scales_are_shared_or_each_panels_own() {
        let a = panel("a", &[&[(0.0, 10.0), (1.0, 20.0)]]);
        let b = panel("b", &[&[(0.0, 0.5), (1.0, 0.9)]]);
        let shared = Lines::new("t", "step", vec![a.clone(), b.clone()], true).unwrap();
        assert_eq!(shared.y_range(0), shared.y_range(1));
        let own = Lines::new("t", "step", vec![a, b], false).unwrap();
        assert!(own.y_range(1).1 < 1.0 && own.y_range(0).1 > 20.0);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(Lines::new("t", "x", vec![], true).is_err());
        assert!(Lines::new("t", "x", vec![panel("p", &[])], true).is_err());
        assert!(Lines::new("t", "x", vec![panel("p", &[&[(0.0, f64::NAN)]])], true).is_err());
        let five: Vec<&[(f64, f64)]> = vec![&[(0.0, 1.0)]; 5];
        assert!(Lines::new("t", "x", vec![panel("p", &five)], true).is_err());
    }
}

//! Grouped bar charts: one group per class, one bar per series (the
//! per-class mean distance before and after hardening).

use plotters::coord::Shift;
use plotters::prelude::*;

use moth::{Error, Result};

use super::{DrawResult, Figure, FONT, PALETTE};

const TEXT_PX: u32 = 15;

/// A bar chart ready to draw.
pub struct Bars<'a> {
    title: &'a str,
    y_desc: &'a str,
    labels: &'a [String],
    series: Vec<(String, Vec<f64>)>,
    top: f64,
    label_px: u32,
}

impl<'a> Bars<'a> {
    /// `series` are (name, one value per label); non-finite values are
    /// left out. Refused without labels, with a series of the wrong length
    /// or more series than colours.
    pub fn new(
        title: &'a str,
        y_desc: &'a str,
        labels: &'a [String],
        series: Vec<(String, Vec<f64>)>,
    ) -> Result<Self> {
        if labels.is_empty() || series.is_empty() || series.len() > PALETTE.len() {
            return Err(Error::input(format!(
                "bar chart: {} groups and {} series (at least 1 group, 1 to {} series)",
                labels.len(),
                series.len(),
                PALETTE.len()
            )));
        }
        if let Some((name, v)) = series.iter().find(|(_, v)| v.len() != labels.len()) {
            return Err(Error::input(format!(
                "bar chart: series {name} has {} values for {} groups",
                v.len(),
                labels.len()
            )));
        }
        let most = series
            .iter()
            .flat_map(|(_, v)| v)
            .filter(|v| v.is_finite())
            .fold(0.0_f64, |m, &v| m.max(v));
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as u32;
        Ok(Bars {
            title,
            y_desc,
            labels,
            series,
            // Room above the bars for the legend.
            top: if most > 0.0 { most * 1.3 } else { 1.0 },
            label_px: longest * TEXT_PX * 6 / 10 + 16,
        })
    }
}

impl Figure for Bars<'_> {
    fn size(&self) -> (u32, u32) {
        let n = self.labels.len() as u32;
        (
            (n * 28 * self.series.len() as u32 + 120).max(480),
            360 + self.label_px,
        )
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let n = self.labels.len();
        let last = n as i32 - 1;
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, (FONT, TEXT_PX + 5))
            .margin(12)
            .x_label_area_size(self.label_px)
            .y_label_area_size(70)
            .build_cartesian_2d((0..last).into_segmented(), 0.0..self.top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|_| String::new())
            .y_label_style((FONT, TEXT_PX))
            .y_label_formatter(&super::tick)
            .y_desc(self.y_desc)
            .axis_desc_style((FONT, TEXT_PX))
            .draw()?;
        let (xs, ys) = chart.plotting_area().get_pixel_range();
        super::column_labels(area, self.labels, xs, ys.end, TEXT_PX)?;
        // Bars share each class's segment: 80% of it, side by side.
        let segment = chart.plotting_area().dim_in_pixel().0 as f64 / n as f64;
        let bar = segment * 0.8 / self.series.len() as f64;
        let edge = |k: usize| match k < n {
            true => SegmentValue::Exact(k as i32),
            false => SegmentValue::Last,
        };
        for (s, ((label, values), colour)) in self.series.iter().zip(PALETTE).enumerate() {
            let left = segment * 0.1 + s as f64 * bar;
            let right = (segment - left - bar).max(0.0);
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(k, &v)| {
                            let mut r =
                                Rectangle::new([(edge(k), 0.0), (edge(k + 1), v)], colour.filled());
                            r.set_margin(0, 0, left.round() as u32, right.round() as u32);
                            r
                        }),
                )?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, TEXT_PX))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::{render_png, render_svg};

    fn labels() -> Vec<String> {
        ["Sandal", "Ankle boot"].map(String::from).to_vec()
    }

    #[test]
    fn each_series_is_drawn_in_its_colour_and_named() {
        let l = labels();
        let bars = Bars::new(
            "mean distance per source class",
            "mean trigger size",
            &l,
            vec![
                ("before".into(), vec![2.0, 4.0]),
                ("after".into(), vec![3.0, f64::NAN]),
            ],
        )
        .unwrap();
        let png = render_png(&bars).unwrap();
        let img = image::load_from_memory(&png).unwrap().into_rgb8();
        let count = |c: RGBColor| img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
        assert!(count(PALETTE[0]) > 1000 && count(PALETTE[1]) > 500);
        // Two blue bars (2 and 4) against one orange bar (3).
        assert!(count(PALETTE[0]) > count(PALETTE[1]));
        let svg = render_svg(&bars).unwrap();
        for want in ["Ankle boot", "before", "after", "mean trigger size"] {
            assert!(svg.contains(want), "{want}");
        }
    }

    #[test]
    fn bad_series_are_refused() {
        let l = labels();
        assert!(Bars::new("t", "y", &l, vec![]).is_err());
        assert!(Bars::new("t", "y", &l, vec![("a".into(), vec![1.0])]).is_err());
        assert!(Bars::new("t", "y", &[], vec![("a".into(), vec![])]).is_err());
    }
}

//! The SVG plots of the report, drawn with plotters' SVG backend (text stays `<text>` elements,
//! so no font files are needed to draw or to view them).

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Size of every plot, in pixels.
const SIZE: (u32, u32) = (820, 500);

/// One colour per series, the same server always getting the same colour across plots.
pub fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 9] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub colour: RGBColor,
    /// Drawn thin and faint, for reference values (Kerrisk's published numbers).
    pub faint: bool,
    pub points: Vec<(f64, f64)>,
}

/// An axis: linear, or logarithmic (values are plotted as log10 and labelled as powers of 10).
#[derive(Clone, Copy)]
pub enum Axis {
    Linear,
    Log,
}

impl Axis {
    fn map(self, v: f64) -> f64 {
        match self {
            Axis::Linear => v,
            Axis::Log => v.max(1e-12).log10(),
        }
    }
    /// The plotted range for these values, with some room around them.
    fn range(self, values: impl Iterator<Item = f64>, headroom: f64) -> std::ops::Range<f64> {
        let mapped: Vec<f64> = values.map(|v| self.map(v)).collect();
        let lo = mapped.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = mapped.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        match self {
            Axis::Log if lo.is_finite() => lo.floor()..hi.ceil().max(lo.floor() + 1.0),
            Axis::Linear if hi.is_finite() => 0.0f64.min(lo)..(hi * headroom).max(1e-9),
            _ => 0.0..1.0,
        }
    }
    fn label(self, v: f64) -> String {
        match self {
            Axis::Linear => tick(v),
            // Label only the powers of ten.
            Axis::Log if (v - v.round()).abs() < 1e-6 => tick(10f64.powf(v.round())),
            Axis::Log => String::new(),
        }
    }
}

/// An axis label: 10,000 rather than 10000.0, 0.5 rather than 0.500.
fn tick(v: f64) -> String {
    if v.abs() >= 1.0 && (v - v.round()).abs() < 1e-9 {
        let s = crate::table::thousands(v.abs().round() as u64);
        return if v < 0.0 { format!("-{s}") } else { s };
    }
    let s = crate::table::sig3(v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A line chart with a legend.
pub fn lines(
    path: &Path,
    title: &str,
    (x_desc, x_axis): (&str, Axis),
    (y_desc, y_axis): (&str, Axis),
    series: &[Series],
) -> anyhow::Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_range = x_axis.range(all().map(|p| p.0), 1.02);
    // Head-room above the data for the legend.
    let y_range = y_axis.range(all().map(|p| p.1), 1.5);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(75)
        .build_cartesian_2d(x_range, y_range)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| x_axis.label(*v))
        .y_label_formatter(&|v| y_axis.label(*v))
        .draw()
        .map_err(plot_error)?;
    for s in series {
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&(x, y)| (x_axis.map(x), y_axis.map(y)))
            .collect();
        let (colour, width) = if s.faint {
            (s.colour.mix(0.45), 1)
        } else {
            (s.colour.mix(1.0), 3)
        };
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(width)))
            .map_err(plot_error)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(width))
            });
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, width + 1, colour.filled())),
            )
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// One bar of a bar chart: its label under it, its value (and the text written above it).
pub struct Bar {
    pub name: String,
    pub value: f64,
    pub text: String,
    pub colour: RGBColor,
}

/// A bar chart, one bar per server.
pub fn bars(path: &Path, title: &str, y_desc: &str, bars: &[Bar]) -> anyhow::Result<()> {
    let top = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9) * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(75)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        .x_labels(bars.len() + 1)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.name.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut rect = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), b.value),
                ],
                b.colour.filled(),
            );
            rect.set_margin(0, 0, 14, 14);
            rect
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                b.text.clone(),
                (SegmentValue::CenterOf(i), b.value + top * 0.02),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// plotters' errors borrow the backend's error type; keep only the message.
fn plot_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_well() {
        assert_eq!(tick(10_000.0), "10,000");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(Axis::Log.label(3.0), "1,000");
        assert_eq!(Axis::Log.label(-1.0), "0.1");
        assert_eq!(Axis::Log.label(2.5), "");
    }
}

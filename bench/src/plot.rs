//! The SVG plots of the report, drawn with plotters' SVG backend (text stays `<text>` elements,
//! so no font files are needed to draw or to view them).
//!
//! Drawn for a projector and for print: large type, a legend beside the plot rather than over
//! the data, and every series told apart three ways (colour, line style, marker), so that two
//! lines on top of each other, or a page printed in grey, still show which is which.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Size of every plot, in pixels (the book scales it to the page's width).
const SIZE: (u32, u32) = (1000, 560);
/// Width of the legend column at the right of a line chart.
const LEGEND_WIDTH: u32 = 290;
const FONT: &str = "sans-serif";
const TITLE_SIZE: u32 = 26;
const AXIS_SIZE: u32 = 21;
const LABEL_SIZE: u32 = 19;

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

/// How a series' line is drawn.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Line {
    Solid,
    Dashed,
    Dotted,
}

/// The shape marking each measured point of a series.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    TriangleDown,
    Cross,
    Plus,
    Bar,
}

/// Series `i`'s line style and marker, fixed like its colour: no two neighbours alike.
pub fn style(i: usize) -> (Line, Marker) {
    const LINES: [Line; 3] = [Line::Solid, Line::Dashed, Line::Dotted];
    const MARKERS: [Marker; 8] = [
        Marker::Circle,
        Marker::Square,
        Marker::Triangle,
        Marker::Diamond,
        Marker::TriangleDown,
        Marker::Cross,
        Marker::Plus,
        Marker::Bar,
    ];
    (LINES[i % LINES.len()], MARKERS[i % MARKERS.len()])
}

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub colour: RGBColor,
    pub line: Line,
    pub marker: Marker,
    /// Markers drawn hollow: for reference values (Kerrisk's published numbers).
    pub hollow: bool,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// Series `i`, in the colour, line and marker that index gets in every plot.
    pub fn nth(i: usize, name: &str, points: Vec<(f64, f64)>) -> Series {
        let (line, marker) = style(i);
        Series {
            name: name.to_owned(),
            colour: colour(i),
            line,
            marker,
            hollow: false,
            points,
        }
    }
}

/// An axis: linear; logarithmic (labelled at the powers of 10); or "symlog", log10(1 + v), so
/// that 0 has a place on a logarithmic-looking axis (0 idle connections beside 10,000).
#[derive(Clone, Copy, Debug)]
pub enum Axis {
    Linear,
    Log,
    SymLog,
}

impl Axis {
    fn map(self, v: f64) -> f64 {
        match self {
            Axis::Linear => v,
            Axis::Log => v.max(1e-12).log10(),
            Axis::SymLog => v.max(0.0).ln_1p() / std::f64::consts::LN_10,
        }
    }
    fn unmap(self, v: f64) -> f64 {
        match self {
            Axis::Linear => v,
            Axis::Log => 10f64.powf(v),
            Axis::SymLog => 10f64.powf(v) - 1.0,
        }
    }
    /// The plotted (mapped) range for these values, with a little room around them.
    fn range(self, values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
        let mapped: Vec<f64> = values.map(|v| self.map(v)).collect();
        let lo = mapped.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = mapped.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() || !hi.is_finite() {
            return 0.0..1.0;
        }
        match self {
            Axis::Log => lo.floor()..hi.ceil().max(lo.floor() + 1.0),
            // A tenth of a decade either side, so that the end points are not on the frame.
            Axis::SymLog => -0.1..(hi + 0.1).max(1.0),
            // Up to the first tick above the largest value (a little room over it): values up
            // to 97% end at 100%, not 140%.
            Axis::Linear => {
                let lo = lo.min(0.0);
                let hi = (hi * 1.02).max(1e-9);
                let step = nice_step((hi - lo) / 5.0);
                lo..(hi / step).ceil() * step
            }
        }
    }
    /// Where the labelled ticks go, as mapped values inside `range`.
    fn ticks(self, range: &std::ops::Range<f64>) -> Vec<f64> {
        let inside = |v: &f64| *v >= range.start - 1e-9 && *v <= range.end + 1e-9;
        match self {
            Axis::Log => (range.start.ceil() as i32..=range.end.floor() as i32)
                .map(f64::from)
                .collect(),
            Axis::SymLog => std::iter::once(0.0)
                .chain((1..=range.end.ceil() as i32).map(|k| self.map(10f64.powi(k))))
                .filter(inside)
                .collect(),
            Axis::Linear => {
                let step = nice_step((range.end - range.start) / 5.0);
                let first = (range.start / step).ceil() as i64;
                let last = (range.end / step).floor() as i64;
                (first..=last).map(|k| k as f64 * step).collect()
            }
        }
    }
    /// The label of a tick at mapped value `v`.
    fn label(self, v: f64) -> String {
        let value = self.unmap(v);
        match self {
            Axis::Linear => tick(value),
            // Powers of ten (and 0) come back from 10^x with rounding noise: 999.9999 is 1,000.
            Axis::Log | Axis::SymLog if value >= 1.0 => tick(value.round()),
            Axis::SymLog if value.abs() < 1e-6 => "0".to_owned(),
            Axis::Log | Axis::SymLog => tick(value),
        }
    }
}

/// The round step (1, 2, 2.5 or 5 times a power of ten) at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(raw)
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

/// Draws the marker of a point at `at`, in the pixel coordinates of `area`.
fn draw_marker(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    kind: Marker,
    at: (i32, i32),
    colour: RGBColor,
    hollow: bool,
) -> anyhow::Result<()> {
    let r = 7;
    let (x, y) = at;
    let style = if hollow {
        colour.stroke_width(2)
    } else {
        colour.filled()
    };
    let stroke = colour.stroke_width(3);
    let shift = |points: &[(i32, i32)]| -> Vec<(i32, i32)> {
        points.iter().map(|&(dx, dy)| (x + dx, y + dy)).collect()
    };
    let polygon = |points: &[(i32, i32)]| {
        let mut points = shift(points);
        if hollow {
            // An outline, closed: a Polygon is always filled.
            points.push(points[0]);
            area.draw(&PathElement::new(points, style))
        } else {
            area.draw(&Polygon::new(points, style))
        }
    };
    match kind {
        Marker::Circle => area.draw(&Circle::new(at, r, style)),
        Marker::Square => polygon(&[(-6, -6), (6, -6), (6, 6), (-6, 6)]),
        Marker::Triangle => polygon(&[(0, -8), (7, 5), (-7, 5)]),
        Marker::TriangleDown => polygon(&[(0, 8), (7, -5), (-7, -5)]),
        Marker::Diamond => polygon(&[(0, -8), (7, 0), (0, 8), (-7, 0)]),
        Marker::Bar => polygon(&[(-8, -3), (8, -3), (8, 3), (-8, 3)]),
        Marker::Cross => area
            .draw(&PathElement::new(shift(&[(-r, -r), (r, r)]), stroke))
            .and_then(|()| area.draw(&PathElement::new(shift(&[(-r, r), (r, -r)]), stroke))),
        Marker::Plus => area
            .draw(&PathElement::new(shift(&[(-r, 0), (r, 0)]), stroke))
            .and_then(|()| area.draw(&PathElement::new(shift(&[(0, -r), (0, r)]), stroke))),
    }
    .map_err(plot_error)
}

/// A linear f64 coordinate with the ticks we choose (plotters' own `with_key_points` does not
/// combine with label formatters on f64 axes).
struct Ticked {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: std::ops::Range<f64>, ticks: Vec<f64>) -> Ticked {
        Ticked { range, ticks }
    }
}

impl Ranged for Ticked {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn map(&self, value: &f64, (from, to): (i32, i32)) -> i32 {
        let share = (value - self.range.start) / (self.range.end - self.range.start);
        from + (f64::from(to - from) * share).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold lines at the labelled ticks; no light ones between them.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

/// The width of a series' line, and its dash and gap lengths (None: solid).
fn stroke(s: &Series) -> (u32, Option<(u32, u32)>) {
    match s.line {
        Line::Solid => (3, None),
        Line::Dashed => (3, Some((12, 7))),
        Line::Dotted => (3, Some((3, 6))),
    }
}

/// The legend, in a column of its own: a sample of each series' line and marker, and its name.
fn legend(area: &DrawingArea<SVGBackend<'_>, Shift>, series: &[Series]) -> anyhow::Result<()> {
    let x = 12;
    let step = 34;
    let top = (area.dim_in_pixel().1 as i32 - step * series.len() as i32).max(0) / 2;
    for (k, s) in series.iter().enumerate() {
        let y = top + step * k as i32;
        let (width, dash) = stroke(s);
        let sample = vec![(x, y), (x + 50, y)];
        let line_style = s.colour.stroke_width(width);
        match dash {
            None => area.draw(&PathElement::new(sample, line_style)),
            Some((on, off)) => area.draw(&DashedPathElement::new(sample, on, off, line_style)),
        }
        .map_err(plot_error)?;
        draw_marker(area, s.marker, (x + 25, y), s.colour, s.hollow)?;
        area.draw(&Text::new(
            s.name.clone(),
            (x + 62, y),
            (FONT, LABEL_SIZE)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(plot_error)?;
    }
    Ok(())
}

/// A line chart, every measured point marked, the legend at its right.
pub fn lines(
    path: &Path,
    title: &str,
    (x_desc, x_axis): (&str, Axis),
    (y_desc, y_axis): (&str, Axis),
    series: &[Series],
) -> anyhow::Result<()> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_range = x_axis.range(all().map(|p| p.0));
    let y_range = y_axis.range(all().map(|p| p.1));
    let x_ticks = x_axis.ticks(&x_range);
    let y_ticks = y_axis.ticks(&y_range);
    let canvas = SVGBackend::new(path, SIZE).into_drawing_area();
    canvas.fill(&WHITE).map_err(plot_error)?;
    let root = canvas
        .titled(title, (FONT, TITLE_SIZE))
        .map_err(plot_error)?;
    let (plot_area, legend_area) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(12)
        .x_label_area_size(64)
        .y_label_area_size(96)
        .build_cartesian_2d(Ticked::new(x_range, x_ticks), Ticked::new(y_range, y_ticks))
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style((FONT, AXIS_SIZE))
        .label_style((FONT, LABEL_SIZE))
        .bold_line_style(BLACK.mix(0.12))
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
        let (width, dash) = stroke(s);
        let line_style = s.colour.stroke_width(width);
        match dash {
            None => chart.draw_series(LineSeries::new(points.clone(), line_style)),
            Some((on, off)) => {
                chart.draw_series(DashedLineSeries::new(points.clone(), on, off, line_style))
            }
        }
        .map_err(plot_error)?;
        // Markers in pixels, on the whole canvas: the same shapes as in the legend.
        for p in &points {
            draw_marker(
                &canvas,
                s.marker,
                chart.backend_coord(p),
                s.colour,
                s.hollow,
            )?;
        }
    }
    legend(&legend_area, series)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// One bar of a bar chart: its label beside it, its value (and the text written after it).
pub struct Bar {
    pub name: String,
    pub value: f64,
    pub text: String,
    pub colour: RGBColor,
}

/// A horizontal bar chart, one bar per server, the first at the top: the servers' names sit at
/// the left in full, however many there are, with no empty slot after the last.
pub fn bars(path: &Path, title: &str, x_desc: &str, bars: &[Bar]) -> anyhow::Result<()> {
    let n = bars.len();
    // Room after the longest bar for its value.
    let top = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9) * 1.15;
    let x_range = 0.0..top;
    let x_ticks = Axis::Linear.ticks(&(0.0..top / 1.1));
    // Bar k (from the top) is centred on y = n - 1 - k.
    let row = |k: usize| (n - 1 - k) as f64;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, (FONT, TITLE_SIZE)).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(64)
        .y_label_area_size(200)
        .build_cartesian_2d(
            Ticked::new(x_range, x_ticks),
            Ticked::new(-0.6..n as f64 - 0.4, (0..n).map(row).collect()),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_desc)
        .axis_desc_style((FONT, AXIS_SIZE))
        .label_style((FONT, LABEL_SIZE))
        .bold_line_style(BLACK.mix(0.12))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| {
            let k = (n as f64 - 1.0 - v).round();
            if k >= 0.0 {
                bars.get(k as usize)
                    .map(|b| b.name.clone())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(k, b)| {
            Rectangle::new(
                [(0.0, row(k) - 0.34), (b.value, row(k) + 0.34)],
                b.colour.filled(),
            )
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(k, b)| {
            Text::new(
                b.text.clone(),
                (b.value + top * 0.01, row(k)),
                (FONT, LABEL_SIZE)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
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
    }

    #[test]
    fn symlog_gives_zero_a_place_and_labels_powers_of_ten() {
        let axis = Axis::SymLog;
        let range = axis.range([0.0, 100.0, 900.0, 10_000.0].into_iter());
        assert!(range.start < 0.0 && range.end > 4.0);
        let labels: Vec<String> = axis
            .ticks(&range)
            .into_iter()
            .map(|t| axis.label(t))
            .collect();
        assert_eq!(labels, ["0", "10", "100", "1,000", "10,000"]);
    }

    #[test]
    fn a_percentage_axis_stops_near_100() {
        let axis = Axis::Linear;
        let range = axis.range([0.0, 54.0, 97.0].into_iter());
        let ticks = axis.ticks(&range);
        assert_eq!(ticks.last().copied(), Some(100.0));
        assert_eq!(range.end, 100.0);
        let range = axis.range([0.0, 93_089.0].into_iter());
        assert_eq!(axis.ticks(&range).last().copied(), Some(100_000.0));
    }

    #[test]
    fn neighbouring_series_differ_in_line_and_marker() {
        for i in 0..9 {
            assert_ne!(style(i).0, style(i + 1).0);
            assert_ne!(style(i).1, style(i + 1).1);
        }
    }
}

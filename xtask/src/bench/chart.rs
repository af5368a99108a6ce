//! The chart: new-connection rate and keep-alive p50 latency against the
//! number of Services, one line per mode. Drawn with plotters into a
//! bitmap; its text is rasterised with ab_glyph from a DejaVu font of the
//! Debian package `fonts-dejavu-core` (setup installs it), so nothing
//! needs fontconfig or a network.

use std::path::Path;

use ab_glyph::{Font, FontVec, PxScale, ScaleFont};
use anyhow::Context;
use plotters::backend::BitMapBackend;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, DrawingErrorKind};

use super::modes::Mode;
use super::stats::{Metric, Samples};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1800, 560);

pub fn draw(samples: &Samples, sizes: &[usize], path: &Path) -> anyhow::Result<()> {
    let font = FontVec::try_from_vec(std::fs::read(FONT).with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?)
        .map_err(|e| anyhow::anyhow!("{FONT}: {e}"))?;
    let backend = GlyphText {
        inner: BitMapBackend::new(path, SIZE),
        font,
    };
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, 3));
    panel(&panels[0], samples, sizes, Metric::ConnectLast, "New connections/s (target Service last)", false)?;
    panel(&panels[1], samples, sizes, Metric::KeepaliveP50, "Keep-alive request latency, p50 (µs)", false)?;
    panel(&panels[2], samples, sizes, Metric::Program, "Program N Services from empty (ms, log)", true)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn color(mode: Mode) -> RGBColor {
    match mode {
        Mode::Direct => RGBColor(120, 120, 120),
        Mode::Iptables => RGBColor(214, 39, 40),
        Mode::Nftables => RGBColor(255, 127, 14),
        Mode::Agent => RGBColor(31, 119, 180),
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    samples: &Samples,
    sizes: &[usize],
    metric: Metric,
    title: &str,
    log_y: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let series: Vec<(Mode, Vec<(f64, f64)>)> = [Mode::Direct, Mode::Iptables, Mode::Nftables, Mode::Agent]
        .into_iter()
        .map(|mode| {
            let points = sizes
                .iter()
                .filter_map(|&n| samples.spread(n, mode, metric).map(|s| (n.max(1) as f64, s.median)))
                .collect();
            (mode, points)
        })
        .collect();
    let ys = || series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let y_max = ys().fold(1.0, f64::max) * 1.15;
    let x_max = sizes.iter().copied().max().unwrap_or(1).max(10) as f64 * 2.0;
    let mut builder = ChartBuilder::on(area);
    builder.caption(title, ("sans-serif", 22)).margin(16).x_label_area_size(48).y_label_area_size(70);
    let x = (0.8f64..x_max).log_scale();
    if log_y {
        let y_min = ys().fold(f64::MAX, f64::min).min(y_max / 10.0) / 2.0;
        let chart = builder.build_cartesian_2d(x, (y_min..y_max * 2.0).log_scale()).map_err(plot_error)?;
        draw_lines(chart, series, &|v| format!("{v}"), SeriesLabelPosition::UpperLeft)
    } else {
        let chart = builder.build_cartesian_2d(x, 0f64..y_max).map_err(plot_error)?;
        draw_lines(chart, series, &|v| format!("{v:.0}"), SeriesLabelPosition::UpperRight)
    }
}

type Series = Vec<(Mode, Vec<(f64, f64)>)>;

fn draw_lines<'a, DB: DrawingBackend + 'a, X, Y>(mut chart: ChartContext<'a, DB, Cartesian2d<X, Y>>, series: Series, y_label: &dyn Fn(&f64) -> String, legend: SeriesLabelPosition) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("Services (N, log scale)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(y_label)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot_error)?;
    for (mode, points) in series {
        if points.is_empty() {
            continue;
        }
        let c = color(mode);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(3)))
            .map_err(plot_error)?
            .label(mode.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 5, c.filled()))).map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

/// A bitmap backend whose text comes from an ab_glyph font (plotters'
/// own text needs fontconfig).
struct GlyphText<'a> {
    inner: BitMapBackend<'a>,
    font: FontVec,
}

type Error<'a> = DrawingErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

impl GlyphText<'_> {
    /// Glyphs laid out on one line from x = 0 at the baseline `ascent`:
    /// (glyph, x) pairs, total width, height.
    fn layout(&self, text: &str, size: f64) -> (Vec<ab_glyph::Glyph>, f32, f32) {
        let scale = PxScale::from(size as f32);
        let scaled = self.font.as_scaled(scale);
        let mut x = 0.0f32;
        let mut glyphs = Vec::new();
        let mut previous = None;
        for ch in text.chars() {
            let id = scaled.glyph_id(ch);
            if let Some(p) = previous {
                x += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(scale, ab_glyph::point(x, scaled.ascent())));
            x += scaled.h_advance(id);
            previous = Some(id);
        }
        (glyphs, x, scaled.ascent() - scaled.descent())
    }
}

impl<'a> DrawingBackend for GlyphText<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), Error<'a>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), Error<'a>> {
        self.inner.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Error<'a>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Result<(), Error<'a>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(&mut self, a: BackendCoord, b: BackendCoord, style: &S, fill: bool) -> Result<(), Error<'a>> {
        self.inner.draw_rect(a, b, style, fill)
    }

    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, path: I, style: &S) -> Result<(), Error<'a>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: plotters_backend::BackendStyle>(&mut self, center: BackendCoord, radius: u32, style: &S, fill: bool) -> Result<(), Error<'a>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, vert: I, style: &S) -> Result<(), Error<'a>> {
        self.inner.fill_polygon(vert, style)
    }

    fn estimate_text_size<S: plotters_backend::BackendTextStyle>(&self, text: &str, style: &S) -> Result<(u32, u32), Error<'a>> {
        let (_, w, h) = self.layout(text, style.size());
        Ok((w.ceil() as u32, h.ceil() as u32))
    }

    fn draw_text<S: plotters_backend::BackendTextStyle>(&mut self, text: &str, style: &S, pos: BackendCoord) -> Result<(), Error<'a>> {
        let (glyphs, w, h) = self.layout(text, style.size());
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -w / 2.0,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0.0,
            VPos::Center => -h / 2.0,
            VPos::Bottom => -h,
        };
        let color = style.color();
        for glyph in glyphs {
            let Some(outline) = self.font.outline_glyph(glyph) else { continue };
            let bounds = outline.px_bounds();
            let mut pixels = Vec::new();
            outline.draw(|x, y, coverage| {
                if coverage > 0.0 {
                    let px = pos.0 + (bounds.min.x + x as f32 + dx).round() as i32;
                    let py = pos.1 + (bounds.min.y + y as f32 + dy).round() as i32;
                    pixels.push(((px, py), coverage));
                }
            });
            for (point, coverage) in pixels {
                let c = BackendColor {
                    alpha: color.alpha * f64::from(coverage.min(1.0)),
                    rgb: color.rgb,
                };
                self.inner.draw_pixel(point, c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws from made-up samples; the file is a PNG of the chart's size.
    /// Needs the font setup installs.
    #[test]
    fn draws_a_png_of_three_panels() {
        if !Path::new(FONT).exists() {
            eprintln!("SKIPPED: {FONT} missing (cargo xtask setup installs it)");
            return;
        }
        let mut s = Samples::default();
        for (i, n) in [1usize, 1000, 10_000].into_iter().enumerate() {
            for (k, mode) in [Mode::Direct, Mode::Iptables, Mode::Nftables, Mode::Agent].into_iter().enumerate() {
                let f = (i + 1) as f64 * (k + 1) as f64;
                s.add(n, mode, Metric::ConnectLast, Some(5000.0 / f));
                s.add(n, mode, Metric::KeepaliveP50, Some(20.0 + f));
                if mode != Mode::Direct {
                    s.add(n, mode, Metric::Program, Some(10f64.powi(i as i32) * f));
                }
            }
        }
        let path = std::env::temp_dir().join(format!("bench-chart-test-{}.png", std::process::id()));
        draw(&s, &[1, 1000, 10_000], &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&bytes[1..4], b"PNG");
        let (w, h) = (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
        assert_eq!((w, h), SIZE);
    }
}

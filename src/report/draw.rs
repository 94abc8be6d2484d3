//! Drawing one figure as SVG and PNG (plotters), with the plotted numbers as CSV beside it.
//!
//! The report ([`super`]) computes every number; this file only draws what it is given.

use crate::error::{Error, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, DrawingErrorKind};
use serde::Serialize;
use std::path::Path;
use std::sync::OnceLock;

/// How an axis maps values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Scale {
    Linear,
    /// log10; ticks at powers of ten, labelled 1e-6 style.
    Log10,
    /// Values are already logit10 of a probability (log10(p / (1 - p))); ticks labelled
    /// with the probability as a percentage (0.1%, 1%, 10%, 50%, 90%, 99%).
    Logit10,
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Style {
    Line,
    Points,
    LinePoints,
    /// A dashed line (fits and guides).
    Dashed,
}

/// One series: points in data coordinates (already transformed for Logit10 axes), and an
/// optional band (x, low, high) drawn as a translucent area in the same colour.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    pub label: String,
    /// Position in a sequential colour map, 0.0 (smallest model) to 1.0 (largest);
    /// `None`: a neutral grey (guides).
    pub shade: Option<f64>,
    pub style: Style,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

/// A figure: one or more panels side by side sharing a y-axis kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figure {
    /// File stem: `<name>.svg`, `<name>.png`, `<name>.csv`.
    pub name: String,
    pub title: String,
    pub panels: Vec<Panel>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
    /// Values the y-axis spans at least, whatever the data (ASR panels: 0 and 1); empty:
    /// the data's range.
    pub y_include: Vec<f64>,
}

/// Pixels per panel; panels sit side by side, the figure title (if any) above them.
const PANEL_SIZE: (u32, u32) = (640, 480);
const TITLE_HEIGHT: u32 = 40;
/// The embedded font (DejaVu Sans; licence in assets/fonts/LICENSE): the PNG needs glyphs
/// and machines without system fonts must still draw text.
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FONT_FAMILY: &str = "sans-serif";
/// Probabilities labelled on a Logit10 axis, most important first: a tick is kept if it
/// lies in range and is not crowded by one kept before it.
const LOGIT_TICKS: [(f64, &str); 21] = [
    (0.5, "50%"),
    (0.1, "10%"),
    (0.9, "90%"),
    (0.01, "1%"),
    (0.99, "99%"),
    (0.001, "0.1%"),
    (0.999, "99.9%"),
    (1e-4, "0.01%"),
    (0.9999, "99.99%"),
    (1e-5, "0.001%"),
    (0.99999, "99.999%"),
    (1e-6, "0.0001%"),
    (0.999999, "99.9999%"),
    (1e-7, "0.00001%"),
    (0.9999999, "99.99999%"),
    (1e-8, "0.000001%"),
    (0.99999999, "99.999999%"),
    (0.25, "25%"),
    (0.75, "75%"),
    (0.05, "5%"),
    (0.95, "95%"),
];
/// The top of the colour map used: viridis' last yellow is too pale on white.
const SHADE_TOP: f64 = 0.85;

/// Writes `<dir>/<fig.name>.svg`, `.png` and `.csv` (columns: panel, series, x, y, low,
/// high; one row per point and per band point).
///
/// Points and band points that cannot be plotted (non-finite, or not positive on a Log10
/// axis) are skipped in the drawing but still written to the CSV (`NaN`, `inf`); a line
/// breaks where a point is skipped, and a run of a single (or one repeated) point is drawn
/// as a dot whatever the style. The legend lists the series with labels (not those whose
/// label starts with `_`, which the CSV names without it), in the corner with the fewest
/// points; a panel with nothing plottable says "no data". Creates `dir` if it does not exist.
pub fn draw(fig: &Figure, dir: &Path) -> Result<()> {
    register_font()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let n = fig.panels.len().max(1) as u32;
    let title = if fig.title.is_empty() {
        0
    } else {
        TITLE_HEIGHT
    };
    let size = (PANEL_SIZE.0 * n, PANEL_SIZE.1 + title);

    let svg_path = dir.join(format!("{}.svg", fig.name));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        render(&root, fig)
            .and_then(|()| root.present())
            .map_err(|e| Error::Other(format!("{}: drawing failed: {e}", svg_path.display())))?;
    }
    std::fs::write(&svg_path, svg).map_err(|e| Error::io(&svg_path, e))?;

    let png_path = dir.join(format!("{}.png", fig.name));
    {
        let root = GlyphPlaced(BitMapBackend::new(&png_path, size)).into_drawing_area();
        render(&root, fig)
            .and_then(|()| root.present())
            .map_err(|e| Error::Other(format!("{}: drawing failed: {e}", png_path.display())))?;
    }

    write_csv(fig, &dir.join(format!("{}.csv", fig.name)))
}

/// A pixel backend whose text places each glyph in its advance box. plotters 0.3.7's
/// ab_glyph renderer puts each glyph's ink at the pen position, dropping its side bearing,
/// so "1e12" comes out as "1e1 2"; here each glyph is drawn alone, its ink centred in its
/// advance (the bearing is not reachable through plotters; centring is within a pixel or
/// so for digits and most letters). Everything else passes through unchanged.
struct GlyphPlaced<DB>(DB);

type BackendResult<DB> =
    std::result::Result<(), DrawingErrorKind<<DB as DrawingBackend>::ErrorType>>;

impl<DB: DrawingBackend> DrawingBackend for GlyphPlaced<DB> {
    type ErrorType = DB::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> BackendResult<DB> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> BackendResult<DB> {
        self.0.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> BackendResult<DB> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> BackendResult<DB> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> BackendResult<DB> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> BackendResult<DB> {
        self.0.draw_path(path, style)
    }

    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> BackendResult<DB> {
        self.0.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> BackendResult<DB> {
        self.0.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> BackendResult<DB> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<TStyle: plotters_backend::BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        self.0.estimate_text_size(text, style)
    }

    /// As plotters' default `draw_text` (anchor, transform, clipping), glyph by glyph.
    fn draw_text<TStyle: plotters_backend::BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> BackendResult<DB> {
        if style.color().alpha == 0.0 {
            return Ok(());
        }
        let font_err = |e: TStyle::FontError| DrawingErrorKind::FontError(Box::new(e));
        // Layout widths are whole pixels (truncated); measuring a string repeated
        // `REPEAT` times gives its advance to a fraction of a pixel.
        const REPEAT: usize = 16;
        let advance = |s: &str| -> std::result::Result<f64, DrawingErrorKind<DB::ErrorType>> {
            let ((x0, _), (x1, _)) = style.layout_box(&s.repeat(REPEAT)).map_err(font_err)?;
            Ok(f64::from(x1 - x0) / REPEAT as f64)
        };
        let ((min_x, min_y), (max_x, max_y)) = style.layout_box(text).map_err(font_err)?;
        let (w, h) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -w,
            HPos::Center => -w / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let trans = style.transform();
        let (cw, ch) = self.get_size();
        for (i, c) in text.char_indices() {
            let glyph = &text[i..i + c.len_utf8()];
            let mut ink = (i32::MAX, i32::MIN);
            style
                .draw(glyph, (0, 0), |x, _, _| {
                    ink = (ink.0.min(x), ink.1.max(x));
                    Ok::<(), std::convert::Infallible>(())
                })
                .map_err(font_err)?
                .ok();
            if ink.0 > ink.1 {
                continue; // a space: nothing to draw
            }
            let pen = if i == 0 { 0.0 } else { advance(&text[..i])? };
            let centred = (advance(glyph)? - f64::from(ink.1 - ink.0 + 1)) / 2.0;
            let shift = (pen + centred).round() as i32 - ink.0;
            let inner = &mut self.0;
            style
                .draw(glyph, (0, 0), |x, y, color| {
                    let (x, y) = trans.transform(x + shift + dx - min_x, y + dy - min_y);
                    let (x, y) = (pos.0 + x, pos.1 + y);
                    if x >= 0 && x < cw as i32 && y >= 0 && y < ch as i32 {
                        inner.draw_pixel((x, y), color)
                    } else {
                        Ok(())
                    }
                })
                .map_err(font_err)??;
        }
        Ok(())
    }
}

/// Registers the embedded font with plotters once per process.
fn register_font() -> Result<()> {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Other(
            "assets/fonts/DejaVuSans.ttf (embedded): not a font plotters can read".into(),
        ))
    }
}

fn write_csv(fig: &Figure, path: &Path) -> Result<()> {
    let csv_err = |e: csv::Error| match e.into_kind() {
        csv::ErrorKind::Io(e) => Error::io(path, e),
        kind => Error::Other(format!("{}: {kind:?}", path.display())),
    };
    let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
    w.write_record(["panel", "series", "x", "y", "low", "high"])
        .map_err(csv_err)?;
    for panel in &fig.panels {
        for s in &panel.series {
            for &(x, y) in &s.points {
                w.write_record([&panel.title, csv_label(&s.label), &num(x), &num(y), "", ""])
                    .map_err(csv_err)?;
            }
            for &(x, low, high) in &s.band {
                w.write_record([
                    &panel.title,
                    csv_label(&s.label),
                    &num(x),
                    "",
                    &num(low),
                    &num(high),
                ])
                .map_err(csv_err)?;
            }
        }
    }
    w.flush().map_err(|e| Error::io(path, e))
}

/// Whether a series label goes in the legend: not empty and not starting with `_`
/// (matplotlib's convention: `_fit N = 1M` is drawn and written to the CSV, unlisted).
fn in_legend(label: &str) -> bool {
    !label.is_empty() && !label.starts_with('_')
}

/// A series' name in the CSV: its label without a leading `_`.
fn csv_label(label: &str) -> &str {
    label.strip_prefix('_').unwrap_or(label)
}

/// A number for the CSV: shortest text that reads back exactly; exponent form when plain
/// form would be long; `NaN`, `inf`, `-inf` for the non-finite.
fn num(v: f64) -> String {
    if v == 0.0 || (v.is_finite() && (1e-4..1e15).contains(&v.abs())) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// Sequential colour for a shade in [0, 1]; grey for `None` (or a non-finite shade).
fn colour(shade: Option<f64>) -> RGBColor {
    match shade {
        Some(s) if s.is_finite() => ViridisRGB::get_color(s.clamp(0.0, 1.0) * SHADE_TOP),
        _ => RGBColor(128, 128, 128),
    }
}

fn usable(scale: Scale, v: f64) -> bool {
    v.is_finite() && (scale != Scale::Log10 || v > 0.0)
}

fn logit10(p: f64) -> f64 {
    (p / (1.0 - p)).log10()
}

fn inv_logit10(v: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf(-v))
}

/// One axis: its range (with margin), tick positions and how to label them.
#[derive(Clone, Debug)]
struct Axis {
    scale: Scale,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    light: Vec<f64>,
    /// Linear: the tick step (label precision).
    step: f64,
    /// Logit10: the listed probabilities' ticks with their labels.
    named: Vec<(f64, &'static str)>,
    /// Logit10 ticks not listed (a narrow range): decimals of the percentage.
    pct_decimals: usize,
}

impl Axis {
    /// The axis for these values; unusable ones are ignored, and with none left the range
    /// is a default one for the scale.
    fn new(scale: Scale, values: impl IntoIterator<Item = f64>) -> Axis {
        let (mut mn, mut mx) = (f64::INFINITY, f64::NEG_INFINITY);
        // Integer data (rounds, iterations) get no ticks between integers.
        let mut integers = true;
        for v in values.into_iter().filter(|&v| usable(scale, v)) {
            integers &= v.fract() == 0.0;
            let v = if scale == Scale::Log10 { v.log10() } else { v };
            mn = mn.min(v);
            mx = mx.max(v);
        }
        let (lo, hi) = if mn > mx {
            match scale {
                Scale::Linear => (0.0, 1.0),
                Scale::Log10 => (0.0, 1.0),
                Scale::Logit10 => (logit10(0.1), logit10(0.9)),
            }
        } else {
            pad(mn, mx)
        };
        let mut axis = Axis {
            scale,
            lo,
            hi,
            ticks: vec![],
            light: vec![],
            step: 0.0,
            named: vec![],
            pct_decimals: 2,
        };
        match scale {
            // From a span of 2 on (rounds 0-4, not an ASR axis from 0 to 1).
            Scale::Linear => axis.linear_ticks(integers && mx - mn >= 2.0),
            Scale::Log10 => {
                axis.lo = 10f64.powf(lo).max(f64::MIN_POSITIVE);
                axis.hi = 10f64.powf(hi).min(f64::MAX).max(axis.lo * 2.0);
                axis.log_ticks();
            }
            Scale::Logit10 => axis.logit_ticks(),
        }
        axis
    }

    fn linear_ticks(&mut self, integers: bool) {
        let step = nice_step((self.hi - self.lo) / 6.0);
        if integers && step < 1.0 {
            self.step = 1.0;
            self.ticks = multiples(self.lo, self.hi, 1.0);
            self.light = vec![];
            return;
        }
        self.step = step;
        self.ticks = multiples(self.lo, self.hi, step);
        self.light = multiples(self.lo, self.hi, step / 5.0);
    }

    fn log_ticks(&mut self) {
        let (dlo, dhi) = (self.lo.log10(), self.hi.log10());
        let in_range = |v: f64| v >= self.lo * (1.0 - 1e-9) && v <= self.hi * (1.0 + 1e-9);
        let decades: Vec<i32> = ((dlo.floor() as i32)..=(dhi.ceil() as i32)).collect();
        let with = |mantissas: &[f64]| -> Vec<f64> {
            let mut v: Vec<f64> = decades
                .iter()
                .flat_map(|&k| mantissas.iter().map(move |&m| m * 10f64.powi(k)))
                .filter(|&v| in_range(v))
                .collect();
            v.dedup();
            v
        };
        let mut ticks = with(&[1.0]);
        if ticks.len() > 8 {
            let stride = ticks.len().div_ceil(8);
            ticks = decades
                .iter()
                .filter(|&&k| k.rem_euclid(stride as i32) == 0)
                .map(|&k| 10f64.powi(k))
                .filter(|&v| in_range(v))
                .collect();
        } else if ticks.len() < 2 {
            ticks = with(&[1.0, 2.0, 5.0]);
            if ticks.len() < 2 {
                ticks = with(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
            }
        }
        if ticks.len() < 2 {
            // Less than a factor of ~1.1: linear ticks on a log axis.
            let step = nice_step((self.hi - self.lo) / 4.0);
            ticks = multiples(self.lo, self.hi, step)
                .into_iter()
                .filter(|&v| v > 0.0)
                .collect();
        }
        self.light = if decades.len() <= 13 {
            with(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
        } else {
            with(&[1.0])
        };
        self.ticks = ticks;
    }

    fn logit_ticks(&mut self) {
        let span = self.hi - self.lo;
        let mut ticks: Vec<f64> = vec![];
        for (p, label) in LOGIT_TICKS {
            let v = logit10(p);
            if v >= self.lo && v <= self.hi && ticks.iter().all(|t| (t - v).abs() >= span / 12.0) {
                ticks.push(v);
                self.named.push((v, label));
            }
        }
        if ticks.len() < 2 {
            // A narrow range: evenly spaced ticks in logit space, labelled as percentages
            // with as many decimals as tell them apart.
            ticks = multiples(self.lo, self.hi, nice_step(span / 5.0));
            self.named.clear();
            let decimals = (0..=4)
                .find(|&d| {
                    let labels: Vec<String> = ticks.iter().map(|&v| pct(v, d)).collect();
                    labels.windows(2).all(|w| w[0] != w[1])
                })
                .unwrap_or(4);
            self.pct_decimals = decimals;
        }
        ticks.sort_by(f64::total_cmp);
        self.ticks = ticks;
    }

    fn label(&self, v: f64) -> String {
        match self.scale {
            Scale::Linear => {
                let big = self.lo.abs().max(self.hi.abs());
                if big >= 1e6 || (self.step < 1e-3 && big < 1e-2) {
                    sci(v)
                } else {
                    let decimals = (-self.step.log10().floor()).clamp(0.0, 12.0) as usize;
                    format!("{v:.decimals$}")
                }
            }
            Scale::Log10 => sci(v),
            Scale::Logit10 => match self.named.iter().find(|(t, _)| (t - v).abs() < 1e-9) {
                Some((_, label)) => label.to_string(),
                None => format!("{}%", pct(v, self.pct_decimals)),
            },
        }
    }

    /// The position of `v` in [0, 1] along the axis (for choosing the legend's corner).
    fn frac(&self, v: f64) -> f64 {
        if self.scale == Scale::Log10 {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    fn linear_coord(&self) -> Ticked<RangedCoordf64> {
        Ticked {
            inner: (self.lo..self.hi).into(),
            bold: self.ticks.clone(),
            light: self.light.clone(),
        }
    }

    fn log_coord(&self) -> Ticked<LogCoord<f64>> {
        Ticked {
            inner: (self.lo..self.hi).log_scale().into(),
            bold: self.ticks.clone(),
            light: self.light.clone(),
        }
    }
}

/// A coordinate with our own tick positions (bold: labelled ticks and grid lines; light:
/// minor grid lines), labelled by the formatter given to the mesh. Like plotters'
/// `WithKeyPoints`, but keeping default formatting so any formatter closure can be used.
struct Ticked<R: Ranged<ValueType = f64>> {
    inner: R,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl<R: Ranged<ValueType = f64>> Ranged for Ticked<R> {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }

    fn axis_pixel_range(&self, limit: (i32, i32)) -> std::ops::Range<i32> {
        self.inner.axis_pixel_range(limit)
    }
}

/// A range around [mn, mx] with a 5% margin each side; half a unit each side when the
/// values are (nearly) all equal.
fn pad(mn: f64, mx: f64) -> (f64, f64) {
    let span = mx - mn;
    let scale = mn.abs().max(mx.abs());
    let (lo, hi) = if span <= 1e-12 * scale || span < 1e-300 {
        let half = (scale * 0.05).max(0.5);
        (mn - half, mx + half)
    } else {
        (mn - 0.05 * span, mx + 0.05 * span)
    };
    if lo.is_finite() && hi.is_finite() && lo < hi {
        (lo, hi)
    } else if mn < mx && mn.is_finite() && mx.is_finite() {
        (mn, mx)
    } else {
        (mn.clamp(-1e300, 1e300) - 1.0, mn.clamp(-1e300, 1e300) + 1.0)
    }
}

/// 1, 2 or 5 times a power of ten, near `x`.
fn nice_step(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let e = 10f64.powf(x.log10().floor());
    let f = x / e;
    let m = if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    };
    m * e
}

/// Multiples of `step` in [lo, hi] (at most a few hundred; none for a degenerate step).
fn multiples(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if !(step.is_finite() && step > 0.0 && (hi - lo) / step < 500.0) {
        return vec![];
    }
    let (k0, k1) = ((lo / step).ceil(), (hi / step).floor());
    let mut out = vec![];
    let mut k = k0;
    while k <= k1 {
        let v = k * step;
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        k += 1.0;
    }
    out
}

/// `2.5e7` style: three significant digits at most, trailing zeros dropped.
fn sci(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{v:.2e}");
    match s.split_once('e') {
        Some((m, e)) if m.contains('.') => {
            let m = m.trim_end_matches('0').trim_end_matches('.');
            format!("{m}e{e}")
        }
        _ => s,
    }
}

/// The probability at logit10 `v`, as a percentage with `d` decimals (no % sign).
fn pct(v: f64, d: usize) -> String {
    format!("{:.d$}", inv_logit10(v) * 100.0)
}

/// Maximal runs of plottable points; a line breaks at a skipped point.
fn runs(points: &[(f64, f64)], xs: Scale, ys: Scale) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![vec![]];
    for &(x, y) in points {
        if usable(xs, x) && usable(ys, y) {
            if let Some(run) = out.last_mut() {
                run.push((x, y));
            }
        } else if out.last().is_some_and(|r| !r.is_empty()) {
            out.push(vec![]);
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// The plottable band points, sorted by x.
fn band(s: &Series, xs: Scale, ys: Scale) -> Vec<(f64, f64, f64)> {
    let mut b: Vec<(f64, f64, f64)> = s
        .band
        .iter()
        .copied()
        .filter(|&(x, lo, hi)| usable(xs, x) && usable(ys, lo) && usable(ys, hi))
        .collect();
    b.sort_by(|a, b| a.0.total_cmp(&b.0));
    b
}

fn render<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let area = if fig.title.is_empty() {
        root.clone()
    } else {
        root.titled(&fig.title, (FONT_FAMILY, 24))?
    };
    if fig.panels.is_empty() {
        return note(&area, "no panels");
    }
    for (a, panel) in area
        .split_evenly((1, fig.panels.len()))
        .iter()
        .zip(&fig.panels)
    {
        draw_panel_any(a, panel)?;
    }
    Ok(())
}

/// A line of text in the middle of an area.
fn note<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str) -> DrawResult<(), DB> {
    let (w, h) = area.dim_in_pixel();
    let grey = BLACK.mix(0.5);
    let style = TextStyle::from((FONT_FAMILY, 18).into_font())
        .color(&grey)
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw_text(text, &style, (w as i32 / 2, h as i32 / 2))
}

/// Picks the coordinate types for the panel's scales (log or linear on each axis).
fn draw_panel_any<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> DrawResult<(), DB> {
    let (xs, ys) = (panel.x_scale, panel.y_scale);
    let xv = panel.series.iter().flat_map(|s| {
        let p = s
            .points
            .iter()
            .filter(move |p| usable(ys, p.1))
            .map(|p| p.0);
        let b = s
            .band
            .iter()
            .filter(move |b| usable(ys, b.1) && usable(ys, b.2))
            .map(|b| b.0);
        p.chain(b)
    });
    let xa = Axis::new(xs, xv);
    let yv = panel.series.iter().flat_map(|s| {
        let p = s
            .points
            .iter()
            .filter(move |p| usable(xs, p.0))
            .map(|p| p.1);
        let b = s
            .band
            .iter()
            .filter(move |b| usable(xs, b.0))
            .flat_map(|b| [b.1, b.2]);
        p.chain(b)
    });
    let ya = Axis::new(ys, yv.chain(panel.y_include.iter().copied()));
    match (xs == Scale::Log10, ys == Scale::Log10) {
        (false, false) => draw_panel(area, panel, &xa, &ya, xa.linear_coord(), ya.linear_coord()),
        (true, false) => draw_panel(area, panel, &xa, &ya, xa.log_coord(), ya.linear_coord()),
        (false, true) => draw_panel(area, panel, &xa, &ya, xa.linear_coord(), ya.log_coord()),
        (true, true) => draw_panel(area, panel, &xa, &ya, xa.log_coord(), ya.log_coord()),
    }
}

fn draw_panel<DB, X, Y>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    xa: &Axis,
    ya: &Axis,
    x: X,
    y: Y,
) -> DrawResult<(), DB>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (xs, ys) = (panel.x_scale, panel.y_scale);
    // Room for the widest y tick label, the tick marks and the rotated axis description.
    let tick_font = TextStyle::from((FONT_FAMILY, 13).into_font());
    let mut widest = 0;
    for &t in &ya.ticks {
        widest = widest.max(area.estimate_text_size(&ya.label(t), &tick_font)?.0);
    }
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size((widest + 36).max(56));
    if !panel.title.is_empty() {
        builder.caption(&panel.title, (FONT_FAMILY, 20));
    }
    let mut chart = builder.build_cartesian_2d(x, y)?;
    let xfmt = |v: &f64| xa.label(*v);
    let yfmt = |v: &f64| ya.label(*v);
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style(tick_font.clone())
        .axis_desc_style((FONT_FAMILY, 15))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.05))
        .draw()?;

    // Bands first, so that every line lies on top of every band.
    let bands: Vec<Vec<(f64, f64, f64)>> = panel.series.iter().map(|s| band(s, xs, ys)).collect();
    for (s, b) in panel.series.iter().zip(&bands) {
        let fill = colour(s.shade).mix(0.2).filled();
        if b.len() == 1 {
            let (bx, lo, hi) = b[0];
            let edge = colour(s.shade).mix(0.5).stroke_width(3);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(bx, lo), (bx, hi)],
                edge,
            )))?;
        } else if b.len() > 1 {
            let outline: Vec<(f64, f64)> = b
                .iter()
                .map(|&(bx, lo, _)| (bx, lo))
                .chain(b.iter().rev().map(|&(bx, _, hi)| (bx, hi)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(outline, fill)))?;
        }
    }

    let mut occupied: Vec<(f64, f64)> = vec![];
    for (s, b) in panel.series.iter().zip(&bands) {
        let c = colour(s.shade);
        let line = c.stroke_width(2);
        let dot = c.filled();
        let runs = runs(&s.points, xs, ys);
        for run in &runs {
            occupied.extend(run.iter().map(|&(px, py)| (xa.frac(px), ya.frac(py))));
            // A run of one point (or of one point repeated) has no line to show.
            let lone = run.iter().all(|&p| p == run[0]);
            if matches!(s.style, Style::Points | Style::LinePoints) || lone {
                chart.draw_series(run.iter().map(|&p| Circle::new(p, 3, dot)))?;
            }
            if !lone {
                match s.style {
                    Style::Line | Style::LinePoints => {
                        chart.draw_series(LineSeries::new(run.iter().copied(), line))?;
                    }
                    Style::Dashed => {
                        chart.draw_series(DashedLineSeries::new(
                            run.iter().copied(),
                            8,
                            5,
                            line,
                        ))?;
                    }
                    Style::Points => {}
                }
            }
        }
        occupied
            .extend(b.iter().flat_map(|&(bx, lo, hi)| {
                [(xa.frac(bx), ya.frac(lo)), (xa.frac(bx), ya.frac(hi))]
            }));
        if !in_legend(&s.label) || (runs.is_empty() && b.is_empty()) {
            continue;
        }
        // An empty series carrying the legend entry: its mark shows the series' style.
        let anno = chart.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?;
        let anno = anno.label(s.label.as_str());
        if runs.is_empty() {
            let fill = c.mix(0.2).filled();
            anno.legend(move |(lx, ly)| Rectangle::new([(lx, ly - 5), (lx + 20, ly + 5)], fill));
        } else {
            match s.style {
                Style::Line => {
                    anno.legend(move |(lx, ly)| PathElement::new([(lx, ly), (lx + 20, ly)], line));
                }
                Style::Points => {
                    anno.legend(move |(lx, ly)| Circle::new((lx + 10, ly), 3, dot));
                }
                Style::LinePoints => {
                    anno.legend(move |(lx, ly)| {
                        EmptyElement::at((lx, ly))
                            + PathElement::new([(0, 0), (20, 0)], line)
                            + Circle::new((10, 0), 3, dot)
                    });
                }
                Style::Dashed => {
                    anno.legend(move |(lx, ly)| {
                        EmptyElement::at((lx, ly))
                            + PathElement::new([(0, 0), (6, 0)], line)
                            + PathElement::new([(10, 0), (16, 0)], line)
                    });
                }
            }
        }
    }

    let labelled = panel.series.iter().enumerate().any(|(i, s)| {
        in_legend(&s.label) && (!bands[i].is_empty() || !runs(&s.points, xs, ys).is_empty())
    });
    if labelled {
        chart
            .configure_series_labels()
            .position(legend_corner(&occupied))
            .label_font((FONT_FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    if occupied.is_empty() {
        note(area, "no data")?;
    }
    Ok(())
}

/// The corner of the plot with the fewest data points near it.
fn legend_corner(occupied: &[(f64, f64)]) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let near = |right: bool, upper: bool| {
        occupied
            .iter()
            .filter(|&&(fx, fy)| {
                (if right { fx > 0.55 } else { fx < 0.45 })
                    && (if upper { fy > 0.6 } else { fy < 0.4 })
            })
            .count()
    };
    corners
        .into_iter()
        .min_by_key(|&(_, right, upper)| near(right, upper))
        .map(|(pos, _, _)| pos)
        .unwrap_or(SeriesLabelPosition::UpperLeft)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(label: &str, shade: Option<f64>, style: Style, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            shade,
            style,
            points,
            band: vec![],
        }
    }

    fn sample() -> Figure {
        let flops = [1e12, 1e13, 1e14, 1e15, 1e16];
        let p = [0.02, 0.08, 0.3, 0.7, 0.93];
        let mut small = series(
            "Pythia 14M",
            Some(0.0),
            Style::LinePoints,
            flops.iter().zip(p).map(|(&f, p)| (f, logit10(p))).collect(),
        );
        small.band = flops
            .iter()
            .zip(p)
            .map(|(&f, p)| (f, logit10(p * 0.7), logit10(1.0 - (1.0 - p) * 0.7)))
            .collect();
        let large = series(
            "Pythia 1B",
            Some(1.0),
            Style::Points,
            flops
                .iter()
                .map(|&f| (f, logit10(0.01) + f.log10() - 12.0))
                .collect(),
        );
        let fit = series(
            "fit: slope 0.6",
            None,
            Style::Dashed,
            vec![(1e12, logit10(0.02)), (1e16, logit10(0.95))],
        );
        let loss = series(
            "mean loss",
            Some(0.5),
            Style::Line,
            (0..20)
                .map(|i| (i as f64, 3.0 * (-0.2 * i as f64).exp()))
                .collect(),
        );
        Figure {
            name: "success".into(),
            title: "Attack success by compute".into(),
            panels: vec![
                Panel {
                    title: "Success rate vs attack FLOPs".into(),
                    x_label: "attack FLOPs".into(),
                    y_label: "attack success".into(),
                    x_scale: Scale::Log10,
                    y_scale: Scale::Logit10,
                    y_include: vec![],
                    series: vec![small, large, fit],
                },
                Panel {
                    title: "Loss by iteration".into(),
                    x_label: "iteration".into(),
                    y_label: "loss".into(),
                    x_scale: Scale::Linear,
                    y_scale: Scale::Linear,
                    y_include: vec![],
                    series: vec![loss],
                },
            ],
        }
    }

    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&bytes[16..20]), be(&bytes[20..24]))
    }

    #[test]
    fn draws_svg_png_and_csv() {
        let fig = sample();
        let dir = tempfile::tempdir().unwrap();
        draw(&fig, dir.path()).unwrap();
        if let Some(sample_dir) = std::env::var_os("ARMSRACE_DRAW_SAMPLE") {
            draw(&fig, Path::new(&sample_dir)).unwrap();
        }

        let svg = std::fs::read_to_string(dir.path().join("success.svg")).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let text: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| {
                let t: String = n
                    .descendants()
                    .filter(|t| t.is_text())
                    .filter_map(|t| t.text())
                    .collect();
                t.trim().to_string()
            })
            .collect();
        let has = |s: &str| text.iter().any(|t| t == s);
        for label in [
            "Pythia 14M",
            "Pythia 1B",
            "fit: slope 0.6",
            "mean loss",
            "Success rate vs attack FLOPs",
            "Loss by iteration",
            "Attack success by compute",
            "attack FLOPs",
            "loss",
        ] {
            assert!(has(label), "{label:?} not among the SVG's texts {text:?}");
        }
        // Tick labels: powers of ten on the log axis, percentages on the logit axis.
        for tick in ["1e12", "1e14", "1e16", "10%", "50%", "90%"] {
            assert!(has(tick), "tick {tick:?} not among {text:?}");
        }
        let shapes = doc
            .descendants()
            .filter(|n| ["polyline", "path", "polygon"].contains(&n.tag_name().name()))
            .count();
        let n_series: usize = fig.panels.iter().map(|p| p.series.len()).sum();
        assert!(shapes >= n_series, "{shapes} shapes for {n_series} series");
        // The Points series draws circles: five points and its legend mark, at least.
        let circles = doc
            .descendants()
            .filter(|n| n.has_tag_name("circle"))
            .count();
        assert!(circles >= 5 + 5, "{circles} circles");

        let png = std::fs::read(dir.path().join("success.png")).unwrap();
        assert_eq!(png_size(&png), (2 * 640, 480 + 40));

        let mut rdr = csv::Reader::from_path(dir.path().join("success.csv")).unwrap();
        let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header, ["panel", "series", "x", "y", "low", "high"]);
        let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
        let expected: usize = fig
            .panels
            .iter()
            .flat_map(|p| &p.series)
            .map(|s| s.points.len() + s.band.len())
            .sum();
        assert_eq!(rows.len(), expected);
        let first = &rows[0];
        assert_eq!(&first[0], "Success rate vs attack FLOPs");
        assert_eq!(&first[1], "Pythia 14M");
        assert_eq!(first[2].parse::<f64>().unwrap(), 1e12);
        assert_eq!(first[3].parse::<f64>().unwrap(), logit10(0.02));
        assert_eq!((&first[4], &first[5]), ("", ""));
        let band_rows = rows.iter().filter(|r| r[3].is_empty()).count();
        assert_eq!(band_rows, 5);
    }

    #[test]
    fn degenerate_series_do_not_panic() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let mut odd = series(
            "non-finite",
            Some(f64::NAN),
            Style::Line,
            vec![
                (1.0, nan),
                (inf, 1.0),
                (2.0, 0.5),
                (nan, nan),
                (3.0, 0.7),
                (-1.0, 0.2),
            ],
        );
        odd.band = vec![(1.0, nan, 0.3), (2.0, 0.1, 0.9)];
        let panels = vec![
            Panel {
                title: "empty".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                x_scale: Scale::Log10,
                y_scale: Scale::Logit10,
                y_include: vec![],
                series: vec![series("nothing", Some(0.3), Style::Line, vec![])],
            },
            Panel {
                title: "single".into(),
                x_label: String::new(),
                y_label: String::new(),
                x_scale: Scale::Log10,
                y_scale: Scale::Log10,
                y_include: vec![],
                series: vec![
                    series("one", Some(2.0), Style::Dashed, vec![(1e15, 1e-3)]),
                    series("", None, Style::Points, vec![(0.0, -1.0)]),
                ],
            },
            Panel {
                title: String::new(),
                x_label: "x".into(),
                y_label: "y".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Logit10,
                y_include: vec![],
                series: vec![
                    odd,
                    series("flat", Some(0.5), Style::LinePoints, vec![(5.0, 0.0); 3]),
                    series("same", Some(0.9), Style::Dashed, vec![(4.0, 30.0); 2]),
                    series(
                        "extreme",
                        Some(0.7),
                        Style::Line,
                        vec![(0.0, -20.0), (1.0, 20.0)],
                    ),
                ],
            },
            Panel {
                title: "no series".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                x_scale: Scale::Linear,
                y_scale: Scale::Linear,
                y_include: vec![],
                series: vec![series(
                    "huge",
                    Some(0.1),
                    Style::Line,
                    vec![(-f64::MAX, 1e-300), (f64::MAX, 2e-300)],
                )],
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let fig = Figure {
            name: "odd".into(),
            title: String::new(),
            panels,
        };
        draw(&fig, dir.path()).unwrap();
        if let Some(sample_dir) = std::env::var_os("ARMSRACE_DRAW_SAMPLE") {
            draw(&fig, Path::new(&sample_dir)).unwrap();
        }
        let png = std::fs::read(dir.path().join("odd.png")).unwrap();
        assert_eq!(png_size(&png), (4 * 640, 480));
        let svg = std::fs::read_to_string(dir.path().join("odd.svg")).unwrap();
        roxmltree::Document::parse(&svg).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("odd.csv")).unwrap();
        assert_eq!(
            csv.lines().count(),
            1 + 1 + 1 + 6 + 2 + 3 + 2 + 2 + 2,
            "header, then each point and band point"
        );
        assert!(csv.contains(",NaN,"), "{csv}");

        let none = Figure {
            name: "none".into(),
            title: "nothing to draw".into(),
            panels: vec![],
        };
        draw(&none, &dir.path().join("sub")).unwrap();
        assert!(dir.path().join("sub/none.png").exists());
    }

    #[test]
    fn unwritable_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let err = draw(&sample(), &file).unwrap_err().to_string();
        assert!(err.contains("plain-file"), "{err}");
    }

    #[test]
    fn tick_labels() {
        assert_eq!(sci(1e-6), "1e-6");
        assert_eq!(sci(2.5e7), "2.5e7");
        assert_eq!(sci(1e15), "1e15");
        let log = Axis::new(Scale::Log10, [3e11, 2e16]);
        let labels: Vec<String> = log.ticks.iter().map(|&v| log.label(v)).collect();
        assert_eq!(labels, ["1e12", "1e13", "1e14", "1e15", "1e16"]);
        let narrow = Axis::new(Scale::Log10, [2.0, 3.0]);
        assert!(narrow.ticks.len() >= 2, "{narrow:?}");

        let logit = Axis::new(Scale::Logit10, [logit10(0.0015), logit10(0.9985)]);
        let labels: Vec<String> = logit.ticks.iter().map(|&v| logit.label(v)).collect();
        for want in ["0.1%", "1%", "10%", "50%", "90%", "99%"] {
            assert!(labels.iter().any(|l| l == want), "{want} not in {labels:?}");
        }
        let wide = Axis::new(Scale::Logit10, [-5.0, 5.0]);
        let labels: Vec<String> = wide.ticks.iter().map(|&v| wide.label(v)).collect();
        for want in ["0.001%", "0.1%", "50%", "99.9%", "99.999%"] {
            assert!(labels.iter().any(|l| l == want), "{want} not in {labels:?}");
        }
        let close = Axis::new(Scale::Logit10, [logit10(0.45), logit10(0.55)]);
        let labels: Vec<String> = close.ticks.iter().map(|&v| close.label(v)).collect();
        assert!(
            labels.len() >= 2 && labels.iter().all(|l| l.ends_with('%')),
            "{labels:?}"
        );

        let rounds = Axis::new(Scale::Linear, [0.0, 1.0, 2.0, 4.0]);
        let labels: Vec<String> = rounds.ticks.iter().map(|&v| rounds.label(v)).collect();
        assert_eq!(labels, ["0", "1", "2", "3", "4"]);
        let lin = Axis::new(Scale::Linear, [0.0, 1.0]);
        let labels: Vec<String> = lin.ticks.iter().map(|&v| lin.label(v)).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let one = Axis::new(Scale::Linear, [4.0]);
        assert!(one.lo < 4.0 && one.hi > 4.0);
        let none = Axis::new(Scale::Linear, [f64::NAN]);
        assert_eq!((none.lo, none.hi), (0.0, 1.0));
    }

    #[test]
    fn colours() {
        assert_eq!(colour(None), RGBColor(128, 128, 128));
        assert_eq!(colour(Some(0.0)), RGBColor(68, 1, 84));
        assert_ne!(colour(Some(1.0)), colour(Some(0.0)));
        assert_eq!(colour(Some(7.0)), colour(Some(1.0)));
    }
}

//! `shmflow bench --plot FILE.svg`: the run's figures as an SVG chart (plotters): frames/s per
//! transport for 1080p and 4K with min-max whiskers and the pipeline limit as a line, and the
//! round-trip latencies on a log scale.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::harness::{self as bench, BenchResult, Machine};

const WIDTH: u32 = 1100;
const ROW: u32 = 34;
const BAR: RGBColor = RGBColor(70, 120, 180);
const RING: RGBColor = RGBColor(220, 110, 40);
const LIMIT: RGBColor = RGBColor(200, 30, 30);

/// One bar of a panel: its label, median and whisker.
struct Bar {
    label: String,
    median: f64,
    min: f64,
    max: f64,
    ring: bool,
}

fn bars(
    results: &[BenchResult],
    keep: impl Fn(&BenchResult) -> bool,
    label: impl Fn(&BenchResult) -> String,
) -> Vec<Bar> {
    results
        .iter()
        .filter(|r| keep(r) && r.median.is_finite() && r.median > 0.0)
        .map(|r| Bar {
            label: label(r),
            median: r.median,
            min: r.min,
            max: r.max,
            ring: r.transport.starts_with("ring"),
        })
        .collect()
}

/// Writes the chart of `results` to `path`; `date` goes into the title with the machine.
pub fn write_svg(
    path: &std::path::Path,
    results: &[BenchResult],
    machine: &Machine,
    date: &str,
) -> Result<(), String> {
    let frames = |s: &'static str| {
        bars(
            results,
            move |r| r.scenario == s && r.unit == "frames/s" && !r.transport.starts_with("limit_"),
            |r| r.transport.clone(),
        )
    };
    let panels = [
        (
            "frames_1080p",
            "1080p u8 frames (6.2 MB): frames/s, median with min-max",
        ),
        (
            "frames_4k",
            "4K u8 frames (24.9 MB): frames/s, median with min-max",
        ),
    ];
    let latency = bars(
        results,
        |r| r.unit == "us",
        |r| format!("{} {}", r.scenario, r.transport),
    );
    let frame_bars: Vec<Vec<Bar>> = panels.iter().map(|(s, _)| frames(s)).collect();
    if frame_bars.iter().all(Vec::is_empty) && latency.is_empty() {
        return Err("the run has no frame or latency figures to plot".into());
    }
    let heights: Vec<u32> = frame_bars
        .iter()
        .chain(std::iter::once(&latency))
        .map(|b| 90 + ROW * b.len() as u32)
        .collect();
    let title_h = 50;
    let height = title_h + heights.iter().sum::<u32>();
    let svg = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("cannot draw {}: {e}", path.display());
    svg.fill(&WHITE).map_err(e)?;
    let title = format!(
        "shmflow bench, {date}: {} CPUs{}, {} {}, runs per figure: {}",
        machine.cpus,
        if machine.cpu_model.is_empty() {
            String::new()
        } else {
            format!(" ({})", machine.cpu_model)
        },
        machine.arch,
        machine.kernel,
        results.first().map_or(0, |r| r.runs)
    );
    let (head, mut rest) = svg.split_vertically(title_h);
    head.titled(&title, ("sans-serif", 20)).map_err(e)?;
    for (k, (scenario, caption)) in panels.iter().enumerate() {
        let (area, below) = rest.split_vertically(heights[k]);
        rest = below;
        let limit = bench::limit(results, scenario);
        draw_panel(&area, caption, &frame_bars[k], false, limit).map_err(e)?;
    }
    draw_panel(
        &rest,
        "64-byte round trips: microseconds, median with min-max (log scale)",
        &latency,
        true,
        None,
    )
    .map_err(e)?;
    svg.present().map_err(e)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    bars: &[Bar],
    log: bool,
    limit: Option<f64>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    if bars.is_empty() {
        return Ok(());
    }
    let n = bars.len();
    // Row i from the bottom shows bar n - 1 - i: the first figure on top.
    let row = |i: usize| n - 1 - i;
    let labels: Vec<String> = bars.iter().rev().map(|b| b.label.clone()).collect();
    let y_fmt = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            labels.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    let hi = bars
        .iter()
        .map(|b| b.max)
        .chain(limit)
        .fold(0.0f64, f64::max);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(230);
    // Bars (horizontal, one row per figure), whiskers from min to max, the median as a label.
    macro_rules! draw {
        ($chart:expr, $x0:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(n)
                .y_label_formatter(&y_fmt)
                .x_label_formatter(&|v| short(*v))
                .draw()?;
            chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
                let mut r = Rectangle::new(
                    [
                        ($x0, SegmentValue::Exact(row(i))),
                        (b.median, SegmentValue::Exact(row(i) + 1)),
                    ],
                    if b.ring { RING.filled() } else { BAR.filled() },
                );
                r.set_margin(6, 6, 0, 0);
                r
            }))?;
            chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
                PathElement::new(
                    vec![
                        (b.min, SegmentValue::CenterOf(row(i))),
                        (b.max, SegmentValue::CenterOf(row(i))),
                    ],
                    BLACK.stroke_width(2),
                )
            }))?;
            chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
                Text::new(
                    short(b.median),
                    (b.max, SegmentValue::CenterOf(row(i))),
                    ("sans-serif", 13),
                )
            }))?;
            if let Some(l) = limit {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(l, SegmentValue::Exact(0)), (l, SegmentValue::Last)],
                        LIMIT.stroke_width(2),
                    )))?
                    .label(format!("pipeline limit {}", short(l)))
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], LIMIT.stroke_width(2))
                    });
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::LowerRight)
                    .draw()?;
            }
        }};
    }
    if log {
        let lo = bars.iter().map(|b| b.min).fold(f64::INFINITY, f64::min);
        // From the power of ten below the fastest run, so the axis has a label under it.
        let (lo, hi) = (10f64.powf(lo.log10().floor()), hi * 3.0);
        draw!(
            builder.build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())?,
            lo
        );
    } else {
        draw!(
            builder.build_cartesian_2d(0.0..hi * 1.15, (0..n - 1).into_segmented())?,
            0.0
        );
    }
    Ok(())
}

/// `1234`, `12.3`, `0.94`: few digits, as on an axis.
fn short(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Today's date (UTC) as `2026-12-06`, from the system clock (civil-from-days, H. Hinnant).
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_is_a_date() {
        let t = today();
        assert_eq!(t.len(), 10, "{t}");
        assert!(t.as_str() >= "2024-01-01", "{t}");
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(1234.5), "1234");
        assert_eq!(short(12.34), "12.3");
        assert_eq!(short(0.936), "0.94");
    }
}

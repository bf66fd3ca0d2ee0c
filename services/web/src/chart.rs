//! Charts as SVG made on the server: a bar per bucket of a series over time, on a y axis with a
//! few round ticks in the series' unit (a count, a duration, a ratio), dated at both ends. The
//! markup is made here, not in a template, so every text in it goes through [`escape`]; it has
//! no `style` attribute (the Content-Security-Policy forbids inline style): shapes carry classes
//! that `static/style.css` colours, and SVG presentation attributes. Each chart is an image to
//! assistive technology (`role="img"`, a `<title>` and an `aria-label` that sum it up), and each
//! bar has a `<title>` with its dates and value.

use std::fmt::Write as _;

use chrono::{DateTime, TimeDelta, Utc};

/// The drawing's size in user units (the page scales it to its width).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
/// Room for the y axis's labels, the x axis's dates, and air above.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 26.0;
/// At most this many ticks on the y axis (and their grid lines), zero included.
const MAX_TICKS: f64 = 5.0;

/// What a series counts, which decides its axis's ticks and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Whole things (deployments).
    Count,
    /// A duration in seconds.
    Seconds,
    /// A share, 0 to 1, shown as a percentage.
    Ratio,
}

impl Unit {
    /// `value` as a person reads it.
    pub fn format(self, value: f64) -> String {
        match self {
            Self::Count => {
                if value.fract() == 0.0 {
                    format!("{value:.0}")
                } else {
                    format!("{value:.2}")
                }
            }
            Self::Seconds => duration(value),
            Self::Ratio => format!("{:.0}%", value * 100.0),
        }
    }
}

/// One bucket of a series: `[start, end)` and its value, `None` for no data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Start (included).
    pub start: DateTime<Utc>,
    /// End (excluded).
    pub end: DateTime<Utc>,
    /// The value, `None` when the bucket had no data.
    pub value: Option<f64>,
}

/// A bar chart of `points` in `unit`, named `title` (plain text: it is escaped here).
pub fn bars(title: &str, unit: Unit, points: &[Point]) -> String {
    let values: Vec<f64> = points.iter().filter_map(|p| p.value).collect();
    let highest = values.iter().copied().fold(0.0_f64, f64::max);
    let ticks = ticks(unit, highest);
    let top = ticks.last().copied().unwrap_or(1.0);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let baseline = TOP + plot_height;
    let y = |value: f64| baseline - (value / top).clamp(0.0, 1.0) * plot_height;
    let label = format!("{title}: {}", summary(unit, points, &values));

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        escape(&label),
        escape(title),
    );
    for tick in &ticks {
        let at = y(*tick);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{at:.1}" y2="{at:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            at + 4.0,
            escape(&unit.format(*tick)),
        );
    }
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{baseline:.1}"/><line class="axis" x1="{LEFT}" x2="{:.1}" y1="{baseline:.1}" y2="{baseline:.1}"/>"#,
        WIDTH - RIGHT,
    );
    #[allow(clippy::cast_precision_loss, reason = "a chart has at most a few hundred buckets")]
    let slot = plot_width / points.len().max(1) as f64;
    let gap = (slot * 0.15).min(4.0);
    for (i, point) in points.iter().enumerate() {
        let Some(value) = point.value else { continue };
        #[allow(clippy::cast_precision_loss, reason = "a chart has at most a few hundred buckets")]
        let x = LEFT + slot * i as f64 + gap / 2.0;
        // A zero is drawn as a sliver on the axis, so that it reads apart from "no data".
        let (class, height) = if value > 0.0 {
            ("bar", (baseline - y(value)).max(1.0))
        } else {
            ("bar zero", 1.5)
        };
        let _ = write!(
            svg,
            r#"<rect class="{class}" x="{x:.1}" y="{:.1}" width="{:.1}" height="{height:.1}"><title>{}</title></rect>"#,
            baseline - height,
            (slot - gap).max(0.5),
            escape(&format!(
                "{} – {}: {}",
                date(point.start, point.end - point.start),
                date(point.end, point.end - point.start),
                unit.format(value)
            )),
        );
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let step = first.end - first.start;
        let _ = write!(
            svg,
            r#"<text class="date" x="{LEFT}" y="{:.1}" text-anchor="start">{}</text><text class="date" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            HEIGHT - 6.0,
            escape(&date(first.start, step)),
            WIDTH - RIGHT,
            HEIGHT - 6.0,
            escape(&date(last.end, step)),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The chart in one sentence, for its accessible name.
fn summary(unit: Unit, points: &[Point], values: &[f64]) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return "no buckets".to_owned();
    };
    let step = first.end - first.start;
    let mut out = format!(
        "{} buckets of {} from {} to {}",
        points.len(),
        duration(seconds(step)),
        date(first.start, step),
        date(last.end, step)
    );
    if values.is_empty() {
        out.push_str(", no data in any");
        return out;
    }
    let highest = values.iter().copied().fold(f64::MIN, f64::max);
    let lowest = values.iter().copied().fold(f64::MAX, f64::min);
    let _ = write!(
        out,
        ", lowest {}, highest {}",
        unit.format(lowest),
        unit.format(highest)
    );
    let missing = points.len() - values.len();
    if missing > 0 {
        let _ = write!(out, ", no data in {missing}");
    }
    out
}

/// The y axis's ticks, from 0 to a round value at or above `highest`.
fn ticks(unit: Unit, highest: f64) -> Vec<f64> {
    let step = match unit {
        Unit::Ratio => 0.25,
        Unit::Count => round_step((highest / (MAX_TICKS - 1.0)).max(1.0)),
        Unit::Seconds => duration_step(highest / (MAX_TICKS - 1.0)),
    };
    let top = match unit {
        Unit::Ratio => 1.0,
        _ => (highest / step).ceil().max(1.0) * step,
    };
    let mut ticks = Vec::new();
    let mut tick = 0.0;
    while tick <= top + step / 2.0 {
        ticks.push(tick);
        tick += step;
    }
    ticks
}

/// The smallest of 1, 2 or 5 × 10ⁿ at or above `at_least`.
fn round_step(at_least: f64) -> f64 {
    let magnitude = 10_f64.powf(at_least.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= at_least)
        .unwrap_or(10.0 * magnitude)
}

/// The smallest round duration (seconds, minutes, hours, days, weeks) at or above `at_least`.
fn duration_step(at_least: f64) -> f64 {
    const STEPS: &[f64] = &[
        1.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 10_800.0, 21_600.0,
        43_200.0, 86_400.0, 172_800.0, 604_800.0,
    ];
    STEPS
        .iter()
        .copied()
        .find(|step| *step >= at_least)
        .unwrap_or_else(|| round_step(at_least / 604_800.0) * 604_800.0)
}

/// Seconds as at most two adjacent units, largest first: `1d 2h`, `4h 30m`, `12m 30s`, `45s`
/// (short enough for an axis; the smaller unit is left out when it is zero).
pub fn duration(seconds: f64) -> String {
    #[allow(clippy::cast_possible_truncation, reason = "rounded, and non-negative durations fit")]
    let total = seconds.max(0.0).round() as u64;
    let ((large, large_unit), (small, small_unit)) = match total {
        t if t >= 86_400 => ((t / 86_400, "d"), (t % 86_400 / 3_600, "h")),
        t if t >= 3_600 => ((t / 3_600, "h"), (t % 3_600 / 60, "m")),
        t if t >= 60 => ((t / 60, "m"), (t % 60, "s")),
        t => return format!("{t}s"),
    };
    if small == 0 {
        format!("{large}{large_unit}")
    } else {
        format!("{large}{large_unit} {small}{small_unit}")
    }
}

/// `t` as a chart labels it: the day, and the time of day when buckets are shorter than one.
fn date(t: DateTime<Utc>, step: TimeDelta) -> String {
    if step >= TimeDelta::days(1) && t.time() == chrono::NaiveTime::MIN {
        t.format("%b %-d").to_string()
    } else {
        t.format("%b %-d %H:%M").to_string()
    }
}

/// `delta` in seconds.
fn seconds(delta: TimeDelta) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "chart durations are far below 2^52 ms")]
    let ms = delta.num_milliseconds() as f64;
    ms / 1000.0
}

/// `text` safe as SVG text or an attribute's value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> DateTime<Utc> {
        format!("2024-05-{d:02}T00:00:00Z").parse().unwrap()
    }

    fn series(values: &[Option<f64>]) -> Vec<Point> {
        (0..values.len())
            .map(|i| {
                let i = u32::try_from(i).unwrap();
                Point {
                    start: day(i + 1),
                    end: day(i + 2),
                    value: values[i as usize],
                }
            })
            .collect()
    }

    #[test]
    fn a_bar_per_bucket_with_data_scaled_to_round_ticks() {
        let svg = bars(
            "Deployments per day",
            Unit::Count,
            &series(&[Some(3.0), None, Some(0.0), Some(6.0)]),
        );
        assert!(svg.starts_with("<svg class=\"chart\""), "{svg}");
        assert!(svg.contains("role=\"img\""), "{svg}");
        assert!(svg.contains("<title>Deployments per day</title>"), "{svg}");
        assert!(
            svg.contains(r#"aria-label="Deployments per day: 4 buckets of 1d from May 1 to May 5, lowest 0, highest 6, no data in 1""#),
            "{svg}"
        );
        // Three buckets with data: two bars and a zero's sliver; the missing one draws nothing.
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("<rect class=\"bar zero\"").count(), 1, "{svg}");
        assert!(svg.contains("<title>May 4 – May 5: 6</title>"), "{svg}");
        // 6 on an axis of 0, 2, 4, 6: the highest bar reaches the top of the plot.
        let ticks: Vec<&str> = svg
            .split("text-anchor=\"end\">")
            .skip(1)
            .map(|t| t.split('<').next().unwrap())
            .collect();
        assert_eq!(ticks, ["0", "2", "4", "6", "May 5"], "{svg}");
        assert!(
            svg.contains(&format!("y=\"{TOP:.1}\" width")),
            "the top bar starts at the top: {svg}"
        );
        assert!(!svg.contains("style="), "no inline style: {svg}");
    }

    #[test]
    fn durations_and_ratios_get_their_own_ticks() {
        assert_eq!(ticks(Unit::Ratio, 0.4), [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(ticks(Unit::Seconds, 16_200.0), [0.0, 7200.0, 14_400.0, 21_600.0]);
        assert_eq!(ticks(Unit::Count, 0.0), [0.0, 1.0]);
        assert_eq!(ticks(Unit::Count, 17.0), [0.0, 5.0, 10.0, 15.0, 20.0]);
        assert_eq!(duration_step(3.0 * 604_800.0), 1_209_600.0 * 2.5);
        let svg = bars("Change failure rate", Unit::Ratio, &series(&[Some(0.8)]));
        assert!(
            svg.contains(">100%</text>") && svg.contains("May 1 – May 2: 80%"),
            "{svg}"
        );
    }

    #[test]
    fn durations_read_in_two_units() {
        assert_eq!(duration(0.0), "0s");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(750.0), "12m 30s");
        assert_eq!(duration(16_200.0), "4h 30m");
        assert_eq!(duration(95_340.0), "1d 2h");
        assert_eq!(duration(86_430.0), "1d");
        assert_eq!(duration(-5.0), "0s");
    }

    #[test]
    fn text_is_escaped_and_empty_series_say_so() {
        let svg = bars(
            "<img src=x onerror=alert(1)> & \"co\"",
            Unit::Seconds,
            &series(&[None, None]),
        );
        assert!(!svg.contains("<img"), "{svg}");
        assert!(
            svg.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &quot;co&quot;"),
            "{svg}"
        );
        assert!(svg.contains("no data in any"), "{svg}");
        assert!(!svg.contains("<rect"), "{svg}");
        let hourly = [Point {
            start: day(1) + TimeDelta::hours(6),
            end: day(1) + TimeDelta::hours(7),
            value: Some(1.0),
        }];
        assert!(bars("x", Unit::Count, &hourly).contains("May 1 06:00"));
        assert_eq!(bars("x", Unit::Count, &[]).matches("<rect").count(), 0);
    }
}

//! How events and tables look: one line per event for people (coloured on a terminal), or JSON /
//! YAML for scripts.

use std::io::IsTerminal;

use baton_kit::dora::DoraReport;
use baton_kit::log::{Record, short};

use crate::cli::Output;
pub use baton_kit::log::{Tone, kind, summary};

/// Where output goes and how it looks.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// The format.
    pub output: Output,
    /// ANSI colours (a terminal, and `NO_COLOR` unset).
    pub colour: bool,
}

impl Style {
    /// The style for `output` on this process's stdout.
    pub fn detect(output: Output) -> Self {
        Self {
            output,
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Red for failures, green for successes, yellow for waiting, dim for the rest.
    pub fn tone(&self, tone: Tone, text: &str) -> String {
        match tone {
            Tone::Good => self.paint("32", text),
            Tone::Bad => self.paint("31", text),
            Tone::Waiting => self.paint("33", text),
            Tone::Plain => text.to_owned(),
            Tone::Dim => self.paint("2", text),
        }
    }
}

/// The build or test run an event is about (`run` in its data), when it is about one.
pub fn run(record: &Record) -> Option<&str> {
    record
        .event
        .custom_data
        .as_ref()?
        .get("run")?
        .as_str()
        .filter(|r| !r.is_empty())
}

/// One event as a line (human or wide). An event of a build or test run ends with its run id
/// (`run test-5cc719e8`, in full with `wide`), which `baton logs` takes.
pub fn line(style: &Style, record: &Record) -> String {
    let (mut summary, tone) = summary(record);
    if let Some(run) = run(record) {
        let shown = match style.output {
            Output::Wide => run.to_owned(),
            _ => crate::ids::short_run(run),
        };
        summary = format!("{summary} (run {shown})");
    }
    let time = record.time().format("%Y-%m-%d %H:%M:%S");
    let chain = record.chain().unwrap_or("-");
    match style.output {
        Output::Wide => format!(
            "{time}  {:<24} {:<16} {:<36} {:<36} {}",
            kind(record),
            record.app,
            chain,
            record.event.context.id,
            style.tone(tone, &summary)
        ),
        _ => format!(
            "{time}  {:<24} {:<16} {:<8}  {}",
            kind(record),
            record.app,
            short(chain),
            style.tone(tone, &summary)
        ),
    }
}

/// Prints `value` as JSON or YAML.
pub fn document(output: Output, value: &impl serde::Serialize) -> String {
    match output {
        Output::Yaml => yaml_serde::to_string(value).unwrap_or_default(),
        _ => serde_json::to_string_pretty(value).unwrap_or_default(),
    }
}

/// Aligned columns.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The DORA figures of an app, one row per environment, under a line naming the app and the
/// window.
pub fn dora(reports: &[DoraReport]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let mut out = format!(
        "{} from {} to {} UTC\n",
        first.app,
        first.from.format("%Y-%m-%d %H:%M"),
        first.to.format("%Y-%m-%d %H:%M")
    );
    let mut rows = vec![vec![
        "ENVIRONMENT".into(),
        "DEPLOYMENTS".into(),
        "PER DAY".into(),
        "LEAD TIME".into(),
        "CHANGE FAILURE RATE".into(),
        "TIME TO RESTORE".into(),
    ]];
    for r in reports {
        rows.push(vec![
            r.environment.clone(),
            r.deployments.to_string(),
            format!("{:.2}", r.deployments_per_day),
            r.lead_time_seconds.map_or_else(no_data, duration),
            r.change_failure_rate.map_or_else(no_data, |rate| {
                format!("{:.0}% ({} of {})", rate * 100.0, r.failed_changes, r.changes)
            }),
            r.time_to_restore_seconds
                .map_or_else(no_data, |s| format!("{} ({} restores)", duration(s), r.restores)),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

fn no_data() -> String {
    "no data".to_owned()
}

/// Seconds as at most three units, largest first: `1d 2h 29m`, `4h 30m`, `12m 30s`, `45s`.
pub fn duration(seconds: f64) -> String {
    // Whole seconds: a duration printed for people needs no fraction.
    #[allow(clippy::cast_possible_truncation, reason = "rounded, and non-negative durations fit")]
    let mut left = seconds.max(0.0).round() as u64;
    if left == 0 {
        return "0s".to_owned();
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= size {
            parts.push(format!("{}{unit}", left / size));
            left %= size;
        }
    }
    parts.truncate(3);
    parts.join(" ")
}

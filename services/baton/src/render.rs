//! How events and tables look: one line per event for people (coloured on a terminal), or JSON /
//! YAML for scripts.

use std::io::IsTerminal;


use crate::cli::Output;
use baton_kit::log::{Record, short};
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

/// One event as a line (human or wide).
pub fn line(style: &Style, record: &Record) -> String {
    let (summary, tone) = summary(record);
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

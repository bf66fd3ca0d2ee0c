//! How events and tables look: one line per event for people (coloured on a terminal), or JSON /
//! YAML for scripts.

use std::io::IsTerminal;

use baton_schemas::EventType;
use serde_json::Value;

use crate::cli::Output;
use crate::log::Record;

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

/// How an event reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// It went well.
    Good,
    /// It went wrong.
    Bad,
    /// Something waits.
    Waiting,
    /// Neutral.
    Plain,
    /// Unimportant.
    Dim,
}

fn short(s: &str) -> &str {
    s.get(..8).unwrap_or(s)
}

fn text(v: &Value, path: &[&str]) -> String {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_str().map(str::to_owned).unwrap_or_default()
}

/// The `subject.predicate` of a type, e.g. `service.deployed`.
pub fn kind(record: &Record) -> String {
    match record.event_type() {
        Some(ty) => format!("{}.{}", ty.subject(), ty.predicate()),
        None => record.event.context.ty.clone(),
    }
}

/// A one-line summary of what the event says, and its tone.
pub fn summary(record: &Record) -> (String, Tone) {
    let data = record.event.custom_data.clone().unwrap_or(Value::Null);
    let content = &record.event.subject.content;
    let outcome = |o: &str| if o == "success" { Tone::Good } else { Tone::Bad };
    match record.event_type() {
        Some(EventType::ChangeMerged) => {
            let pusher = text(&data, &["pusher", "username"]);
            let commits = data["commits"].as_array().map_or(0, Vec::len);
            (
                format!(
                    "push of {} to {} ({commits} commit{}){}",
                    short(&text(&data, &["after"])),
                    text(&data, &["ref"]).trim_start_matches("refs/heads/"),
                    if commits == 1 { "" } else { "s" },
                    if pusher.is_empty() {
                        String::new()
                    } else {
                        format!(" by {pusher}")
                    }
                ),
                Tone::Plain,
            )
        }
        Some(EventType::BuildFinished | EventType::TestSuiteRunFinished) => {
            let o = text(&data, &["outcome"]);
            let reason = text(&data, &["reason"]);
            let counts = &data["counts"];
            let tests = counts["tests"].as_u64().filter(|n| *n > 0).map(|n| {
                format!(
                    ", {n} tests, {} failed",
                    counts["failures"].as_u64().unwrap_or(0) + counts["errors"].as_u64().unwrap_or(0)
                )
            });
            (
                format!(
                    "{o}{}{}",
                    tests.unwrap_or_default(),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ),
                outcome(&o),
            )
        }
        Some(EventType::ArtifactPublished) => (text(&data, &["image", "reference"]), Tone::Good),
        Some(EventType::ArtifactSigned) => {
            let digest = |field: &str| text(&data, &[field]).trim_start_matches("sha256:").to_owned();
            (
                format!(
                    "signed by key {} (.sig {}, .att {})",
                    short(text(&data, &["keyId"]).trim_start_matches("sha256:")),
                    short(&digest("signatureManifest")),
                    short(&digest("attestationManifest"))
                ),
                Tone::Good,
            )
        }
        Some(EventType::ReleaseCreated) => (
            format!("release of commit {}", short(&text(content, &["commit"]))),
            Tone::Plain,
        ),
        Some(EventType::EnvironmentModified) => (
            format!(
                "{} → {} (config {}) by {}{}",
                text(&data, &["action"]),
                text(&data, &["environment"]),
                short(&text(&data, &["configCommit"])),
                text(&data, &["actor"]),
                if data["pinned"].as_bool() == Some(true) {
                    ", pinned"
                } else {
                    ""
                }
            ),
            Tone::Plain,
        ),
        Some(EventType::ApprovalCreated) => (
            format!(
                "{}: {} approval(s) needed from {}",
                text(&data, &["environment"]),
                data["required"].as_u64().unwrap_or(1),
                data["approvers"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ),
            Tone::Waiting,
        ),
        Some(EventType::ApprovalUpdated) => (
            format!(
                "{}: {} by {}",
                text(&data, &["environment"]),
                text(content, &["decision"]),
                text(content, &["responder"]).trim_start_matches("urn:baton:user:")
            ),
            Tone::Plain,
        ),
        Some(EventType::ApprovalClosed) => {
            let status = text(content, &["status"]);
            (
                format!(
                    "{}: {status} ({})",
                    text(&data, &["environment"]),
                    text(&data, &["reason"])
                ),
                if status == "approved" { Tone::Good } else { Tone::Bad },
            )
        }
        Some(EventType::ServiceDeployed | EventType::ServiceUpgraded | EventType::ServiceRolledBack) => (
            format!("{} runs {}", text(&data, &["environment"]), text(&data, &["image"])),
            Tone::Good,
        ),
        Some(EventType::DeploymentStarted) => (
            format!("rolling out to {}", text(&data, &["environment"])),
            Tone::Waiting,
        ),
        Some(EventType::DeploymentFailed | EventType::DeploymentSuperseded) => (
            format!("{}: {}", text(content, &["environment"]), text(content, &["reason"])),
            Tone::Bad,
        ),
        Some(EventType::PromotionHeld) => (
            format!("{}: {}", text(content, &["environment"]), text(content, &["reason"])),
            Tone::Waiting,
        ),
        Some(EventType::ReleaseQuarantined) => (
            format!(
                "quarantined by {}: {}",
                text(content, &["actor"]),
                text(content, &["reason"])
            ),
            Tone::Bad,
        ),
        Some(EventType::CommandRejected) => (
            format!(
                "{} by {} refused: {}",
                text(content, &["verb"]),
                text(content, &["actor"]),
                text(content, &["reason"])
            ),
            Tone::Bad,
        ),
        Some(EventType::PolicyRejected) => (text(content, &["reason"]), Tone::Bad),
        _ => (record.event.subject.id.clone(), Tone::Dim),
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

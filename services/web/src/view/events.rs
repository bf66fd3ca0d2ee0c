//! The event log as pages and the API show it: a row ([`EventOut`]), which rows a page or a
//! live stream wants ([`EventFilter`]), and the words the pages use for types and tones.

use baton_kit::log::Tone;
use baton_schemas::EventType;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// An event row as pages and the API show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventOut {
    /// Stream sequence.
    pub sequence: u64,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The full type string.
    #[serde(rename = "type")]
    pub ty: String,
    /// `subject.predicate`, e.g. `service.deployed`.
    pub kind: String,
    /// The app's name.
    pub app: String,
    /// The environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Who acted.
    pub actor: String,
    /// One line.
    pub summary: String,
    /// `good`, `bad`, `waiting`, `plain` or `dim`.
    pub tone: &'static str,
    /// Whether it reports a failure.
    pub failed: bool,
}

/// Which events a page or a live stream wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// The app's name or token.
    pub app: Option<String>,
    /// One type.
    pub ty: Option<EventType>,
    /// One environment.
    pub environment: Option<String>,
    /// A release id or a prefix of one.
    pub release: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn admits(&self, event: &EventOut) -> bool {
        self.app
            .as_ref()
            .is_none_or(|a| *a == event.app || baton_schemas::subjects::sanitize_token(&event.app) == *a)
            && self.ty.is_none_or(|t| t.as_str() == event.ty)
            && self
                .environment
                .as_ref()
                .is_none_or(|e| event.environment.as_ref() == Some(e))
            && self
                .release
                .as_ref()
                .is_none_or(|r| event.release.as_ref().is_some_and(|id| id.starts_with(r.as_str())))
            && self.since.is_none_or(|s| event.time >= s)
            && self.until.is_none_or(|u| event.time < u)
    }
}

/// The word of a tone in the API and the pages' CSS classes.
pub fn tone_word(tone: Tone) -> &'static str {
    match tone {
        Tone::Good => "good",
        Tone::Bad => "bad",
        Tone::Waiting => "waiting",
        Tone::Plain => "plain",
        Tone::Dim => "dim",
    }
}

/// `subject.predicate` of a type.
pub fn short_type(ty: EventType) -> String {
    format!("{}.{}", ty.subject(), ty.predicate())
}

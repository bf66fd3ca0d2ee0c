//! The CDEvent envelope Baton puts in every CloudEvent's `data`: `context` + `subject` +
//! `customData`, exactly the shape of the CDEvents JSON schemas (which forbid any other field).
//!
//! The subject's `content` is kept as JSON so one envelope type serves every event type; the
//! typed contents come from `cdevents-sdk` (e.g. `cdevents_sdk::change_merged_0_3_0::Content`)
//! or from [`crate::extensions`], and [`CdEvent::new`] takes any of them.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::EventType;

/// A CDEvent: what travels as the CloudEvent `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdEvent {
    /// Who, what and when: id, source, type, timestamp, and the release's `chainId`.
    pub context: Context,
    /// What the event is about: the commit, build, artifact, environment, …
    pub subject: Subject,
    /// Everything Baton carries beyond the standard fields (commit lists, test counts, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<Value>,
    /// Media type of `customData` when it is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data_content_type: Option<String>,
}

/// The CDEvents context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    /// CDEvents spec version the event is formatted against.
    pub specversion: String,
    /// Unique id of this event; equals the CloudEvent `id`.
    pub id: String,
    /// URI-reference of the producer, e.g. `/baton/listener`.
    pub source: String,
    /// The event type string; equals the CloudEvent `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When the occurrence happened (RFC 3339).
    #[serde(with = "rfc3339")]
    #[schemars(with = "String")]
    pub timestamp: DateTime<Utc>,
    /// Optional schema URI of a custom schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_uri: Option<String>,
    /// The release id: starts at the commit and is carried unchanged to production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    /// Links to the events that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<EmbeddedLink>>,
}

/// The CDEvents subject: its id, an optional source, and the type-specific content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// Identifier of the subject within its source (a commit sha, an image purl, …).
    pub id: String,
    /// URI-reference of the subject's source when it differs from the context source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Type-specific content, as the type's schema defines it.
    pub content: Value,
}

/// An embedded CDEvents link (`PATH`, `END` or `RELATION`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddedLink {
    /// `PATH` (this event follows `from`), `END` (the chain ends here) or `RELATION`.
    pub link_type: LinkType,
    /// The event this one follows, for `PATH` and `END` links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<LinkRef>,
    /// The related event, for `RELATION` links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<LinkRef>,
    /// Kind of relation, for `RELATION` links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_kind: Option<String>,
}

/// The kind of an embedded link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum LinkType {
    /// This event follows the linked one.
    Path,
    /// The chain ends with this event.
    End,
    /// The events are related some other way.
    Relation,
}

/// Reference to another event by its context id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkRef {
    /// The `context.id` of the referenced event.
    pub context_id: String,
}

impl EmbeddedLink {
    /// A `PATH` link: this event was caused by the event with id `cause`.
    pub fn caused_by(cause: impl Into<String>) -> Self {
        Self {
            link_type: LinkType::Path,
            from: Some(LinkRef {
                context_id: cause.into(),
            }),
            target: None,
            link_kind: None,
        }
    }
}

impl CdEvent {
    /// A new event of type `ty` about `subject_id`, with typed `content` (a `cdevents-sdk`
    /// content struct or one of [`crate::extensions`]). The id, source and timestamp are set
    /// here; chain and links are added with the builder methods.
    ///
    /// # Errors
    /// Fails only if `content` cannot be represented as JSON (e.g. a map with non-string keys).
    pub fn new(
        ty: EventType,
        id: impl Into<String>,
        source: impl Into<String>,
        subject_id: impl Into<String>,
        content: impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            context: Context {
                specversion: ty.vocabulary().spec_version().to_owned(),
                id: id.into(),
                source: source.into(),
                ty: ty.as_str().to_owned(),
                // Microseconds: what the wire format keeps, so an event equals its round trip.
                timestamp: Utc::now().trunc_subsecs(6),
                schema_uri: None,
                chain_id: None,
                links: None,
            },
            subject: Subject {
                id: subject_id.into(),
                source: None,
                content: serde_json::to_value(content)?,
            },
            custom_data: None,
            custom_data_content_type: None,
        })
    }

    /// Sets the release id (`chainId`).
    #[must_use]
    pub fn with_chain_id(mut self, chain_id: impl Into<String>) -> Self {
        self.context.chain_id = Some(chain_id.into());
        self
    }

    /// Adds a `PATH` link to the event that caused this one.
    #[must_use]
    pub fn caused_by(mut self, cause_id: impl Into<String>) -> Self {
        self.context
            .links
            .get_or_insert_with(Vec::new)
            .push(EmbeddedLink::caused_by(cause_id));
        self
    }

    /// Sets the subject's source.
    #[must_use]
    pub fn with_subject_source(mut self, source: impl Into<String>) -> Self {
        self.subject.source = Some(source.into());
        self
    }

    /// Sets `customData`.
    ///
    /// # Errors
    /// Fails only if `data` cannot be represented as JSON.
    pub fn with_custom_data(mut self, data: impl Serialize) -> Result<Self, serde_json::Error> {
        self.custom_data = Some(serde_json::to_value(data)?);
        Ok(self)
    }

    /// The catalog type of this event, if it is one Baton knows.
    pub fn event_type(&self) -> Option<EventType> {
        self.context.ty.parse().ok()
    }

    /// `customData` read as a typed payload.
    ///
    /// # Errors
    /// Fails when there is no `customData` or it does not have the shape of `T`.
    pub fn custom_data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.custom_data.clone().unwrap_or(Value::Null))
    }
}

/// RFC 3339 timestamps with microseconds and a `Z`, as the CDEvents `date-time` format wants.
mod rfc3339 {
    use super::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("timestamp `{s}` is not RFC 3339: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_parses_with_the_official_sdk() {
        let content = cdevents_sdk::change_merged_0_3_0::Content {
            repository: Some(cdevents_sdk::change_merged_0_3_0::ContentRepository {
                id: "acme/shop".try_into().unwrap(),
                source: Some("https://github.com/acme/shop".try_into().unwrap()),
            }),
        };
        let event = CdEvent::new(EventType::ChangeMerged, "evt-1", "/baton/listener", "0a1b2c", content)
            .unwrap()
            .with_chain_id("rel-1")
            .caused_by("webhook-1")
            .with_custom_data(serde_json::json!({"ref": "refs/heads/main"}))
            .unwrap();
        let json = serde_json::to_value(&event).unwrap();
        let sdk: cdevents_sdk::CDEvent = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(sdk.ty(), "dev.cdevents.change.merged.0.3.0");
        assert_eq!(sdk.id().as_str(), "evt-1");
        let back: CdEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.event_type(), Some(EventType::ChangeMerged));
    }
}

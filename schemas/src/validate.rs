//! Validation of CDEvents against the JSON Schema of their type: the official CDEvents v0.5.1
//! schemas and 0.6 draft approval schemas (vendored under `schemas/cdevents/`, resolved
//! offline), and Baton's generated extension schemas (`schemas/json/events/`).

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::Validator;
use serde_json::Value;

use crate::catalog::EventType;

/// An event that does not satisfy the schema of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event data is not a valid `{event_type}` CDEvent: {}", .problems.join("; "))]
pub struct SchemaError {
    /// The type the data was checked against.
    pub event_type: String,
    /// Each violation, as `<json pointer>: <what is wrong>`.
    pub problems: Vec<String>,
}

macro_rules! cdevents_files {
    ($dir:literal: $($file:literal),+ $(,)?) => {
        &[$(($file, include_str!(concat!("../cdevents/", $dir, "/", $file)))),+]
    };
}

const CDEVENTS_051: &[(&str, &str)] = cdevents_files!("0.5.1":
    "changemerged.json", "buildqueued.json", "buildstarted.json", "buildfinished.json",
    "artifactpackaged.json", "artifactpublished.json", "artifactsigned.json", "testsuiterunstarted.json",
    "testsuiterunfinished.json", "environmentmodified.json", "servicedeployed.json",
    "serviceupgraded.json", "servicerolledback.json",
);
const CDEVENTS_06_DRAFT: &[(&str, &str)] =
    cdevents_files!("0.6-draft": "approvalcreated.json", "approvalupdated.json", "approvalclosed.json");
const LINKS: &[(&str, &str)] = cdevents_files!("0.5.1/links":
    "embeddedlinkend.json", "embeddedlinkpath.json", "embeddedlinkrelation.json",
    "embeddedlinksarray.json", "linkend.json", "linkpath.json", "linkrelation.json", "linkstart.json",
);
const EXTENSIONS: &[(&str, &str)] = &[
    (
        "baton-release-created.json",
        include_str!("../json/events/baton-release-created.json"),
    ),
    (
        "baton-deployment-failed.json",
        include_str!("../json/events/baton-deployment-failed.json"),
    ),
    (
        "baton-release-quarantined.json",
        include_str!("../json/events/baton-release-quarantined.json"),
    ),
    (
        "baton-release-unquarantined.json",
        include_str!("../json/events/baton-release-unquarantined.json"),
    ),
    (
        "baton-promotion-held.json",
        include_str!("../json/events/baton-promotion-held.json"),
    ),
    (
        "baton-command-rejected.json",
        include_str!("../json/events/baton-command-rejected.json"),
    ),
    (
        "baton-command-accepted.json",
        include_str!("../json/events/baton-command-accepted.json"),
    ),
    (
        "baton-policy-rejected.json",
        include_str!("../json/events/baton-policy-rejected.json"),
    ),
    (
        "baton-deployment-started.json",
        include_str!("../json/events/baton-deployment-started.json"),
    ),
    (
        "baton-deployment-superseded.json",
        include_str!("../json/events/baton-deployment-superseded.json"),
    ),
    (
        "baton-environment-drifted.json",
        include_str!("../json/events/baton-environment-drifted.json"),
    ),
    (
        "baton-environment-synced.json",
        include_str!("../json/events/baton-environment-synced.json"),
    ),
    (
        "baton-environment-unhealed.json",
        include_str!("../json/events/baton-environment-unhealed.json"),
    ),
];

/// The schema text of an event type.
pub fn schema_source(ty: EventType) -> &'static str {
    let table = match ty.vocabulary() {
        crate::Vocabulary::CdEvents051 => CDEVENTS_051,
        crate::Vocabulary::CdEvents06Draft => CDEVENTS_06_DRAFT,
        crate::Vocabulary::BatonExtension => EXTENSIONS,
    };
    table
        .iter()
        .find(|(file, _)| *file == ty.schema_file())
        .map(|(_, text)| *text)
        .unwrap_or_else(|| unreachable!("the catalog names a schema file for {ty} that is not embedded"))
}

fn validators() -> &'static HashMap<EventType, Validator> {
    static VALIDATORS: OnceLock<HashMap<EventType, Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let mut links = Vec::new();
        for (file, text) in LINKS {
            let value: Value = serde_json::from_str(text).expect("vendored link schemas are JSON");
            let name = file.trim_end_matches(".json");
            // The 0.5.1 and 0.6 draft schemas both say `$ref: links/embeddedlinksarray`
            // relative to their own `$id`, so the link schemas are registered under both bases.
            for base in [
                "https://cdevents.dev/0.5.1/schema/links",
                "https://cdevents.dev/0.6.0-draft/schema/links",
            ] {
                links.push((format!("{base}/{name}"), value.clone()));
            }
        }
        let registry = jsonschema::Registry::new()
            .extend(
                links
                    .into_iter()
                    .map(|(uri, v)| (uri, jsonschema::Resource::from_contents(v))),
            )
            .and_then(jsonschema::RegistryBuilder::prepare)
            .expect("vendored link schemas form a valid registry");
        EventType::ALL
            .iter()
            .map(|&ty| {
                let schema: Value = serde_json::from_str(schema_source(ty)).expect("embedded schemas are JSON");
                let validator = jsonschema::options()
                    .offline()
                    .should_validate_formats(true)
                    .with_registry(&registry)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("the embedded schema of {ty} does not compile: {e}"));
                (ty, validator)
            })
            .collect()
    })
}

/// Checks that `data` is a valid CDEvent of type `ty`, and that its `context.type` says so.
///
/// # Errors
/// Lists every violation with the JSON pointer of the offending value.
pub fn validate_event(ty: EventType, data: &Value) -> Result<(), SchemaError> {
    let validator = &validators()[&ty];
    let declared = data.pointer("/context/type").and_then(Value::as_str);
    // The common case, a valid event, takes the fast path; errors are collected only on failure.
    if declared == Some(ty.as_str()) && validator.is_valid(data) {
        return Ok(());
    }
    let mut problems: Vec<String> = validator
        .iter_errors(data)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{}: {e}", if at.is_empty() { "/" } else { at.as_str() })
        })
        .collect();
    if problems.is_empty() && declared != Some(ty.as_str()) {
        problems.push(format!(
            "/context/type: `{}` does not match the CloudEvent type",
            declared.unwrap_or("")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaError {
            event_type: ty.as_str().to_owned(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CdEvent;
    use serde_json::json;

    fn merged() -> CdEvent {
        CdEvent::new(
            EventType::ChangeMerged,
            "evt-1",
            "/baton/listener",
            "0a1b2c3d",
            json!({"repository": {"id": "acme/shop", "source": "https://github.com/acme/shop"}}),
        )
        .unwrap()
        .with_chain_id("rel-1")
        .caused_by("delivery-1")
        .with_custom_data(json!({"commits": []}))
        .unwrap()
    }

    #[test]
    fn every_embedded_schema_compiles() {
        assert_eq!(validators().len(), EventType::ALL.len());
    }

    #[test]
    fn a_well_formed_event_passes() {
        validate_event(EventType::ChangeMerged, &serde_json::to_value(merged()).unwrap()).unwrap();
    }

    #[test]
    fn unknown_content_fields_are_rejected_with_their_path() {
        let mut v = serde_json::to_value(merged()).unwrap();
        v["subject"]["content"]["commits"] = json!([]);
        let err = validate_event(EventType::ChangeMerged, &v).unwrap_err();
        assert!(err.to_string().contains("/subject/content"), "{err}");
    }

    #[test]
    fn type_mismatch_is_rejected() {
        let v = serde_json::to_value(merged()).unwrap();
        let err = validate_event(EventType::BuildQueued, &v).unwrap_err();
        assert!(!err.problems.is_empty());
    }

    #[test]
    fn bad_links_and_timestamps_are_rejected() {
        let mut v = serde_json::to_value(merged()).unwrap();
        v["context"]["links"] = json!([{"linkType": "SIDEWAYS"}]);
        v["context"]["timestamp"] = json!("yesterday");
        let err = validate_event(EventType::ChangeMerged, &v).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/context/links/0"), "{text}");
        assert!(text.contains("/context/timestamp"), "{text}");
    }

    #[test]
    fn approvals_validate_against_the_draft() {
        let e = CdEvent::new(
            EventType::ApprovalCreated,
            "a-1",
            "/baton/promoter",
            "approval-1",
            json!({
                "approvalDetailsUrl": "baton://releases/rel-1/approvals/production",
                "resourceTargetUrl": "baton://environments/production",
                "requestor": "urn:baton:service:promoter"
            }),
        )
        .unwrap()
        .caused_by("x");
        validate_event(EventType::ApprovalCreated, &serde_json::to_value(e).unwrap()).unwrap();
    }

    #[test]
    fn extension_events_validate_against_generated_schemas() {
        let content = crate::extensions::ReleaseCreatedContent {
            app: "acme/shop".into(),
            commit: "0a1b".into(),
            artifact_id: "pkg:oci/shop@sha256:00".into(),
        };
        let e = CdEvent::new(EventType::ReleaseCreated, "r-1", "/baton/promoter", "rel-1", content).unwrap();
        let mut v = serde_json::to_value(e).unwrap();
        validate_event(EventType::ReleaseCreated, &v).unwrap();
        v["subject"]["content"]["extra"] = json!(1);
        assert!(validate_event(EventType::ReleaseCreated, &v).is_err());
    }
}

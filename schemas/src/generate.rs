//! Generates the JSON Schemas of Baton's own files and extension events from the Rust types.
//!
//! The output is committed under `schemas/json/`; the test `generated_schemas_are_current`
//! regenerates it and fails if the committed files differ (run
//! `BATON_BLESS=1 cargo test -p baton-schemas` or `just schemas` to update them).

use schemars::{JsonSchema, schema_for};
use serde_json::{Map, Value, json};

use crate::catalog::{EventType, Vocabulary};
use crate::config::CommonSettings;
use crate::extensions::{
    CommandAcceptedContent, CommandRejectedContent, DeploymentFailedContent, DeploymentStartedContent,
    EnvironmentDriftedContent, EnvironmentSyncedContent, EnvironmentUnhealedContent, PolicyRejectedContent,
    PromotionHeldContent, ReleaseCreatedContent, ReleaseQuarantinedContent, ReleaseUnquarantinedContent,
};

/// Base URI of the schemas Baton publishes.
pub const SCHEMA_BASE: &str = "https://baton.dev/schemas";
/// Where the CDEvents embedded-links schema lives (vendored, registered offline).
pub const LINKS_SCHEMA: &str = "https://cdevents.dev/0.5.1/schema/links/embeddedlinksarray";

/// One generated file: its path under `schemas/json/` and its pretty-printed content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to `schemas/json/`, e.g. `events/baton-release-created.json`.
    pub path: String,
    /// The JSON text, pretty-printed, ending with a newline.
    pub contents: String,
}

/// Every file of `schemas/json/`.
pub fn generated_files() -> Vec<GeneratedFile> {
    let mut files = Vec::new();
    for ty in EventType::ALL
        .iter()
        .copied()
        .filter(|t| t.vocabulary() == Vocabulary::BatonExtension)
    {
        let content = extension_content_schema(ty);
        files.push(file(
            &format!("events/{}", ty.schema_file()),
            &extension_event_schema(ty, content),
        ));
    }
    files.push(payload::<crate::payloads::PushData>("push"));
    files.push(payload::<crate::payloads::BuildData>("build"));
    files.push(payload::<crate::payloads::SignedData>("signed"));
    files.push(payload::<crate::payloads::TestData>("test"));
    files.push(payload::<crate::release::ReleaseData>("release"));
    files.push(payload::<crate::release::PromotionData>("promotion"));
    files.push(payload::<crate::release::ApprovalData>("approval"));
    files.push(payload::<crate::release::DeploymentData>("deployment"));
    files.push(payload::<crate::release::ReleaseFile>("release-file"));
    files.push(payload::<crate::drift::DriftData>("drift"));
    files.push(payload::<crate::drift::DriftRecord>("drift-record"));
    files.push(payload::<crate::commands::CommandRequest>("command-request"));
    files.push(payload::<crate::commands::CommandReply>("command-reply"));
    let mut pipeline = schema_value::<crate::pipeline::Pipeline>();
    pipeline.insert("$id".into(), json!(format!("{SCHEMA_BASE}/pipeline.json")));
    pipeline.insert(
        "description".into(),
        json!("The pipeline file `.baton.yaml` at the root of an application's repository."),
    );
    files.push(file("pipeline.json", &Value::Object(pipeline)));
    let mut environments = schema_value::<crate::environments::EnvironmentsFile>();
    environments.insert("$id".into(), json!(format!("{SCHEMA_BASE}/environments.json")));
    environments.insert(
        "description".into(),
        json!("`environments.yaml` at the root of the config repo: ordered environments and their promotion policy."),
    );
    files.push(file("environments.json", &Value::Object(environments)));
    let mut people = schema_value::<crate::people::PeopleFile>();
    people.insert("$id".into(), json!(format!("{SCHEMA_BASE}/people.json")));
    people.insert(
        "description".into(),
        json!("`people.yaml` at the root of the config repo: who may act (their SSH keys, e-mails, git-host logins, chat ids, groups) and the bots that speak for them."),
    );
    files.push(file("people.json", &Value::Object(people)));
    let mut settings = schema_value::<CommonSettings>();
    settings.insert("$id".into(), json!(format!("{SCHEMA_BASE}/config/service-common.json")));
    files.push(file("config/service-common.json", &Value::Object(settings)));
    files.push(service_config::<crate::config::listener::ListenerSettings>("listener"));
    files.push(service_config::<crate::config::builder::BuilderSettings>("builder"));
    files.push(service_config::<crate::config::tester::TesterSettings>("tester"));
    files.push(service_config::<crate::config::promoter::PromoterSettings>("promoter"));
    files.push(service_config::<crate::config::deployer::DeployerSettings>("deployer"));
    files.push(service_config::<crate::config::chatops::ChatopsSettings>("chatops"));
    files.push(service_config::<crate::config::web::WebSettings>("web"));
    files
}

/// `payloads/<name>.json`: a `customData` (or command) payload.
fn payload<T: JsonSchema>(name: &str) -> GeneratedFile {
    let mut schema = schema_value::<T>();
    schema.insert("$id".into(), json!(format!("{SCHEMA_BASE}/payloads/{name}.json")));
    file(&format!("payloads/{name}.json"), &Value::Object(schema))
}

/// `config/<service>.json`: a service's own config sections.
fn service_config<T: JsonSchema>(service: &str) -> GeneratedFile {
    let mut schema = schema_value::<T>();
    schema.insert("$id".into(), json!(format!("{SCHEMA_BASE}/config/{service}.json")));
    schema.insert(
        "description".into(),
        json!(format!(
            "The {service}'s own sections; the file also holds the common sections of service-common.json."
        )),
    );
    file(&format!("config/{service}.json"), &Value::Object(schema))
}

fn file(path: &str, value: &Value) -> GeneratedFile {
    let mut contents = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    contents.push('\n');
    GeneratedFile {
        path: path.to_owned(),
        contents,
    }
}

fn schema_value<T: JsonSchema>() -> Map<String, Value> {
    match serde_json::to_value(schema_for!(T)).expect("a schema always serializes") {
        Value::Object(map) => map,
        other => unreachable!("schemars produced a non-object schema: {other}"),
    }
}

fn extension_content_schema(ty: EventType) -> Map<String, Value> {
    match ty {
        EventType::ReleaseCreated => schema_value::<ReleaseCreatedContent>(),
        EventType::DeploymentFailed => schema_value::<DeploymentFailedContent>(),
        EventType::ReleaseQuarantined => schema_value::<ReleaseQuarantinedContent>(),
        EventType::ReleaseUnquarantined => schema_value::<ReleaseUnquarantinedContent>(),
        EventType::PromotionHeld => schema_value::<PromotionHeldContent>(),
        EventType::CommandRejected => schema_value::<CommandRejectedContent>(),
        EventType::CommandAccepted => schema_value::<CommandAcceptedContent>(),
        EventType::PolicyRejected => schema_value::<PolicyRejectedContent>(),
        EventType::DeploymentStarted => schema_value::<DeploymentStartedContent>(),
        EventType::DeploymentSuperseded => schema_value::<DeploymentFailedContent>(),
        EventType::EnvironmentDrifted => schema_value::<EnvironmentDriftedContent>(),
        EventType::EnvironmentSynced => schema_value::<EnvironmentSyncedContent>(),
        EventType::EnvironmentUnhealed => schema_value::<EnvironmentUnhealedContent>(),
        other => unreachable!("{other} is not a Baton extension event"),
    }
}

/// The full event schema of an extension type: the CDEvents v0.5.1 envelope (same context,
/// subject and customData rules as the official schemas) with the generated content.
fn extension_event_schema(ty: EventType, mut content: Map<String, Value>) -> Value {
    content.remove("$schema");
    let title = content.remove("title");
    let defs = content.remove("$defs");
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{SCHEMA_BASE}/events/{}", ty.schema_file()),
        "title": title.unwrap_or(Value::Null),
        "description": format!("CDEvent `{}` (Baton extension), emitted by the {}.", ty.as_str(), ty.emitted_by()),
        "type": "object",
        "additionalProperties": false,
        "required": ["context", "subject"],
        "properties": {
            "context": {
                "type": "object",
                "additionalProperties": false,
                "required": ["specversion", "id", "source", "type", "timestamp"],
                "properties": {
                    "specversion": {"type": "string", "minLength": 1},
                    "id": {"type": "string", "minLength": 1},
                    "source": {"type": "string", "minLength": 1, "format": "uri-reference"},
                    "type": {"type": "string", "enum": [ty.as_str()], "default": ty.as_str()},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "schemaUri": {"type": "string", "minLength": 1, "format": "uri"},
                    "chainId": {"type": "string", "minLength": 1},
                    "links": {"$ref": LINKS_SCHEMA}
                }
            },
            "subject": {
                "type": "object",
                "additionalProperties": false,
                "required": ["id", "content"],
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "source": {"type": "string", "minLength": 1, "format": "uri-reference"},
                    "content": Value::Object(content)
                }
            },
            "customData": {"oneOf": [{"type": "object"}, {"type": "string", "contentEncoding": "base64"}]},
            "customDataContentType": {"type": "string"}
        }
    });
    if let Some(defs) = defs {
        schema["$defs"] = defs;
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn generated_schemas_are_current() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
        let bless = std::env::var_os("BATON_BLESS").is_some();
        let mut stale = Vec::new();
        for f in generated_files() {
            let path = root.join(&f.path);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != f.contents {
                if bless {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, &f.contents).unwrap();
                } else {
                    stale.push(f.path);
                }
            }
        }
        assert!(
            stale.is_empty(),
            "schemas/json is stale for {stale:?}: run `just schemas` (BATON_BLESS=1 cargo test -p baton-schemas) and commit the result"
        );
    }
}

//! What the view reads out of one event, whatever its type: the app's name as its events spell
//! it, the environment it concerns, who acted, and the release data it carries. Pure functions
//! over a [`Record`], so every page names things the same way.

use baton_kit::log::Record;
use baton_schemas::EventType;
use baton_schemas::release::user_of_urn;
use serde_json::Value;

/// The string at `key` of `value`, when there is one and it is not empty.
fn text<'a>(value: Option<&'a Value>, key: &str) -> Option<&'a str> {
    value?.get(key)?.as_str().filter(|s| !s.is_empty())
}

/// The app's name as the event spells it (`acme/shop`), falling back to the subject's token.
pub fn app_name(record: &Record) -> &str {
    let data = record.event.custom_data.as_ref();
    text(data, "app")
        .or_else(|| text(Some(&record.event.subject.content), "app"))
        .unwrap_or(&record.app)
}

/// The environment the event is about, when it is about one.
pub fn environment(record: &Record) -> Option<&str> {
    let data = record.event.custom_data.as_ref();
    let content = Some(&record.event.subject.content);
    text(data, "environment")
        .or_else(|| text(content, "environment"))
        .or_else(|| {
            // CDEvents' environment.modified names its environment in the subject.
            (record.event_type() == Some(EventType::EnvironmentModified))
                .then_some(record.event.subject.id.as_str())
                .filter(|s| !s.is_empty())
        })
}

/// Who acted: a person (an approver, the operator of a command, whoever pushed) or, for what
/// Baton did by itself, the service that emitted the event.
pub fn actor(record: &Record) -> String {
    let data = record.event.custom_data.as_ref();
    let content = Some(&record.event.subject.content);
    let person = match record.event_type() {
        Some(EventType::ChangeMerged) => data
            .and_then(|d| d.get("pusher"))
            .and_then(|p| text(Some(p), "username").or_else(|| text(Some(p), "name"))),
        Some(EventType::ApprovalUpdated) => text(content, "responder"),
        Some(EventType::ApprovalCreated) => text(data, "requestedBy"),
        Some(EventType::CommandAccepted) => text(content, "person"),
        _ => text(data, "actor").or_else(|| text(content, "actor")),
    };
    match person {
        Some(person) => user_of_urn(person).to_owned(),
        None => {
            let source = record.event.context.source.trim_end_matches('/');
            let service = source.rsplit('/').next().unwrap_or(source);
            if service.is_empty() {
                "baton".to_owned()
            } else {
                format!("baton-{}", service.trim_start_matches("baton-"))
            }
        }
    }
}

/// Whether the event reports a failure where it happened (a failed build, test run or
/// rollout, a quarantine, a refused command or approval).
pub fn is_failure(record: &Record) -> bool {
    let data = record.event.custom_data.as_ref();
    match record.event_type() {
        Some(EventType::BuildFinished | EventType::TestSuiteRunFinished) => {
            text(data, "outcome").is_some_and(|o| o != "success")
        }
        Some(EventType::ApprovalClosed) => {
            text(Some(&record.event.subject.content), "status").is_some_and(|s| s != "approved")
        }
        Some(
            EventType::DeploymentFailed
            | EventType::ReleaseQuarantined
            | EventType::CommandRejected
            | EventType::PolicyRejected,
        ) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_schemas::CdEvent;
    use serde_json::json;

    fn record(ty: EventType, content: Value, data: Value) -> Record {
        let event = CdEvent::new(ty, "e-1", "/baton/promoter", "subject-1", content)
            .unwrap()
            .with_custom_data(data)
            .unwrap();
        Record {
            sequence: 1,
            app: "acme_shop".into(),
            event,
        }
    }

    #[test]
    fn names_come_from_the_event_not_the_subject_token() {
        let r = record(
            EventType::EnvironmentModified,
            json!({}),
            json!({"app": "acme/shop", "environment": "staging", "actor": "alice"}),
        );
        assert_eq!(app_name(&r), "acme/shop");
        assert_eq!(environment(&r), Some("staging"));
        assert_eq!(actor(&r), "alice");
    }

    #[test]
    fn automation_is_named_after_the_emitting_service() {
        let r = record(EventType::BuildFinished, json!({}), json!({"outcome": "failure"}));
        assert_eq!(actor(&r), "baton-promoter");
        assert!(is_failure(&r));
        assert_eq!(app_name(&r), "acme_shop");
    }

    #[test]
    fn approvers_are_read_from_the_responder() {
        let r = record(
            EventType::ApprovalUpdated,
            json!({"responder": "urn:baton:user:bob", "decision": "approved"}),
            json!({"environment": "production"}),
        );
        assert_eq!(actor(&r), "bob");
        assert_eq!(environment(&r), Some("production"));
        assert!(!is_failure(&r));
    }
}

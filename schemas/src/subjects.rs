//! NATS subjects: where events, logs, commands and dead letters live.
//!
//! - events: `baton.events.<app>.<cdevent-subject>.<predicate>`
//! - live logs: `baton.logs.<run>.<step>`
//! - commands (request/reply): `baton.cmd.<service>.<verb>`
//! - dead letters: `baton.deadletter.<consumer>`
//!
//! Names that come from users (apps, runs, steps) are sanitized to one valid NATS token each.

use crate::catalog::EventType;

/// Every Baton event is published under this prefix; the events stream captures `baton.events.>`.
pub const EVENTS_PREFIX: &str = "baton.events";
/// Filter for all events.
pub const ALL_EVENTS: &str = "baton.events.>";
/// Dead-lettered messages are published under this prefix; the dead-letter stream captures it.
pub const DEADLETTER_PREFIX: &str = "baton.deadletter";
/// Filter for all dead letters.
pub const ALL_DEADLETTERS: &str = "baton.deadletter.>";
/// Live log lines of build and test steps.
pub const LOGS_PREFIX: &str = "baton.logs";
/// Request/reply commands.
pub const COMMANDS_PREFIX: &str = "baton.cmd";
/// The app token of events that concern no app: a command naming none (`restore`) or only a
/// release nobody created. Given as the app, it is the token as it is ([`event_subject`]); `~`
/// is outside what [`sanitize_token`] makes of any app's name, so no app's events share it.
pub const NO_APP: &str = "~no-app";

/// Turns any name into one valid NATS subject token.
///
/// NATS tokens may not be empty or contain `.`, `*`, `>` or whitespace. Baton keeps ASCII
/// letters, digits, `-` and `_`, and replaces every other character with `_`, so `acme/shop`
/// becomes `acme_shop` and `my app.v2` becomes `my_app_v2`. An empty name becomes `_`.
/// Distinct names can map to the same token (`a/b` and `a_b`); the event's data always carries
/// the exact name. Because the token also names an app's config-repo folder, state keys and
/// Kubernetes labels, the listener refuses at start to track two repositories with one token.
pub fn sanitize_token(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The subject an event of type `ty` for application `app` is published on ([`NO_APP`] for
/// none).
pub fn event_subject(app: &str, ty: EventType) -> String {
    let token = if app == NO_APP {
        NO_APP.to_owned()
    } else {
        sanitize_token(app)
    };
    format!("{EVENTS_PREFIX}.{token}.{}.{}", ty.subject(), ty.predicate())
}

/// A filter matching events of type `ty` for every application.
pub fn event_filter(ty: EventType) -> String {
    format!("{EVENTS_PREFIX}.*.{}.{}", ty.subject(), ty.predicate())
}

/// A filter matching every event of one application.
pub fn app_filter(app: &str) -> String {
    format!("{EVENTS_PREFIX}.{}.>", sanitize_token(app))
}

/// The subject live log lines of one step of one run are published on.
pub fn log_subject(run: &str, step: &str) -> String {
    format!("{LOGS_PREFIX}.{}.{}", sanitize_token(run), sanitize_token(step))
}

/// The request/reply subject of a command, e.g. `baton.cmd.promoter.approve`.
pub fn command_subject(service: &str, verb: &str) -> String {
    format!("{COMMANDS_PREFIX}.{}.{}", sanitize_token(service), sanitize_token(verb))
}

/// The subject a consumer's dead letters are published on.
pub fn deadletter_subject(consumer: &str) -> String {
    format!("{DEADLETTER_PREFIX}.{}", sanitize_token(consumer))
}

/// The application token of an event subject (`baton.events.<app>.…`), if it is one.
pub fn app_of(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(EVENTS_PREFIX)?
        .strip_prefix('.')?
        .split('.')
        .next()
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_become_single_tokens() {
        assert_eq!(sanitize_token("shop"), "shop");
        assert_eq!(sanitize_token("acme/shop"), "acme_shop");
        assert_eq!(sanitize_token("my app.v2"), "my_app_v2");
        assert_eq!(sanitize_token("a*b>c\td"), "a_b_c_d");
        assert_eq!(sanitize_token("café"), "caf_");
        assert_eq!(sanitize_token(""), "_");
    }

    #[test]
    fn event_subjects_match_their_filters() {
        let s = event_subject("acme/shop", EventType::ServiceDeployed);
        assert_eq!(s, "baton.events.acme_shop.service.deployed");
        assert_eq!(
            event_filter(EventType::ServiceDeployed),
            "baton.events.*.service.deployed"
        );
        assert_eq!(app_filter("acme/shop"), "baton.events.acme_shop.>");
        assert_eq!(app_of(&s), Some("acme_shop"));
        assert_eq!(
            event_subject("shop", EventType::ReleaseCreated),
            "baton.events.shop.baton-release.created"
        );
    }

    #[test]
    fn no_app_is_never_an_apps_token() {
        assert_ne!(sanitize_token(NO_APP), NO_APP, "no app's name sanitizes to it");
        let subject = event_subject(NO_APP, EventType::CommandRejected);
        assert_eq!(subject, "baton.events.~no-app.baton-command.rejected");
        assert_eq!(app_of(&subject), Some(NO_APP));
    }

    #[test]
    fn other_subjects() {
        assert_eq!(log_subject("run.1", "unit tests"), "baton.logs.run_1.unit_tests");
        assert_eq!(command_subject("promoter", "approve"), "baton.cmd.promoter.approve");
        assert_eq!(deadletter_subject("builder"), "baton.deadletter.builder");
    }
}

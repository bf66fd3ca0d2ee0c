//! Turns the bot's config sections into what it runs with: the signing secret and the
//! incoming-webhook URL read, every mistake reported with the field at fault (exit code 64).
//! Without a signing secret the bot does not start — fail closed: an unverified request must
//! never become an approval.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_kit::secret::Secret;
use baton_kit::settings::ConfigError;
use baton_schemas::config::chatops::ChatopsSettings;

/// The bot's settings, resolved.
#[derive(Debug, Clone)]
pub struct Chatops {
    /// The Slack signing secret every inbound request is verified with.
    pub signing_secret: Secret,
    /// Slack user id → Baton identity.
    pub users: BTreeMap<String, String>,
    /// Whom unmapped users are told to ask.
    pub contact: String,
    /// Where approval requests and release news go (`None`: nowhere). A secret: it holds a token.
    pub incoming_webhook_url: Option<Secret>,
    /// Replay window for request timestamps.
    pub max_request_age: Duration,
    /// Longest wait for the promoter's answer.
    pub command_timeout: Duration,
    /// Longest a slash command's HTTP answer waits before the outcome goes to `response_url`.
    pub answer_within: Duration,
    /// Longest a post to Slack may take.
    pub post_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Chatops {
    /// The Baton identity of a Slack user, if mapped.
    pub fn identity(&self, slack_user: &str) -> Option<&str> {
        self.users
            .get(slack_user)
            .map(String::as_str)
            .filter(|i| !i.trim().is_empty())
    }
}

/// Resolves and validates the settings, reading secrets through `env`.
///
/// # Errors
/// The first invalid field, by name.
pub fn resolve(settings: &ChatopsSettings, env: &dyn Fn(&str) -> Option<String>) -> Result<Chatops, ConfigError> {
    let signing_secret = match (&settings.signing_secret_env, &settings.signing_secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "signing_secret_file",
                "set either signing_secret_env or signing_secret_file, not both",
            ));
        }
        (Some(var), None) => Secret::from_env(var, env).map_err(|m| ConfigError::invalid("signing_secret_env", m))?,
        (None, Some(path)) => Secret::from_file(path).map_err(|m| ConfigError::invalid("signing_secret_file", m))?,
        (None, None) => {
            return Err(ConfigError::invalid(
                "signing_secret_env",
                "the bot verifies every Slack request with the app's signing secret (Slack: Basic \
                 Information → App Credentials → Signing Secret): set signing_secret_env or \
                 signing_secret_file",
            ));
        }
    };
    for (slack, identity) in &settings.users {
        if slack.trim().is_empty() || identity.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("users.{slack}"),
                "map a Slack user id (e.g. U024BE7LH) to a Baton identity (e.g. alice); neither may be empty",
            ));
        }
    }
    let url = match (
        &settings.incoming_webhook_url,
        &settings.incoming_webhook_url_env,
        &settings.incoming_webhook_url_file,
    ) {
        (None, None, None) => None,
        (Some(url), None, None) => Some(("incoming_webhook_url", Secret::new(url.trim().as_bytes()))),
        (None, Some(var), None) => Some((
            "incoming_webhook_url_env",
            Secret::from_env(var, env).map_err(|m| ConfigError::invalid("incoming_webhook_url_env", m))?,
        )),
        (None, None, Some(path)) => Some((
            "incoming_webhook_url_file",
            Secret::from_file(path).map_err(|m| ConfigError::invalid("incoming_webhook_url_file", m))?,
        )),
        _ => {
            return Err(ConfigError::invalid(
                "incoming_webhook_url",
                "set one of incoming_webhook_url, incoming_webhook_url_env, incoming_webhook_url_file",
            ));
        }
    };
    let incoming_webhook_url = match url {
        Some((field, url)) => {
            let text = std::str::from_utf8(url.expose()).unwrap_or_default();
            if !(text.starts_with("https://") || text.starts_with("http://")) {
                return Err(ConfigError::invalid(
                    field,
                    "must be an http(s) URL, e.g. https://hooks.slack.com/services/T…/B…/…",
                ));
            }
            Some(url)
        }
        None => None,
    };
    for (field, value) in [
        ("max_request_age", settings.max_request_age),
        ("command_timeout", settings.command_timeout),
        ("answer_within", settings.answer_within),
        ("post_timeout", settings.post_timeout),
    ] {
        if value.is_zero() {
            return Err(ConfigError::invalid(field, "must be longer than 0s"));
        }
    }
    if settings.max_body_bytes == 0 {
        return Err(ConfigError::invalid(
            "max_body_bytes",
            "must be at least 1, e.g. 1048576",
        ));
    }
    Ok(Chatops {
        signing_secret,
        users: settings.users.clone(),
        contact: settings.contact.clone(),
        incoming_webhook_url,
        max_request_age: settings.max_request_age,
        command_timeout: settings.command_timeout,
        answer_within: settings.answer_within,
        post_timeout: settings.post_timeout,
        max_body_bytes: settings.max_body_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ChatopsSettings {
        ChatopsSettings {
            signing_secret_env: Some("SLACK_SIGNING_SECRET".into()),
            ..ChatopsSettings::default()
        }
    }

    #[test]
    fn no_signing_secret_names_the_field() {
        let e = resolve(&ChatopsSettings::default(), &|_| None).unwrap_err();
        assert_eq!(e.field(), Some("signing_secret_env"));
        let e = resolve(&settings(), &|_| None).unwrap_err();
        assert_eq!(e.field(), Some("signing_secret_env"));
        assert!(e.to_string().contains("SLACK_SIGNING_SECRET is not set"), "{e}");
    }

    #[test]
    fn a_webhook_url_must_be_http_and_stays_secret() {
        let env = |k: &str| (k == "SLACK_SIGNING_SECRET").then(|| "s3cret".to_owned());
        let mut s = settings();
        s.incoming_webhook_url = Some("hooks.slack.com/services/T/B/token".into());
        assert_eq!(resolve(&s, &env).unwrap_err().field(), Some("incoming_webhook_url"));
        s.incoming_webhook_url = Some("https://hooks.slack.com/services/T/B/token".into());
        let resolved = resolve(&s, &env).unwrap();
        assert!(!format!("{resolved:?}").contains("token") && !format!("{resolved:?}").contains("s3cret"));
    }
}

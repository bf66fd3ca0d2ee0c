//! Turns the bot's config sections into what it runs with: the signing secret and the
//! incoming-webhook URL read, the key it signs commands with, where `people.yaml` is read, every
//! mistake reported with the field at fault (exit code 64). Without a signing secret or a
//! signing key the bot does not start — fail closed: an unverified request must never become an
//! approval, and the promoter refuses an unsigned command.
//!
//! [`resolve`] checks that the key file is named; [`load_signer`] reads it, when the bot is
//! built, so that a config can be checked where the key is not mounted (the deploy suite).

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_kit::secret::Secret;
use baton_kit::settings::ConfigError;
use baton_kit::signing::Signer;
use baton_kit::source::Credential;
use baton_schemas::config::chatops::ChatopsSettings;
use baton_schemas::people::PEOPLE_FILE;

/// The bot's settings, resolved.
#[derive(Debug, Clone)]
pub struct Chatops {
    /// The Slack signing secret every inbound request is verified with.
    pub signing_secret: Secret,
    /// The OpenSSH private key every forwarded command is signed with ([`load_signer`]).
    pub signing_key_file: PathBuf,
    /// The config repo holding `people.yaml`.
    pub people_repository: String,
    /// Its branch.
    pub people_branch: String,
    /// How long a read of `people.yaml` is used.
    pub people_refresh: Duration,
    /// Git credentials for the config repo.
    pub credentials: Vec<Credential>,
    /// Where the config repo's mirror is cached (`None`: a temporary directory).
    pub cache_dir: Option<PathBuf>,
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
    if !settings.users.is_empty() {
        return Err(ConfigError::invalid("users", users_moved(settings)));
    }
    let signing_key_file = settings.signing_key_file.clone().ok_or_else(|| {
        ConfigError::invalid(
            "signing_key_file",
            "the bot signs every command it forwards with its own SSH key, and the promoter refuses \
             unsigned ones: make one (`ssh-keygen -t ed25519 -N '' -C baton-chatops -f chatops-key`), \
             name the private key file here, and list the public key under `bots.chatops.keys` in \
             people.yaml",
        )
    })?;
    let people = &settings.people;
    if people.repository.trim().is_empty() {
        return Err(ConfigError::invalid(
            "people.repository",
            format!(
                "the bot reads who each chat user is from {PEOPLE_FILE} in the config repo: set the \
                 repository URL the promoter's config_repo.url names"
            ),
        ));
    }
    if people.branch.trim().is_empty() {
        return Err(ConfigError::invalid("people.branch", "name the branch, e.g. main"));
    }
    if people.refresh.is_zero() {
        return Err(ConfigError::invalid(
            "people.refresh",
            "must be longer than 0s, e.g. 30s",
        ));
    }
    let credentials = baton_kit::source::resolve_credentials(&settings.source.credentials, env)?;
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
        signing_key_file,
        people_repository: people.repository.trim().to_owned(),
        people_branch: people.branch.trim().to_owned(),
        people_refresh: people.refresh,
        credentials,
        cache_dir: settings.source.cache_dir.clone(),
        contact: settings.contact.clone(),
        incoming_webhook_url,
        max_request_age: settings.max_request_age,
        command_timeout: settings.command_timeout,
        answer_within: settings.answer_within,
        post_timeout: settings.post_timeout,
        max_body_bytes: settings.max_body_bytes,
    })
}

/// The refusal of the old `users` map: chat ids are `people.yaml`'s now, and each entry to move.
fn users_moved(settings: &ChatopsSettings) -> String {
    let moves: Vec<String> = settings
        .users
        .iter()
        .map(|(chat, person)| format!("add {chat} to people.{person}.chat"))
        .collect();
    format!(
        "chat users are mapped in {PEOPLE_FILE} in the config repo now, where the promoter checks \
         them too: {}; then remove `users` from this config",
        moves.join(", ")
    )
}

/// Reads the bot's signing key named by `signing_key_file`.
///
/// # Errors
/// `signing_key_file` when the file cannot be read, is not an OpenSSH private key, or is
/// protected by a passphrase.
pub fn load_signer(path: &Path) -> Result<Signer, ConfigError> {
    Signer::from_key_file(path).map_err(|e| ConfigError::invalid("signing_key_file", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ChatopsSettings {
        let mut s = ChatopsSettings {
            signing_secret_env: Some("SLACK_SIGNING_SECRET".into()),
            signing_key_file: Some("/run/secrets/chatops-key".into()),
            ..ChatopsSettings::default()
        };
        s.people.repository = "https://git.example.com/acme/config.git".into();
        s
    }

    fn with_secret(k: &str) -> Option<String> {
        (k == "SLACK_SIGNING_SECRET").then(|| "s3cret".to_owned())
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
    fn the_signing_key_and_the_people_repository_are_required() {
        let resolved = resolve(&settings(), &with_secret).unwrap();
        assert_eq!(
            (resolved.people_branch.as_str(), resolved.people_refresh),
            ("main", Duration::from_secs(30))
        );
        let mut s = settings();
        s.signing_key_file = None;
        let e = resolve(&s, &with_secret).unwrap_err();
        assert_eq!(e.field(), Some("signing_key_file"));
        assert!(e.to_string().contains("bots.chatops.keys"), "{e}");
        let mut s = settings();
        s.people.repository = " ".into();
        assert_eq!(
            resolve(&s, &with_secret).unwrap_err().field(),
            Some("people.repository")
        );
        let mut s = settings();
        s.people.refresh = Duration::ZERO;
        assert_eq!(resolve(&s, &with_secret).unwrap_err().field(), Some("people.refresh"));
    }

    #[test]
    fn the_old_users_map_is_refused_saying_where_each_entry_goes() {
        let mut s = settings();
        s.users = [
            ("U1".to_owned(), "alice".to_owned()),
            ("U2".to_owned(), "bob".to_owned()),
        ]
        .into();
        let e = resolve(&s, &with_secret).unwrap_err();
        assert_eq!(e.field(), Some("users"));
        let message = e.to_string();
        assert!(
            message.contains("add U1 to people.alice.chat, add U2 to people.bob.chat"),
            "{message}"
        );
        // The signing secret is still checked first: a config without one is refused for it.
        s.signing_secret_env = None;
        assert_eq!(resolve(&s, &|_| None).unwrap_err().field(), Some("signing_secret_env"));
    }

    #[test]
    fn an_unreadable_or_encrypted_key_names_the_field() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let e = load_signer(&dir.path().join("absent")).unwrap_err();
        assert_eq!(e.field(), Some("signing_key_file"));
        let keygen = |name: &str, passphrase: &str| {
            let path = dir.path().join(name);
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-C", "baton-chatops", "-N", passphrase, "-f"])
                .arg(&path)
                .output()
                .expect("ssh-keygen runs (just setup installs openssh-client)");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            path
        };
        let locked = keygen("locked", "a passphrase");
        let e = load_signer(&locked).unwrap_err();
        assert_eq!(e.field(), Some("signing_key_file"));
        assert!(e.to_string().contains("passphrase"), "{e}");
        let e = load_signer(&locked.with_extension("pub")).unwrap_err();
        assert_eq!(e.field(), Some("signing_key_file"));
        let open = keygen("open", "");
        let signer = load_signer(&open).unwrap();
        let public = std::fs::read_to_string(open.with_extension("pub")).unwrap();
        let listed = baton_kit::signing::parse_authorized_key(&public).unwrap();
        assert_eq!(signer.public_key().key_data(), listed.key_data());
    }

    #[test]
    fn a_webhook_url_must_be_http_and_stays_secret() {
        let env = with_secret;
        let mut s = settings();
        s.incoming_webhook_url = Some("hooks.slack.com/services/T/B/token".into());
        assert_eq!(resolve(&s, &env).unwrap_err().field(), Some("incoming_webhook_url"));
        s.incoming_webhook_url = Some("https://hooks.slack.com/services/T/B/token".into());
        let resolved = resolve(&s, &env).unwrap();
        assert!(!format!("{resolved:?}").contains("token") && !format!("{resolved:?}").contains("s3cret"));
    }
}

//! Turns the listener's config sections into what it runs with: secrets read, branch globs
//! compiled, and every mistake reported with the field at fault (exit code 64). A repository
//! that receives webhooks without a secret is refused — fail closed — unless it is explicitly
//! marked `insecure: true`.

use std::sync::Arc;

use baton_kit::secret::{Named, Secret};
use baton_kit::settings::ConfigError;
use baton_schemas::config::listener::{ListenerSettings, PollConfig};
use baton_schemas::subjects::sanitize_token;
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::providers::Provider;

/// One repository, ready to use.
#[derive(Debug)]
pub struct Repository {
    /// Name as the git host names it; the application's name in events.
    pub name: String,
    /// The host that sends its webhooks, if any.
    pub provider: Option<Provider>,
    /// The webhook secret (None only when `insecure`).
    pub secret: Option<Secret>,
    /// Unsigned webhooks accepted (local experiments only).
    pub insecure: bool,
    /// The tracked branch patterns as written, for messages.
    pub branch_patterns: Vec<String>,
    branches: GlobSet,
    /// Whether tag pushes start releases.
    pub tags: bool,
    /// Clone URL override.
    pub clone_url: Option<String>,
    /// Polling, if configured (with the URL resolved).
    pub poll: Option<PollConfig>,
}

impl Repository {
    /// Whether pushes to `branch` start releases.
    pub fn tracks_branch(&self, branch: &str) -> bool {
        self.branches.is_match(branch)
    }
}

/// All configured repositories.
#[derive(Debug, Clone, Default)]
pub struct Repositories(Vec<Arc<Repository>>);

impl Repositories {
    /// The repository called `full_name` receiving webhooks from `provider` (names compare
    /// case-insensitively, as git hosts treat them).
    pub fn webhook_target(&self, provider: Provider, full_name: &str) -> Option<&Arc<Repository>> {
        self.0
            .iter()
            .find(|r| r.provider == Some(provider) && r.name.eq_ignore_ascii_case(full_name))
    }

    /// Repositories that are polled.
    pub fn polled(&self) -> impl Iterator<Item = &Arc<Repository>> {
        self.0.iter().filter(|r| r.poll.is_some())
    }

    /// Every repository.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Repository>> {
        self.0.iter()
    }
}

/// Resolves and validates the repositories, reading secrets through `env`.
///
/// # Errors
/// The first invalid field, named like `repositories[1].secret_env`.
pub fn resolve(settings: &ListenerSettings, env: &dyn Fn(&str) -> Option<String>) -> Result<Repositories, ConfigError> {
    let mut out = Vec::with_capacity(settings.repositories.len());
    for (i, r) in settings.repositories.iter().enumerate() {
        let field = |name: &str| format!("repositories[{i}].{name}");
        if r.name.trim().is_empty() {
            return Err(ConfigError::invalid(
                field("name"),
                "must name the repository as the git host does, e.g. acme/shop",
            ));
        }
        if out.iter().any(|o: &Repository| o.name.eq_ignore_ascii_case(&r.name)) {
            return Err(ConfigError::invalid(
                field("name"),
                format!("`{}` is configured twice", r.name),
            ));
        }
        // The app's token names its subjects, config-repo folders, state keys and Kubernetes
        // labels: two repositories with one token would overwrite and prune each other.
        let token = sanitize_token(&r.name);
        if let Some(other) = out.iter().find(|o: &&Repository| sanitize_token(&o.name) == token) {
            return Err(ConfigError::invalid(
                field("name"),
                format!(
                    "`{}` and `{}` would both be app `{token}` (Baton's subjects, config-repo folders, state keys and labels keep letters, digits, `-` and `_` and turn every other character into `_`): track only one of them, or rename one",
                    other.name, r.name
                ),
            ));
        }
        if r.provider.is_none() && r.poll.is_none() {
            return Err(ConfigError::invalid(
                field("provider"),
                "set `provider` (to receive webhooks) or `poll` (to poll the remote), or both",
            ));
        }
        let (secret_env, secret_file) = (field("secret_env"), field("secret_file"));
        let secret = Secret::from_config(
            Named {
                field: &secret_env,
                value: r.secret_env.as_deref(),
            },
            Named {
                field: &secret_file,
                value: r.secret_file.as_deref(),
            },
            env,
        )?;
        if r.provider.is_some() && secret.is_none() && !r.insecure {
            return Err(ConfigError::invalid(
                field("secret_env"),
                "a repository that receives webhooks needs a secret: set secret_env or secret_file \
                 (or `insecure: true`, for local experiments only)",
            ));
        }
        if r.branches.is_empty() && !r.tags {
            return Err(ConfigError::invalid(
                field("branches"),
                "tracks nothing: list at least one branch or set `tags: true`",
            ));
        }
        let mut globs = GlobSetBuilder::new();
        for (j, pattern) in r.branches.iter().enumerate() {
            let glob = Glob::new(pattern).map_err(|e| {
                ConfigError::invalid(
                    format!("repositories[{i}].branches[{j}]"),
                    format!("`{pattern}` is not a valid glob: {e}"),
                )
            })?;
            globs.add(glob);
        }
        let branches = globs
            .build()
            .map_err(|e| ConfigError::invalid(field("branches"), format!("cannot compile the branch patterns: {e}")))?;
        let poll = match &r.poll {
            Some(p) => {
                let url = p.url.clone().or_else(|| r.clone_url.clone()).ok_or_else(|| {
                    ConfigError::invalid(
                        field("poll.url"),
                        "polling needs the remote: set poll.url (or clone_url)",
                    )
                })?;
                if p.interval.as_millis() < 100 {
                    return Err(ConfigError::invalid(field("poll.interval"), "must be at least 100ms"));
                }
                Some(PollConfig {
                    url: Some(url),
                    interval: p.interval,
                })
            }
            None => None,
        };
        out.push(Repository {
            name: r.name.clone(),
            provider: r.provider,
            secret,
            insecure: r.insecure,
            branch_patterns: r.branches.clone(),
            branches,
            tags: r.tags,
            clone_url: r.clone_url.clone(),
            poll,
        });
    }
    if settings.webhook.max_body_bytes == 0 {
        return Err(ConfigError::invalid("webhook.max_body_bytes", "must be larger than 0"));
    }
    if http::HeaderName::from_bytes(settings.webhook.generic_signature_header.as_bytes()).is_err() {
        return Err(ConfigError::invalid(
            "webhook.generic_signature_header",
            "is not a valid HTTP header name",
        ));
    }
    Ok(Repositories(out.into_iter().map(Arc::new).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_schemas::config::listener::RepositoryConfig;

    fn repo(yaml: &str) -> ListenerSettings {
        ListenerSettings {
            repositories: vec![yaml_serde::from_str::<RepositoryConfig>(yaml).unwrap()],
            ..Default::default()
        }
    }

    fn env(k: &str) -> Option<String> {
        (k == "SHOP_SECRET").then(|| "s3cret".to_owned())
    }

    #[test]
    fn a_complete_repository_resolves() {
        let r = resolve(
            &repo("name: acme/shop\nprovider: github\nsecret_env: SHOP_SECRET\nbranches: [main, 'release/*']\n"),
            &env,
        )
        .unwrap();
        let shop = r.webhook_target(Provider::Github, "ACME/Shop").unwrap();
        assert!(shop.tracks_branch("main") && shop.tracks_branch("release/1.2") && !shop.tracks_branch("feature/x"));
        assert_eq!(shop.secret.as_ref().unwrap().expose(), b"s3cret");
        assert!(r.webhook_target(Provider::Gitlab, "acme/shop").is_none());
    }

    #[test]
    fn two_repositories_that_would_be_one_app_are_refused_naming_both() {
        let settings = ListenerSettings {
            repositories: ["acme/shop.api", "acme/shop_api"]
                .map(|name| {
                    yaml_serde::from_str::<RepositoryConfig>(&format!(
                        "name: {name}\nprovider: github\nsecret_env: SHOP_SECRET\nbranches: [main]\n"
                    ))
                    .unwrap()
                })
                .to_vec(),
            ..Default::default()
        };
        let err = resolve(&settings, &env).unwrap_err();
        assert_eq!(err.field(), Some("repositories[1].name"));
        let message = err.to_string();
        assert!(
            message.contains("`acme/shop.api` and `acme/shop_api` would both be app `acme_shop_api`"),
            "{message}"
        );
    }

    #[test]
    fn fail_closed_without_a_secret() {
        let err = resolve(&repo("name: acme/shop\nprovider: github\n"), &env).unwrap_err();
        assert_eq!(err.field(), Some("repositories[0].secret_env"));
        assert!(resolve(&repo("name: acme/shop\nprovider: github\ninsecure: true\n"), &env).is_ok());
    }

    #[test]
    fn mistakes_name_their_field() {
        for (yaml, field) in [
            (
                "name: a\nprovider: github\nsecret_env: MISSING\n",
                "repositories[0].secret_env",
            ),
            (
                "name: a\nprovider: github\nsecret_file: /nonexistent\n",
                "repositories[0].secret_file",
            ),
            ("name: a\n", "repositories[0].provider"),
            (
                "name: a\nprovider: github\nsecret_env: SHOP_SECRET\nbranches: ['[']\n",
                "repositories[0].branches[0]",
            ),
            ("name: a\npoll: {interval: 5s}\n", "repositories[0].poll.url"),
            ("name: ' '\nprovider: github\ninsecure: true\n", "repositories[0].name"),
        ] {
            let err = resolve(&repo(yaml), &env).unwrap_err();
            assert_eq!(err.field(), Some(field), "{yaml}: {err}");
            assert!(!err.to_string().contains("s3cret"));
        }
    }
}

//! Turns the web's config sections into what it runs with: the config repo (optional), the
//! registry with its password read (optional), git credentials, and the view's size, every
//! mistake reported with the field at fault (exit code 64).

use std::path::PathBuf;

use baton_kit::secret::Secret;
use baton_kit::settings::ConfigError;
use baton_kit::source::Credential;
use baton_schemas::config::web::WebSettings;

/// The web's settings, resolved.
#[derive(Debug, Clone)]
pub struct Web {
    /// The config repo's URL and branch, when manifest diffs are wanted.
    pub config_repo: Option<ConfigRepo>,
    /// The registry, when layers are wanted.
    pub registry: Option<Registry>,
    /// Git credentials for the config repo.
    pub credentials: Vec<Credential>,
    /// Where the config repo's mirror is cached (`None`: a temporary directory).
    pub cache_dir: Option<PathBuf>,
    /// How many event rows stay in memory.
    pub max_events: usize,
}

/// Where manifests are read.
#[derive(Debug, Clone)]
pub struct ConfigRepo {
    /// Clone URL.
    pub url: String,
    /// Branch.
    pub branch: String,
}

/// Where image manifests are read.
#[derive(Debug, Clone)]
pub struct Registry {
    /// `host[:port]`.
    pub address: String,
    /// Plain HTTP.
    pub insecure: bool,
    /// User, with `password`.
    pub username: Option<String>,
    /// Password or token.
    pub password: Option<Secret>,
}

/// The fewest event rows a view may keep: a page's worth of history at least.
const MIN_EVENTS: usize = 1000;

/// Resolves and validates the settings, reading secrets through `env`.
///
/// # Errors
/// The first invalid field, by name.
pub fn resolve(settings: &WebSettings, env: &dyn Fn(&str) -> Option<String>) -> Result<Web, ConfigError> {
    let url = settings.config_repo.url.trim();
    let config_repo = if url.is_empty() {
        None
    } else {
        if url_has_secret(url) {
            return Err(ConfigError::invalid(
                "config_repo.url",
                "write the URL without user and token (git errors name the URL, and the release page shows them); give them in source.credentials",
            ));
        }
        let branch = settings.config_repo.branch.trim();
        if branch.is_empty() {
            return Err(ConfigError::invalid("config_repo.branch", "name the branch, e.g. main"));
        }
        Some(ConfigRepo {
            url: url.to_owned(),
            branch: branch.to_owned(),
        })
    };
    let registry = match &settings.registry {
        None => None,
        Some(registry) => {
            let address = registry.address.trim();
            if address.is_empty() || address.contains("://") || address.contains('/') {
                return Err(ConfigError::invalid(
                    "registry.address",
                    "write host[:port] only, e.g. registry.example.com or 127.0.0.1:5000 (set registry.insecure for plain HTTP)",
                ));
            }
            let password = match &registry.password_env {
                Some(var) => {
                    Some(Secret::from_env(var, env).map_err(|m| ConfigError::invalid("registry.password_env", m))?)
                }
                None => None,
            };
            if password.is_some() != registry.username.is_some() {
                return Err(ConfigError::invalid(
                    "registry.username",
                    "set both registry.username and registry.password_env, or neither for an anonymous registry",
                ));
            }
            Some(Registry {
                address: address.to_owned(),
                insecure: registry.insecure,
                username: registry.username.clone(),
                password,
            })
        }
    };
    if settings.view.max_events < MIN_EVENTS {
        return Err(ConfigError::invalid(
            "view.max_events",
            format!("must be at least {MIN_EVENTS}, e.g. 200000 (about 150 bytes each)"),
        ));
    }
    Ok(Web {
        config_repo,
        registry,
        credentials: baton_kit::source::resolve_credentials(&settings.source.credentials, env)?,
        cache_dir: settings.source.cache_dir.clone(),
        max_events: settings.view.max_events,
    })
}

/// Whether `url` carries a secret in its user part: any user of an HTTP(S) URL (a token alone
/// is a user), a user with a password otherwise (`ssh://git@host/` names only a user).
fn url_has_secret(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let Some((user, _)) = authority.rsplit_once('@') else {
        return false;
    };
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") || user.contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_schemas::config::tester::EvidenceRegistrySettings;

    #[test]
    fn everything_is_optional() {
        let web = resolve(&WebSettings::default(), &|_| None).unwrap();
        assert!(web.config_repo.is_none() && web.registry.is_none());
        assert_eq!(web.max_events, 200_000);
    }

    #[test]
    fn mistakes_name_their_field() {
        let mut s = WebSettings::default();
        s.config_repo.url = "https://git.example.com/config.git".into();
        s.config_repo.branch = " ".into();
        assert_eq!(resolve(&s, &|_| None).unwrap_err().field(), Some("config_repo.branch"));
        let mut s = WebSettings::default();
        let mut registry = EvidenceRegistrySettings {
            address: "https://registry.example.com".into(),
            ..EvidenceRegistrySettings::default()
        };
        s.registry = Some(registry.clone());
        assert_eq!(resolve(&s, &|_| None).unwrap_err().field(), Some("registry.address"));
        registry.address = "registry.example.com".into();
        registry.password_env = Some("REGISTRY_PASSWORD".into());
        s.registry = Some(registry.clone());
        assert_eq!(
            resolve(&s, &|_| None).unwrap_err().field(),
            Some("registry.password_env")
        );
        let env = |k: &str| (k == "REGISTRY_PASSWORD").then(|| "pw".to_owned());
        assert_eq!(resolve(&s, &env).unwrap_err().field(), Some("registry.username"));
        registry.username = Some("baton-web".into());
        s.registry = Some(registry);
        assert!(resolve(&s, &env).unwrap().registry.is_some());
        let mut s = WebSettings::default();
        s.view.max_events = 10;
        assert_eq!(resolve(&s, &|_| None).unwrap_err().field(), Some("view.max_events"));
    }

    /// A token in the config repo's URL would reach the release page in a git error (a hostile
    /// event naming a commit that is not there is enough): such a URL is refused.
    #[test]
    fn a_config_repo_url_with_a_token_is_refused() {
        for url in [
            "https://x-access-token:ghp_s3cret@github.com/acme/config.git",
            "https://ghp_s3cret@github.com/acme/config.git",
            "ssh://git:s3cret@git.example.com/acme/config.git",
        ] {
            let mut s = WebSettings::default();
            s.config_repo.url = url.into();
            let error = resolve(&s, &|_| None).unwrap_err();
            assert_eq!(error.field(), Some("config_repo.url"), "{url}");
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }
        for url in [
            "ssh://git@git.example.com/acme/config.git",
            "git@git.example.com:acme/config.git",
            "https://git.example.com/acme/config.git",
            "file:///srv/git/config.git",
        ] {
            let mut s = WebSettings::default();
            s.config_repo.url = url.into();
            assert!(resolve(&s, &|_| None).is_ok(), "{url}");
        }
    }
}

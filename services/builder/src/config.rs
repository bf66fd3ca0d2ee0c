//! Resolves the builder's config sections: credentials read from their variables and files,
//! every mistake reported with the field at fault (exit code 64).

use baton_kit::secret::Secret;
use baton_kit::settings::ConfigError;
use baton_schemas::config::builder::BuilderSettings;

use baton_kit::source::Credential;

/// Resolves the git credentials, reading secrets through `env`.
///
/// # Errors
/// The first invalid field, e.g. `source.credentials[0].token_env`.
pub fn credentials(
    settings: &BuilderSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Credential>, ConfigError> {
    let credentials = baton_kit::source::resolve_credentials(&settings.source.credentials, env)?;
    if settings.registry.address.trim().is_empty() {
        return Err(ConfigError::invalid(
            "registry.address",
            "must be host[:port] of the registry images are pushed to",
        ));
    }
    Ok(credentials)
}

/// The registry password, if one is configured.
///
/// # Errors
/// When `registry.password_env` names an unset variable.
pub fn registry_password(
    settings: &BuilderSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    settings
        .registry
        .password_env
        .as_deref()
        .map(|var| Secret::from_env(var, env).map_err(|m| ConfigError::invalid("registry.password_env", m)))
        .transpose()
}

/// The OCI repository of an application: `<prefix>/<app>`, lower-cased, with every character
/// OCI does not allow replaced by `-` (`acme/Shop_UI` → `baton/acme/shop_ui`).
pub fn repository_for(prefix: &str, app: &str) -> String {
    let clean = |s: &str| -> String {
        s.split('/')
            .map(|part| {
                let part: String = part
                    .to_ascii_lowercase()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                part.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
            })
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    };
    let app = clean(app);
    let app = if app.is_empty() { "app".to_owned() } else { app };
    match clean(prefix) {
        p if p.is_empty() => app,
        p => format!("{p}/{app}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_valid_oci_names() {
        assert_eq!(repository_for("baton", "acme/Shop_UI"), "baton/acme/shop_ui");
        assert_eq!(repository_for("", "My App!"), "my-app");
        assert_eq!(repository_for("baton", "/.x./"), "baton/x");
        assert_eq!(repository_for("baton", "///"), "baton/app");
    }

    #[test]
    fn credentials_need_a_secret() {
        let settings: BuilderSettings =
            yaml_serde::from_str("source:\n  credentials:\n    - url_prefix: https://x/\n      token_env: TOKEN\n")
                .unwrap();
        let err = credentials(&settings, &|_| None).unwrap_err();
        assert_eq!(err.field(), Some("source.credentials[0].token_env"));
        let ok = credentials(&settings, &|k| (k == "TOKEN").then(|| "t".into())).unwrap();
        assert_eq!(ok.len(), 1);
        assert!(!format!("{ok:?}").contains("\"t\""));
    }
}

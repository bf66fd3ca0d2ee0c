//! Resolves the builder's config sections: credentials read from their variables and files,
//! the signing key read and checked, every mistake reported with the field at fault (exit code
//! 64).

use baton_kit::evidence::SigningKey;
use baton_kit::secret::Secret;
use baton_kit::settings::ConfigError;
use baton_schemas::config::builder::BuilderSettings;

use baton_kit::source::Credential;

use crate::image::ImageError;

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

/// What `/readyz` repeats, and the start logs, when `signing.enabled` is false.
pub const UNSIGNED_WARNING: &str = "signing.enabled is false: images are pushed without a signature or provenance, so \
     environments that require evidence hold every release of this builder; set signing.key_file to an ECDSA P-256 \
     key and signing.enabled: true";

/// The key images are signed with, or `None` when `signing.enabled` is false.
///
/// # Errors
/// `signing.key_file` when signing is on and the key is not given, cannot be read, or is not an
/// unencrypted ECDSA P-256 private key in PEM.
pub fn signing_key(settings: &BuilderSettings) -> Result<Option<SigningKey>, ConfigError> {
    let signing = &settings.signing;
    SigningKey::configured(
        signing.enabled,
        signing.key_file.as_deref(),
        "every image is signed",
        "to push unsigned images",
    )
}

/// The OCI repository of an application: `<prefix>/<app>`, lower-cased, with every character
/// OCI does not allow replaced by `-` (`acme/Shop_UI` → `baton/acme/shop_ui`).
pub fn repository_for(prefix: &str, app: &str) -> String {
    let app = clean_repository(app);
    let app = if app.is_empty() { "app".to_owned() } else { app };
    match clean_repository(prefix) {
        p if p.is_empty() => app,
        p => format!("{p}/{app}"),
    }
}

/// `name` as an OCI repository: lower-cased, each character OCI does not allow as `-`, empty
/// and punctuation-only parts dropped.
fn clean_repository(name: &str) -> String {
    name.split('/')
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
}

/// Longest repository name taken from `image.name`; registries refuse much longer ones.
const MAX_REPOSITORY_NAME: usize = 255;

/// The repository an application's image is pushed to: `image.name` when the pipeline gives one,
/// else [`repository_for`]. The builder can write to every repository under its prefix and may
/// be able to write to more, so a pipeline's name is confined to the prefix: it must be a valid
/// OCI repository name (lower-case parts of letters and digits joined by `.`, `_`, `__` or
/// dashes; no `..`, no leading `/`), name no registry host, and start with `<prefix>/`.
///
/// # Errors
/// [`ImageError::InvalidSpec`] on `image.name`, saying what is wrong and what to write instead.
pub fn image_repository(prefix: &str, app: &str, name: Option<&str>) -> Result<String, ImageError> {
    let default = repository_for(prefix, app);
    let Some(name) = name else { return Ok(default) };
    let invalid = |message: String| ImageError::InvalidSpec {
        field: "image.name".to_owned(),
        message,
    };
    let prefix = clean_repository(prefix);
    let under = |rest: &str| {
        if prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{prefix}/{rest}")
        }
    };
    if name.is_empty() {
        return Err(invalid(format!(
            "is empty; leave `image.name` out to push to `{default}`"
        )));
    }
    if name.len() > MAX_REPOSITORY_NAME {
        return Err(invalid(format!(
            "is {} characters long, the limit is {MAX_REPOSITORY_NAME}",
            name.len()
        )));
    }
    let under_prefix = !prefix.is_empty() && name.starts_with(&format!("{prefix}/"));
    if let Some((first, rest)) = name.split_once('/')
        && (first.contains(['.', ':']) && first.contains(|c: char| c.is_ascii_alphanumeric()) || first == "localhost")
        && !under_prefix
    {
        return Err(invalid(format!(
            "`{name}` names a registry (`{first}`): images go to this builder's registry only; name \
             the repository, e.g. `{}`, or leave `image.name` out to push to `{default}`",
            under(rest)
        )));
    }
    if let Some(part) = name.split('/').find(|part| !is_repository_part(part)) {
        return Err(invalid(format!(
            "`{name}` is not a repository name: its part `{part}` is not lower-case letters and digits \
             joined by `.`, `_`, `__` or dashes (no `..`, no empty part, no leading `/`); write a name \
             like `{}`",
            under("my-app")
        )));
    }
    if !prefix.is_empty() && !under_prefix {
        return Err(invalid(format!(
            "`{name}` is outside this builder's repository prefix `{prefix}` (`registry.repository_prefix`): \
             name a repository under it, e.g. `{}`, or leave `image.name` out to push to `{default}`",
            under(name)
        )));
    }
    Ok(name.to_owned())
}

/// Whether `part` is one part of an OCI repository name:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_repository_part(part: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut runs = part.split(alphanumeric).peekable();
    // The text between runs of letters and digits: nothing before the first or after the last.
    if runs.next() != Some("") || part.is_empty() {
        return false;
    }
    let mut last = "";
    for separator in runs {
        last = separator;
        let joined = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !separator.is_empty() && !joined {
            return false;
        }
    }
    // `part.split` gives "" after a trailing letter or digit, the separator itself otherwise.
    last.is_empty()
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

    /// The message of the refusal of `name` under the prefix `baton`, for app `acme/shop`.
    fn refused(name: &str) -> String {
        match image_repository("baton", "acme/shop", Some(name)) {
            Err(error @ ImageError::InvalidSpec { .. }) => {
                let message = error.to_string();
                assert!(message.starts_with("image.name: "), "{message}");
                assert!(!error.is_transient());
                message
            }
            other => panic!("`{name}` should be refused, got {other:?}"),
        }
    }

    #[test]
    fn an_image_name_stays_under_the_repository_prefix() {
        assert_eq!(image_repository("baton", "acme/Shop", None).unwrap(), "baton/acme/shop");
        for name in ["baton/shop", "baton/acme/shop-api", "baton/a.b/c__d/e---f"] {
            assert_eq!(image_repository("baton", "acme/shop", Some(name)).unwrap(), name);
        }
        // The prefix as configured is cleaned the way the default name's is.
        assert_eq!(
            image_repository("/Baton/", "acme/shop", Some("baton/shop")).unwrap(),
            "baton/shop"
        );
        // Without a prefix the builder's whole registry is the app's, but no other registry is.
        assert_eq!(image_repository("", "acme/shop", Some("team/app")).unwrap(), "team/app");
        assert!(image_repository("", "acme/shop", Some("ghcr.io/team/app")).is_err());

        for name in ["other-app", "other-team/app", "batonx/app", "baton", "library/busybox"] {
            let message = refused(name);
            assert!(
                message.contains("outside this builder's repository prefix `baton`"),
                "{message}"
            );
            assert!(message.contains(&format!("e.g. `baton/{name}`")), "{message}");
            assert!(
                message.contains("leave `image.name` out to push to `baton/acme/shop`"),
                "{message}"
            );
        }
        for (name, host) in [
            ("registry.example.com/x", "registry.example.com"),
            ("registry.example.com:5000/baton/x", "registry.example.com:5000"),
            ("localhost/baton/x", "localhost"),
            ("127.0.0.1:5000/baton/x", "127.0.0.1:5000"),
        ] {
            let message = refused(name);
            assert!(message.contains(&format!("names a registry (`{host}`)")), "{message}");
        }
        for (name, part) in [
            ("../other-app", ".."),
            ("baton/../other-app", ".."),
            ("baton/./x", "."),
            ("/baton/x", ""),
            ("baton//x", ""),
            ("baton/x/", ""),
            ("baton/Shop", "Shop"),
            ("baton/shop:latest", "shop:latest"),
            ("baton/shop@sha256", "shop@sha256"),
            ("baton/-shop", "-shop"),
            ("baton/shop.", "shop."),
            ("baton/a._b", "a._b"),
            ("baton/a___b", "a___b"),
            ("baton/caf\u{e9}", "caf\u{e9}"),
        ] {
            let message = refused(name);
            assert!(
                message.contains(&format!("its part `{part}` is not lower-case letters")),
                "{name}: {message}"
            );
        }
        assert!(refused("").contains("is empty"));
        assert!(refused(&format!("baton/{}", "a".repeat(300))).contains("the limit is 255"));
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

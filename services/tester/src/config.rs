//! Resolves the tester's evidence settings: the signing key read and checked, the registry
//! password read from its variable, every mistake reported with the field at fault (exit code
//! 64).

use baton_kit::evidence::SigningKey;
use baton_kit::secret::Secret;
use baton_kit::settings::ConfigError;
use baton_schemas::config::tester::TesterSettings;

/// What `/readyz` repeats, and the start logs, when `signing.enabled` is false.
pub const UNATTESTED_WARNING: &str = "signing.enabled is false: verdicts are not attested on the images, so environments \
     that require a test attestation hold every release; set signing.key_file to an ECDSA P-256 key and \
     signing.enabled: true";

/// The key verdicts are attested with, or `None` when `signing.enabled` is false.
///
/// # Errors
/// `signing.key_file` when signing is on and the key is not given, cannot be read, or is not an
/// unencrypted ECDSA P-256 private key in PEM.
pub fn signing_key(settings: &TesterSettings) -> Result<Option<SigningKey>, ConfigError> {
    let signing = &settings.signing;
    SigningKey::configured(
        signing.enabled,
        signing.key_file.as_deref(),
        "every verdict is attested",
        "to attest nothing",
    )
}

/// The registry password, if one is configured.
///
/// # Errors
/// When `registry.password_env` names an unset variable, or `registry.address` is empty while
/// signing is on.
pub fn registry_password(
    settings: &TesterSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    if settings.signing.enabled && settings.registry.address.trim().is_empty() {
        return Err(ConfigError::invalid(
            "registry.address",
            "must be host[:port] of the registry the tested images are in (the builder's registry.address)",
        ));
    }
    settings
        .registry
        .password_env
        .as_deref()
        .map(|var| Secret::from_env(var, env).map_err(|m| ConfigError::invalid("registry.password_env", m)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> TesterSettings {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn signing_needs_a_readable_p256_key_unless_it_is_off() {
        let missing = signing_key(&settings("{}")).unwrap_err();
        assert_eq!(missing.field(), Some("signing.key_file"));
        assert!(signing_key(&settings("signing: {enabled: false}")).unwrap().is_none());

        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.pem");
        let unreadable = signing_key(&settings(&format!("signing: {{key_file: {absent:?}}}"))).unwrap_err();
        assert_eq!(unreadable.field(), Some("signing.key_file"));
        assert!(unreadable.to_string().contains("absent.pem"), "{unreadable}");

        let not_a_key = dir.path().join("not-a-key.pem");
        std::fs::write(&not_a_key, "hello").unwrap();
        let refused = signing_key(&settings(&format!("signing: {{key_file: {not_a_key:?}}}"))).unwrap_err();
        assert_eq!(refused.field(), Some("signing.key_file"));
    }

    #[test]
    fn the_registry_password_comes_from_its_variable() {
        let s = settings("registry: {address: r.example, username: u, password_env: PW}");
        assert_eq!(
            registry_password(&s, &|_| None).unwrap_err().field(),
            Some("registry.password_env")
        );
        assert!(
            registry_password(&s, &|k| (k == "PW").then(|| "p".into()))
                .unwrap()
                .is_some()
        );
    }
}

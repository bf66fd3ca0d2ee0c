//! Secrets (webhook secrets, signing keys, tokens): read from an environment variable or a
//! file, and impossible to print by accident — `Debug` and `Display` show `[redacted]`. The
//! bytes live in a `secrecy` box, which zeroes them when the last copy is dropped.

use std::fmt;
use std::path::Path;

use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretSlice};

use crate::settings::ConfigError;

/// A secret value. Compare it with constant-time functions (e.g. HMAC verification), never `==`.
#[derive(Clone)]
pub struct Secret(SecretSlice<u8>);

impl Secret {
    /// Wraps secret bytes (zeroed when the secret is dropped).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        let bytes = Zeroizing::new(bytes.into());
        // An exact-size copy, so the box is not reallocated; the original is zeroed on drop.
        Self(SecretSlice::from(bytes.to_vec()))
    }

    /// The secret's bytes, for HMAC keys and constant-time comparison.
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// Reads a secret from the environment variable `name` through `env` (so tests pass a map).
    ///
    /// # Errors
    /// When the variable is unset or empty; the message names the variable, never a value.
    pub fn from_env(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        match env(name) {
            Some(v) if !v.is_empty() => Ok(Self::new(v.into_bytes())),
            Some(_) => Err(format!("environment variable {name} is empty")),
            None => Err(format!("environment variable {name} is not set")),
        }
    }

    /// Reads a secret from a file; one trailing newline is ignored.
    ///
    /// # Errors
    /// When the file cannot be read or is empty.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let mut bytes =
            Zeroizing::new(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?);
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        Ok(Self::new(bytes.as_slice()))
    }
}

/// One way a config may name a secret: the field as the config spells it (for errors, e.g.
/// `source.credentials[0].token_env`) and what it says there.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a, T: ?Sized> {
    /// The field's full name.
    pub field: &'a str,
    /// Its value, when set.
    pub value: Option<&'a T>,
}

impl Secret {
    /// The secret a config names by an environment variable or by a file, at most one of the
    /// two; `None` when it names neither (each caller says what that means for it).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file field when both are set, or the field whose variable is
    /// unset or empty, or whose file cannot be read or is empty.
    pub fn from_config(
        by_env: Named<'_, str>,
        by_file: Named<'_, Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        match (by_env.value, by_file.value) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                by_file.field,
                format!(
                    "set either {} or {}, not both",
                    last_part(by_env.field),
                    last_part(by_file.field)
                ),
            )),
            (Some(var), None) => Self::from_env(var, env)
                .map(Some)
                .map_err(|m| ConfigError::invalid(by_env.field, m)),
            (None, Some(path)) => Self::from_file(path)
                .map(Some)
                .map_err(|m| ConfigError::invalid(by_file.field, m)),
            (None, None) => Ok(None),
        }
    }
}

/// `token_env` of `source.credentials[0].token_env`.
fn last_part(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), b"hunter2");
    }

    #[test]
    fn env_and_file() {
        let env = |k: &str| (k == "SET").then(|| "v".to_owned());
        assert_eq!(Secret::from_env("SET", &env).unwrap().expose(), b"v");
        assert!(
            Secret::from_env("UNSET", &env)
                .unwrap_err()
                .contains("UNSET is not set")
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "token\n").unwrap();
        assert_eq!(Secret::from_file(f.path()).unwrap().expose(), b"token");
    }
}

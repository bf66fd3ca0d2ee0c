//! Typed settings loaded in layers: defaults, then the `--config FILE` (YAML), then `BATON_*`
//! environment variables. Invalid settings are reported with the offending field and make the
//! service exit with code 64 before it binds any port.
//!
//! An environment variable names a field by its path: `BATON_NATS__URL` (`__` between
//! sections) or simply `BATON_NATS_URL` when the `_`-joined path is unambiguous.
//! Values are read as YAML scalars where the field is not a string (`BATON_RUNNER__CONCURRENCY=8`).

use std::path::{Path, PathBuf};

use baton_schemas::config::CommonSettings;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Exit code for invalid configuration (`EX_USAGE` is 64 in sysexits.h).
pub const EXIT_INVALID_CONFIG: i32 = 64;

/// The top-level sections of the config file that belong to [`CommonSettings`].
pub const COMMON_SECTIONS: &[&str] = &["nats", "http", "telemetry", "jetstream", "runner", "shutdown"];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("config file {path} is not valid YAML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has a wrong value or type, or is unknown.
    #[error("invalid config: field `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `nats.url`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// The dotted field path, when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// An error about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A loaded configuration: the common sections, the service's own, and non-fatal warnings
/// (e.g. a `BATON_*` variable that names no field) to log once telemetry is up.
#[derive(Debug, Clone)]
pub struct Settings<T> {
    /// The sections every service has.
    pub common: CommonSettings,
    /// The service's own sections.
    pub service: T,
    /// Things worth logging but not fatal.
    pub warnings: Vec<String>,
}

/// Command-line arguments every service takes.
#[derive(Debug, Clone, clap::Parser)]
pub struct ServiceArgs {
    /// YAML config file; every field is optional and `BATON_*` variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Loads settings from an optional file and an environment (pass `std::env::vars()` in `main`,
/// a list of pairs in tests).
///
/// # Errors
/// See [`ConfigError`]; every error names the file or field at fault.
pub fn load<T>(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Settings<T>, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut tree = match path {
        Some(path) => read_file(path)?,
        None => Map::new(),
    };
    let mut defaults = as_object(serde_json::to_value(CommonSettings::default()).expect("defaults serialize"));
    defaults.extend(as_object(
        serde_json::to_value(T::default()).expect("defaults serialize"),
    ));

    let mut warnings = Vec::new();
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("BATON_")).collect();
    env.sort();
    for (name, raw) in env {
        let rest = &name["BATON_".len()..];
        match resolve_env_path(rest, &defaults) {
            Some(path) => {
                let default = lookup(&defaults, &path);
                let value = match default {
                    Some(Value::String(_)) => Value::String(raw),
                    _ => yaml_serde::from_str::<Value>(&raw).unwrap_or(Value::String(raw)),
                };
                set_path(&mut tree, &path, value).map_err(|field| {
                    ConfigError::invalid(field, format!("{name} overrides a field that is not a section"))
                })?;
            }
            None => warnings.push(format!("environment variable {name} names no config field; ignored")),
        }
    }

    let (mut common_tree, mut service_tree) = (Map::new(), Map::new());
    for (key, value) in tree {
        if COMMON_SECTIONS.contains(&key.as_str()) {
            common_tree.insert(key, value);
        } else {
            service_tree.insert(key, value);
        }
    }
    let common: CommonSettings = deserialize(Value::Object(common_tree))?;
    validate_common(&common)?;
    let service: T = deserialize(Value::Object(service_tree))?;
    Ok(Settings {
        common,
        service,
        warnings,
    })
}

/// Loads settings for `main`: on error prints it (naming the field) and exits with code 64.
pub fn load_or_exit<T>(service: &str, args: &ServiceArgs) -> Settings<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    match load(args.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "telemetry is not up yet; this is the only channel")]
            {
                eprintln!("{service}: {e}");
            }
            std::process::exit(EXIT_INVALID_CONFIG);
        }
    }
}

fn read_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let value: Value = yaml_serde::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ConfigError::invalid(
            "(top level)",
            format!("must be a mapping of sections, found {}", kind(&other)),
        )),
    }
}

fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ConfigError::invalid(
            if field == "." { "(top level)".to_owned() } else { field },
            e.into_inner().to_string(),
        )
    })
}

/// Checks what types alone cannot.
///
/// # Errors
/// The first invalid field.
pub fn validate_common(s: &CommonSettings) -> Result<(), ConfigError> {
    for url in s.nats.url.split(',') {
        let url = url.trim();
        let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
        if !matches!(scheme, "nats" | "tls" | "ws" | "wss") || rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                "nats.url",
                format!("`{url}` is not a NATS URL; write nats://host:4222 (or tls://, ws://, wss://)"),
            ));
        }
    }
    match (&s.nats.user, &s.nats.password_env, &s.nats.password_file) {
        (Some(_), None, None) => {
            return Err(ConfigError::invalid(
                "nats.user",
                "needs its password: set nats.password_env or nats.password_file",
            ));
        }
        (Some(_), Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "nats.password_file",
                "set nats.password_env or nats.password_file, not both",
            ));
        }
        (None, Some(_), _) | (None, _, Some(_)) => {
            return Err(ConfigError::invalid(
                "nats.user",
                "a NATS password needs its user name: set nats.user",
            ));
        }
        _ => {}
    }
    if s.nats.user.is_some() && s.nats.credentials_file.is_some() {
        return Err(ConfigError::invalid(
            "nats.credentials_file",
            "use either a credentials file or nats.user with a password, not both",
        ));
    }
    if s.runner.concurrency == 0 {
        return Err(ConfigError::invalid("runner.concurrency", "must be at least 1"));
    }
    if s.runner.max_deliver == 0 {
        return Err(ConfigError::invalid("runner.max_deliver", "must be at least 1"));
    }
    if s.runner.ack_wait.as_millis() < 300 {
        return Err(ConfigError::invalid(
            "runner.ack_wait",
            "must be at least 300ms (heartbeats are sent every third of it)",
        ));
    }
    if s.runner.backoff_max < s.runner.backoff_initial {
        return Err(ConfigError::invalid(
            "runner.backoff_max",
            "must not be shorter than runner.backoff_initial",
        ));
    }
    if !(1..=5).contains(&s.jetstream.replicas) {
        return Err(ConfigError::invalid(
            "jetstream.replicas",
            "must be between 1 and 5 (use 3 for a JetStream cluster)",
        ));
    }
    if s.jetstream.duplicate_window.is_zero() {
        return Err(ConfigError::invalid(
            "jetstream.duplicate_window",
            "must be longer than 0s, or redelivered webhooks start second pipelines",
        ));
    }
    if !s.jetstream.events_max_age.is_zero() && s.jetstream.duplicate_window > s.jetstream.events_max_age {
        return Err(ConfigError::invalid(
            "jetstream.duplicate_window",
            "must not be longer than jetstream.events_max_age",
        ));
    }
    for (field, name) in [
        ("jetstream.events_stream", &s.jetstream.events_stream),
        ("jetstream.deadletter_stream", &s.jetstream.deadletter_stream),
        ("jetstream.logs_bucket", &s.jetstream.logs_bucket),
    ] {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConfigError::invalid(
                field,
                format!("`{name}` must be letters, digits, `-` and `_` only"),
            ));
        }
    }
    if s.jetstream.events_stream == s.jetstream.deadletter_stream {
        return Err(ConfigError::invalid(
            "jetstream.deadletter_stream",
            "must differ from jetstream.events_stream",
        ));
    }
    Ok(())
}

fn as_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// `NATS__URL` → `["nats", "url"]`; `NATS_URL` → the path in `defaults` whose keys joined
/// by `_` spell it (`["nats", "url"]`), if exactly one does.
fn resolve_env_path(rest: &str, defaults: &Map<String, Value>) -> Option<Vec<String>> {
    let lower = rest.to_ascii_lowercase();
    if lower.contains("__") {
        return Some(lower.split("__").map(str::to_owned).collect());
    }
    let mut found = Vec::new();
    collect_paths(defaults, &mut Vec::new(), &lower, &mut found);
    if found.len() == 1 { found.pop() } else { None }
}

fn collect_paths(map: &Map<String, Value>, prefix: &mut Vec<String>, wanted: &str, found: &mut Vec<Vec<String>>) {
    for (key, value) in map {
        prefix.push(key.clone());
        let joined = prefix.join("_");
        if joined == wanted {
            found.push(prefix.clone());
        } else if let Value::Object(inner) = value
            && wanted.starts_with(&format!("{joined}_"))
        {
            collect_paths(inner, prefix, wanted, found);
        }
        prefix.pop();
    }
}

fn lookup<'a>(map: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let value = map.get(first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        Value::Object(inner) => lookup(inner, rest),
        _ => None,
    }
}

fn set_path(map: &mut Map<String, Value>, path: &[String], value: Value) -> Result<(), String> {
    let (first, rest) = path.split_first().expect("paths are never empty");
    if rest.is_empty() {
        map.insert(first.clone(), value);
        return Ok(());
    }
    let entry = map.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(inner) => set_path(inner, rest, value).map_err(|f| format!("{first}.{f}")),
        _ => Err(first.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Service {
        repositories: Vec<String>,
        poll_interval_secs: u64,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_file_then_env() {
        let f = file("nats:\n  url: nats://file:4222\nrunner:\n  concurrency: 4\n  ack_wait: 10s\nrepositories: [a]\n");
        let s: Settings<Service> = load(
            Some(f.path()),
            env(&[
                ("BATON_NATS_URL", "nats://env:4222"),
                ("BATON_RUNNER__CONCURRENCY", "8"),
                ("BATON_POLL_INTERVAL_SECS", "5"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(s.common.nats.url, "nats://env:4222");
        assert_eq!(s.common.runner.concurrency, 8);
        assert_eq!(s.common.runner.ack_wait, Duration::from_secs(10));
        assert_eq!(s.common.http.listen.port(), 8080);
        assert_eq!(s.service.repositories, vec!["a"]);
        assert_eq!(s.service.poll_interval_secs, 5);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn no_file_is_all_defaults() {
        let s: Settings<Service> = load(None, env(&[("BATON_TYPO_FIELD", "x")])).unwrap();
        assert_eq!(s.common, CommonSettings::default());
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].contains("BATON_TYPO_FIELD"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("nats:\n  url: 42\n", "nats.url"),
            ("nats:\n  url: http://x\n", "nats.url"),
            ("runner:\n  concurency: 3\n", "runner.concurency"),
            ("runner:\n  ack_wait: soon\n", "runner.ack_wait"),
            ("runner:\n  concurrency: 0\n", "runner.concurrency"),
            ("http:\n  listen: not-an-address\n", "http.listen"),
            ("jetstream:\n  replicas: 7\n", "jetstream.replicas"),
            ("nats:\n  user: builder\n", "nats.user"),
            ("nats:\n  password_env: NATS_PASSWORD\n", "nats.user"),
            (
                "nats:\n  user: builder\n  password_env: P\n  password_file: /p\n",
                "nats.password_file",
            ),
            ("unknown_section: 1\n", "unknown_section"),
            ("- a list\n", "(top level)"),
        ];
        for (text, field) in cases {
            let err = load::<Service>(Some(file(text).path()), env(&[])).unwrap_err();
            assert_eq!(err.field(), Some(field), "{text}: {err}");
        }
        let err = load::<Service>(Some(file("runner:\n  concurency: 3\n").path()), env(&[])).unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn env_errors_name_the_field_too() {
        let err = load::<Service>(None, env(&[("BATON_RUNNER__MAX_DELIVER", "lots")])).unwrap_err();
        assert_eq!(err.field(), Some("runner.max_deliver"), "{err}");
    }

    #[test]
    fn unreadable_and_malformed_files() {
        let err = load::<Service>(Some(Path::new("/nonexistent/baton.yaml")), env(&[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/baton.yaml"));
        let err = load::<Service>(Some(file("nats: [unclosed\n").path()), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
    }
}

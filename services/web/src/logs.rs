//! Build and test logs from the object store (`baton-logs`), as `baton logs` reads them: a
//! step's log is `<run>/<step>.log`, and a retried run keeps each attempt's beside it
//! (`<run>/<step>.<n>.log`, n ≥ 2); the step's log is the latest attempt's. Logs are untrusted
//! text: they are shown escaped, and cut at [`LOG_LIMIT`] bytes.

use async_nats::jetstream::object_store::ObjectStore;
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use crate::http::WebError;

/// The most bytes of one log shown.
pub const LOG_LIMIT: u64 = 4 * 1024 * 1024;
/// The most attempts of one step looked for.
const MAX_ATTEMPTS: u32 = 32;

/// One step's log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Log {
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// The object it was read from.
    pub object: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Whether only the first [`LOG_LIMIT`] bytes are in `text`.
    pub truncated: bool,
    /// The text (invalid UTF-8 replaced).
    pub text: String,
}

/// The step a log object is of, when `object` is one of `run`'s (`<run>/<step>.log` or
/// `<run>/<step>.<n>.log`).
pub fn step_of<'a>(object: &'a str, run: &str) -> Option<&'a str> {
    let rest = object.strip_prefix(run)?.strip_prefix('/')?.strip_suffix(".log")?;
    let step = match rest.rsplit_once('.') {
        Some((step, n)) if n.parse::<u32>().is_ok_and(|n| n >= 2) => step,
        _ => rest,
    };
    (!step.is_empty()).then_some(step)
}

/// The latest attempt's log of `step` in `run`.
///
/// # Errors
/// [`WebError::NotFound`] when there is none; [`WebError::Unavailable`] when the store fails.
pub async fn read(store: &ObjectStore, run: &str, step: &str) -> Result<Log, WebError> {
    let not_found = || {
        WebError::NotFound(format!(
            "no log of step `{step}` in run `{run}`; a release's page links the logs its builds and tests kept"
        ))
    };
    if [run, step]
        .iter()
        .any(|s| s.is_empty() || s.contains('/') || *s == ".." || *s == ".")
    {
        return Err(not_found());
    }
    let unavailable = |e: &dyn std::fmt::Display| WebError::Unavailable {
        what: "the log store cannot be read".to_owned(),
        reason: e.to_string(),
    };
    let first = format!("{run}/{step}.log");
    let mut info = match store.info(&first).await {
        Ok(info) if !info.deleted => info,
        Ok(_) => return Err(not_found()),
        Err(e) if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(unavailable(&e)),
    };
    for attempt in 2..=MAX_ATTEMPTS {
        match store.info(&format!("{run}/{step}.{attempt}.log")).await {
            Ok(next) if !next.deleted => info = next,
            _ => break,
        }
    }
    let object = store.get(&info.name).await.map_err(|e| unavailable(&e))?;
    let mut bytes = Vec::new();
    object
        .take(LOG_LIMIT)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| unavailable(&e))?;
    let size = info.size as u64;
    Ok(Log {
        run: run.to_owned(),
        step: step.to_owned(),
        object: info.name,
        bytes: size,
        truncated: size > LOG_LIMIT,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::step_of;

    #[test]
    fn attempts_are_told_from_steps() {
        assert_eq!(step_of("build-1/compile.log", "build-1"), Some("compile"));
        assert_eq!(step_of("build-1/compile.3.log", "build-1"), Some("compile"));
        assert_eq!(step_of("build-1/unit.tests.log", "build-1"), Some("unit.tests"));
        assert_eq!(
            step_of("build-1/compile.1.log", "build-1"),
            Some("compile.1"),
            "the first attempt has no number"
        );
        assert_eq!(step_of("build-12/compile.log", "build-1"), None);
        assert_eq!(step_of("build-1/.log", "build-1"), None);
    }
}

//! Build and test logs from the object store (`baton-logs`), as `baton logs` reads them: a
//! step's log is `<run>/<step>.log`, and a retried run keeps each attempt's beside it
//! (`<run>/<step>.<n>.log`, n ≥ 2); the step's log is the latest attempt's. Logs are untrusted
//! text: they are shown escaped, and cut at [`LOG_LIMIT`] bytes. A read has [`READ_DEADLINE`]
//! as a whole: a log store that stops answering mid-read (a stalled NATS read waits for ever)
//! makes a 503 naming the log, not a request that never ends.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectStore;
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use crate::http::WebError;

/// The most bytes of one log shown.
pub const LOG_LIMIT: u64 = 4 * 1024 * 1024;
/// The most attempts of one step looked for.
const MAX_ATTEMPTS: u32 = 32;
/// How long one log's read may take, from looking for its attempts to its last byte: reading
/// [`LOG_LIMIT`] bytes from the object store takes well under a second on a healthy cluster, so
/// this only ends reads that stalled, before a browser or an ingress gives up on its own.
pub const READ_DEADLINE: Duration = Duration::from_secs(20);

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

/// The latest attempt's log of `step` in `run`, read within [`READ_DEADLINE`].
///
/// # Errors
/// [`WebError::NotFound`] when there is none; [`WebError::Unavailable`] when the store fails or
/// the read does not end within the deadline.
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
    within(
        READ_DEADLINE,
        &format!("the log of step `{step}` in run `{run}`"),
        read_latest(store, run, step, not_found),
    )
    .await?
}

/// Awaits `read` (the read of `what`) for at most `deadline`: its output, or
/// [`WebError::Unavailable`] naming `what` and the deadline, the read dropped unfinished.
async fn within<T>(deadline: Duration, what: &str, read: impl Future<Output = T>) -> Result<T, WebError> {
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| WebError::Unavailable {
            what: format!("reading {what} from the log store timed out"),
            reason: format!(
                "it did not end within {}; the object store may be stalled or overloaded, try again later",
                humantime::format_duration(deadline)
            ),
        })
}

/// The latest attempt's log of `step` in `run`, without a deadline; `not_found` is the error
/// when the step kept none.
async fn read_latest(
    store: &ObjectStore,
    run: &str,
    step: &str,
    not_found: impl Fn() -> WebError,
) -> Result<Log, WebError> {
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
    use std::time::Duration;

    use super::{step_of, within};
    use crate::http::WebError;

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

    /// A read that never ends (`pending`, as a stalled NATS read) times out whatever the
    /// clock: the outcome does not depend on how fast the machine is.
    #[tokio::test]
    async fn a_stalled_read_ends_at_its_deadline_naming_the_log() {
        let error = within(
            Duration::from_millis(10),
            "the log of step `compile` in run `build-1`",
            std::future::pending::<()>(),
        )
        .await
        .expect_err("a read that never ends times out");
        assert!(matches!(error, WebError::Unavailable { .. }), "{error:?}");
        assert_eq!(error.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let message = error.to_string();
        assert!(
            message.starts_with(
                "reading the log of step `compile` in run `build-1` from the log store timed out: it did not end within 10ms"
            ),
            "{message}"
        );
    }

    /// A read that is ready keeps its answer: the deadline only ends reads that outlive it.
    #[tokio::test]
    async fn a_read_that_ends_in_time_keeps_its_answer() {
        let read = async { Ok::<_, WebError>("the log") };
        assert_eq!(
            within(Duration::from_secs(60), "a log", read)
                .await
                .ok()
                .and_then(Result::ok),
            Some("the log")
        );
    }
}

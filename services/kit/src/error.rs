//! How work fails, in one shape for every service.
//!
//! Reliability here rests on one distinction: a failure is either *transient* (retrying later
//! may succeed: nak with backoff) or *permanent* (retrying cannot help: dead-letter and emit a
//! failed outcome). Each crate keeps its own `thiserror` enum that names what went wrong
//! (`ImageError`, `SourceError`, `ClusterError`, …) and converts into a [`HandlerError`] in one
//! `From`, which keeps the original error as its `#[source]` and gives it a specific
//! [`metric_label`](HandlerError::metric_label) (`registry_unreachable`, `missing_commit`,
//! `apiserver_throttled`, …) for the `baton_failures` counter. A crate error classifies itself
//! through [`Classify`], so the `From` is one line: `HandlerError::classified(e)`.

use std::fmt;

/// Any error that can cross threads, as a boxed `#[source]`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Worth retrying later (a registry timeout, NATS briefly away, a throttling apiserver).
    Transient,
    /// Retrying cannot help (a malformed pipeline file, a missing commit, a refused manifest).
    Permanent,
}

impl ErrorKind {
    /// [`Transient`](Self::Transient) when `transient`, else [`Permanent`](Self::Permanent).
    pub fn transient_if(transient: bool) -> Self {
        if transient { Self::Transient } else { Self::Permanent }
    }

    /// `transient` or `permanent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A crate's own error says what kind it is and how it is counted; [`HandlerError::classified`]
/// then wraps it without losing it.
pub trait Classify: std::error::Error + Send + Sync + 'static {
    /// Transient or permanent.
    fn kind(&self) -> ErrorKind;
    /// A short, stable `snake_case` label for metrics, specific to the cause.
    fn metric_label(&self) -> &'static str;
}

/// How a handler (or any unit of a service's work) failed: its [`ErrorKind`], a specific metric
/// label, and the error that caused it, kept as the `#[source]`.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {source}")]
pub struct HandlerError {
    kind: ErrorKind,
    label: &'static str,
    #[source]
    source: BoxError,
}

impl HandlerError {
    /// A failure of `kind`, counted as `label`, caused by `source` (an error, or a message).
    pub fn new(kind: ErrorKind, label: &'static str, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            label,
            source: source.into(),
        }
    }

    /// A failure worth retrying later.
    pub fn transient(label: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Transient, label, source)
    }

    /// A failure retrying cannot help.
    pub fn permanent(label: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Permanent, label, source)
    }

    /// A crate error that classifies itself, kept as the source.
    pub fn classified<E: Classify>(error: E) -> Self {
        Self::new(error.kind(), error.metric_label(), error)
    }

    /// Transient or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The specific label the failure is counted under.
    pub fn metric_label(&self) -> &'static str {
        self.label
    }

    /// What went wrong, without the kind: the text a dead letter and a failed outcome carry.
    pub fn reason(&self) -> String {
        self.source.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach the registry")]
    struct Unreachable(#[source] std::io::Error);

    impl Classify for Unreachable {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Transient
        }
        fn metric_label(&self) -> &'static str {
            "registry_unreachable"
        }
    }

    #[test]
    fn a_classified_error_keeps_its_kind_label_and_whole_source_chain() {
        let e = HandlerError::classified(Unreachable(std::io::Error::other("connection refused")));
        assert!(e.is_transient());
        assert_eq!(e.metric_label(), "registry_unreachable");
        assert_eq!(e.to_string(), "transient: cannot reach the registry");
        assert_eq!(e.reason(), "cannot reach the registry");
        let source = e.source().expect("the crate error is the source");
        assert!(source.is::<Unreachable>());
        let root = source.source().expect("the crate error's own source is kept");
        assert_eq!(root.to_string(), "connection refused");
    }

    #[test]
    fn a_message_is_a_source_too() {
        let e = HandlerError::transient("nats_unavailable", format!("stream {} is away", "BATON"));
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.to_string(), "transient: stream BATON is away");
        assert_eq!(e.metric_label(), "nats_unavailable");
        let e = HandlerError::permanent("invalid_input", "no customData");
        assert_eq!((e.is_transient(), e.reason().as_str()), (false, "no customData"));
    }
}

//! What goes wrong while an image is assembled or pushed: [`ImageError`], which names the
//! faulty field, says whether a retry may succeed and gives a metric label, and the reading of
//! a registry's answers (oci-client's errors) into a message and that classification.

use std::io;
use std::path::PathBuf;

use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};

/// Registry messages quoted in errors are cut to this many characters.
const MESSAGE_LIMIT: usize = 500;

/// Why an image could not be assembled or pushed. [`is_transient`](Self::is_transient) says
/// whether a retry may succeed; every message says what to fix otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A value of the image spec cannot be used.
    #[error("{field}: {message}")]
    InvalidSpec {
        /// The field at fault, e.g. `image.add[0].mode`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An `add` entry's `from` leaves the workspace (absolute, `..`, or through a symlink).
    #[error(
        "{field}: `{path}` is outside the workspace ({reason}); name a file or directory by its path relative to the repository root"
    )]
    PathOutsideWorkspace {
        /// The field at fault, e.g. `image.add[1].from`.
        field: String,
        /// The path as written in the spec.
        path: String,
        /// How it leaves the workspace.
        reason: String,
    },
    /// An `add` entry's `from` does not exist in the workspace after the build.
    #[error(
        "{field}: `{path}` does not exist in the workspace; check the path (relative to the repository root) \
         and that a build step produces it"
    )]
    SourceMissing {
        /// The field at fault, e.g. `image.add[0].from`.
        field: String,
        /// The path as written in the spec.
        path: String,
    },
    /// A symlink inside an added directory points outside that directory.
    #[error(
        "symlink `{link}` -> `{target}` points outside the added tree `{tree}`: an image may only contain \
         relative symlinks that stay inside what is added; copy the file instead or add the directory it \
         points into"
    )]
    SymlinkOutsideTree {
        /// The symlink, relative to the workspace.
        link: String,
        /// Its target as stored on disk.
        target: String,
        /// The added directory (`from`) it belongs to.
        tree: String,
    },
    /// A workspace entry is neither a file, a directory nor a symlink.
    #[error("`{path}` is a {kind}; images can only contain regular files, directories and symlinks")]
    UnsupportedFileType {
        /// The entry, relative to the workspace.
        path: String,
        /// What it is (fifo, socket, device...).
        kind: &'static str,
    },
    /// Two `add` entries put a file and a directory at the same path in the image.
    #[error("`{path}` in the image {reason}; change the `to` of one of the add entries")]
    PathConflict {
        /// The path in the image.
        path: String,
        /// The clash.
        reason: String,
    },
    /// Reading the workspace failed (disk, permissions).
    #[error("cannot read `{}` in the workspace", path.display())]
    Workspace {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// `image.base` is not a valid image reference.
    #[error(
        "{field}: `{reference}` is not a valid image reference ({reason}); write e.g. registry.example.com/team/app:1.2"
    )]
    InvalidReference {
        /// Where it came from, e.g. `image.base`.
        field: String,
        /// The reference as given.
        reference: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The base image could not be fetched.
    #[error("cannot pull the base image `{reference}`: {message}; {}", base_hint(*.transient))]
    BaseUnavailable {
        /// The base as written in `image.base`.
        reference: String,
        /// The registry's or the network's message.
        message: String,
        /// Whether a retry may succeed (network, 5xx, rate limit).
        transient: bool,
    },
    /// The base is not a usable container image.
    #[error("the base image `{reference}` cannot be used: {reason}; pick a linux/amd64 container image or `scratch`")]
    UnsupportedBase {
        /// The base as written in `image.base`.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The target registry failed or refused an operation of the push.
    #[error("pushing to {registry}/{repository} failed while {operation}: {message}; {}", push_hint(*.transient))]
    Push {
        /// `host[:port]` of the target registry.
        registry: String,
        /// The repository pushed to.
        repository: String,
        /// What was being done, e.g. `uploading blob sha256:...`.
        operation: String,
        /// The registry's or the network's message.
        message: String,
        /// Whether a retry may succeed (network, 5xx, rate limit).
        transient: bool,
    },
}

fn base_hint(transient: bool) -> &'static str {
    if transient {
        "the registry is unreachable or overloaded, the build is retried"
    } else {
        "check that `image.base` names an existing image and that the builder may pull it"
    }
}

fn push_hint(transient: bool) -> &'static str {
    if transient {
        "the registry is unreachable or overloaded, the build is retried"
    } else {
        "check the builder's `registry` settings (address, credentials) and that the repository accepts pushes"
    }
}

impl ImageError {
    /// Whether retrying later may succeed: network failures, 5xx answers and rate limits, or a
    /// local I/O failure (the build starts again in a fresh workspace). Mistakes in the spec and
    /// images or repositories that do not exist are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Workspace { .. } => true,
            Self::BaseUnavailable { transient, .. } | Self::Push { transient, .. } => *transient,
            Self::InvalidSpec { .. }
            | Self::PathOutsideWorkspace { .. }
            | Self::SourceMissing { .. }
            | Self::SymlinkOutsideTree { .. }
            | Self::UnsupportedFileType { .. }
            | Self::PathConflict { .. }
            | Self::InvalidReference { .. }
            | Self::UnsupportedBase { .. } => false,
        }
    }

    /// The error's kind as a metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidSpec { .. }
            | Self::PathOutsideWorkspace { .. }
            | Self::SourceMissing { .. }
            | Self::SymlinkOutsideTree { .. }
            | Self::UnsupportedFileType { .. }
            | Self::PathConflict { .. }
            | Self::InvalidReference { .. } => "invalid_image_spec",
            Self::Workspace { .. } => "workspace_io",
            Self::BaseUnavailable { .. } | Self::UnsupportedBase { .. } => "base_image",
            Self::Push { .. } => "registry_push",
        }
    }
}

impl baton_kit::error::Classify for ImageError {
    fn kind(&self) -> baton_kit::ErrorKind {
        baton_kit::ErrorKind::transient_if(self.is_transient())
    }

    fn metric_label(&self) -> &'static str {
        Self::metric_label(self)
    }
}

impl From<ImageError> for baton_kit::HandlerError {
    fn from(e: ImageError) -> Self {
        Self::classified(e)
    }
}

/// The registry's message for `error`, and whether retrying may help.
pub(super) fn describe(error: &OciDistributionError) -> (String, bool) {
    use OciDistributionError as E;
    match error {
        E::RegistryError { envelope, .. } => (envelope_message(envelope), envelope_is_transient(envelope)),
        E::ServerError { code, message, .. } => {
            let transient = *code >= 500 || *code == 429 || *code == 408;
            let text = match serde_json::from_str::<OciEnvelope>(message) {
                Ok(envelope) => envelope_message(&envelope),
                Err(_) if message.trim().is_empty() => "no message".to_owned(),
                Err(_) => truncate(message.trim()),
            };
            (format!("HTTP {code}: {text}"), transient)
        }
        E::UnauthorizedError { url } => (format!("not authorized for {url}"), false),
        E::AuthenticationFailure(reason) => (format!("authentication failed: {}", truncate(reason)), false),
        // Connection refused or reset, DNS, timeouts: the network, or a corrupted transfer.
        E::RequestError(_) | E::IoError(_) | E::DigestError(_) => (error_chain(error), true),
        _ => (error_chain(error), false),
    }
}

/// `CODE: message` for each error the registry listed.
fn envelope_message(envelope: &OciEnvelope) -> String {
    let parts: Vec<String> = envelope
        .errors
        .iter()
        .map(|error| {
            let code = serde_json::to_value(&error.code)
                .ok()
                .and_then(|code| code.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", error.code));
            if error.message.is_empty() {
                code
            } else {
                format!("{code}: {}", truncate(&error.message))
            }
        })
        .collect();
    if parts.is_empty() {
        "the registry gave no reason".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Rate limits and expired upload sessions pass; everything else the registry says is final.
fn envelope_is_transient(envelope: &OciEnvelope) -> bool {
    envelope.errors.iter().any(|error| {
        matches!(
            error.code,
            OciErrorCode::Toomanyrequests | OciErrorCode::BlobUploadUnknown
        )
    })
}

/// An error and its sources, `outer: inner: innermost`, repeated messages dropped.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    truncate(&text)
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registry_failures_are_classified() {
        let envelope = |code: &str| {
            serde_json::from_value::<OciEnvelope>(json!({"errors": [{"code": code, "message": "m"}]})).unwrap()
        };
        let registry = |code: &str| OciDistributionError::RegistryError {
            envelope: envelope(code),
            url: "u".into(),
        };
        assert_eq!(
            describe(&registry("MANIFEST_UNKNOWN")),
            ("MANIFEST_UNKNOWN: m".to_owned(), false)
        );
        assert!(describe(&registry("TOOMANYREQUESTS")).1);
        let server = |code: u16, message: &str| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: message.into(),
        };
        assert!(describe(&server(503, "down")).1);
        assert!(!describe(&server(405, "")).1);
        let (message, transient) = describe(&server(405, r#"{"errors":[{"code":"UNSUPPORTED","message":"no"}]}"#));
        assert_eq!((message.as_str(), transient), ("HTTP 405: UNSUPPORTED: no", false));
        assert!(describe(&OciDistributionError::IoError(io::Error::other("reset"))).1);
        assert!(!describe(&OciDistributionError::UnauthorizedError { url: "u".into() }).1);
    }
}

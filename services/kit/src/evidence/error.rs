//! What goes wrong with keys and with the registry that holds the evidence: [`EvidenceError`],
//! which says whether a retry may succeed and gives a metric label. A piece of evidence that
//! does not verify is not an error but a [`Refusal`](super::Refusal).

use std::io;
use std::path::PathBuf;

/// Why a key could not be loaded or evidence could not be attached or fetched.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The key file cannot be read.
    #[error("cannot read the key file `{}`", path.display())]
    KeyFile {
        /// The file as configured.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The PEM text is not an ECDSA P-256 key of the expected kind.
    #[error(
        "not a usable key: {reason}; use an ECDSA P-256 key in PEM, e.g. from `openssl ecparam -name prime256v1 -genkey -noout`"
    )]
    Key {
        /// What was found instead, or what is broken.
        reason: String,
    },
    /// The image digest is not `sha256:<64 lower-case hex>`, so it has no cosign tag.
    #[error("`{digest}` is not a sha256 manifest digest (`sha256:` and 64 lower-case hex digits)")]
    Digest {
        /// The digest as given.
        digest: String,
    },
    /// The registry failed or refused a request.
    #[error("{operation} in {registry}/{repository} failed: {message}; {}", registry_hint(*.transient))]
    Registry {
        /// `host[:port]` of the registry.
        registry: String,
        /// The image's repository.
        repository: String,
        /// What was being done, e.g. `putting manifest sha256-….sig`.
        operation: String,
        /// The registry's or the network's message.
        message: String,
        /// Whether a retry may succeed (network, 5xx, rate limit).
        transient: bool,
    },
    /// The registry holds evidence Baton will not read: too large, or not the shape cosign
    /// writes. A registry is untrusted input.
    #[error("the evidence at {registry}/{repository}:{tag} cannot be read: {reason}")]
    Malformed {
        /// `host[:port]` of the registry.
        registry: String,
        /// The image's repository.
        repository: String,
        /// The tag read, `sha256-<hex>.sig` or `.att`.
        tag: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn registry_hint(transient: bool) -> &'static str {
    if transient {
        "the registry is unreachable or overloaded, retried later"
    } else {
        "check the registry settings (address, credentials) and that the repository accepts pushes"
    }
}

impl EvidenceError {
    /// Whether retrying later may succeed: a registry that is unreachable, overloaded or rate
    /// limiting. A bad key, a refusal for good (authentication, a missing repository) and
    /// unreadable evidence are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Registry { transient, .. } => *transient,
            Self::KeyFile { .. } | Self::Key { .. } | Self::Digest { .. } | Self::Malformed { .. } => false,
        }
    }

    /// The error's kind as a metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::KeyFile { .. } | Self::Key { .. } => "signing_key",
            Self::Registry { .. } => "evidence_registry",
            Self::Digest { .. } | Self::Malformed { .. } => "evidence_malformed",
        }
    }
}

impl crate::error::Classify for EvidenceError {
    fn kind(&self) -> crate::ErrorKind {
        crate::ErrorKind::transient_if(self.is_transient())
    }

    fn metric_label(&self) -> &'static str {
        Self::metric_label(self)
    }
}

impl From<EvidenceError> for crate::HandlerError {
    fn from(e: EvidenceError) -> Self {
        Self::classified(e)
    }
}

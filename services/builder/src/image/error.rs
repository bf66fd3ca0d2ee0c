//! What goes wrong while an image is assembled or pushed: [`ImageError`], which names the
//! faulty field, says whether a retry may succeed and gives a metric label. What a registry's
//! answers mean is the kit's (`baton_kit::oci::describe`).

use std::io;
use std::path::PathBuf;

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

pub(super) use baton_kit::oci::describe;

//! How a deployment fails, and whether that is the release's fault.
//!
//! [`ClusterError`] is what the Kubernetes API answered (or why it did not), with the
//! `kube::Error` kept as its source; [`DeployError`] is any failure of a deployment attempt,
//! with its cause kept likewise (the config repo's [`SourceError`], a [`ManifestError`], a
//! [`ClusterError`], a [`LockError`], the state store's error). Both say whether retrying may
//! help and give a specific metric label ([`Classify`]), and a [`DeployError`] becomes the kit's
//! [`HandlerError`] in one `From`.
//!
//! The handler keeps two outcomes apart: [`DeployError::is_release_fault`] — the release cannot
//! be deployed (its files, its commit, or the apiserver's refusal of its objects), reported as
//! `baton-deployment.failed` with the reason and not retried — and everything else, the
//! machinery failing, which is retried (transient) or dead-lettered (permanent).
//!
//! An apiserver's answer is classified by its status code: 408 (request timeout), 429
//! (throttled) and 5xx are transient, as are connection failures; any other 4xx refuses the
//! request for good (400 bad request, 403 forbidden, 404 not found, 409 conflict, 422 invalid).

use baton_kit::error::{BoxError, Classify, ErrorKind, HandlerError};
use baton_kit::lease::LockError;
use baton_kit::source::SourceError;
use kube::runtime::watcher;

use crate::manifests::ManifestError;

/// The message of a 500 with which apiservers before 1.21 refuse to server-side apply a
/// manifest they cannot merge (e.g. a port without `protocol`): the manifest's fault.
const UNMERGEABLE: &str = "failed to create typed patch object";

/// A Kubernetes operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The apiserver refused `operation` or could not be reached.
    #[error("{operation}: {}", explain(source))]
    Api {
        /// What was being done, naming the object and its file, e.g. `applying Deployment/shop
        /// (staging/shop/app.yaml)`.
        operation: String,
        /// The apiserver's answer, or why there was none.
        #[source]
        source: kube::Error,
    },
    /// The cluster does not serve the kind an object names.
    #[error("the cluster does not know kind `{kind}` in apiVersion `{api_version}`")]
    UnknownKind {
        /// The object's `kind`.
        kind: String,
        /// The object's `apiVersion`.
        api_version: String,
        /// Discovery's answer.
        #[source]
        source: kube::Error,
    },
    /// The environment's namespace does not exist and the deployer may not create it.
    #[error(
        "namespace `{namespace}` does not exist and the deployer may not create it: create it (deploy/ lists each environment's namespace) or let the deployer create namespaces"
    )]
    NamespaceNotCreatable {
        /// The environment's namespace.
        namespace: String,
        /// The apiserver's 403.
        #[source]
        source: kube::Error,
    },
    /// An object of the release is cluster-scoped.
    #[error(
        "{file}: {object} is cluster-scoped; Baton deploys only namespaced objects into the environment's namespace `{namespace}`"
    )]
    ClusterScoped {
        /// The file it came from.
        file: String,
        /// `Kind/name`.
        object: String,
        /// The environment's namespace.
        namespace: String,
    },
    /// An object of the release already exists and belongs to another app: applying it would
    /// take it over (and a later release of this app would prune it).
    #[error(
        "{file}: {object} in `{namespace}` belongs to app `{owner}` (label baton.dev/app); one app cannot take over another's objects: rename it, or remove it from one of the two apps"
    )]
    OwnedByAnotherApp {
        /// The file it came from.
        file: String,
        /// `Kind/name`.
        object: String,
        /// The environment's namespace.
        namespace: String,
        /// The app label the live object carries.
        owner: String,
    },
    /// Watching the rollout kept failing, so it cannot be judged.
    #[error("watching the rollout's {resource} in `{namespace}` failed {attempts} times in a row: {source}")]
    Watch {
        /// What was watched, e.g. `pods of Deployment/shop`.
        resource: String,
        /// The environment's namespace.
        namespace: String,
        /// Failures in a row.
        attempts: u32,
        /// The watcher's last error.
        #[source]
        source: watcher::Error,
    },
}

impl ClusterError {
    /// `operation` failed with `source`.
    pub fn api(operation: impl Into<String>, source: kube::Error) -> Self {
        Self::Api {
            operation: operation.into(),
            source,
        }
    }

    /// The apiserver's status code, when it answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

impl Classify for ClusterError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Api { source, .. } => classify(source).0,
            Self::UnknownKind { .. }
            | Self::NamespaceNotCreatable { .. }
            | Self::ClusterScoped { .. }
            | Self::OwnedByAnotherApp { .. } => ErrorKind::Permanent,
            // The watch only observes: a watch the apiserver refuses (RBAC without `watch`, say)
            // is the deployer's setup failing, not the release.
            Self::Watch { .. } => ErrorKind::Transient,
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::Api { source, .. } => classify(source).1,
            Self::UnknownKind { .. } => "unknown_kind",
            Self::NamespaceNotCreatable { .. } => "namespace_not_creatable",
            Self::ClusterScoped { .. } => "cluster_scoped_object",
            Self::OwnedByAnotherApp { .. } => "owned_by_another_app",
            Self::Watch { .. } => "rollout_watch",
        }
    }
}

/// Whether retrying may help with what the Kubernetes API answered, and its metric label.
fn classify(error: &kube::Error) -> (ErrorKind, &'static str) {
    use ErrorKind::{Permanent, Transient};
    match error {
        kube::Error::Api(status) => match status.code {
            408 => (Transient, "apiserver_timeout"),
            429 => (Transient, "apiserver_throttled"),
            400 => (Permanent, "apiserver_bad_request"),
            401 => (Permanent, "apiserver_unauthorized"),
            403 => (Permanent, "apiserver_forbidden"),
            404 => (Permanent, "apiserver_not_found"),
            409 => (Permanent, "apiserver_conflict"),
            422 => (Permanent, "apiserver_invalid"),
            code if (400..500).contains(&code) => (Permanent, "apiserver_refused"),
            _ if status.message.contains(UNMERGEABLE) => (Permanent, "apiserver_cannot_merge"),
            _ => (Transient, "apiserver_error"),
        },
        kube::Error::Discovery(_) => (Permanent, "unknown_kind"),
        // Connection refused or reset, TLS, timeouts: the network or the apiserver is away.
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            (Transient, "apiserver_unreachable")
        }
        kube::Error::Auth(_) => (Transient, "apiserver_auth"),
        kube::Error::SerdeError(_) => (Transient, "apiserver_response"),
        _ => (Transient, "kube_client"),
    }
}

/// The apiserver's answer in words an operator can act on, with a hint where one helps.
fn explain(error: &kube::Error) -> String {
    let kube::Error::Api(status) = error else {
        return format!("the Kubernetes API is unreachable: {}", root_cause(error));
    };
    if status.message.contains(UNMERGEABLE) {
        return format!(
            "the apiserver cannot server-side apply it: {} (write out list keys such as `protocol: TCP` on ports)",
            status.message
        );
    }
    let hint = match status.code {
        403 => " (the deployer's service account is not allowed to; see deploy/ for its RBAC)",
        409 => " (another field manager owns these fields; change them through Baton, or set force_conflicts)",
        408 | 429 => " (the apiserver is overloaded; retried)",
        500.. => " (the Kubernetes API is unavailable; retried)",
        _ => "",
    };
    format!("{} {}: {}{hint}", status.code, status.reason, status.message)
}

/// An error and its innermost cause (`client error (Connect): Connection refused`).
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut root = error;
    while let Some(source) = root.source() {
        root = source;
    }
    if std::ptr::addr_eq(root, error) {
        error.to_string()
    } else {
        format!("{error}: {root}")
    }
}

/// Why a deployment attempt did not reach a verdict of its own.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// `environment.modified` without the promoter's `customData`.
    #[error("environment.modified without the promoter's customData")]
    InvalidPromotion(#[source] serde_json::Error),
    /// The config repo: unreachable (transient), or without the commit or folder (permanent).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The release's files cannot be applied as they are.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The Kubernetes API refused or failed (boxed: a `kube::Error` is large).
    #[error(transparent)]
    Cluster(Box<ClusterError>),
    /// The rollout lease of the app in its namespace could not be taken or was lost.
    #[error("the rollout lease: {0}")]
    Lease(#[source] LockError),
    /// The deployer's records in `baton-state` could not be read or written.
    #[error("the deployer's state store failed while {operation}: {source}")]
    State {
        /// What was being done, e.g. `recording the latest promotion`.
        operation: &'static str,
        /// The store's error.
        #[source]
        source: BoxError,
    },
    /// `baton-deployment.started` could not be published.
    #[error("cannot announce the rollout: {0}")]
    Announce(#[source] baton_kit::events::PublishError),
    /// Two promotions' commits could not be ordered in the config repo's history.
    #[error("cannot order commits {ours} and {theirs} of {url}: {source}")]
    History {
        /// The config repo.
        url: String,
        /// This promotion's commit.
        ours: String,
        /// The other promotion's commit.
        theirs: String,
        /// libgit2's error.
        #[source]
        source: git2::Error,
    },
    /// A blocking git task did not finish (it panicked or the runtime is shutting down).
    #[error("the config repo task did not finish: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl DeployError {
    /// The state store failed while doing `operation`.
    pub fn state(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Self::State {
            operation,
            source: source.into(),
        }
    }

    /// Whether the release itself cannot be deployed — its commit or folder is missing, its
    /// files are invalid, or the apiserver refused its objects — so it is reported as
    /// `baton-deployment.failed`. Every other failure is the machinery's.
    pub fn is_release_fault(&self) -> bool {
        match self {
            Self::Source(e) => !e.is_transient(),
            Self::Manifest(_) => true,
            Self::Cluster(e) => e.kind() == ErrorKind::Permanent,
            Self::InvalidPromotion(_)
            | Self::Lease(_)
            | Self::State { .. }
            | Self::Announce(_)
            | Self::History { .. }
            | Self::Task(_) => false,
        }
    }
}

impl From<ClusterError> for DeployError {
    fn from(e: ClusterError) -> Self {
        Self::Cluster(Box::new(e))
    }
}

impl From<LockError> for DeployError {
    fn from(e: LockError) -> Self {
        Self::Lease(e)
    }
}

impl Classify for DeployError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidPromotion(_) | Self::Manifest(_) => ErrorKind::Permanent,
            Self::Source(e) => e.kind(),
            Self::Cluster(e) => e.kind(),
            Self::Announce(e) => e.kind(),
            Self::Lease(_) | Self::State { .. } | Self::History { .. } | Self::Task(_) => ErrorKind::Transient,
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidPromotion(_) => "invalid_input",
            Self::Source(e) => e.metric_label(),
            Self::Manifest(_) => "invalid_manifest",
            Self::Cluster(e) => e.metric_label(),
            Self::Lease(LockError::Busy { .. }) => "lease_busy",
            Self::Lease(LockError::Lost(_)) => "lease_lost",
            Self::Lease(LockError::Store(_)) => "lock_store",
            Self::State { .. } => "state_store",
            Self::Announce(e) => e.metric_label(),
            Self::History { .. } => "git_history",
            Self::Task(_) => "git_task",
        }
    }
}

impl From<DeployError> for HandlerError {
    fn from(e: DeployError) -> Self {
        Self::classified(e)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use kube::core::Status;

    use super::*;

    fn answered(code: u16, reason: &str, message: &str) -> ClusterError {
        ClusterError::api(
            "applying Deployment/shop (staging/shop/app.yaml)",
            kube::Error::Api(Status::failure(message, reason).with_code(code).boxed()),
        )
    }

    #[test]
    fn refusals_are_permanent_and_overload_is_transient() {
        let cases: [(u16, &str, ErrorKind, &str); 10] = [
            (400, "BadRequest", ErrorKind::Permanent, "apiserver_bad_request"),
            (403, "Forbidden", ErrorKind::Permanent, "apiserver_forbidden"),
            (404, "NotFound", ErrorKind::Permanent, "apiserver_not_found"),
            (408, "Timeout", ErrorKind::Transient, "apiserver_timeout"),
            (409, "Conflict", ErrorKind::Permanent, "apiserver_conflict"),
            (422, "Invalid", ErrorKind::Permanent, "apiserver_invalid"),
            (429, "TooManyRequests", ErrorKind::Transient, "apiserver_throttled"),
            (500, "InternalError", ErrorKind::Transient, "apiserver_error"),
            (503, "ServiceUnavailable", ErrorKind::Transient, "apiserver_error"),
            (504, "Timeout", ErrorKind::Transient, "apiserver_error"),
        ];
        for (code, reason, kind, label) in cases {
            let e = answered(code, reason, "m");
            assert_eq!((e.kind(), e.metric_label()), (kind, label), "{code}");
            assert_eq!(e.status_code(), Some(code));
            let deploy = DeployError::from(e);
            assert_eq!(deploy.is_release_fault(), kind == ErrorKind::Permanent, "{code}");
            let handler = HandlerError::from(deploy);
            assert_eq!((handler.kind(), handler.metric_label()), (kind, label), "{code}");
            let source = handler
                .source()
                .and_then(|s| s.source())
                .expect("the cluster error is kept");
            assert!(source.is::<kube::Error>(), "{code}: the kube error is kept");
        }
    }

    #[test]
    fn a_manifest_the_old_apiserver_cannot_merge_is_the_manifests_fault() {
        let e = answered(
            500,
            "InternalError",
            "failed to create typed patch object: .spec.ports: element 0: associative list with keys has an element that omits key field \"protocol\"",
        );
        assert_eq!(
            (e.kind(), e.metric_label()),
            (ErrorKind::Permanent, "apiserver_cannot_merge")
        );
        assert!(e.to_string().contains("protocol: TCP"), "{e}");
    }

    #[test]
    fn an_unreachable_apiserver_is_transient_and_named() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = ClusterError::api(
            "reading namespace shop-staging",
            kube::Error::Service(Box::new(refused)),
        );
        assert_eq!(
            (e.kind(), e.metric_label()),
            (ErrorKind::Transient, "apiserver_unreachable")
        );
        assert!(!DeployError::from(e).is_release_fault());
        let e = ClusterError::api(
            "reading namespace shop-staging",
            kube::Error::Service(Box::new(std::io::Error::other("connection reset"))),
        );
        let text = e.to_string();
        assert!(
            text.starts_with("reading namespace shop-staging: the Kubernetes API is unreachable")
                && text.contains("connection reset"),
            "{text}"
        );
    }

    #[test]
    fn refusals_say_how_to_fix_them() {
        let forbidden = answered(403, "Forbidden", "deployments.apps is forbidden").to_string();
        assert!(
            forbidden.contains("403 Forbidden") && forbidden.contains("RBAC"),
            "{forbidden}"
        );
        let conflict = answered(409, "Conflict", "Apply failed with 1 conflict").to_string();
        assert!(
            conflict.contains("409") && conflict.contains("force_conflicts"),
            "{conflict}"
        );
        let invalid = answered(422, "Invalid", "spec.template.spec.restartPolicy: Unsupported value").to_string();
        assert!(
            invalid.starts_with("applying Deployment/shop (staging/shop/app.yaml): 422 Invalid: spec.template"),
            "{invalid}"
        );
    }

    #[test]
    fn the_machinery_failing_is_never_the_releases_fault() {
        let lease = DeployError::from(LockError::Busy {
            name: "deploy.shop-staging.shop".into(),
            holder: "another replica".into(),
        });
        assert!(!lease.is_release_fault());
        assert_eq!(
            (lease.kind(), lease.metric_label()),
            (ErrorKind::Transient, "lease_busy")
        );
        let state = DeployError::state("recording the latest promotion", "no responders");
        assert_eq!(
            (state.kind(), state.metric_label()),
            (ErrorKind::Transient, "state_store")
        );
        let missing = DeployError::from(SourceError::MissingFolder {
            url: "file:///config".into(),
            commit: "abc".into(),
            folder: "staging/shop".into(),
        });
        assert!(missing.is_release_fault());
        assert_eq!(
            (missing.kind(), missing.metric_label()),
            (ErrorKind::Permanent, "missing_folder")
        );
        let unreachable = DeployError::from(SourceError::Unreachable {
            url: "file:///config".into(),
            message: "gone".into(),
        });
        assert!(!unreachable.is_release_fault());
        let input = serde_json::from_str::<u32>("x").unwrap_err();
        let input = HandlerError::from(DeployError::InvalidPromotion(input));
        assert_eq!(
            (input.kind(), input.metric_label()),
            (ErrorKind::Permanent, "invalid_input")
        );
    }
}

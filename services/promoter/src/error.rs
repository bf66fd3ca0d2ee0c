//! Why a decision of the release manager could not be carried out. [`PromoteError`] names what
//! failed and keeps its cause as the `#[source]` (the state store's [`StateError`], the lock
//! store's [`LockError`], the config repo's [`RepoError`], an app repo's [`SourceError`] or
//! `git2::Error`, JetStream's [`PublishError`], a user file's [`FileError`], …), says whether
//! retrying may help and gives a specific metric label ([`Classify`]); it becomes the kit's
//! [`HandlerError`] in one `From`.
//!
//! The classification keeps three outcomes apart:
//! - **transient**: the machinery failed (KV, a lease, a git host, JetStream, a race with another
//!   replica that kept winning). The stage retries the event with backoff; a command answers
//!   "could not do it now (…); try again".
//! - **permanent, the input**: an event without what the promoter needs (dead-lettered), a
//!   command naming an environment the policy does not define (refused, and recorded).
//! - **permanent, the release**: it cannot be deployed as it is (no pipeline file, no manifests,
//!   manifests without the app's image, its commit gone from its repository), or the
//!   environment requires evidence its image does not have. A promotion of it is held, with the
//!   error's message as the reason on `baton-promotion.held`.

use baton_kit::error::{BoxError, Classify, ErrorKind, HandlerError};
use baton_kit::events::PublishError;
use baton_kit::lease::LockError;
use baton_kit::source::SourceError;
use baton_schemas::EventType;
use baton_schemas::pipeline::PIPELINE_FILE;
use baton_schemas::userfile::FileError;

use crate::configrepo::RepoError;
use crate::gates::UnknownEnvironment;
use crate::manager::short;
use crate::render::RenderError;
use crate::state::StateError;

/// Why a decision could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The promoter's state in KV could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The environment's lease could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The config repo failed, or holds something Baton cannot use.
    #[error(transparent)]
    ConfigRepo(#[from] RepoError),
    /// The app repo could not be fetched, or lacks the release's commit.
    #[error(transparent)]
    AppRepo(#[from] SourceError),
    /// The app repo's mirror has the commit but it could not be read.
    #[error("cannot read commit {commit} of {url}: {}", source.message())]
    AppRepoRead {
        /// The app repo.
        url: String,
        /// The release's commit.
        commit: String,
        /// libgit2's error.
        #[source]
        source: git2::Error,
    },
    /// JetStream did not take an event that records a decision. Retried as a whole: every
    /// decision is idempotent and its events keep their ids.
    #[error("cannot record the event: {0}")]
    Publish(#[source] PublishError),
    /// Reading the event stream to rebuild the state failed.
    #[error("cannot replay the event stream: {0}")]
    Replay(#[source] BoxError),
    /// A blocking git task did not finish (it panicked or the runtime is shutting down).
    #[error("a git task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// Another replica kept changing what an environment runs while this one marked it healthy.
    #[error("the state of {app} in `{environment}` keeps changing; retrying")]
    CurrentContended {
        /// The app.
        app: String,
        /// The environment.
        environment: String,
    },
    /// The store of commands' nonces failed.
    #[error("the store of command nonces failed: {0}")]
    Nonces(String),
    /// Another replica changed the environment's approval request while this one replaced it.
    #[error("the approval request for {app} into `{environment}` changed meanwhile; retrying")]
    ApprovalContended {
        /// The app.
        app: String,
        /// The environment.
        environment: String,
    },
    /// Votes of other replicas kept landing on the approval request first.
    #[error("the approval request keeps changing; try again")]
    VotesContended,
    /// `environments.yaml` is invalid and no valid one was ever seen: nothing can be decided
    /// until it is fixed.
    #[error("no valid environments.yaml in the config repo yet: {0}")]
    NoValidPolicy(#[source] FileError),
    /// The stage was handed an event type it does not consume.
    #[error("the promoter does not handle {0}")]
    Unhandled(EventType),
    /// An event lacks the `customData` its producer writes.
    #[error("{event} without the {producer}'s customData: {source}")]
    MissingCustomData {
        /// The event, e.g. `testsuiterun.finished`.
        event: String,
        /// Who writes it: `tester`, `deployer`.
        producer: &'static str,
        /// Why it does not read as that producer's data.
        #[source]
        source: serde_json::Error,
    },
    /// A test run without the release id.
    #[error("testsuiterun.finished without a chainId (the release id)")]
    NoChainId,
    /// A test run whose commit builds no image.
    #[error(
        "the test run names no image: the commit's pipeline has no `image` section, so there is nothing to release"
    )]
    NoImage,
    /// An event names a release the promoter has no record of.
    #[error("release {0} is unknown to the promoter")]
    UnknownRelease(String),
    /// The policy defines no such environment.
    #[error("{0}")]
    UnknownEnvironment(#[from] UnknownEnvironment),
    /// The release's commit has no pipeline file.
    #[error("commit {} has no {}", short(commit), PIPELINE_FILE)]
    NoPipelineFile {
        /// The commit.
        commit: String,
    },
    /// The release's pipeline file is invalid.
    #[error("{0}")]
    InvalidPipeline(#[source] FileError),
    /// The release's pipeline file names no manifests.
    #[error(
        "{} of commit {} names no `manifests` directory, so there is nothing to deploy",
        PIPELINE_FILE,
        short(commit)
    )]
    NoManifestsDir {
        /// The commit.
        commit: String,
    },
    /// The manifests directory is not in the release's commit.
    #[error(
        "the manifests directory `{dir}` named in {} does not exist at commit {}",
        PIPELINE_FILE,
        short(commit)
    )]
    MissingManifestsDir {
        /// The directory as the pipeline file names it.
        dir: String,
        /// The commit.
        commit: String,
    },
    /// The release's manifests cannot be pinned to its image.
    #[error("{0}")]
    Render(#[from] RenderError),
    /// The environment requires evidence the image does not have: the move is held.
    #[error("`{environment}` requires evidence of image {image}, and the check `{check}` failed: {reason}")]
    EvidenceRefused {
        /// The environment.
        environment: String,
        /// The image, by digest reference.
        image: String,
        /// The check that failed (`signature`, `provenance.commit`, `tests.result`, …).
        check: &'static str,
        /// What was found.
        reason: String,
    },
    /// The registry could not be asked for the image's evidence.
    #[error("cannot read the image's evidence: {0}")]
    EvidenceStore(#[source] baton_kit::evidence::EvidenceError),
}

impl PromoteError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// `event` without the `producer`'s `customData`.
    pub(crate) fn custom_data(event: impl Into<String>, producer: &'static str, source: serde_json::Error) -> Self {
        Self::MissingCustomData {
            event: event.into(),
            producer,
            source,
        }
    }
}

impl Classify for PromoteError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::ConfigRepo(e) => ErrorKind::transient_if(e.is_transient()),
            Self::EvidenceStore(e) => ErrorKind::transient_if(e.is_transient()),
            Self::AppRepo(e) => e.kind(),
            Self::State(_)
            | Self::Lock(_)
            | Self::AppRepoRead { .. }
            | Self::Publish(_)
            | Self::Replay(_)
            | Self::Task(_)
            | Self::CurrentContended { .. }
            | Self::ApprovalContended { .. }
            | Self::VotesContended
            | Self::Nonces(_)
            | Self::NoValidPolicy(_) => ErrorKind::Transient,
            Self::Unhandled(_)
            | Self::MissingCustomData { .. }
            | Self::NoChainId
            | Self::NoImage
            | Self::UnknownRelease(_)
            | Self::UnknownEnvironment(_)
            | Self::NoPipelineFile { .. }
            | Self::InvalidPipeline(_)
            | Self::NoManifestsDir { .. }
            | Self::MissingManifestsDir { .. }
            | Self::Render(_)
            | Self::EvidenceRefused { .. } => ErrorKind::Permanent,
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::State(e) => e.metric_label(),
            Self::Lock(LockError::Busy { .. }) => "lease_busy",
            Self::Lock(LockError::Lost(_)) => "lease_lost",
            Self::Lock(LockError::Store(_)) => "lock_store",
            Self::ConfigRepo(e) => e.metric_label(),
            Self::AppRepo(e) => e.metric_label(),
            Self::AppRepoRead { .. } => "app_repo_read",
            Self::Publish(e) => e.metric_label(),
            Self::Replay(_) => "event_replay",
            Self::Task(_) => "git_task",
            Self::CurrentContended { .. } => "state_contended",
            Self::ApprovalContended { .. } | Self::VotesContended => "approval_contended",
            Self::NoValidPolicy(_) => "no_valid_policy",
            Self::Nonces(_) => "nonce_store",
            Self::Unhandled(_) => "unhandled_event",
            Self::MissingCustomData { .. } | Self::NoChainId => "invalid_input",
            Self::NoImage => "no_image",
            Self::UnknownRelease(_) => "unknown_release",
            Self::UnknownEnvironment(_) => "unknown_environment",
            Self::NoPipelineFile { .. } => "no_pipeline_file",
            Self::InvalidPipeline(_) => "invalid_pipeline_file",
            Self::NoManifestsDir { .. } | Self::MissingManifestsDir { .. } => "missing_manifests",
            Self::Render(_) => "invalid_manifest",
            Self::EvidenceRefused { .. } => "evidence_refused",
            Self::EvidenceStore(e) => e.metric_label(),
        }
    }
}

impl From<PromoteError> for HandlerError {
    fn from(e: PromoteError) -> Self {
        Self::classified(e)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn git_error(message: &str) -> git2::Error {
        git2::Error::from_str(message)
    }

    fn classified(e: PromoteError) -> (ErrorKind, &'static str) {
        (e.kind(), e.metric_label())
    }

    #[test]
    fn the_machinery_failing_is_transient_and_counted_by_its_cause() {
        use ErrorKind::Transient;
        let rows: Vec<(PromoteError, &str)> = vec![
            (
                StateError::Unreadable {
                    key: "promoter.current.shop.staging".into(),
                    source: serde_json::from_str::<u32>("x").unwrap_err(),
                }
                .into(),
                "state_unreadable",
            ),
            (
                LockError::Busy {
                    name: "env.staging".into(),
                    holder: "baton-promoter-1 promote r1".into(),
                }
                .into(),
                "lease_busy",
            ),
            (LockError::Lost("env.staging".into()).into(), "lease_lost"),
            (LockError::Store("no responders".into()).into(), "lock_store"),
            (
                RepoError::Unreachable {
                    url: "https://git.example.com/config.git".into(),
                    source: git_error("connection refused"),
                }
                .into(),
                "config_repo_unreachable",
            ),
            (
                RepoError::Contended {
                    url: "https://git.example.com/config.git".into(),
                }
                .into(),
                "config_repo_contended",
            ),
            (
                SourceError::Unreachable {
                    url: "https://git.example.com/shop.git".into(),
                    message: "timed out".into(),
                }
                .into(),
                "git_unreachable",
            ),
            (
                PromoteError::AppRepoRead {
                    url: "https://git.example.com/shop.git".into(),
                    commit: COMMIT.into(),
                    source: git_error("object not found"),
                },
                "app_repo_read",
            ),
            // Even an event JetStream would refuse for good is retried as a whole decision.
            (
                PromoteError::Publish(PublishError::UnknownType("dev.example.thing".into())),
                "publish_unknown_type",
            ),
            (
                PromoteError::CurrentContended {
                    app: "acme/shop".into(),
                    environment: "staging".into(),
                },
                "state_contended",
            ),
            (PromoteError::VotesContended, "approval_contended"),
            (
                PromoteError::NoValidPolicy(FileError::in_field("environments.yaml", "", "no environments")),
                "no_valid_policy",
            ),
        ];
        for (error, label) in rows {
            let text = error.to_string();
            assert_eq!(classified(error), (Transient, label), "{text}");
        }
    }

    #[test]
    fn what_retrying_cannot_fix_is_permanent() {
        use ErrorKind::Permanent;
        let rows: Vec<(PromoteError, &str)> = vec![
            (PromoteError::Unhandled(EventType::BuildFinished), "unhandled_event"),
            (
                PromoteError::custom_data(
                    "testsuiterun.finished",
                    "tester",
                    serde_json::from_str::<u32>("{}").unwrap_err(),
                ),
                "invalid_input",
            ),
            (PromoteError::NoChainId, "invalid_input"),
            (PromoteError::NoImage, "no_image"),
            (PromoteError::UnknownRelease("r1".into()), "unknown_release"),
            (
                UnknownEnvironment {
                    name: "prod".into(),
                    known: vec!["staging".into()],
                }
                .into(),
                "unknown_environment",
            ),
            (
                PromoteError::NoPipelineFile { commit: COMMIT.into() },
                "no_pipeline_file",
            ),
            (
                PromoteError::NoManifestsDir { commit: COMMIT.into() },
                "missing_manifests",
            ),
            (RenderError::Empty { dir: "deploy".into() }.into(), "invalid_manifest"),
            (
                SourceError::MissingCommit {
                    url: "https://git.example.com/shop.git".into(),
                    commit: COMMIT.into(),
                }
                .into(),
                "missing_commit",
            ),
            (
                RepoError::MissingFolder {
                    dir: "staging/acme_shop".into(),
                    commit: COMMIT.into(),
                }
                .into(),
                "config_repo_missing_folder",
            ),
        ];
        for (error, label) in rows {
            let text = error.to_string();
            assert_eq!(classified(error), (Permanent, label), "{text}");
        }
    }

    #[test]
    fn messages_say_what_failed_as_users_read_them() {
        let rows: Vec<(PromoteError, &str)> = vec![
            (
                PromoteError::NoPipelineFile { commit: COMMIT.into() },
                "commit 0123456789ab has no .baton.yaml",
            ),
            (
                PromoteError::NoManifestsDir { commit: COMMIT.into() },
                ".baton.yaml of commit 0123456789ab names no `manifests` directory, so there is nothing to deploy",
            ),
            (
                PromoteError::MissingManifestsDir {
                    dir: "deploy".into(),
                    commit: COMMIT.into(),
                },
                "the manifests directory `deploy` named in .baton.yaml does not exist at commit 0123456789ab",
            ),
            (
                PromoteError::UnknownRelease("r1".into()),
                "release r1 is unknown to the promoter",
            ),
            (
                PromoteError::ApprovalContended {
                    app: "acme/shop".into(),
                    environment: "production".into(),
                },
                "the approval request for acme/shop into `production` changed meanwhile; retrying",
            ),
            (
                LockError::Busy {
                    name: "env.staging".into(),
                    holder: "baton-promoter-1 promote r1".into(),
                }
                .into(),
                "`env.staging` is busy (baton-promoter-1 promote r1); retrying later",
            ),
            (
                RepoError::Unreachable {
                    url: "https://git.example.com/config.git".into(),
                    source: git_error("connection refused"),
                }
                .into(),
                "the config repo https://git.example.com/config.git is unreachable: connection refused",
            ),
            (
                StateError::Store {
                    operation: "reading",
                    key: "promoter.release.r1".into(),
                    source: "no responders".into(),
                }
                .into(),
                "the promoter's state store failed while reading `promoter.release.r1`: no responders",
            ),
        ];
        for (error, expected) in rows {
            assert_eq!(error.to_string(), expected);
        }
        let missing = PromoteError::custom_data(
            "testsuiterun.finished",
            "tester",
            serde_json::from_str::<u32>("{}").unwrap_err(),
        );
        assert!(
            missing
                .to_string()
                .starts_with("testsuiterun.finished without the tester's customData: "),
            "{missing}"
        );
    }

    #[test]
    fn a_handler_error_keeps_the_kind_the_label_and_the_cause() {
        let e = HandlerError::from(PromoteError::AppRepoRead {
            url: "https://git.example.com/shop.git".into(),
            commit: COMMIT.into(),
            source: git_error("object not found"),
        });
        assert!(e.is_transient());
        assert_eq!(e.metric_label(), "app_repo_read");
        assert_eq!(
            e.reason(),
            format!("cannot read commit {COMMIT} of https://git.example.com/shop.git: object not found")
        );
        let promote = e.source().expect("the promoter's error is the source");
        assert!(promote.is::<PromoteError>());
        let git = promote.source().expect("libgit2's error is kept");
        assert!(git.is::<git2::Error>());

        let e = HandlerError::from(PromoteError::from(RenderError::Empty { dir: "deploy".into() }));
        assert!(!e.is_transient());
        assert_eq!(e.metric_label(), "invalid_manifest");
        let render = e.source().and_then(|s| s.source()).expect("the render error is kept");
        assert!(render.is::<RenderError>());
    }
}

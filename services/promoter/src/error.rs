//! Why a decision of the release manager could not be carried out, classified as the stage
//! runner and the operator commands need it: worth retrying, or not.

use baton_kit::lease::LockError;

use crate::configrepo::RepoError;
use crate::state::StateError;

/// Why a decision could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    /// Worth retrying (git host, KV or lock busy).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (a broken pipeline file, a manifest without the app's image).
    #[error("{0}")]
    Permanent(String),
}

impl From<StateError> for PromoteError {
    fn from(e: StateError) -> Self {
        Self::Transient(e.to_string())
    }
}

impl From<LockError> for PromoteError {
    fn from(e: LockError) -> Self {
        Self::Transient(e.to_string())
    }
}

impl From<RepoError> for PromoteError {
    fn from(e: RepoError) -> Self {
        if e.is_transient() {
            Self::Transient(e.to_string())
        } else {
            Self::Permanent(e.to_string())
        }
    }
}

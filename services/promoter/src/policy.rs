//! The policy in force: `environments.yaml` at the config repo's head when it is valid, else
//! the last valid one (kept in memory and in KV), with `baton-policy.rejected` naming the field
//! at fault. Read before every decision.

use std::sync::Arc;

use baton_kit::Outgoing;
use baton_schemas::EventType;
use baton_schemas::environments::{ENVIRONMENTS_FILE, Environment, EnvironmentsFile};
use baton_schemas::extensions::PolicyRejectedContent;
use baton_schemas::userfile::FileError;

use crate::error::PromoteError;
use crate::gates::UnknownEnvironment;
use crate::manager::{Outcome, ReleaseManager, derive_id};
use crate::state::{self, PolicyRecord};

/// The policy in force: a valid `environments.yaml` and the commit it was read at.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file.
    pub file: EnvironmentsFile,
    /// Its config-repo commit.
    pub commit: String,
}

impl Policy {
    /// The environment `name`, or a permanent error naming the known ones.
    ///
    /// # Errors
    /// [`PromoteError::UnknownEnvironment`] when the policy defines no such environment.
    pub fn environment(&self, name: &str) -> Result<&Environment, PromoteError> {
        self.file
            .get(name)
            .ok_or_else(|| UnknownEnvironment::in_policy(&self.file, name).into())
    }
}

impl ReleaseManager {
    /// The policy in force: the config repo's `environments.yaml` at its head when valid, else
    /// the last valid one (and a `baton-policy.rejected` event naming the field at fault).
    ///
    /// # Errors
    /// Transient when the repo is unreachable or no valid policy was ever seen.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn policy(&self) -> Result<Outcome<Policy>, PromoteError> {
        let repo = Arc::clone(&self.repo);
        let (commit, bytes) = self.blocking(move || Ok(repo.read_at_head(ENVIRONMENTS_FILE)?)).await?;
        let text = bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
        let parsed = match &text {
            Some(text) => EnvironmentsFile::parse(text),
            None => Err(FileError::in_field(
                ENVIRONMENTS_FILE,
                "",
                "the config repo has no environments.yaml at its root: add one (see docs/promoter.md)",
            )),
        };
        match parsed {
            Ok(file) => {
                let policy = Policy {
                    file,
                    commit: commit.clone(),
                };
                let changed = self
                    .policy
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .replace(policy.clone())
                    .is_none_or(|old| old.commit != commit);
                if changed && let Some(text) = text {
                    self.state
                        .put(state::POLICY_KEY, &PolicyRecord { commit, text })
                        .await?;
                }
                Ok(Outcome {
                    value: policy,
                    events: Vec::new(),
                })
            }
            Err(error) => {
                let last = self.last_valid_policy().await?;
                tracing::error!(%error, commit, "environments.yaml is invalid; keeping the last valid policy");
                let event = self.policy_rejected(
                    "policy-rejected",
                    ENVIRONMENTS_FILE,
                    &commit,
                    &error,
                    last.as_ref().map(|p| p.commit.clone()),
                );
                match last {
                    Some(policy) => Ok(Outcome {
                        value: policy,
                        events: vec![event],
                    }),
                    None => {
                        // Record the refusal before asking to be retried.
                        self.publish(&[event]).await?;
                        Err(PromoteError::NoValidPolicy(error))
                    }
                }
            }
        }
    }

    /// A `baton-policy.rejected` event: `file` at config commit `commit` is invalid (`error`
    /// names the field at fault), and the one read at `in_force` stays in force. Its id is
    /// derived from `kind` and `commit`, so the same refusal is recorded once.
    pub(crate) fn policy_rejected(
        &self,
        kind: &str,
        file: &str,
        commit: &str,
        error: &FileError,
        in_force: Option<String>,
    ) -> Outgoing {
        let content = PolicyRejectedContent {
            file: file.to_owned(),
            field: error.field.clone(),
            reason: error.to_string(),
            policy_in_force: in_force,
        };
        self.event(
            EventType::PolicyRejected,
            derive_id(&[kind, commit]),
            "config",
            commit,
            serde_json::to_value(content).expect("serializes"),
            None,
            None,
            None,
        )
    }

    async fn last_valid_policy(&self) -> Result<Option<Policy>, PromoteError> {
        if let Some(p) = self
            .policy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Ok(Some(p));
        }
        let record = self.state.get::<PolicyRecord>(state::POLICY_KEY).await?;
        Ok(record.and_then(|r| {
            EnvironmentsFile::parse(&r.value.text).ok().map(|file| Policy {
                file,
                commit: r.value.commit,
            })
        }))
    }
}

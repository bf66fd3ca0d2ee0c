//! Releases: a successful test run becomes a release (its id is the `chainId`), with its
//! commit's author and the changelog since the first environment's release, and is moved toward
//! the first environment. A release can be quarantined: never promoted again.

use baton_kit::Outgoing;
use baton_kit::source::{commits_in, describe_commit};
use baton_schemas::EventType;
use baton_schemas::extensions::{ReleaseCreatedContent, ReleaseQuarantinedContent, ReleaseUnquarantinedContent};
use baton_schemas::payloads::{Person, TestData};
use baton_schemas::release::{ChangeEntry, ReleaseData};
use chrono::{DateTime, Utc};

use crate::advance::Advance;
use crate::error::PromoteError;
use crate::gates::Move;
use crate::manager::{Outcome, ReleaseManager, derive_id};
use crate::state::{self, BadRelease, Trigger};

/// Most commits listed in a release's changelog.
const CHANGELOG_LIMIT: usize = 100;

impl ReleaseManager {
    /// Turns a successful test run into a release (created `now`) and moves it toward the first
    /// environment.
    ///
    /// # Errors
    /// [`PromoteError`].
    pub async fn create_release(
        &self,
        event_id: &str,
        chain: &str,
        test: &TestData,
        now: DateTime<Utc>,
    ) -> Result<Outcome<Advance>, PromoteError> {
        let Some(image) = test.image.clone() else {
            return Err(PromoteError::NoImage);
        };
        // The app repo's commit is fetched while the policy is read from the config repo; the
        // changelog below then finds it in the mirror. A failed fetch is reported there.
        let prefetch = {
            let sources = self.sources.clone();
            let (repository, commit) = (test.repository.clone(), test.commit.clone());
            self.blocking(move || {
                let _ = sources.mirror_with(&repository, &commit);
                Ok(())
            })
        };
        let (policy, _) = tokio::join!(self.policy(), prefetch);
        let Outcome {
            value: policy,
            mut events,
        } = policy?;
        let first = policy.file.environments[0].clone();
        let release = match self.state.release(chain).await? {
            Some(existing) => existing,
            None => {
                let previous = self.state.current(&test.app, &first.name).await?;
                let previous_release = match &previous {
                    Some(c) => self.state.release(&c.value.release).await?,
                    None => None,
                };
                let sources = self.sources.clone();
                let (repository, commit) = (test.repository.clone(), test.commit.clone());
                let since = previous_release.as_ref().map(|r| r.commit.clone());
                let (author, changelog) = self
                    .blocking(move || {
                        let mirror = sources.mirror_with(&repository, &commit)?;
                        commit_story(&mirror, &commit, since.as_deref()).map_err(|source| PromoteError::AppRepoRead {
                            url: repository,
                            commit,
                            source,
                        })
                    })
                    .await?;
                let release = ReleaseData {
                    release: chain.to_owned(),
                    app: test.app.clone(),
                    commit: test.commit.clone(),
                    repository: test.repository.clone(),
                    image: image.clone(),
                    author,
                    pushed_by: test.pushed_by.clone(),
                    tested: !test.no_tests_declared,
                    test_run: Some(test.run.clone()),
                    previous_release: previous_release.map(|r| r.release),
                    changelog,
                    created_at: now,
                };
                // The span handling the tested artifact continues the release's trace; an
                // operator's command about this release joins it from here.
                match baton_kit::telemetry::traceparent() {
                    Some(trace) => {
                        let (release_key, trace_key) = (state::release_key(chain), state::trace_key(chain));
                        tokio::try_join!(
                            self.state.put(&release_key, &release),
                            self.state.put(&trace_key, &trace),
                        )?;
                    }
                    None => {
                        self.state.put(&state::release_key(chain), &release).await?;
                    }
                }
                release
            }
        };
        events.push(
            self.event(
                EventType::ReleaseCreated,
                derive_id(&["release.created", chain]),
                &release.app,
                chain,
                serde_json::to_value(ReleaseCreatedContent {
                    app: release.app.clone(),
                    commit: release.commit.clone(),
                    artifact_id: image.purl.clone(),
                })
                .expect("serializes"),
                Some(chain),
                Some(event_id),
                Some(serde_json::to_value(&release).expect("serializes")),
            ),
        );
        let promotion = derive_id(&["promote", event_id, &first.name]);
        let outcome = self
            .advance(
                &policy,
                Move {
                    release: &release,
                    env: &first,
                    trigger: &Trigger::Auto,
                    promotion: &promotion,
                },
                event_id,
                now,
            )
            .await?;
        events.extend(outcome.events);
        Ok(Outcome {
            value: outcome.value,
            events,
        })
    }

    /// Quarantines `release` (as of `now`): never promoted again, nor any other release of its
    /// app commit or its image digest.
    ///
    /// # Errors
    /// [`PromoteError`].
    pub async fn quarantine(
        &self,
        release: &ReleaseData,
        actor: &str,
        reason: &str,
        cause: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Outgoing, PromoteError> {
        let record = BadRelease {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at: now,
            release: release.release.clone(),
        };
        // Under the release, its commit and its image; the first reason stays under each.
        let [a, b, c] = state::bad_keys(release);
        tokio::try_join!(
            self.state.compare_and_set(&a, &record, None),
            self.state.compare_and_set(&b, &record, None),
            self.state.compare_and_set(&c, &record, None),
        )?;
        Ok(self.event(
            EventType::ReleaseQuarantined,
            derive_id(&["quarantined", &release.release]),
            &release.app,
            &release.release,
            serde_json::to_value(ReleaseQuarantinedContent {
                app: release.app.clone(),
                actor: actor.to_owned(),
                reason: reason.to_owned(),
            })
            .expect("serializes"),
            Some(&release.release),
            cause,
            None,
        ))
    }
}

impl ReleaseManager {
    /// Lifts `release`'s quarantine `bad`: its records under the release, its commit and its
    /// image are removed (each only if it is still the one read), and the lifting is recorded.
    ///
    /// # Errors
    /// [`PromoteError`] when the state cannot be written.
    pub async fn unquarantine(
        &self,
        release: &ReleaseData,
        bad: &BadRelease,
        actor: &str,
        reason: &str,
    ) -> Result<Outgoing, PromoteError> {
        for key in state::bad_keys(release) {
            if let Some(record) = self.state.get::<BadRelease>(&key).await? {
                self.state.delete_at(&key, record.revision).await?;
            }
        }
        Ok(self.event(
            EventType::ReleaseUnquarantined,
            derive_id(&["unquarantined", &release.release, &bad.at.to_rfc3339()]),
            &release.app,
            &release.release,
            serde_json::to_value(ReleaseUnquarantinedContent {
                app: release.app.clone(),
                actor: actor.to_owned(),
                reason: reason.to_owned(),
                quarantined_for: bad.reason.clone(),
            })
            .expect("serializes"),
            Some(&release.release),
            None,
            None,
        ))
    }
}

/// The commit's author and the commits since `since` (newest first, capped).
fn commit_story(
    repo: &git2::Repository,
    commit: &str,
    since: Option<&str>,
) -> Result<(Option<Person>, Vec<ChangeEntry>), git2::Error> {
    let head = git2::Oid::from_str(commit)?;
    let author = describe_commit(repo, head)?.author;
    let since = since.and_then(|s| git2::Oid::from_str(s).ok());
    let changelog = commits_in(repo, head, since, CHANGELOG_LIMIT)?
        .into_iter()
        .map(|c| ChangeEntry {
            summary: summary(&c.message),
            commit: c.id,
            committer: c.committer.filter(|committer| *committer != c.author),
            author: c.author,
        })
        .collect();
    Ok((Some(author), changelog))
}

/// A commit message's summary as git shows it: its first paragraph on one line.
fn summary(message: &str) -> String {
    message
        .trim_start()
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn a_summary_is_the_first_paragraph_on_one_line() {
        assert_eq!(summary("fix the cart\n"), "fix the cart");
        assert_eq!(
            summary("fix the cart\nwhen it is empty\n\nDetails.\n"),
            "fix the cart when it is empty"
        );
        assert_eq!(summary("\n  one line  \n   \nrest"), "one line");
        assert_eq!(summary(""), "");
    }
}

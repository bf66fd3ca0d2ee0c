//! Releases: a successful test run becomes a release (its id is the `chainId`), with its
//! commit's author and the changelog since the first environment's release, and is moved toward
//! the first environment. A release can be quarantined: never promoted again.

use baton_kit::Outgoing;
use baton_schemas::EventType;
use baton_schemas::extensions::{ReleaseCreatedContent, ReleaseQuarantinedContent};
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
            return Err(PromoteError::Permanent(
                "the test run names no image: the commit's pipeline has no `image` section, so there is nothing to release".into(),
            ));
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
                        let mirror = sources.mirror_with(&repository, &commit).map_err(|e| {
                            if e.is_transient() {
                                PromoteError::Transient(e.to_string())
                            } else {
                                PromoteError::Permanent(e.to_string())
                            }
                        })?;
                        commit_story(&mirror, &commit, since.as_deref())
                            .map_err(|e| PromoteError::Transient(e.message().to_owned()))
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
                self.state.put(&state::release_key(chain), &release).await?;
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

    /// Quarantines `release` (as of `now`): never promoted again.
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
        let key = state::bad_key(&release.release);
        let record = BadRelease {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at: now,
        };
        // The first reason stays.
        self.state.compare_and_set(&key, &record, None).await?;
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

fn person(signature: &git2::Signature<'_>) -> Person {
    Person {
        name: signature.name().ok().map(str::to_owned),
        email: signature.email().ok().map(str::to_owned),
        username: None,
    }
}

/// The commit's author and the commits since `since` (newest first, capped).
fn commit_story(
    repo: &git2::Repository,
    commit: &str,
    since: Option<&str>,
) -> Result<(Option<Person>, Vec<ChangeEntry>), git2::Error> {
    let oid = git2::Oid::from_str(commit)?;
    let head = repo.find_commit(oid)?;
    let author = Some(person(&head.author()));
    let mut walk = repo.revwalk()?;
    walk.push(oid)?;
    if let Some(since) = since.and_then(|s| git2::Oid::from_str(s).ok())
        && repo.find_commit(since).is_ok()
    {
        walk.hide(since)?;
    }
    let mut changelog = Vec::new();
    for id in walk.take(CHANGELOG_LIMIT) {
        let c = repo.find_commit(id?)?;
        changelog.push(ChangeEntry {
            commit: c.id().to_string(),
            summary: c.summary().ok().flatten().unwrap_or_default().to_owned(),
            author: person(&c.author()),
        });
    }
    Ok((author, changelog))
}

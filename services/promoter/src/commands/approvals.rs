//! `approve` and `decline`: a proven person's vote on the open approval request of a release,
//! judged by the approval rules (quorum, self-approval, expiry) and recorded on the request;
//! the vote that completes the quorum carries out the promotion it was waiting for.

use std::collections::BTreeSet;

use baton_schemas::commands::CommandReply;
use baton_schemas::environments::EnvironmentsFile;
use baton_schemas::release::ReleaseData;

use super::moves::describe;
use super::{Command, Done, Refusal, refuse};
use crate::advance::Advance;
use crate::error::PromoteError;
use crate::gates::{self, Ballot, Tally, VoteRefusal};
use crate::policy::Policy;
use crate::state::{self, PendingApproval, Versioned};

impl Command<'_> {
    /// The people behind `release`: its commit's author, every author and committer of its
    /// changelog and its pusher, as people.yaml maps their e-mails (and logins, for the pusher) — or as the
    /// deprecated `people` of environments.yaml maps e-mails.
    fn involved(&self, policy: &EnvironmentsFile, release: &ReleaseData) -> BTreeSet<String> {
        let by_email = |email: &str| {
            self.people.by_email(email).map(str::to_owned).or_else(|| {
                policy
                    .people
                    .iter()
                    .find(|(_, p)| p.emails.iter().any(|e| e.eq_ignore_ascii_case(email)))
                    .map(|(name, _)| name.clone())
            })
        };
        let mut involved = BTreeSet::new();
        let authors = release.author.iter().chain(
            release
                .changelog
                .iter()
                .flat_map(|c| std::iter::once(&c.author).chain(&c.committer)),
        );
        for person in authors {
            involved.extend(person.email.as_deref().and_then(by_email));
        }
        if let Some(pusher) = &release.pushed_by {
            involved.extend(pusher.email.as_deref().and_then(by_email));
            let login = pusher.username.as_deref().or(pusher.name.as_deref());
            involved.extend(login.and_then(|login| self.people.by_login(login)).map(str::to_owned));
        }
        involved
    }

    pub(super) async fn vote(&self, approve: bool) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let release = self.release().await?;
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let policy = policy.value;
        let involved = self.involved(&policy.file, &release);
        let ballot = Ballot {
            actor: &self.caller.person,
            approve,
            comment: self.request.reason.as_deref(),
            involved: &involved,
        };
        let actor = ballot.actor;
        // Retried when another replica records a vote on the same request meanwhile.
        for _ in 0..5 {
            let (key, pending) = self.find_request(&policy, &release).await?;
            let env_name = pending.value.data.environment.as_str();
            let voted = match gates::vote(&policy.file, &pending.value, &release, ballot, self.now) {
                Ok(voted) => voted,
                Err(VoteRefusal::UnknownEnvironment(unknown)) => return Err(PromoteError::from(unknown).into()),
                Err(refusal) => return Err(refuse(refusal.message(actor, &release, env_name), Some(&release))),
            };
            let next = &voted.request;
            if !promoter
                .state
                .compare_and_set(&key, next, Some(pending.revision))
                .await?
            {
                continue;
            }
            let decision = if approve { "approved" } else { "rejected" };
            events.push(promoter.approval_updated(next, actor, decision));
            let mut reply = CommandReply::ok(String::new());
            reply.approval = Some(next.data.approval.clone());
            reply.release = Some(release.release.clone());
            let closed_because = next.closed.as_ref().map(|c| c.reason.as_str()).unwrap_or_default();
            match voted.tally {
                Tally::Declined => {
                    events.push(promoter.approval_closed(next, "rejected", "rejected", actor, closed_because));
                    reply.message = format!("declined: release {} will not enter `{env_name}`", release.release);
                }
                Tally::Approved => {
                    // The request is closed and owes its promotion (one write): the vote and
                    // the closure go out first, then the promotion is carried out. If that
                    // fails, the timers carry it out; the vote is not asked for again.
                    events.push(promoter.approval_closed(next, "approved", "approved", actor, closed_because));
                    promoter.publish(&std::mem::take(&mut events)).await?;
                    match promoter.carry_out(&policy, &key, next, false, self.now).await {
                        Ok(advanced) => {
                            reply.message = describe(&advanced, &release, env_name);
                            if let Advance::Promoted(commit) = &advanced {
                                reply.config_commit = Some(commit.clone());
                            }
                        }
                        Err(e) => {
                            tracing::warn!(release = %release.release, environment = env_name, error = %e, "approved promotion not carried out yet; the timers retry it");
                            reply.message = format!(
                                "approved: release {} enters `{env_name}` as soon as it can ({e}); Baton retries it by itself",
                                release.release
                            );
                        }
                    }
                }
                Tally::Open { approvals, required } => {
                    reply.message = format!(
                        "approval {approvals} of {required} recorded for release {} into `{env_name}`",
                        release.release
                    );
                }
            }
            return Ok((reply, events));
        }
        Err(Refusal::Failed(PromoteError::VotesContended))
    }

    /// The approval request the vote is about.
    async fn find_request(
        &self,
        policy: &Policy,
        release: &ReleaseData,
    ) -> Result<(String, Versioned<PendingApproval>), Refusal> {
        let state = &self.promoter.state;
        let envs: Vec<&str> = match &self.request.environment {
            Some(env) => vec![policy.environment(env)?.name.as_str()],
            None => policy.file.environments.iter().map(|e| e.name.as_str()).collect(),
        };
        let mut matching = Vec::new();
        let mut superseded = None;
        for env in envs {
            let key = state::approval_key(&release.app, env);
            if let Some(p) = state.get::<PendingApproval>(&key).await? {
                if p.value.data.release.release == release.release {
                    matching.push((key, p));
                } else if self.request.environment.is_some() {
                    superseded = Some(p.value.data.release.release.clone());
                }
            }
        }
        let open: Vec<usize> = (0..matching.len())
            .filter(|&i| matching[i].1.value.closed.is_none())
            .collect();
        match (open.len(), matching.len()) {
            (1, _) => Ok(matching.swap_remove(open[0])),
            (0, 0) => Err(refuse(
                match superseded {
                    Some(newer) => format!(
                        "release {} has no approval request there: the request is for release {newer} now (it superseded this one)",
                        release.release
                    ),
                    None => format!("release {} has no approval request to vote on", release.release),
                },
                Some(release),
            )),
            (0, _) => Ok(matching.swap_remove(0)),
            _ => Err(refuse(
                format!(
                    "release {} has open approval requests in several environments: name the `environment`",
                    release.release
                ),
                Some(release),
            )),
        }
    }
}

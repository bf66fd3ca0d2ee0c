//! The release manager's policy, as pure decisions: each takes what the caller read (the
//! release, the environment's policy, the state, how the move was asked for) and `now`, and
//! says what to do. Nothing here reads KV or git or the clock; [`crate::advance`],
//! [`crate::approvals`], [`crate::commands`] and [`crate::timers`] read first, decide here, then
//! act.
//!
//! A move of release `R` into environment `E` ([`promotion`]) passes these gates in order:
//!
//! 1. `R` is quarantined → held.
//! 2. `R` declares no tests and `E` does not `allow_untested` → held.
//! 3. An automatic move finds `E` already running `R` (put there by another promotion) →
//!    nothing to do. A retry of the same promotion goes on, and finds its commit.
//! 4. An automatic move into a pinned `E` → held. An automatic move of a release whose commit
//!    is an ancestor of the commit `E` runs → held: automation never moves an environment back
//!    in the app's history (an operator's `promote` or `rollback` can).
//! 5. An automatic move into a `manual` `E` → an approval request. An operator's `promote`
//!    into a frozen `E` is refused (with the hint to ask for break-glass), into a `manual` one
//!    it asks for approval. An approved move has had its human decision and goes on.
//! 6. Soak: when `E` has a `soak` and an environment before it, `R` must run healthy there
//!    (held if it does not) for `soak`; until then the move waits.
//! 7. Freeze: inside a window the move waits for the window's end, unless it is an approved
//!    break-glass promotion.
//! 8. Promote. When `E` requires evidence, the write verifies it first ([`crate::evidence`]);
//!    a break-glass promotion skips that, and is recorded so.
//!
//! An operator's `promote` command first passes [`operator_promote`] (not quarantined, healthy
//! in the environment before, break-glass during a freeze). Approval requests follow
//! [`approval_request`] (not asked twice), [`vote`] (allowed approvers, no self-approval, one
//! vote each, the quorum, a decline) and [`expired`].

use std::collections::BTreeSet;

use baton_schemas::environments::{Environment, EnvironmentsFile, PromotionPolicy};
use baton_schemas::release::{ApprovalKind, ApprovalVote, Pin, ReleaseData};
use chrono::{DateTime, Utc};

use crate::manager::{AUTOMATION, short};
use crate::state::{BadRelease, Closure, Current, PendingApproval, Scheduled, Trigger};

/// A request to move a release into an environment: what [`promotion`] decides about.
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    /// The release.
    pub release: &'a ReleaseData,
    /// The environment it would enter, with its policy.
    pub env: &'a Environment,
    /// How the move was asked for: decides which gates apply.
    pub trigger: &'a Trigger,
    /// The promotion's id: a retry of the same promotion is not "already there".
    pub promotion: &'a str,
}

/// What [`promotion`] needs to know from the state, read before deciding.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The release's quarantine record, if it is quarantined.
    pub quarantined: Option<&'a BadRelease>,
    /// What the environment runs for the app now.
    pub current: Option<&'a Current>,
    /// The environment before this one in promotion order, if any.
    pub previous: Option<Previous<'a>>,
    /// What the environment runs when its commit descends from the release's: the release
    /// would move the environment back in the app's history. Read only for automatic moves.
    pub newer_running: Option<&'a Newer>,
}

/// A release an environment runs whose commit descends from the one of a release asking in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newer {
    /// The release running.
    pub release: String,
    /// Its commit.
    pub commit: String,
}

/// The environment before the one a release would enter, and what it runs for the app.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    /// The environment.
    pub env: &'a Environment,
    /// What it runs for the app.
    pub current: Option<&'a Current>,
}

impl Previous<'_> {
    /// Since when `release` runs healthy there, if it does.
    fn healthy_since(&self, release: &str) -> Option<DateTime<Utc>> {
        self.current
            .filter(|c| c.release == release)
            .and_then(|c| c.healthy_since)
    }
}

/// What to do with a [`Move`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Commit the promotion now.
    Promote(Promotion),
    /// Ask for approvals (or find the request already open); `requested_by` is recorded on it.
    AskApproval {
        /// Who asked: the operator, or the promoter itself.
        requested_by: String,
        /// An operator's break-glass `promote`: a break-glass request, whose approval skips the
        /// evidence gate.
        break_glass: bool,
    },
    /// Not yet: scheduled, and carried out by itself once the wait is over.
    Wait(Wait),
    /// Not promoted, and not by itself later (recorded as `baton-promotion.held`).
    Hold(Hold),
    /// An operator's `promote` during a freeze: refused, with the hint to ask for break-glass.
    Frozen {
        /// The window's label.
        window: String,
        /// When it ends.
        until: DateTime<Utc>,
    },
    /// The environment already runs the release.
    AlreadyThere,
}

/// How a promotion is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// Who decided: the promoter, the approval request, or the operator.
    pub actor: String,
    /// A break-glass promotion: approved (it ignores a freeze window), or an operator's
    /// `promote` with `breakGlass`. Either skips the evidence gate.
    pub break_glass: bool,
    /// A freeze window was open: the break-glass promotion overrode it.
    pub frozen: bool,
    /// The environment's pin, kept through a promotion an approval let in.
    pub pinned: Option<Pin>,
}

impl Promotion {
    /// Why, in words, when the promotion is out of the ordinary.
    pub fn reason(&self) -> Option<String> {
        match (self.break_glass, self.frozen) {
            (true, true) => Some("break-glass promotion during a freeze window".to_owned()),
            (true, false) => Some("break-glass promotion: the evidence gate is skipped".to_owned()),
            (false, _) => None,
        }
    }
}

/// What a move waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// The release must run healthy in `previous` until `until`.
    Soak {
        /// The environment it soaks in.
        previous: String,
        /// When the soak is over.
        until: DateTime<Utc>,
    },
    /// A freeze window of the environment ends at `until`.
    Freeze {
        /// The window's label.
        window: String,
        /// When it ends.
        until: DateTime<Utc>,
    },
}

impl Wait {
    /// When the move is due.
    pub fn until(&self) -> DateTime<Utc> {
        match self {
            Self::Soak { until, .. } | Self::Freeze { until, .. } => *until,
        }
    }

    /// What the move waits for, in words, for the environment `env`.
    pub fn describe(&self, env: &str) -> String {
        match self {
            Self::Soak { previous, until } => format!("soak in `{previous}` until {until}"),
            Self::Freeze { window, until } => format!("freeze window {window} of `{env}` until {until}"),
        }
    }
}

/// Why a move is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The release is quarantined.
    Quarantined(BadRelease),
    /// The release declares no tests and the environment requires tested releases.
    Untested,
    /// The environment is pinned.
    Pinned(Pin),
    /// The environment has a soak, and the release does not run healthy in `previous`.
    NotHealthyBefore {
        /// The environment before.
        previous: String,
    },
    /// The environment runs a release of a newer commit (a descendant of this one's).
    OlderThanRunning(Newer),
}

impl Hold {
    /// The reason as the release's `baton-promotion.held` and the operator read it.
    pub fn message(&self, release: &ReleaseData, env: &str) -> String {
        match self {
            Self::Quarantined(bad) => format!(
                "release {} {} ({}, by {}): it is never promoted again",
                release.release,
                quarantined_as(bad, release),
                bad.reason,
                bad.actor
            ),
            Self::Untested => format!(
                "commit {} declares no test steps and `{env}` requires tested releases (set `allow_untested: true` to allow them)",
                short(&release.commit)
            ),
            Self::Pinned(pin) => format!(
                "`{env}` is pinned by {} ({}); `baton unpin {} {env}` lets releases in again",
                pin.by, pin.reason, release.app
            ),
            Self::NotHealthyBefore { previous } => format!(
                "release {} is not running healthy in `{previous}`, so it cannot soak there before `{env}`",
                release.release
            ),
            Self::OlderThanRunning(newer) => format!(
                "commit {} of release {} is older than commit {} of release {}, which `{env}` runs: automation never moves an environment back; `baton promote` or `baton rollback` can",
                short(&release.commit),
                release.release,
                short(&newer.commit),
                newer.release
            ),
        }
    }
}

/// "is quarantined", or for a record of another release, what the two share.
fn quarantined_as(bad: &BadRelease, release: &ReleaseData) -> String {
    if bad.release.is_empty() || bad.release == release.release {
        return "is quarantined".to_owned();
    }
    format!(
        "is quarantined with release {}, which has its commit {} or its image {}",
        bad.release,
        short(&release.commit),
        release.image.digest
    )
}

/// The gates of a move, in the order of the module documentation.
pub fn promotion(request: Move<'_>, facts: &Facts<'_>, now: DateTime<Utc>) -> Decision {
    let Move {
        release,
        env,
        trigger,
        promotion,
    } = request;
    let automatic = *trigger == Trigger::Auto;
    if let Some(bad) = facts.quarantined {
        return Decision::Hold(Hold::Quarantined(bad.clone()));
    }
    if !release.tested && !env.allow_untested {
        return Decision::Hold(Hold::Untested);
    }
    if automatic
        && facts
            .current
            .is_some_and(|c| c.release == release.release && c.promotion != promotion)
    {
        return Decision::AlreadyThere;
    }
    if automatic && let Some(pin) = facts.current.and_then(|c| c.pinned.clone()) {
        return Decision::Hold(Hold::Pinned(pin));
    }
    if automatic && let Some(newer) = facts.newer_running {
        return Decision::Hold(Hold::OlderThanRunning(newer.clone()));
    }
    let frozen = env
        .freeze
        .iter()
        .find_map(|w| w.active_until(now).map(|end| (w.label(), end)));
    let manual = env.policy == PromotionPolicy::Manual;
    match trigger {
        Trigger::Auto if manual => {
            return Decision::AskApproval {
                requested_by: AUTOMATION.to_owned(),
                break_glass: false,
            };
        }
        Trigger::Operator { actor, break_glass } => {
            if let Some((window, until)) = frozen {
                return Decision::Frozen { window, until };
            }
            if manual {
                return Decision::AskApproval {
                    requested_by: actor.clone(),
                    break_glass: *break_glass,
                };
            }
        }
        _ => {}
    }
    if let Some(previous) = facts.previous
        && !env.soak.is_zero()
    {
        let Some(since) = previous.healthy_since(&release.release) else {
            return Decision::Hold(Hold::NotHealthyBefore {
                previous: previous.env.name.clone(),
            });
        };
        let until = since + chrono::Duration::from_std(env.soak).unwrap_or_default();
        if until > now {
            return Decision::Wait(Wait::Soak {
                previous: previous.env.name.clone(),
                until,
            });
        }
    }
    let approved_break_glass = matches!(trigger, Trigger::Approved { break_glass: true, .. });
    let in_window = frozen.is_some();
    if let Some((window, until)) = frozen
        && !approved_break_glass
    {
        return Decision::Wait(Wait::Freeze { window, until });
    }
    Decision::Promote(Promotion {
        actor: match trigger {
            Trigger::Auto => AUTOMATION.to_owned(),
            Trigger::Approved { approval, .. } => format!("approval {approval}"),
            Trigger::Operator { actor, .. } => actor.clone(),
        },
        break_glass: approved_break_glass || matches!(trigger, Trigger::Operator { break_glass: true, .. }),
        frozen: in_window,
        pinned: facts.current.and_then(|c| c.pinned.clone()),
    })
}

/// What an operator's `promote` command does before the gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorGate {
    /// Refused (the operator is told why and the refusal is recorded).
    Refuse(OperatorRefusal),
    /// A break-glass promotion during a freeze: ask for its approvals.
    BreakGlass,
    /// Move the release through [`promotion`] as the operator's.
    Gates,
}

/// Why an operator's `promote` is refused before the gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorRefusal {
    /// The release is quarantined.
    Quarantined(BadRelease),
    /// The release does not run healthy in the environment before.
    NotHealthyBefore {
        /// The environment before.
        previous: String,
    },
}

impl OperatorRefusal {
    /// The reason as the operator reads it.
    pub fn message(&self, release: &ReleaseData, env: &str) -> String {
        match self {
            Self::Quarantined(bad) => format!(
                "release {} {} ({}); it is never promoted again",
                release.release,
                quarantined_as(bad, release),
                bad.reason
            ),
            Self::NotHealthyBefore { previous } => format!(
                "release {} is not running healthy in `{previous}`, the environment before `{env}`: promote it there first",
                release.release
            ),
        }
    }
}

/// An operator asks to promote `release` into `env`: it must not be quarantined and must run
/// healthy in the environment before (whatever the soak); during a freeze a break-glass
/// request asks for approvals instead.
pub fn operator_promote(
    release: &ReleaseData,
    env: &Environment,
    quarantined: Option<&BadRelease>,
    previous: Option<Previous<'_>>,
    break_glass: bool,
    now: DateTime<Utc>,
) -> OperatorGate {
    if let Some(bad) = quarantined {
        return OperatorGate::Refuse(OperatorRefusal::Quarantined(bad.clone()));
    }
    if let Some(previous) = previous
        && previous.healthy_since(&release.release).is_none()
    {
        return OperatorGate::Refuse(OperatorRefusal::NotHealthyBefore {
            previous: previous.env.name.clone(),
        });
    }
    let frozen = env.freeze.iter().any(|w| w.active_until(now).is_some());
    if frozen && break_glass {
        OperatorGate::BreakGlass
    } else {
        OperatorGate::Gates
    }
}

/// What to do when a release needs an approval request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asking {
    /// The request is already open (its id).
    AlreadyOpen(String),
    /// The release's request was declined or expired: it is not asked again.
    NotAgain(Closure),
    /// Open a new request (superseding an open one for another release, if any).
    Open,
}

/// Whether to open an approval request of `kind` for `release`, given the environment's
/// `existing` request.
pub fn approval_request(existing: Option<&PendingApproval>, release: &ReleaseData, kind: ApprovalKind) -> Asking {
    let Some(existing) = existing.filter(|e| e.data.release.release == release.release && e.data.kind == kind) else {
        return Asking::Open;
    };
    match &existing.closed {
        None => Asking::AlreadyOpen(existing.data.approval.clone()),
        Some(closed) if closed.status != "approved" => Asking::NotAgain(closed.clone()),
        Some(_) => Asking::Open,
    }
}

/// When a request opened `now` into `env` expires.
pub fn expires_at(env: &Environment, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(env.approvals.expires_after).unwrap_or_default()
}

/// Whether `pending` is still open past its expiry.
pub fn expired(pending: &PendingApproval, now: DateTime<Utc>) -> bool {
    pending.closed.is_none() && pending.data.expires_at <= now
}

/// Why an expired request closed.
pub fn expiry_reason(pending: &PendingApproval) -> String {
    format!(
        "nobody decided before {} ({} of {} approvals)",
        pending.data.expires_at,
        approvals(&pending.data.votes),
        pending.data.required
    )
}

/// Whether a scheduled promotion is due.
pub fn due(scheduled: &Scheduled, now: DateTime<Utc>) -> bool {
    scheduled.not_before <= now
}

fn approvals(votes: &[ApprovalVote]) -> usize {
    votes.iter().filter(|v| v.decision == "approved").count()
}

/// One person's vote on an approval request.
#[derive(Debug, Clone, Copy)]
pub struct Ballot<'a> {
    /// Who votes (their identity, proven by their signature).
    pub actor: &'a str,
    /// Approve, or decline.
    pub approve: bool,
    /// Their comment (a decline's reason).
    pub comment: Option<&'a str>,
    /// The people behind the release: its commit's author, every author of its changelog and
    /// the pusher, as `people.yaml` maps their e-mails and logins.
    pub involved: &'a BTreeSet<String>,
}

/// A vote that counts: the request with it, and where that leaves the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voted {
    /// The request with the vote, closed when the vote settled it.
    pub request: PendingApproval,
    /// Where the request stands.
    pub tally: Tally,
}

/// Where a request stands after a vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    /// Still open: `approvals` of `required`.
    Open {
        /// Approvals so far.
        approvals: usize,
        /// Approvals needed.
        required: u32,
    },
    /// The quorum is reached: the release moves on.
    Approved,
    /// Declined: the release stops before the environment.
    Declined,
}

/// Why a vote does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteRefusal {
    /// The request is closed already.
    Closed(Closure),
    /// The request's environment is not in the policy any more.
    UnknownEnvironment(UnknownEnvironment),
    /// The voter is not an allowed approver of the environment.
    NotAnApprover {
        /// Who is.
        approvers: Vec<String>,
    },
    /// The voter authored or pushed a commit of the release and the environment forbids
    /// self-approval.
    OwnChange,
    /// The voter asked for the break-glass promotion they would approve.
    OwnBreakGlass,
    /// The voter voted on this request before.
    AlreadyVoted {
        /// How (`approved` or `rejected`).
        decision: String,
    },
}

impl VoteRefusal {
    /// The reason as the voter reads it.
    pub fn message(&self, actor: &str, release: &ReleaseData, env: &str) -> String {
        match self {
            Self::Closed(closed) => format!(
                "the approval request for release {} into `{env}` is already closed ({}: {})",
                release.release, closed.status, closed.reason
            ),
            Self::UnknownEnvironment(unknown) => unknown.to_string(),
            Self::NotAnApprover { approvers } => format!(
                "{actor} may not approve promotions into `{env}`; environments.yaml allows {}",
                approvers.join(", ")
            ),
            Self::OwnChange => format!(
                "{actor} authored or pushed a commit of release {} (its author, its changelog's authors and its pusher, as people.yaml maps their e-mails and logins) and may not approve their own change into `{env}` (approvals.author_may_approve is false)",
                release.release
            ),
            Self::OwnBreakGlass => format!(
                "{actor} asked for this break-glass promotion into `{env}` and may not approve it: someone else must"
            ),
            Self::AlreadyVoted { decision } => format!("{actor} already {decision} this request"),
        }
    }
}

/// Counts `ballot` on `pending` under the policy in force (`policy`): only an open request, only
/// an allowed approver, not the commit's author unless the environment allows it, one vote per
/// person; a decline closes the request as rejected, the quorum as approved.
///
/// # Errors
/// [`VoteRefusal`]: the vote does not count.
pub fn vote(
    policy: &EnvironmentsFile,
    pending: &PendingApproval,
    release: &ReleaseData,
    ballot: Ballot<'_>,
    now: DateTime<Utc>,
) -> Result<Voted, VoteRefusal> {
    if let Some(closed) = &pending.closed {
        return Err(VoteRefusal::Closed(closed.clone()));
    }
    let env = policy.get(&pending.data.environment).ok_or_else(|| {
        VoteRefusal::UnknownEnvironment(UnknownEnvironment::in_policy(policy, &pending.data.environment))
    })?;
    let actor = ballot.actor;
    let approvers = policy.approvers_of(env);
    if !approvers.contains(actor) {
        return Err(VoteRefusal::NotAnApprover {
            approvers: approvers.into_iter().map(str::to_owned).collect(),
        });
    }
    if !env.approvals.author_may_approve {
        let author = release
            .author
            .as_ref()
            .is_some_and(|a| policy.is_author(actor, a.email.as_deref(), a.name.as_deref()));
        if author || ballot.involved.contains(actor) {
            return Err(VoteRefusal::OwnChange);
        }
    }
    if pending.data.kind == ApprovalKind::BreakGlass && pending.data.requested_by == actor {
        return Err(VoteRefusal::OwnBreakGlass);
    }
    if let Some(earlier) = pending.data.votes.iter().find(|v| v.actor == actor) {
        return Err(VoteRefusal::AlreadyVoted {
            decision: earlier.decision.clone(),
        });
    }
    let mut request = pending.clone();
    request.data.votes.push(ApprovalVote {
        actor: actor.to_owned(),
        decision: if ballot.approve { "approved" } else { "rejected" }.to_owned(),
        at: now,
        comment: ballot.comment.map(str::to_owned),
    });
    let approvals = approvals(&request.data.votes);
    let required = request.data.required;
    let (tally, closure) = if !ballot.approve {
        let comment = ballot.comment.map(|c| format!(": {c}")).unwrap_or_default();
        (
            Tally::Declined,
            Some(("rejected", format!("declined by {actor}{comment}"))),
        )
    } else if approvals >= required as usize {
        (
            Tally::Approved,
            Some(("approved", format!("{approvals} of {required} approvals"))),
        )
    } else {
        (Tally::Open { approvals, required }, None)
    };
    request.closed = closure.map(|(status, reason)| Closure {
        status: status.to_owned(),
        reason,
        at: now,
    });
    // Closed as approved and owed its promotion, in the same write.
    request.promotion_pending = tally == Tally::Approved;
    Ok(Voted { request, tally })
}

/// An environment `name` the policy does not define; the message names the ones it does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown environment `{name}`; environments.yaml defines {}", known.join(", "))]
pub struct UnknownEnvironment {
    /// The name asked for.
    pub name: String,
    /// The environments the policy defines, in promotion order.
    pub known: Vec<String>,
}

impl UnknownEnvironment {
    /// `name`, which `policy` does not define.
    pub fn in_policy(policy: &EnvironmentsFile, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            known: policy.environments.iter().map(|e| e.name.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests;

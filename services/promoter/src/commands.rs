//! Operator commands: NATS request/reply on `baton.cmd.promoter.<verb>`, answered by one
//! replica (queue group `promoter`). Each accepted command is recorded by the events it causes
//! (approval, promotion, pin, quarantine), each refused one as `baton-command.rejected` with the
//! actor and the reason; either way the requester gets a [`CommandReply`].

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_kit::telemetry;
use baton_schemas::EventType;
use baton_schemas::commands::{CommandReply, CommandRequest, PROMOTER, Verb};
use baton_schemas::environments::{EnvironmentsFile, GrantedVerb};
use baton_schemas::extensions::{CommandAcceptedContent, CommandRejectedContent};
use baton_schemas::people::PeopleFile;
use baton_schemas::release::{ApprovalKind, Pin, PromotionAction, PromotionData, ReleaseData, ReleaseFile};
use baton_schemas::subjects::{COMMANDS_PREFIX, NO_APP};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::advance::Advance;
use crate::error::PromoteError;
use crate::gates::{self, Ballot, Move, OperatorGate, Previous, Tally, VoteRefusal};
use crate::identity::{Caller, Unproven};
use crate::manager::{ReleaseManager, app_dir, derive_id, short};
use crate::policy::Policy;
use crate::state::{self, PendingApproval, Scheduled, StateError, Trigger, Versioned};
use crate::write::Write;

/// The queue group every promoter replica answers commands in.
pub const QUEUE_GROUP: &str = "promoter";

/// Answers commands until `shutdown`.
///
/// # Errors
/// When the subscription cannot be made.
pub async fn serve(
    promoter: Arc<ReleaseManager>,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client
        .queue_subscribe(format!("{COMMANDS_PREFIX}.{PROMOTER}.*"), QUEUE_GROUP.to_owned())
        .await?;
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            message = requests.next() => {
                let Some(message) = message else { break };
                let promoter = Arc::clone(&promoter);
                let client = client.clone();
                running.spawn(async move {
                    let verb = message.subject.rsplit('.').next().unwrap_or_default().to_owned();
                    let header = |name: &str| {
                        message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned())
                    };
                    let signature = header(baton_kit::signing::SIGNATURE_HEADER);
                    let span = command_span(&promoter, &message.subject, &message.payload, header("traceparent")).await;
                    let reply = execute(&promoter, &verb, &message.payload, signature.as_deref())
                        .instrument(span)
                        .await;
                    if let Some(to) = message.reply {
                        let body = serde_json::to_vec(&reply).expect("a reply serializes");
                        if let Err(e) = client.publish(to, body.into()).await {
                            tracing::warn!(error = %e, verb, "could not send a command reply");
                        }
                    }
                });
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    let _ = requests.unsubscribe().await;
    while running.join_next().await.is_some() {}
    Ok(())
}

/// The span a command is carried out in (`process baton.cmd.promoter.<verb>`, kind consumer):
/// in the trace of the release it names (or the release its app's environment runs), linked to
/// the span that sent it (`sent`, its `traceparent`), so the person's action shows in the
/// release's timeline; in the sender's own trace when no release's trace is known.
async fn command_span(promoter: &ReleaseManager, subject: &str, body: &[u8], sent: Option<String>) -> tracing::Span {
    // Only what picks the trace is read here; `execute` reads and judges the whole request.
    let request = serde_json::from_slice::<CommandRequest>(body).ok();
    let request = request.as_ref();
    let (app, environment) = (
        request.and_then(|r| r.app.as_deref()),
        request.and_then(|r| r.environment.as_deref()),
    );
    let mut release = request.and_then(|r| r.release.clone());
    if release.is_none()
        && let (Some(app), Some(env)) = (app, environment)
    {
        release = promoter
            .state
            .current(app, env)
            .await
            .ok()
            .flatten()
            .map(|c| c.value.release);
    }
    // The release's trace, and what it is (its app and commit, for the span's attributes).
    let (trace, data) = match &release {
        Some(release) => {
            let (trace, data) = tokio::join!(promoter.state.trace(release), promoter.state.release(release));
            let trace = trace.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "cannot read the release's trace; the command keeps its own");
                None
            });
            (trace, data.ok().flatten())
        }
        None => (None, None),
    };
    let span = telemetry::messaging_span(
        telemetry::Messaging::Process,
        &telemetry::Message {
            subject,
            id: request.and_then(|r| r.request_id.as_deref()),
            release: release.as_deref(),
            app: app.or(data.as_ref().map(|d| d.app.as_str())),
            commit: data.as_ref().map(|d| d.commit.as_str()),
            environment,
            group: Some(QUEUE_GROUP),
            service: Some(PROMOTER),
        },
    );
    // The parent is set before the span is first entered: entering it starts it, and a started
    // span's parent cannot change.
    if telemetry::continue_trace(&span, trace.as_deref()) {
        if let Some(sent) = &sent {
            telemetry::link(&span, sent);
        }
    } else {
        telemetry::continue_trace(&span, sent.as_deref());
    }
    if let Some(actor) = request.map(|r| r.actor.as_str()).filter(|a| !a.is_empty()) {
        span.in_scope(|| telemetry::annotate("baton.actor", actor));
    }
    span
}

/// Carries out one command (`body`, its exact bytes, signed as `signature` says), as of one
/// reading of the clock, and says how it went. Refusals are recorded as events, a command whose
/// sender is not proven ([`crate::identity`]) among them.
pub async fn execute(promoter: &ReleaseManager, verb: &str, body: &[u8], signature: Option<&str>) -> CommandReply {
    let verb: Verb = match verb.parse() {
        Ok(v) => v,
        Err(message) => return CommandReply::refused(message),
    };
    let request: CommandRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return CommandReply::refused(format!(
                "the request is not a Baton command ({e}); send JSON like {{\"actor\": \"alice\", \"release\": \"…\"}} (schemas/json/payloads/command-request.json)"
            ));
        }
    };
    if request.actor.trim().is_empty() {
        return CommandReply::refused("`actor` is required: every command is recorded with who sent it");
    }
    let now = promoter.now();
    let people = match promoter.people().await {
        Ok(people) => {
            if let Err(e) = promoter.publish(&people.events).await {
                tracing::warn!(error = %e, "could not record an invalid people.yaml");
            }
            people.value
        }
        Err(e) => return CommandReply::refused(format!("could not do it now ({e}); try again")),
    };
    let caller = match promoter.authenticate(&people, body, signature, &request, now).await {
        Ok(Ok(caller)) => caller,
        Ok(Err(unproven)) => return refuse_unproven(promoter, verb, &request, &unproven).await,
        Err(e) => return CommandReply::refused(format!("could not do it now ({e}); try again")),
    };
    // `whoami` only asks what the signature proves: answered now, with nothing looked up or
    // recorded.
    if verb == Verb::Whoami {
        return whoami(&caller);
    }
    let request_id = request
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // The command's id (and every promotion id derived from it) names what is asked, not only
    // the caller's request id: a resent request is the same command and finds its earlier
    // work, but a request id reused for another verb, release, environment or app is a command
    // of its own instead of one that finds another's commit and reports it as done.
    let id = derive_id(&[
        "command",
        verb.as_str(),
        &request_id,
        request.release.as_deref().unwrap_or_default(),
        request.environment.as_deref().unwrap_or_default(),
        request.app.as_deref().unwrap_or_default(),
    ]);
    let command = Command {
        promoter,
        verb,
        request,
        caller,
        people,
        request_id,
        id,
        now,
    };
    match command.run().await {
        Ok((reply, mut events)) => {
            // Who asked, proven, ahead of what it did.
            events.insert(0, command.accepted().await);
            match promoter.publish(&events).await {
                Ok(()) => reply,
                Err(e) => CommandReply::refused(format!(
                    "done, but recording it failed ({e}); send the same request again"
                )),
            }
        }
        Err(Refusal::Refused { reason, app, release }) => {
            let (app, release) = filed_under(promoter, app.as_deref(), release.as_deref()).await;
            let event = promoter.event(
                EventType::CommandRejected,
                derive_id(&["command.rejected", &command.id, command.verb.as_str()]),
                &app,
                &command.request_id,
                serde_json::to_value(CommandRejectedContent {
                    verb: command.verb.as_str().to_owned(),
                    actor: command.request.actor.clone(),
                    reason: reason.clone(),
                    check: None,
                    person: Some(command.caller.person.clone()),
                    key_fingerprint: Some(command.caller.fingerprint.clone()),
                    channel: Some(command.caller.channel.clone()),
                })
                .expect("serializes"),
                release.as_deref(),
                None,
                Some(serde_json::to_value(&command.request).expect("serializes")),
            );
            if let Err(e) = promoter.publish(&[event]).await {
                tracing::warn!(error = %e, "could not record a refused command");
            }
            tracing::info!(verb = %command.verb, actor = %command.request.actor, %reason, "command refused");
            let mut reply = CommandReply::refused(reason);
            reply.release = release;
            reply
        }
        Err(Refusal::Failed(e)) => CommandReply::refused(format!("could not do it now ({e}); try again")),
    }
}

/// Records a command whose sender is not proven, with what it claimed and the check that
/// failed, and answers it.
async fn refuse_unproven(
    promoter: &ReleaseManager,
    verb: Verb,
    request: &CommandRequest,
    unproven: &Unproven,
) -> CommandReply {
    let reason = unproven.to_string();
    let request_id = request
        .request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (app, release) = filed_under(promoter, request.app.as_deref(), request.release.as_deref()).await;
    let event = promoter.event(
        EventType::CommandRejected,
        derive_id(&[
            "command.unproven",
            &request_id,
            verb.as_str(),
            request.nonce.as_deref().unwrap_or_default(),
        ]),
        &app,
        &request_id,
        serde_json::to_value(CommandRejectedContent {
            verb: verb.as_str().to_owned(),
            actor: request.actor.clone(),
            reason: reason.clone(),
            check: Some(unproven.check().to_owned()),
            person: None,
            key_fingerprint: None,
            channel: None,
        })
        .expect("serializes"),
        release.as_deref(),
        None,
        Some(serde_json::to_value(request).expect("serializes")),
    );
    if let Err(e) = promoter.publish(&[event]).await {
        tracing::warn!(error = %e, "could not record an unproven command");
    }
    tracing::warn!(%verb, claimed = %request.actor, check = unproven.check(), %reason, "command refused: sender not proven");
    CommandReply::refused(reason)
}

/// What a command's record (`baton-command.accepted` or `.rejected`) is filed under: the app
/// token of its subject, and the release whose timeline (`chainId`) it joins. The release only
/// when the promoter knows it: an id it never created has no timeline. The app as the command
/// names it, else as that release names it, else [`NO_APP`]: never an app the command did not
/// concern.
async fn filed_under(promoter: &ReleaseManager, app: Option<&str>, release: Option<&str>) -> (String, Option<String>) {
    let known = match release {
        Some(id) => promoter.state.release(id).await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot read the release a command names; its record joins no timeline");
            None
        }),
        None => None,
    };
    let app = app
        .map(str::to_owned)
        .or_else(|| known.as_ref().map(|r| r.app.clone()))
        .unwrap_or_else(|| NO_APP.to_owned());
    (app, known.map(|r| r.release))
}

/// Who the promoter proved a command came from, for `baton whoami`: the person, the key's
/// fingerprint and the channel.
fn whoami(caller: &Caller) -> CommandReply {
    let Caller {
        person,
        fingerprint,
        channel,
    } = caller;
    CommandReply::ok(format!(
        "you are {person} (people.yaml): key {fingerprint}, channel {channel}"
    ))
}

/// Why a command did not happen.
enum Refusal {
    /// The command is not allowed or makes no sense: recorded.
    Refused {
        reason: String,
        app: Option<String>,
        release: Option<String>,
    },
    /// Something failed on our side: worth sending again.
    Failed(PromoteError),
}

impl From<PromoteError> for Refusal {
    /// A transient failure is ours; a permanent one (an unknown environment, a release that
    /// cannot be deployed) refuses the command.
    fn from(e: PromoteError) -> Self {
        if e.is_transient() {
            Self::Failed(e)
        } else {
            Self::Refused {
                reason: e.to_string(),
                app: None,
                release: None,
            }
        }
    }
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Self {
        PromoteError::from(e).into()
    }
}

fn refuse(reason: impl Into<String>, release: Option<&ReleaseData>) -> Refusal {
    Refusal::Refused {
        reason: reason.into(),
        app: release.map(|r| r.app.clone()),
        release: release.map(|r| r.release.clone()),
    }
}

struct Command<'a> {
    promoter: &'a ReleaseManager,
    verb: Verb,
    request: CommandRequest,
    /// Who sent it, proven by its signature.
    caller: Caller,
    /// `people.yaml` in force: groups, and the people behind commits and pushes.
    people: PeopleFile,
    /// The caller's request id (or a fresh one): the subject of what the command records.
    request_id: String,
    /// What the command's own ids derive from: the request id and what is asked.
    id: String,
    /// When the command arrived: everything it decides and records is as of then.
    now: DateTime<Utc>,
}

type Done = (CommandReply, Vec<baton_kit::Outgoing>);

impl Command<'_> {
    async fn run(&self) -> Result<Done, Refusal> {
        self.authorise().await?;
        match self.verb {
            Verb::Approve => self.vote(true).await,
            Verb::Decline => self.vote(false).await,
            Verb::Promote => self.promote().await,
            Verb::Rollback => self.rollback().await,
            Verb::Sync | Verb::Restore => self.reapply().await,
            Verb::Pin => self.pin(true).await,
            Verb::Unpin => self.pin(false).await,
            Verb::MarkBad => self.mark_bad().await,
            Verb::Unquarantine => self.unquarantine().await,
            // Answered by `execute` before a command is made; the same answer here.
            Verb::Whoami => Ok((whoami(&self.caller), Vec::new())),
        }
    }

    /// `baton-command.accepted`: the proven sender and what they asked.
    async fn accepted(&self) -> baton_kit::Outgoing {
        let (app, release) = filed_under(
            self.promoter,
            self.request.app.as_deref(),
            self.request.release.as_deref(),
        )
        .await;
        self.promoter.event(
            EventType::CommandAccepted,
            derive_id(&["command.accepted", &self.id]),
            &app,
            &self.request_id,
            serde_json::to_value(CommandAcceptedContent {
                verb: self.verb.as_str().to_owned(),
                person: self.caller.person.clone(),
                key_fingerprint: self.caller.fingerprint.clone(),
                channel: self.caller.channel.clone(),
            })
            .expect("serializes"),
            release.as_deref(),
            None,
            Some(serde_json::to_value(&self.request).expect("serializes")),
        )
    }

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

    /// Whether the proven caller holds the verb (`grants` in environments.yaml, or its
    /// default): in the environment named, or for `mark-bad` and `unquarantine` in any
    /// environment. Votes are judged by the approval rules instead; `whoami` changes nothing and
    /// needs no grant.
    async fn authorise(&self) -> Result<(), Refusal> {
        let verb = match self.verb {
            Verb::Approve | Verb::Decline | Verb::Whoami => return Ok(()),
            Verb::Promote if self.request.break_glass => GrantedVerb::BreakGlass,
            Verb::Promote => GrantedVerb::Promote,
            Verb::Rollback if self.request.break_glass => GrantedVerb::BreakGlass,
            // Putting back what the config repo says is a rollback's kind of act.
            Verb::Rollback | Verb::Sync | Verb::Restore => GrantedVerb::Rollback,
            Verb::Pin => GrantedVerb::Pin,
            Verb::Unpin => GrantedVerb::Unpin,
            Verb::MarkBad => GrantedVerb::MarkBad,
            Verb::Unquarantine => GrantedVerb::Unquarantine,
        };
        let policy = self.promoter.policy().await?.value;
        let person = self.caller.person.as_str();
        let mut groups = self.people.groups_of(person);
        groups.extend(
            policy
                .file
                .groups
                .iter()
                .filter(|(_, members)| members.iter().any(|m| m == person))
                .map(|(g, _)| g.as_str()),
        );
        let (granted, source) = if verb.is_release_wide() {
            let mut sources = Vec::new();
            let granted = policy.file.environments.iter().any(|env| {
                let grantees = policy.file.grantees(env, verb);
                sources.push(format!("`{}`: {}", env.name, grantees.source));
                grantees.include(person, &groups)
            });
            (granted, sources.join("; "))
        } else {
            let env = policy.environment(self.required(&self.request.environment, "environment")?)?;
            let grantees = policy.file.grantees(env, verb);
            (
                grantees.include(person, &groups),
                format!("`{}`: {}", env.name, grantees.source),
            )
        };
        if granted {
            return Ok(());
        }
        Err(Refusal::Refused {
            reason: format!(
                "{person} may not {} here ({source}); environments.yaml `grants.{}` says who may",
                verb.as_str(),
                verb.as_str()
            ),
            app: self.request.app.clone(),
            release: self.request.release.clone(),
        })
    }

    /// Lifts a release's quarantine (under its id, its commit and its image), recorded as
    /// `baton-release.unquarantined`.
    async fn unquarantine(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let release = self.release().await?;
        let Some(bad) = promoter.state.bad(&release).await? else {
            return Err(refuse(
                format!("release {} is not quarantined", release.release),
                Some(&release),
            ));
        };
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("lifted by {}", self.caller.person));
        let event = promoter
            .unquarantine(&release, &bad, &self.caller.person, &reason)
            .await?;
        let mut reply = CommandReply::ok(format!(
            "release {} is no longer quarantined (it was: {}); it moves on with the next event that concerns it",
            release.release, bad.reason
        ));
        reply.release = Some(release.release);
        Ok((reply, vec![event]))
    }

    fn required<'r>(&self, value: &'r Option<String>, field: &str) -> Result<&'r str, Refusal> {
        value
            .as_deref()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| Refusal::Refused {
                reason: format!("`{field}` is required for `{}`", self.verb),
                app: self.request.app.clone(),
                release: self.request.release.clone(),
            })
    }

    async fn release(&self) -> Result<ReleaseData, Refusal> {
        let id = self.required(&self.request.release, "release")?;
        self.promoter.state.release(id).await?.ok_or_else(|| Refusal::Refused {
            reason: format!("unknown release `{id}`: `baton releases <app>` lists them"),
            app: self.request.app.clone(),
            release: Some(id.to_owned()),
        })
    }

    async fn vote(&self, approve: bool) -> Result<Done, Refusal> {
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

    async fn promote(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let release = self.release().await?;
        let env_name = self.required(&self.request.environment, "environment")?;
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let policy = policy.value;
        let env = policy.environment(env_name)?;
        let before = policy.file.previous_before(&env.name);
        let (quarantined, current_before) = tokio::try_join!(promoter.state.bad(&release), async {
            match before {
                Some(before) => promoter.state.current(&release.app, &before.name).await,
                None => Ok(None),
            }
        })?;
        let previous = before.map(|env| Previous {
            env,
            current: current_before.as_ref().map(|c| &c.value),
        });
        let gate = gates::operator_promote(
            &release,
            env,
            quarantined.as_ref(),
            previous,
            self.request.break_glass,
            self.now,
        );
        let advanced = match gate {
            OperatorGate::Refuse(refusal) => return Err(refuse(refusal.message(&release, &env.name), Some(&release))),
            OperatorGate::BreakGlass => {
                promoter
                    .request_approval(
                        &policy,
                        &release,
                        env,
                        ApprovalKind::BreakGlass,
                        &self.request.actor,
                        self.request.reason.clone(),
                        &self.id,
                        &self.id,
                        self.now,
                    )
                    .await?
            }
            OperatorGate::Gates => {
                let trigger = Trigger::Operator {
                    actor: self.request.actor.clone(),
                    break_glass: self.request.break_glass,
                };
                let promotion = derive_id(&["operator-promote", &self.id, &env.name]);
                let request = Move {
                    release: &release,
                    env,
                    trigger: &trigger,
                    promotion: &promotion,
                };
                promoter.advance(&policy, request, "", self.now).await?
            }
        };
        if let Advance::Held(reason) = &advanced.value {
            // The hold is the release's, as `baton status` shows it, and the refusal the command's.
            if let Err(e) = promoter.publish(&advanced.events).await {
                tracing::warn!(error = %e, "could not record a held promotion");
            }
            return Err(refuse(reason.clone(), Some(&release)));
        }
        events.extend(advanced.events);
        let mut reply = CommandReply::ok(describe(&advanced.value, &release, &env.name));
        reply.release = Some(release.release.clone());
        match &advanced.value {
            Advance::Promoted(commit) => reply.config_commit = Some(commit.clone()),
            Advance::AwaitingApproval(id) => reply.approval = Some(id.clone()),
            _ => {}
        }
        Ok((reply, events))
    }

    async fn rollback(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let app = self.required(&self.request.app, "app")?.to_owned();
        let env_name = self.required(&self.request.environment, "environment")?;
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let policy = policy.value;
        let env = policy.environment(env_name)?.clone();
        let repo = Arc::clone(&promoter.repo);
        let dir = app_dir(&env.name, &app);
        let history = promoter.blocking(move || Ok(repo.history(&dir, 200)?)).await?;
        let refused = |reason: String| Refusal::Refused {
            reason,
            app: Some(app.clone()),
            release: self.request.release.clone(),
        };
        let Some((_, now)) = history.first() else {
            return Err(refused(format!("{app} has never been promoted to `{}`", env.name)));
        };
        let runs = |action: PromotionAction| matches!(action, PromotionAction::Promote | PromotionAction::Rollback);
        let mut target = None;
        for (commit, file) in &history {
            if !runs(file.action) || file.release.release == now.release.release && self.request.release.is_none() {
                continue;
            }
            if let Some(wanted) = &self.request.release
                && &file.release.release != wanted
            {
                continue;
            }
            let bad = promoter.state.bad(&file.release).await?;
            if bad.is_some() {
                if self.request.release.is_some() {
                    return Err(refused(format!(
                        "release {} is quarantined; roll back to another one",
                        file.release.release
                    )));
                }
                continue;
            }
            target = Some((commit.clone(), file.release.clone()));
            break;
        }
        let Some((from_commit, release)) = target else {
            return Err(refused(match &self.request.release {
                Some(r) => format!(
                    "release {r} never ran in `{}`; `baton releases {app}` lists what did",
                    env.name
                ),
                None => format!("there is no earlier release of {app} in `{}` to roll back to", env.name),
            }));
        };
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("rolled back by {}", self.request.actor));
        let promotion = derive_id(&["operator-rollback", &self.id]);
        let rolled_back = promoter
            .rollback(
                &env,
                &release,
                &from_commit,
                &self.request.actor,
                &reason,
                &promotion,
                "",
                self.request.break_glass,
                self.now,
            )
            .await;
        let written = match rolled_back {
            Ok(written) => written,
            // The environment requires evidence the target's image lacks: held, like a promotion.
            Err(e @ PromoteError::EvidenceRefused { .. }) => {
                let reason = e.to_string();
                let held = promoter.held_event(&release, &env.name, &promotion, "", &reason, None);
                if let Err(e) = promoter.publish(&[held]).await {
                    tracing::warn!(error = %e, "could not record a held rollback");
                }
                return Err(refused(reason));
            }
            Err(e) => return Err(e.into()),
        };
        events.extend(written.events);
        let mut reply = CommandReply::ok(format!(
            "`{}` rolled back to release {} (image {}) and pinned; `baton unpin {app} {}` resumes automatic promotion",
            env.name, release.release, release.image.reference, env.name
        ));
        reply.config_commit = Some(written.value.config_commit);
        reply.release = Some(release.release);
        Ok((reply, events))
    }

    /// `sync` (one app) and `restore` (every app of the environment): announces the manifests at
    /// the config repo's head again, one `environment.modified` per app, so the deployer applies
    /// them as they are: no commit, no new promotion of a release, the same digests.
    async fn reapply(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let env_name = self.required(&self.request.environment, "environment")?;
        let app = match self.verb {
            Verb::Sync => Some(self.required(&self.request.app, "app")?.to_owned()),
            _ => None,
        };
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let env = policy.value.environment(env_name)?.clone();
        let repo = Arc::clone(&promoter.repo);
        let (head, files) = promoter.blocking(move || Ok(repo.release_files_at_head()?)).await?;
        let wanted = app.as_deref().map(|a| app_dir(&env.name, a));
        let prefix = format!("{}/", env.name);
        let apps: Vec<(String, ReleaseFile)> = files
            .into_iter()
            .filter(|(dir, _)| dir.starts_with(&prefix) && wanted.as_ref().is_none_or(|w| w == dir))
            .collect();
        if apps.is_empty() {
            return Err(Refusal::Refused {
                reason: match &app {
                    Some(a) => format!(
                        "{a} has never been promoted to `{}`: there is nothing to sync",
                        env.name
                    ),
                    None => format!(
                        "nothing has been promoted to `{}`: there is nothing to restore",
                        env.name
                    ),
                },
                app,
                release: None,
            });
        }
        let action = if self.verb == Verb::Sync {
            PromotionAction::Sync
        } else {
            PromotionAction::Restore
        };
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("{} by {}", action.as_str(), self.request.actor));
        let mut named = Vec::new();
        for (dir, file) in apps {
            let promotion = derive_id(&[action.as_str(), &self.id, &dir]);
            let release = file.release;
            named.push(format!("{} (release {})", release.app, release.release));
            let data = PromotionData {
                promotion: promotion.clone(),
                action,
                app: release.app.clone(),
                environment: env.name.clone(),
                namespace: env.namespace.clone(),
                release: release.clone(),
                previous_release: None,
                config_repository: promoter.repo.url().to_owned(),
                config_commit: head.clone(),
                manifests_path: dir,
                actor: self.request.actor.clone(),
                reason: Some(reason.clone()),
                pinned: file.pinned.is_some(),
                break_glass: false,
                evidence: None,
            };
            events.push(promoter.event(
                EventType::EnvironmentModified,
                derive_id(&["environment.modified", &promotion]),
                &release.app,
                &env.name,
                serde_json::json!({"name": env.name}),
                Some(&release.release),
                None,
                Some(serde_json::to_value(&data).expect("serializes")),
            ));
        }
        let mut reply = CommandReply::ok(format!(
            "`{}`: applying config commit {} again for {}; `baton status` shows when it is in sync",
            env.name,
            short(&head),
            named.join(", ")
        ));
        reply.config_commit = Some(head);
        Ok((reply, events))
    }

    async fn pin(&self, pin: bool) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let app = self.required(&self.request.app, "app")?;
        let env_name = self.required(&self.request.environment, "environment")?;
        let policy = promoter.policy().await?;
        let mut events = policy.events;
        let policy = policy.value;
        let env = policy.environment(env_name)?;
        let current = promoter.state.current(app, &env.name).await?;
        let Some(current) = current else {
            return Err(Refusal::Refused {
                reason: format!(
                    "{app} has never been promoted to `{}`: there is nothing to pin",
                    env.name
                ),
                app: Some(app.to_owned()),
                release: None,
            });
        };
        if current.value.pinned.is_some() == pin {
            let word = if pin { "already pinned" } else { "not pinned" };
            return Ok((CommandReply::ok(format!("`{}` is {word} for {app}", env.name)), events));
        }
        let Some(release) = promoter.state.release(&current.value.release).await? else {
            return Err(Refusal::Failed(PromoteError::UnknownRelease(current.value.release)));
        };
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("{} by {}", if pin { "pinned" } else { "unpinned" }, self.request.actor));
        let write = Write {
            action: if pin {
                PromotionAction::Pin
            } else {
                PromotionAction::Unpin
            },
            promotion: derive_id(&[if pin { "pin" } else { "unpin" }, &self.id]),
            actor: self.request.actor.clone(),
            reason: Some(reason.clone()),
            pinned: pin.then(|| Pin {
                by: self.request.actor.clone(),
                reason,
                at: self.now,
            }),
            break_glass: false,
            restore_from: None,
            cause: String::new(),
        };
        let written = promoter.write(&release, env, write).await?;
        events.extend(written.events);
        let mut reply = CommandReply::ok(if pin {
            format!(
                "`{}` pinned to release {} for {app}: automatic promotion leaves it alone",
                env.name, release.release
            )
        } else {
            format!("`{}` unpinned for {app}: automatic promotion resumes", env.name)
        });
        reply.config_commit = Some(written.value.config_commit);
        reply.release = Some(release.release);
        Ok((reply, events))
    }

    async fn mark_bad(&self) -> Result<Done, Refusal> {
        let promoter = self.promoter;
        let release = self.release().await?;
        let reason = self
            .request
            .reason
            .clone()
            .unwrap_or_else(|| format!("marked bad by {}", self.request.actor));
        let mut events = vec![
            promoter
                .quarantine(&release, &self.request.actor, &reason, None, self.now)
                .await?,
        ];
        // Whatever waits for this release stops waiting.
        let policy = promoter.policy().await?;
        events.extend(policy.events);
        for env in &policy.value.file.environments {
            let key = state::approval_key(&release.app, &env.name);
            if let Some(p) = promoter.state.get::<PendingApproval>(&key).await?
                && p.value.closed.is_none()
                && p.value.data.release.release == release.release
                && promoter
                    .close_approval(&key, &p, "cancelled", &reason, self.now)
                    .await?
            {
                events.push(promoter.approval_closed(&p.value, "cancelled", "rejected", &self.request.actor, &reason));
            }
            let key = state::scheduled_key(&release.app, &env.name);
            if let Some(s) = promoter.state.get::<Scheduled>(&key).await?
                && s.value.release == release.release
            {
                promoter.state.delete_at(&key, s.revision).await?;
            }
        }
        let mut reply = CommandReply::ok(format!(
            "release {} is quarantined: it is never promoted again",
            release.release
        ));
        reply.release = Some(release.release);
        Ok((reply, events))
    }
}

fn describe(advance: &Advance, release: &ReleaseData, env: &str) -> String {
    match advance {
        Advance::Promoted(commit) => format!(
            "release {} promoted to `{env}` (config commit {commit})",
            release.release
        ),
        Advance::AwaitingApproval(id) => {
            format!("release {} waits for approval {id} to enter `{env}`", release.release)
        }
        Advance::Scheduled(at, why) => format!("release {} enters `{env}` at {at} ({why})", release.release),
        Advance::Held(reason) => reason.clone(),
        Advance::AlreadyThere => format!("release {} already runs in `{env}`", release.release),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::UnknownEnvironment;

    #[test]
    fn a_permanent_error_refuses_the_command_and_a_transient_one_is_ours() {
        let unknown = PromoteError::from(UnknownEnvironment {
            name: "prod".into(),
            known: vec!["staging".into(), "production".into()],
        });
        match Refusal::from(unknown) {
            Refusal::Refused { reason, app, release } => {
                assert_eq!(
                    reason,
                    "unknown environment `prod`; environments.yaml defines staging, production"
                );
                assert_eq!((app, release), (None, None));
            }
            Refusal::Failed(e) => panic!("an unknown environment is the request's fault, not ours: {e}"),
        }
        let busy = baton_kit::lease::LockError::Busy {
            name: "env.production".into(),
            holder: "baton-promoter-2 promote r1".into(),
        };
        match Refusal::from(PromoteError::from(busy)) {
            Refusal::Failed(e) => assert_eq!(
                format!("could not do it now ({e}); try again"),
                "could not do it now (`env.production` is busy (baton-promoter-2 promote r1); retrying later); try again"
            ),
            Refusal::Refused { reason, .. } => panic!("a busy lease is ours to retry, not a refusal: {reason}"),
        }
        let store = StateError::Store {
            operation: "reading",
            key: "promoter.release.r1".into(),
            source: "no responders".into(),
        };
        assert!(matches!(Refusal::from(store), Refusal::Failed(PromoteError::State(_))));
    }
}

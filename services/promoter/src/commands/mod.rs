//! Operator commands: NATS request/reply on `baton.cmd.promoter.<verb>`, answered by one
//! replica (queue group `promoter`). Each accepted command is recorded by the events it causes
//! (approval, promotion, pin, quarantine), each refused one as `baton-command.rejected` with the
//! actor and the reason; either way the requester gets a [`CommandReply`].
//!
//! This module serves the requests, decodes them, proves their sender, checks the caller's grant
//! and hands the command to its verb: votes in `approvals`, what changes the release an
//! environment runs (promote, rollback, sync, restore) in `moves`, pins and quarantines in
//! `holds`; `record` writes what each command is recorded as.

use std::sync::Arc;

use baton_kit::telemetry;
use baton_schemas::commands::{CommandReply, CommandRequest, PROMOTER, Verb};
use baton_schemas::environments::GrantedVerb;
use baton_schemas::people::PeopleFile;
use baton_schemas::release::ReleaseData;
use baton_schemas::subjects::COMMANDS_PREFIX;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::PromoteError;
use crate::identity::Caller;
use crate::manager::{ReleaseManager, derive_id};
use crate::state::StateError;

mod approvals;
mod holds;
mod moves;
mod record;

use record::refuse_unproven;

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
        Err(Refusal::Refused { reason, app, release }) => command.reject(reason, app, release).await,
        Err(Refusal::Failed(e)) => CommandReply::refused(format!("could not do it now ({e}); try again")),
    }
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

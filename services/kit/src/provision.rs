//! Provisioning Baton's JetStream topology as a step of its own, and checking it at start.
//!
//! Baton's services may not create, update, seal, purge or delete streams, nor create or
//! delete durable consumers (`deploy/base/nats/auth.conf`): a compromised or buggy service
//! could otherwise seal the audit log, shrink a bucket to one message, or drop a consumer and
//! have it replay years of events. So the topology is provisioned by an admin, once per
//! install and after each change of its settings, with [`apply`]: the streams, the KV buckets
//! and the log object store ([`fabric::provision`]) and the durable consumer of every stage in
//! [`STAGES`], configured from the runner settings of the service that consumes it. The
//! `baton admin provision` command, the `baton-provision` Job of `deploy/`, `baton up`, the
//! demo and the test harness all call [`apply`].
//!
//! A service only looks: [`check`] at start (one `STREAM.INFO` per stream, bucket and object
//! store) and [`check_consumer`] before its stage runs (one `CONSUMER.INFO`). Either refuses
//! with a [`FabricError`] naming what is missing or wrong and how to fix it.
//!
//! A durable consumer created on a stream that already holds events for it would receive all of
//! them (or none), and which is right only an operator can say: the handled-ids bucket
//! `baton-handled` remembers only events whose ack was not confirmed and is read only on a
//! redelivery, so it cannot tell a re-created consumer what its predecessor did. [`apply`]
//! therefore refuses such a consumer unless the plan's [`History`] says to skip or replay that
//! history (`baton admin provision --consumer-history skip|replay`, docs/decisions.md).

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, ErrorCode, stream};
use baton_schemas::config::{CommonSettings, JetStreamSettings, RunnerSettings};
use baton_schemas::{EventType, subjects};

use crate::fabric::{self, FabricError, HANDLED_BUCKET, LOCKS_BUCKET, STATE_BUCKET, Topology};

/// What `baton admin provision` is: the fix every refusal of this module names.
pub const FIX: &str = "run `baton admin provision` as the NATS admin user (on Kubernetes, the Job baton-provision; \
                       deploy/README.md) before starting Baton's services";

/// A stage: the durable consumer its service's replicas share, and the event types it handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageConsumer {
    /// The durable consumer's name, which is also the stage's and its NATS user's, e.g.
    /// `builder`.
    pub name: &'static str,
    /// The event types the stage handles: the consumer's filter subjects.
    pub handles: &'static [EventType],
}

impl StageConsumer {
    /// The consumer's filter subjects, one per handled type.
    pub fn filter_subjects(&self) -> Vec<String> {
        self.handles.iter().map(|t| subjects::event_filter(*t)).collect()
    }
}

/// Every stage Baton runs, in flow order. A service declares the same types when it starts its
/// stage ([`crate::service::Runtime::stage`]), and [`check_consumer`] refuses to run when the
/// provisioned consumer filters otherwise, so the two cannot drift apart unnoticed.
pub const STAGES: &[StageConsumer] = &[
    StageConsumer {
        name: "builder",
        handles: &[EventType::ChangeMerged],
    },
    StageConsumer {
        name: "tester",
        handles: &[EventType::ArtifactPublished],
    },
    StageConsumer {
        name: "promoter",
        handles: &[
            EventType::TestSuiteRunFinished,
            EventType::ServiceDeployed,
            EventType::ServiceUpgraded,
            EventType::ServiceRolledBack,
            EventType::DeploymentFailed,
        ],
    },
    StageConsumer {
        name: "deployer",
        handles: &[EventType::EnvironmentModified],
    },
    CHATOPS,
];

/// The chat-ops bot's stage: the approval requests and the release news it posts to chat. The
/// bot starts its stage from this entry (`baton_chatops::outbound::HANDLES`).
pub const CHATOPS: StageConsumer = StageConsumer {
    name: "chatops",
    handles: &[
        EventType::ApprovalCreated,
        EventType::ApprovalClosed,
        EventType::ServiceDeployed,
        EventType::ServiceUpgraded,
        EventType::ServiceRolledBack,
        EventType::DeploymentFailed,
        EventType::ReleaseQuarantined,
        EventType::EnvironmentDrifted,
        EventType::EnvironmentSynced,
        EventType::EnvironmentUnhealed,
    ],
};

/// The stage of [`STAGES`] named `name`.
pub fn stage(name: &str) -> Option<&'static StageConsumer> {
    STAGES.iter().find(|s| s.name == name)
}

/// What a consumer created on a stream that already holds events for it does with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum History {
    /// Create nothing and say so: an operator decides (the default).
    #[default]
    Refuse,
    /// Start after the newest event: what was published while the consumer was missing is not
    /// handled (push again, or promote by hand).
    Skip,
    /// Deliver every event on the stream again, handled or not.
    Replay,
}

/// The most events one replica of a stage may hold unacknowledged: four times its concurrency,
/// at least 64, so replicas pulling only for free slots never starve each other.
fn max_ack_pending(runner: &RunnerSettings) -> i64 {
    i64::try_from(runner.concurrency.saturating_mul(4).max(64)).unwrap_or(i64::MAX)
}

/// The durable consumer of stage `name` handling `handles`, tuned by `runner`, starting at
/// `start` when it is created.
pub fn consumer_config(
    name: &str,
    handles: &[EventType],
    runner: &RunnerSettings,
    start: consumer::DeliverPolicy,
) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(format!("Baton stage {name}")),
        filter_subjects: handles.iter().map(|t| subjects::event_filter(*t)).collect(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: runner.ack_wait,
        // The runner counts deliveries itself so it can dead-letter before giving up.
        max_deliver: -1,
        deliver_policy: start,
        max_ack_pending: max_ack_pending(runner),
        ..Default::default()
    }
}

/// Everything [`apply`] provisions: the streams and buckets, and a durable consumer per stage.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Stream and bucket names and limits.
    pub jetstream: JetStreamSettings,
    /// How long `baton-handled` keeps a handled event id.
    pub remember_handled: Duration,
    /// The stages whose consumers are provisioned, each with the runner settings of the service
    /// that consumes it (its `ack_wait` and `concurrency` tune the consumer).
    pub consumers: Vec<(StageConsumer, RunnerSettings)>,
    /// What a consumer created on a stream with events for it does with them.
    pub history: History,
}

impl Plan {
    /// The topology `common` names, with a consumer for every stage tuned by `common.runner`.
    pub fn new(common: &CommonSettings) -> Self {
        Self {
            jetstream: common.jetstream.clone(),
            remember_handled: common.runner.remember_handled,
            consumers: STAGES.iter().map(|s| (*s, common.runner.clone())).collect(),
            history: History::Refuse,
        }
    }

    /// The streams and buckets `common` names, and no consumer.
    pub fn streams_only(common: &CommonSettings) -> Self {
        Self {
            consumers: Vec::new(),
            ..Self::new(common)
        }
    }

    /// The same plan with `history` for consumers created on a stream with events for them.
    #[must_use]
    pub fn with_history(mut self, history: History) -> Self {
        self.history = history;
        self
    }
}

/// What [`apply`] did to one durable consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerChange {
    /// It did not exist; created from the stream's start (the stream held nothing for it).
    Created,
    /// It did not exist; created after the newest event ([`History::Skip`]).
    CreatedSkippingHistory,
    /// It did not exist; created from the stream's start, replaying it ([`History::Replay`]).
    CreatedReplaying,
    /// It existed; its settings were updated in place, its position kept.
    Updated,
}

/// The outcome of [`apply`]: the topology, and each consumer with what was done to it.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// Handles to the streams, buckets and object store.
    pub topology: Topology,
    /// Each planned stage's consumer and what was done to it.
    pub consumers: Vec<(&'static str, ConsumerChange)>,
}

/// Provisions `plan` with an admin's connection: creates or updates the streams, buckets and
/// object store, then each stage's durable consumer. Idempotent, and never deletes: an existing
/// consumer keeps its position; a missing one on a stream with events for it follows
/// `plan.history`.
///
/// # Errors
/// [`FabricError::Provision`] when JetStream refuses a piece (a service user's connection is
/// refused here), [`FabricError::ConsumerHistory`] for a missing consumer with history under
/// [`History::Refuse`].
pub async fn apply(client: &Client, plan: &Plan) -> Result<Provisioned, FabricError> {
    let topology = fabric::provision(client, &plan.jetstream, plan.remember_handled).await?;
    let mut consumers = Vec::new();
    for (stage, runner) in &plan.consumers {
        let change = provision_consumer(&topology, stage, runner, plan.history).await?;
        consumers.push((stage.name, change));
    }
    Ok(Provisioned { topology, consumers })
}

async fn provision_consumer(
    topology: &Topology,
    stage: &StageConsumer,
    runner: &RunnerSettings,
    history: History,
) -> Result<ConsumerChange, FabricError> {
    let stream = &topology.events;
    let failed = |e: async_nats::Error| FabricError::Provision {
        what: format!("consumer {} of stream {}", stage.name, topology.settings.events_stream),
        source: e,
    };
    let existed = match stream.consumer_info(stage.name).await {
        Ok(_) => true,
        Err(e) if jetstream_code(&e) == Some(ErrorCode::CONSUMER_NOT_FOUND) => false,
        Err(e) => return Err(failed(e.into())),
    };
    let (start, change) = if existed {
        // Ignored by the server on an update: the consumer keeps its position.
        (consumer::DeliverPolicy::All, ConsumerChange::Updated)
    } else {
        match (newest_for(stream, stage).await.map_err(failed)?, history) {
            (None, _) => (consumer::DeliverPolicy::All, ConsumerChange::Created),
            (Some(_), History::Skip) => (consumer::DeliverPolicy::New, ConsumerChange::CreatedSkippingHistory),
            (Some(_), History::Replay) => (consumer::DeliverPolicy::All, ConsumerChange::CreatedReplaying),
            (Some(sequence), History::Refuse) => {
                return Err(FabricError::ConsumerHistory {
                    consumer: stage.name.to_owned(),
                    stream: topology.settings.events_stream.clone(),
                    sequence,
                });
            }
        }
    };
    stream
        .create_consumer(consumer_config(stage.name, stage.handles, runner, start))
        .await
        .map_err(|e| failed(e.into()))?;
    Ok(change)
}

/// The sequence of the newest event on `stream` that `stage` would receive, if any.
async fn newest_for(stream: &stream::Stream, stage: &StageConsumer) -> Result<Option<u64>, async_nats::Error> {
    let mut newest = None;
    for filter in stage.filter_subjects() {
        match stream.get_last_raw_message_by_subject(&filter).await {
            Ok(message) => newest = newest.max(Some(message.sequence)),
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(newest)
}

/// Binds to the provisioned topology without changing it: one `STREAM.INFO` per stream, KV
/// bucket and object store. What every service does at start.
///
/// # Errors
/// [`FabricError::Unprovisioned`] naming every missing piece and [`FIX`];
/// [`FabricError::Provision`] when JetStream does not answer.
pub async fn check(client: &Client, settings: &JetStreamSettings) -> Result<Topology, FabricError> {
    let js = jetstream::new(client.clone());
    let mut missing = Vec::new();
    let failed = |what: String, e: async_nats::Error| FabricError::Provision {
        what: format!("{what} (reading it)"),
        source: e,
    };
    let events = js.get_stream(&settings.events_stream).await;
    let deadletter = js.get_stream(&settings.deadletter_stream).await;
    let handled = js.get_key_value(HANDLED_BUCKET).await;
    let state = js.get_key_value(STATE_BUCKET).await;
    let locks = js.get_key_value(LOCKS_BUCKET).await;
    let logs = js.get_object_store(&settings.logs_bucket).await;
    macro_rules! present {
        ($result:expr, $what:expr) => {
            match $result {
                Ok(found) => Some(found),
                Err(e) if jetstream_code(&e) == Some(ErrorCode::STREAM_NOT_FOUND) => {
                    missing.push($what);
                    None
                }
                Err(e) => return Err(failed($what, e.into())),
            }
        };
    }
    let events = present!(events, format!("stream {}", settings.events_stream));
    let deadletter = present!(deadletter, format!("stream {}", settings.deadletter_stream));
    let handled = present!(handled, format!("key-value bucket {HANDLED_BUCKET}"));
    let state = present!(state, format!("key-value bucket {STATE_BUCKET}"));
    let locks = present!(locks, format!("key-value bucket {LOCKS_BUCKET}"));
    let logs = present!(logs, format!("object store {}", settings.logs_bucket));
    match (events, deadletter, handled, state, locks, logs) {
        (Some(events), Some(deadletter), Some(handled), Some(state), Some(locks), Some(logs)) => Ok(Topology::new(
            js, events, deadletter, handled, state, locks, logs, settings,
        )),
        _ => Err(FabricError::Unprovisioned { missing }),
    }
}

/// The durable consumer of stage `name`, as provisioned: one `CONSUMER.INFO`. What a stage
/// runner does before it pulls. It refuses a consumer that is missing or filters other types
/// than `handles` (the stage would miss events, or get ones it cannot handle), or whose
/// `ack_wait` is shorter than `runner.ack_wait` (the runner's heartbeats, a third of its own
/// `ack_wait` apart, would come too late and events be redelivered mid-step). A longer one only
/// delays redelivery after a crash; it is logged.
///
/// # Errors
/// [`FabricError::Unprovisioned`] or [`FabricError::Misprovisioned`] naming the consumer and
/// [`FIX`]; [`FabricError::Provision`] when JetStream does not answer.
pub async fn check_consumer(
    topology: &Topology,
    name: &str,
    handles: &[EventType],
    runner: &RunnerSettings,
) -> Result<consumer::Consumer<pull::Config>, FabricError> {
    let what = format!("consumer {name} of stream {}", topology.settings.events_stream);
    let consumer: consumer::Consumer<pull::Config> = match topology.events.get_consumer(name).await {
        Ok(consumer) => consumer,
        Err(e) if jetstream_code(e.as_ref()) == Some(ErrorCode::CONSUMER_NOT_FOUND) => {
            return Err(FabricError::Unprovisioned { missing: vec![what] });
        }
        Err(source) => {
            return Err(FabricError::Provision {
                what: format!("{what} (reading it)"),
                source,
            });
        }
    };
    let config = &consumer.cached_info().config;
    let mut wanted: Vec<String> = handles.iter().map(|t| subjects::event_filter(*t)).collect();
    let mut filters = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        filters.push(config.filter_subject.clone());
    }
    wanted.sort();
    filters.sort();
    let wrong = if filters != wanted {
        Some(format!("filters {filters:?}, the stage handles {wanted:?}"))
    } else if config.ack_policy != consumer::AckPolicy::Explicit {
        Some(format!("ack policy {:?}, the stage acks explicitly", config.ack_policy))
    } else if config.ack_wait < runner.ack_wait {
        Some(format!(
            "ack_wait {}, shorter than this service's runner.ack_wait {}",
            humantime::format_duration(config.ack_wait),
            humantime::format_duration(runner.ack_wait)
        ))
    } else {
        None
    };
    if let Some(differs) = wrong {
        return Err(FabricError::Misprovisioned { what, differs });
    }
    if config.ack_wait > runner.ack_wait {
        tracing::warn!(
            consumer = name,
            provisioned = %humantime::format_duration(config.ack_wait),
            configured = %humantime::format_duration(runner.ack_wait),
            "the consumer's ack_wait is longer than runner.ack_wait: a crashed replica's events wait that long; \
             provision with this service's config to align them"
        );
    }
    Ok(consumer)
}

/// The JetStream error code in `error` or its sources, if the server answered with one.
fn jetstream_code(error: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<jetstream::context::GetStreamError>()
            && let jetstream::context::GetStreamErrorKind::JetStream(js) = e.kind()
        {
            return Some(js.error_code());
        }
        if let Some(e) = e.downcast_ref::<jetstream::context::ConsumerInfoError>() {
            return match e.kind() {
                ConsumerInfoErrorKind::NotFound => Some(ErrorCode::CONSUMER_NOT_FOUND),
                ConsumerInfoErrorKind::StreamNotFound => Some(ErrorCode::STREAM_NOT_FOUND),
                ConsumerInfoErrorKind::JetStream(js) => Some(js.error_code()),
                _ => None,
            };
        }
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code());
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_is_named_once_and_handles_something() {
        let mut names: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), STAGES.len());
        assert!(STAGES.iter().all(|s| !s.handles.is_empty()));
        assert_eq!(
            stage("builder").map(|s| s.handles),
            Some(&[EventType::ChangeMerged][..])
        );
        assert_eq!(stage("listener"), None, "the listener consumes nothing");
    }

    #[test]
    fn a_consumer_is_tuned_by_its_services_runner() {
        let runner = RunnerSettings {
            concurrency: 2,
            ack_wait: Duration::from_secs(10),
            ..RunnerSettings::default()
        };
        let config = consumer_config(
            "tester",
            &[EventType::ArtifactPublished],
            &runner,
            consumer::DeliverPolicy::New,
        );
        assert_eq!(config.durable_name.as_deref(), Some("tester"));
        assert_eq!(
            config.filter_subjects,
            vec!["baton.events.*.artifact.published".to_owned()]
        );
        assert_eq!(config.ack_wait, Duration::from_secs(10));
        assert_eq!(config.max_ack_pending, 64, "at least 64");
        assert_eq!(config.max_deliver, -1);
        assert_eq!(config.deliver_policy, consumer::DeliverPolicy::New);
        let busy = RunnerSettings {
            concurrency: 32,
            ..runner
        };
        assert_eq!(max_ack_pending(&busy), 128);
    }
}

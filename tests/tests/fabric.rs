//! The event fabric against a real nats-server: stage runners talking through JetStream,
//! redelivery and deduplication, retries and dead letters, schema rejection, deadlines,
//! broker restarts, graceful shutdown, provisioning (and a service's refusal to run on a topology
//! not provisioned for it, and a re-created consumer's history) and the operations endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::stream::Stream as JsStream;
use baton_kit::fabric::{self, FabricError, Topology};
use baton_kit::metrics::Metrics;
use baton_kit::provision::{self, ConsumerChange, History, Plan};
use baton_kit::runner::{self, backoff};
use baton_kit::service::Runtime;
use baton_kit::{Handler, HandlerError, Incoming, Outgoing, Stage, StageRunner, codec, events};
use baton_schemas::config::{JetStreamSettings, RunnerSettings, TelemetrySettings};
use baton_schemas::{CdEvent, EventType, subjects};
use baton_tests::{NatsServer, eventually, eventually_every};
use cloudevents::AttributesReader;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct Fabric {
    server: NatsServer,
    topology: Topology,
}

impl Fabric {
    async fn start() -> Result<Self> {
        let server = NatsServer::start()?;
        let topology = server.topology().await?;
        Ok(Self { server, topology })
    }

    /// A runner of the builder stage (it consumes `change.merged`) on a replica's connection.
    async fn builder<H: Handler>(&self, handler: H, settings: RunnerSettings) -> Result<Running> {
        self.builder_with_metrics(handler, settings, Metrics::new()).await
    }

    /// [`Fabric::builder`], counting into `metrics`.
    async fn builder_with_metrics<H: Handler>(
        &self,
        handler: H,
        settings: RunnerSettings,
        metrics: Metrics,
    ) -> Result<Running> {
        let stage = Stage::new("builder", [EventType::ChangeMerged]);
        spawn_runner_with_metrics(self.replica().await?, stage, handler, settings, metrics).await
    }

    /// A topology on a connection of its own, as a separate replica would have.
    async fn replica(&self) -> Result<Topology> {
        self.server.topology().await
    }
}

fn fast_settings() -> RunnerSettings {
    RunnerSettings {
        concurrency: 8,
        max_deliver: 4,
        ack_wait: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        handler_deadline: Duration::from_secs(20),
        remember_handled: Duration::from_secs(3600),
    }
}

type HandleFn = dyn Fn(Arc<Incoming>) -> BoxFuture<'static, Result<Vec<Outgoing>, HandlerError>> + Send + Sync;

/// A handler made of a closure, plus an optional failure outcome.
struct TestHandler {
    handle: Box<HandleFn>,
    give_up: Option<EventType>,
}

impl TestHandler {
    fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(Arc<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Outgoing>, HandlerError>> + Send + 'static,
    {
        Self {
            handle: Box::new(move |e| Box::pin(f(e))),
            give_up: None,
        }
    }

    fn failing_with(mut self, ty: EventType) -> Self {
        self.give_up = Some(ty);
        self
    }
}

impl Handler for TestHandler {
    fn handle(&self, event: Arc<Incoming>) -> impl Future<Output = Result<Vec<Outgoing>, HandlerError>> + Send {
        (self.handle)(event)
    }

    fn on_give_up(&self, event: &Incoming, reason: &str) -> Vec<Outgoing> {
        self.give_up
            .map(|ty| {
                let e = event
                    .follow_up(ty, "failed", "build-1", json!({}))
                    .unwrap()
                    .with_custom_data(json!({"outcome": "failure", "reason": reason}))
                    .unwrap();
                vec![Outgoing::new(event.app.clone(), e)]
            })
            .unwrap_or_default()
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), runner::RunnerError>>,
}

impl Running {
    async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("runner did not stop")???;
        Ok(())
    }
}

async fn spawn_runner<H: Handler>(
    topology: Topology,
    stage: Stage,
    handler: H,
    settings: RunnerSettings,
) -> Result<Running> {
    spawn_runner_with_metrics(topology, stage, handler, settings, Metrics::new()).await
}

async fn spawn_runner_with_metrics<H: Handler>(
    topology: Topology,
    stage: Stage,
    handler: H,
    settings: RunnerSettings,
    metrics: Metrics,
) -> Result<Running> {
    let runner =
        StageRunner::new(stage, handler, topology, settings, metrics).with_grace_period(Duration::from_secs(2));
    runner.ensure_consumer().await?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(runner.run(async move { token.cancelled().await }));
    Ok(Running { stop, task })
}

/// A runner of the builder stage whose handler only counts its calls.
async fn counting_builder(f: &Fabric) -> Result<(Running, Arc<AtomicUsize>)> {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let handler = TestHandler::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok(vec![]) }
    });
    Ok((f.builder(handler, fast_settings()).await?, calls))
}

fn change_merged(id: &str) -> Outgoing {
    let event = CdEvent::new(
        EventType::ChangeMerged,
        id,
        "/baton/listener",
        "0a1b2c3d4e5f",
        json!({"repository": {"id": "acme/shop", "source": "https://github.com/acme/shop"}}),
    )
    .unwrap()
    .with_chain_id(format!("release-{id}"))
    .with_custom_data(json!({"ref": "refs/heads/main"}))
    .unwrap();
    Outgoing::new("acme/shop", event)
}

fn build_queued(incoming: &Incoming) -> Outgoing {
    let e = incoming
        .follow_up(EventType::BuildQueued, "queued", "build-1", json!({}))
        .unwrap();
    Outgoing::new(incoming.app.clone(), e)
}

/// Number of messages stored on `filter`.
async fn count(stream: &JsStream, filter: &str) -> Result<u64> {
    let mut c = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(5),
            ..Default::default()
        })
        .await?;
    Ok(c.info().await?.num_pending)
}

/// Waits until `want` messages are stored on `filter`, and fails if more are.
async fn wait_for_count(stream: &JsStream, filter: &str, want: u64) -> Result<()> {
    let n = eventually(WAIT, &format!("{want} messages on {filter}"), async || {
        let n = count(stream, filter).await?;
        Ok(if n >= want { Ok(n) } else { Err(format!("{n} arrived")) })
    })
    .await?;
    anyhow::ensure!(n == want, "{filter}: {n} messages, expected exactly {want}");
    Ok(())
}

/// The next dead letter of `stage`.
async fn next_deadletter(topology: &Topology, stage: &str) -> Result<async_nats::jetstream::Message> {
    let c = topology
        .deadletter
        .create_consumer(pull::Config {
            filter_subject: subjects::deadletter_subject(stage),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = c.messages().await?;
    let m = tokio::time::timeout(WAIT, messages.next())
        .await
        .context("no dead letter arrived")?
        .context("stream ended")??;
    Ok(m)
}

fn header<'a>(m: &'a async_nats::jetstream::Message, name: &str) -> Option<&'a str> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// How many failures of `kind` with the specific `reason` the builder stage's runner counted on
/// `change.merged` events in `baton_failures_total`, read from the text exposition of `metrics`
/// (`None` when it counted none).
fn failures_counted(metrics: &Metrics, kind: &str, reason: &str) -> Result<Option<u64>> {
    let series = format!(
        "baton_failures_total{{stage=\"builder\",event_type=\"{}\",kind=\"{kind}\",reason=\"{reason}\"}} ",
        EventType::ChangeMerged.as_str()
    );
    let exposition = metrics.encode();
    let Some(value) = exposition.lines().find_map(|line| line.strip_prefix(&series)) else {
        return Ok(None);
    };
    Ok(Some(value.parse().with_context(|| format!("not a count: {value}"))?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_crosses_two_stages_intact_and_continues_the_trace() -> Result<()> {
    let _telemetry = baton_kit::telemetry::init("fabric-test", &TelemetrySettings::default())?;
    let f = Fabric::start().await?;

    // Stage "builder": change.merged → build.queued, with an extra extension full of awkward bytes.
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel();
    let builder = TestHandler::new(move |incoming| {
        let sent_tx = sent_tx.clone();
        async move {
            let mut out = build_queued(&incoming);
            out.extensions
                .insert("batontest".into(), "a value with spaces, % and \"quotes\" — ü ✓".into());
            sent_tx.send(out.clone()).unwrap();
            Ok(vec![out])
        }
    });
    let a = f.builder(builder, fast_settings()).await?;

    // Stage "tester": records what it received and the trace it runs in.
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let tester = TestHandler::new(move |incoming| {
        let got_tx = got_tx.clone();
        async move {
            got_tx
                .send((incoming, baton_kit::telemetry::current_trace_id()))
                .unwrap();
            Ok(vec![])
        }
    });
    let b = spawn_runner(
        f.replica().await?,
        Stage::new("tester", [EventType::BuildQueued]),
        tester,
        fast_settings(),
    )
    .await?;

    let root = tracing::info_span!("webhook");
    let sender_trace = {
        let _enter = root.enter();
        baton_kit::telemetry::current_trace_id()
    };
    assert_ne!(sender_trace, "00000000000000000000000000000000");
    let input = change_merged("delivery-1");
    events::publish(&f.topology.jetstream, &input)
        .instrument_in(&root)
        .await?;

    let sent = tokio::time::timeout(WAIT, sent_rx.recv())
        .await?
        .context("builder saw nothing")?;
    let (got, trace) = tokio::time::timeout(WAIT, got_rx.recv())
        .await?
        .context("tester saw nothing")?;
    assert_eq!(got.cdevent, sent.event, "data arrives intact");
    assert_eq!(got.event_type, EventType::BuildQueued);
    let ce = &got.cloudevent;
    assert_eq!(ce.id(), sent.event.context.id);
    assert_eq!(ce.source(), "/baton/builder");
    assert_eq!(ce.ty(), "dev.cdevents.build.queued.0.3.0");
    assert_eq!(ce.subject(), Some("build-1"));
    assert_eq!(ce.time(), Some(&sent.event.context.timestamp));
    assert_eq!(ce.datacontenttype(), Some("application/json"));
    assert_eq!(
        codec::extension_str(ce, "batontest"),
        Some("a value with spaces, % and \"quotes\" — ü ✓")
    );
    assert!(codec::extension_str(ce, "traceparent").is_some());
    assert_eq!(
        got.chain_id(),
        Some("release-delivery-1"),
        "the release id is carried unchanged"
    );
    assert_eq!(
        got.cdevent.context.links.as_ref().unwrap()[0]
            .from
            .as_ref()
            .unwrap()
            .context_id,
        "delivery-1"
    );
    assert_eq!(got.subject, "baton.events.acme_shop.build.queued");
    assert_eq!(trace, sender_trace, "the receiving span continues the sender's trace");
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

/// Instruments a future with a span by reference.
trait InstrumentIn: Future + Sized {
    fn instrument_in(self, span: &tracing::Span) -> tracing::instrument::Instrumented<Self> {
        tracing::Instrument::instrument(self, span.clone())
    }
}
impl<F: Future> InstrumentIn for F {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_id_twice_stores_it_once() -> Result<()> {
    let f = Fabric::start().await?;
    let event = change_merged("same-id");
    let (_, first) = events::publish(&f.topology.jetstream, &event).await?;
    let (_, second) = events::publish(&f.topology.jetstream, &event).await?;
    assert!(!first.duplicate);
    assert!(second.duplicate, "JetStream recognised the id");
    assert_eq!(count(&f.topology.events, subjects::ALL_EVENTS).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_handler_leads_to_redelivery_and_one_output() -> Result<()> {
    let f = Fabric::start().await?;
    let stage = || Stage::new("builder", [EventType::ChangeMerged]);

    // Replica A publishes its output, then "crashes" before acking.
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let js = f.topology.jetstream.clone();
    let crashing = TestHandler::new(move |incoming| {
        let (started_tx, js) = (started_tx.clone(), js.clone());
        async move {
            events::publish(&js, &build_queued(&incoming)).await.unwrap();
            started_tx.send(()).unwrap();
            std::future::pending::<()>().await;
            unreachable!()
        }
    });
    let replica_a = f.replica().await?;
    let a = spawn_runner(replica_a.clone(), stage(), crashing, fast_settings()).await?;
    events::publish(&f.topology.jetstream, &change_merged("crash-1")).await?;
    tokio::time::timeout(WAIT, started_rx.recv()).await?;
    a.task.abort();
    drop(replica_a);

    // Replica B gets the redelivery and emits the same output.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let healthy = TestHandler::new(move |incoming| {
        let done_tx = done_tx.clone();
        async move {
            done_tx.send(incoming.delivered).unwrap();
            Ok(vec![build_queued(&incoming)])
        }
    });
    let b = spawn_runner(f.replica().await?, stage(), healthy, fast_settings()).await?;
    let delivered = tokio::time::timeout(WAIT, done_rx.recv()).await?.unwrap();
    assert!(delivered >= 2, "the event was redelivered (delivery {delivered})");
    let outputs = subjects::event_filter(EventType::BuildQueued);
    wait_for_count(&f.topology.events, &outputs, 1).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&f.topology.events, &outputs).await?,
        1,
        "exactly one output event"
    );
    b.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_retry_with_growing_delay_then_dead_letter() -> Result<()> {
    let f = Fabric::start().await?;
    let calls = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let seen = Arc::clone(&calls);
    let handler = TestHandler::new(move |incoming| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push((incoming.id().to_owned(), Instant::now()));
            if incoming.id() == "flaky" {
                Err(HandlerError::transient("registry_timeout", "registry timed out"))
            } else {
                Ok(vec![])
            }
        }
    })
    .failing_with(EventType::BuildFinished);
    let settings = fast_settings();
    let metrics = Metrics::new();
    let r = f
        .builder_with_metrics(handler, settings.clone(), metrics.clone())
        .await?;
    events::publish(&f.topology.jetstream, &change_merged("flaky")).await?;

    let dead = next_deadletter(&f.topology, "builder").await?;
    let reason = header(&dead, runner::DEADLETTER_REASON).unwrap_or_default().to_owned();
    assert!(
        reason.contains("still failing after 4 attempts: registry timed out"),
        "{reason}"
    );
    // Each failed attempt is counted, before the last one is dead-lettered.
    assert_eq!(
        failures_counted(&metrics, "transient", "registry_timeout")?,
        Some(4),
        "one transient failure per attempt, by its reason:\n{}",
        metrics.encode()
    );
    let attempts: Vec<Instant> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| id == "flaky")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(attempts.len(), 4, "max_deliver attempts");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    for (n, gap) in gaps.iter().enumerate() {
        let planned = backoff(&settings, n as u64 + 1);
        assert!(
            *gap >= planned.mul_f64(0.9),
            "retry {n}: waited {gap:?}, backoff is {planned:?}"
        );
    }
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "delays grow: {gaps:?}");
    // The failure outcome was published before the dead letter.
    wait_for_count(&f.topology.events, &subjects::event_filter(EventType::BuildFinished), 1).await?;

    // The consumer moved on.
    events::publish(&f.topology.jetstream, &change_merged("healthy")).await?;
    eventually_every(
        Duration::from_millis(20),
        WAIT,
        "the next event to be handled",
        async || {
            let calls = calls.lock().unwrap();
            Ok(if calls.iter().any(|(id, _)| id == "healthy") {
                Ok(())
            } else {
                Err(format!("{} calls", calls.len()))
            })
        },
    )
    .await?;
    r.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_dead_letters_the_original_with_the_reason() -> Result<()> {
    let f = Fabric::start().await?;
    let handler = TestHandler::new(|_| async {
        Err(HandlerError::permanent(
            "invalid_pipeline",
            ".baton.yaml line 3: `steps` must be a list",
        ))
    })
    .failing_with(EventType::BuildFinished);
    let metrics = Metrics::new();
    let r = f
        .builder_with_metrics(handler, fast_settings(), metrics.clone())
        .await?;
    let input = change_merged("poison-1");
    events::publish(&f.topology.jetstream, &input).await?;

    let dead = next_deadletter(&f.topology, "builder").await?;
    assert_eq!(
        failures_counted(&metrics, "permanent", "invalid_pipeline")?,
        Some(1),
        "the permanent failure is counted once, by its reason:\n{}",
        metrics.encode()
    );
    assert_eq!(
        header(&dead, runner::DEADLETTER_REASON),
        Some(".baton.yaml line 3: `steps` must be a list")
    );
    assert_eq!(header(&dead, runner::DEADLETTER_STAGE), Some("builder"));
    assert_eq!(
        header(&dead, runner::DEADLETTER_SUBJECT),
        Some("baton.events.acme_shop.change.merged")
    );
    assert_eq!(
        header(&dead, runner::DEADLETTER_DELIVERIES),
        Some("1"),
        "a permanent error is not retried"
    );
    assert_eq!(header(&dead, "ce-id"), Some("poison-1"), "original headers are kept");
    let original = codec::decode(dead.headers.as_ref(), &dead.payload)?;
    let data: CdEvent = serde_json::from_value(match original.data() {
        Some(cloudevents::Data::Json(v)) => v.clone(),
        other => anyhow::bail!("unexpected data {other:?}"),
    })?;
    assert_eq!(data, input.event, "the original payload is kept");
    let finished = subjects::event_filter(EventType::BuildFinished);
    wait_for_count(&f.topology.events, &finished, 1).await?;
    r.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_never_reach_the_handler() -> Result<()> {
    let f = Fabric::start().await?;
    let (r, calls) = counting_builder(&f).await?;

    // A CloudEvent whose CDEvent breaks the change.merged schema (an unknown content field).
    let mut bad = change_merged("bad-schema").event;
    bad.subject.content["branch"] = json!("main");
    let ce = events::to_cloudevent(&bad);
    fabric::publish_event(&f.topology.jetstream, "baton.events.acme_shop.change.merged", &ce).await?;
    let dead = next_deadletter(&f.topology, "builder").await?;
    let reason = header(&dead, runner::DEADLETTER_REASON).unwrap_or_default();
    assert!(
        reason.contains("not a valid `dev.cdevents.change.merged.0.3.0` CDEvent"),
        "{reason}"
    );
    assert!(reason.contains("/subject/content"), "{reason}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never saw it");
    r.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_a_cloudevent_is_dead_lettered() -> Result<()> {
    let f = Fabric::start().await?;
    let (r, calls) = counting_builder(&f).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", "broken%zz");
    fabric::publish_raw(
        &f.topology.jetstream,
        "baton.events.shop.change.merged",
        headers,
        "{}".into(),
        "garbage-1",
    )
    .await?;
    let dead = next_deadletter(&f.topology, "builder").await?;
    let reason = header(&dead, runner::DEADLETTER_REASON).unwrap_or_default();
    assert!(reason.contains("header `ce-id` is malformed"), "{reason}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    r.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_deadline_is_cancelled_and_reported() -> Result<()> {
    let f = Fabric::start().await?;
    let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel::<()>();
    struct OnDrop(mpsc::UnboundedSender<()>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let handler = TestHandler::new(move |_| {
        let guard = OnDrop(dropped_tx.clone());
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(vec![])
        }
    })
    .failing_with(EventType::BuildFinished);
    let settings = RunnerSettings {
        handler_deadline: Duration::from_millis(500),
        ..fast_settings()
    };
    let r = f.builder(handler, settings).await?;
    events::publish(&f.topology.jetstream, &change_merged("slow-1")).await?;

    let dead = next_deadletter(&f.topology, "builder").await?;
    let reason = header(&dead, runner::DEADLETTER_REASON).unwrap_or_default();
    assert!(reason.contains("exceeded its deadline of 500ms"), "{reason}");
    tokio::time::timeout(WAIT, dropped_rx.recv())
        .await
        .context("the handler was never cancelled")?;
    wait_for_count(&f.topology.events, &subjects::event_filter(EventType::BuildFinished), 1).await?;
    r.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_handler_from_being_redelivered() -> Result<()> {
    let f = Fabric::start().await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let handler = TestHandler::new(move |incoming| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            // Three times the ack wait: without in-progress heartbeats JetStream would
            // redeliver the event to another handler twice meanwhile.
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(vec![build_queued(&incoming)])
        }
    });
    let r = f.builder(handler, fast_settings()).await?;
    events::publish(&f.topology.jetstream, &change_merged("long-1")).await?;
    wait_for_count(&f.topology.events, &subjects::event_filter(EventType::BuildQueued), 1).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once, never redelivered");
    r.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_on_the_server_while_every_handler_is_busy_not_in_a_replica() -> Result<()> {
    let f = Fabric::start().await?;
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&deliveries);
    let handler = TestHandler::new(move |incoming| {
        seen.lock()
            .unwrap()
            .push((incoming.id().to_owned(), incoming.delivered));
        async move {
            // A slow event takes three ack waits (its heartbeats keep it): an event pulled
            // while both handlers are busy would sit out its ack wait in the replica and be
            // delivered a second time.
            let slow = incoming.id().starts_with("slow");
            tokio::time::sleep(Duration::from_millis(if slow { 3000 } else { 100 })).await;
            Ok(vec![build_queued(&incoming)])
        }
    });
    let r = f
        .builder(
            handler,
            RunnerSettings {
                concurrency: 2,
                ..fast_settings()
            },
        )
        .await?;
    let ids = ["slow-0", "fast-1", "slow-2", "slow-3", "fast-4", "fast-5"];
    for id in ids {
        events::publish(&f.topology.jetstream, &change_merged(id)).await?;
    }
    wait_for_count(
        &f.topology.events,
        &subjects::event_filter(EventType::BuildQueued),
        ids.len() as u64,
    )
    .await?;
    // Time for a redelivery that should not come.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    r.shutdown().await?;
    let deliveries = deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), ids.len(), "each event handled once: {deliveries:?}");
    assert!(
        deliveries.iter().all(|(_, n)| *n == 1),
        "none redelivered: {deliveries:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_during_a_stream_of_events_loses_none() -> Result<()> {
    let mut f = Fabric::start().await?;
    let handler = TestHandler::new(|incoming| async move { Ok(vec![build_queued(&incoming)]) });
    let r = f.builder(handler, fast_settings()).await?;

    const TOTAL: usize = 300;
    let js = f.topology.jetstream.clone();
    let publisher = tokio::spawn(async move {
        for n in 0..TOTAL {
            let event = change_merged(&format!("push-{n}"));
            // A producer retries until JetStream acknowledges; the id makes retries safe.
            loop {
                match events::publish(&js, &event).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "retrying publish");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| f.server.restart())?;
    tokio::time::timeout(Duration::from_secs(120), publisher).await??;

    wait_for_count(
        &f.topology.events,
        &subjects::event_filter(EventType::ChangeMerged),
        TOTAL as u64,
    )
    .await?;
    wait_for_count(
        &f.topology.events,
        &subjects::event_filter(EventType::BuildQueued),
        TOTAL as u64,
    )
    .await?;
    r.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work_and_hands_back_the_rest() -> Result<()> {
    let f = Fabric::start().await?;
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let handler = TestHandler::new(move |incoming| {
        let started_tx = started_tx.clone();
        async move {
            started_tx.send(()).unwrap();
            let pause = if incoming.id() == "quick" { 300 } else { 60_000 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            Ok(vec![build_queued(&incoming)])
        }
    });
    let settings = RunnerSettings {
        ack_wait: Duration::from_secs(30),
        ..fast_settings()
    };
    let r = f.builder(handler, settings.clone()).await?;
    events::publish(&f.topology.jetstream, &change_merged("quick")).await?;
    events::publish(&f.topology.jetstream, &change_merged("slow")).await?;
    for _ in 0..2 {
        tokio::time::timeout(WAIT, started_rx.recv()).await?;
    }
    let stopping = Instant::now();
    r.shutdown().await?;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown is bounded by the grace period"
    );
    // The quick one finished and was published; the slow one was handed back (nak) and a
    // fresh replica gets it at once, long before the 30 s ack wait.
    wait_for_count(&f.topology.events, &subjects::event_filter(EventType::BuildQueued), 1).await?;
    let (again_tx, mut again_rx) = mpsc::unbounded_channel();
    let handler = TestHandler::new(move |incoming| {
        let again_tx = again_tx.clone();
        async move {
            again_tx.send(incoming.id().to_owned()).unwrap();
            Ok(vec![])
        }
    });
    let r2 = f.builder(handler, settings).await?;
    let id = tokio::time::timeout(Duration::from_secs(10), again_rx.recv())
        .await?
        .unwrap();
    assert_eq!(id, "slow");
    r2.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_is_idempotent_and_updates_without_losing_data() -> Result<()> {
    let f = Fabric::start().await?;
    events::publish(&f.topology.jetstream, &change_merged("kept")).await?;
    let client = async_nats::connect(f.server.url()).await?;
    let changed = JetStreamSettings {
        events_max_age: Duration::from_secs(3600 * 24 * 400),
        ..JetStreamSettings::default()
    };
    let t = fabric::provision(&client, &changed, Duration::from_secs(3600)).await?;
    let mut events = t.events.clone();
    let info = events.info().await?;
    assert_eq!(info.config.max_age, changed.events_max_age);
    assert_eq!(info.config.duplicate_window, changed.duplicate_window);
    assert_eq!(info.config.storage, async_nats::jetstream::stream::StorageType::File);
    assert_eq!(info.state.messages, 1, "updating the stream kept its events");
    fabric::provision(&client, &changed, Duration::from_secs(3600)).await?;
    assert!(t.state.put("shop.production", "rel-1".into()).await.is_ok());
    assert!(t.locks.create("production", "promoter-1".into()).await.is_ok());
    assert!(
        t.locks.create("production", "promoter-2".into()).await.is_err(),
        "compare-and-set: one holder"
    );
    t.logs.put("run-1/build.log", &mut "line 1\n".as_bytes()).await?;
    Ok(())
}

/// A service only checks what the admin provisioned, and refuses to start naming what is missing
/// or provisioned otherwise, and how to fix it; once provisioned, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_refuses_an_unprovisioned_topology_naming_what_is_missing() -> Result<()> {
    let server = NatsServer::start()?;
    let common = baton_tests::app::common(&server.url());
    let refused = Runtime::start("baton-builder", &common)
        .await
        .err()
        .context("a service started on a server with no streams")?;
    let message = refused.to_string();
    assert!(!refused.is_transient(), "{message}");
    for piece in [
        "stream BATON_EVENTS",
        "stream BATON_DEADLETTER",
        "key-value bucket baton-handled",
        "key-value bucket baton-state",
        "key-value bucket baton-locks",
        "object store baton-logs",
        "baton admin provision",
    ] {
        assert!(message.contains(piece), "names {piece}: {message}");
    }
    let admin = async_nats::connect(server.url()).await?;
    let names: Vec<String> = async_nats::jetstream::new(admin.clone())
        .stream_names()
        .try_collect()
        .await?;
    assert!(names.is_empty(), "the check created nothing: {names:?}");

    // Streams, but no consumer: the stage is refused, naming its consumer.
    provision::apply(&admin, &Plan::streams_only(&common)).await?;
    let runtime = Runtime::start("baton-builder", &common).await?;
    let handler = || TestHandler::new(|_| async { Ok(vec![]) });
    let refused = runtime
        .stage("builder", [EventType::ChangeMerged], handler())
        .await
        .err()
        .context("a stage started without its consumer")?
        .to_string();
    assert!(
        refused.contains("missing consumer builder of stream BATON_EVENTS")
            && refused.contains("baton admin provision"),
        "{refused}"
    );

    // A consumer that filters other types, or redelivers sooner than the runner heartbeats, is
    // provisioned otherwise than the stage needs.
    provision::apply(&admin, &Plan::new(&common)).await?;
    let refused = runtime
        .stage("builder", [EventType::ArtifactPublished], handler())
        .await
        .err()
        .context("a stage whose consumer filters other types")?
        .to_string();
    assert!(
        refused.contains("consumer builder of stream BATON_EVENTS is provisioned otherwise")
            && refused.contains("baton.events.*.artifact.published"),
        "{refused}"
    );
    let mut patient = common.clone();
    patient.runner.ack_wait = Duration::from_secs(60);
    let refused = Runtime::start("baton-builder", &patient)
        .await?
        .stage("builder", [EventType::ChangeMerged], handler())
        .await
        .err()
        .context("a stage heartbeating slower than its consumer's ack_wait")?
        .to_string();
    assert!(
        refused.contains("ack_wait 30s, shorter than this service's runner.ack_wait 1m"),
        "{refused}"
    );
    runtime.stage("builder", [EventType::ChangeMerged], handler()).await?;
    Ok(())
}

/// A stage consumer created on a stream that already holds its events (a stage added later, a
/// consumer deleted): provisioning refuses until the operator says whether it skips them or
/// replays them, and does exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_consumer_never_replays_history_unless_told_to() -> Result<()> {
    let server = NatsServer::start()?;
    let common = baton_tests::app::common(&server.url());
    let admin = async_nats::connect(server.url()).await?;
    let plan = Plan::new(&common);
    let first = provision::apply(&admin, &plan).await?;
    assert!(
        first.consumers.iter().all(|(_, c)| *c == ConsumerChange::Created),
        "{:?}",
        first.consumers
    );
    let js = first.topology.jetstream.clone();
    for id in ["h-1", "h-2", "h-3"] {
        events::publish(&js, &change_merged(id)).await?;
    }
    let again = provision::apply(&admin, &plan).await?;
    assert!(
        again.consumers.iter().all(|(_, c)| *c == ConsumerChange::Updated),
        "an existing consumer keeps its position: {:?}",
        again.consumers
    );
    let pending = |name: &'static str| {
        let js = js.clone();
        async move {
            anyhow::Ok(
                js.get_stream("BATON_EVENTS")
                    .await?
                    .consumer_info(name)
                    .await?
                    .num_pending,
            )
        }
    };
    assert_eq!(pending("builder").await?, 3);

    js.delete_consumer_from_stream("builder", "BATON_EVENTS").await?;
    let refused = provision::apply(&admin, &plan)
        .await
        .err()
        .context("a consumer re-created over its history without the operator's word")?;
    let message = refused.to_string();
    assert!(
        matches!(refused, FabricError::ConsumerHistory { ref consumer, sequence: 3, .. } if consumer == "builder"),
        "{message}"
    );
    assert!(
        message.contains("--consumer-history skip") && message.contains("--consumer-history replay"),
        "{message}"
    );
    assert!(
        js.get_stream("BATON_EVENTS")
            .await?
            .consumer_info("builder")
            .await
            .is_err(),
        "nothing was created"
    );
    // The tester's consumer, whose stream holds nothing for it, was not in the way.
    assert_eq!(pending("tester").await?, 0);

    let skipped = provision::apply(&admin, &plan.clone().with_history(History::Skip)).await?;
    assert!(
        skipped
            .consumers
            .contains(&("builder", ConsumerChange::CreatedSkippingHistory))
    );
    assert_eq!(pending("builder").await?, 0, "history skipped");
    events::publish(&js, &change_merged("h-4")).await?;
    assert_eq!(pending("builder").await?, 1, "a new event is delivered");

    js.delete_consumer_from_stream("builder", "BATON_EVENTS").await?;
    let replayed = provision::apply(&admin, &plan.with_history(History::Replay)).await?;
    assert!(
        replayed
            .consumers
            .contains(&("builder", ConsumerChange::CreatedReplaying))
    );
    assert_eq!(pending("builder").await?, 4, "history replayed");
    Ok(())
}

/// The stage table provisioning creates consumers from is the one the services declare.
#[test]
fn provisioning_knows_every_stage_as_its_service_declares_it() {
    let declared: [(&str, &[EventType]); 5] = [
        (baton_builder::app::STAGE, &[EventType::ChangeMerged]),
        (baton_tester::app::STAGE, &[EventType::ArtifactPublished]),
        (baton_promoter::app::STAGE, &baton_promoter::handler::HANDLES),
        (baton_deployer::app::STAGE, &baton_deployer::handler::HANDLES),
        (baton_chatops::app::STAGE, baton_chatops::outbound::HANDLES),
    ];
    for (name, handles) in declared {
        let stage = provision::stage(name).unwrap_or_else(|| panic!("no stage {name} in provision::STAGES"));
        assert_eq!(stage.handles, handles, "{name}");
    }
    assert_eq!(provision::STAGES.len(), declared.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() -> Result<()> {
    let mut f = Fabric::start().await?;
    let client = async_nats::connect(f.server.url()).await?;
    let metrics = Metrics::new();
    let router = baton_kit::health::router(baton_kit::health::HealthState {
        client: client.clone(),
        events_stream: "BATON_EVENTS".into(),
        metrics: metrics.clone(),
    });
    let (addr, _task) = baton_kit::health::serve("127.0.0.1:0".parse()?, router, std::future::pending()).await?;
    let handler = TestHandler::new(|_| async { Ok(vec![]) });
    let r = f
        .builder_with_metrics(handler, fast_settings(), metrics.clone())
        .await?;
    events::publish(&f.topology.jetstream, &change_merged("m-1")).await?;

    let get = |path: &'static str| http_get(addr, path);
    assert_eq!(get("/healthz").await?.0, 200);
    assert_eq!(get("/readyz").await?.0, 200);
    let body = eventually(WAIT, "metrics to count the event", async || {
        let (status, body) = get("/metrics").await?;
        assert_eq!(status, 200);
        Ok(
            if body.contains("baton_events_total{stage=\"builder\",event_type=\"dev.cdevents.change.merged.0.3.0\",outcome=\"handled\"} 1") {
                Ok(body)
            } else {
                Err(format!("\n{body}"))
            },
        )
    })
    .await?;
    assert!(body.contains("baton_handler_seconds_bucket"), "{body}");
    tokio::task::block_in_place(|| f.server.kill())?;
    let body = eventually(WAIT, "readiness to notice NATS was gone", async || {
        let (status, body) = get("/readyz").await?;
        Ok(if status == 503 {
            Ok(body)
        } else {
            Err(format!("{status}"))
        })
    })
    .await?;
    assert!(body.starts_with("not ready"), "{body}");
    assert_eq!(get("/healthz").await?.0, 200, "liveness does not depend on NATS");
    tokio::task::block_in_place(|| f.server.start_again())?;
    r.shutdown().await?;
    Ok(())
}

/// A minimal HTTP/1.1 GET over a TCP socket: status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).context("no status")?.parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

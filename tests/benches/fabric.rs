//! `just bench fabric`: one-hop latency and sustained throughput through a stage runner on a
//! real nats-server with file storage.
//!
//! A hop is: a producer publishes a `change.merged` (waiting for the JetStream ack), the
//! stage runner pulls it, validates it against its schema, checks idempotency, runs the
//! handler, publishes the handler's `build.queued` (waiting for its ack), records the event as
//! handled and acks the input. Latency is measured from the producer's publish call to the
//! moment the output event reaches a subscriber — the whole hop as the next stage sees it.
//! Throughput is measured with many events in flight (inputs encoded beforehand), from the first
//! publish to the last output.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::{Handler, HandlerError, Incoming, Outgoing, Stage, StageRunner, events, fabric};
use baton_schemas::config::RunnerSettings;
use baton_schemas::{CdEvent, EventType, subjects};
use futures::StreamExt;
use serde_json::json;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forwards every `change.merged` as a `build.queued`, noting when it was called.
struct Forward(Arc<std::sync::Mutex<Vec<Instant>>>);

impl Handler for Forward {
    async fn handle(&self, incoming: Arc<Incoming>) -> Result<Vec<Outgoing>, HandlerError> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Instant::now());
        let e = incoming
            .follow_up(EventType::BuildQueued, "queued", "build-1", json!({}))
            .map_err(|e| HandlerError::permanent("invalid_input", e))?;
        Ok(vec![Outgoing::new(incoming.app.clone(), e)])
    }
}

fn input(n: usize) -> Outgoing {
    let e = CdEvent::new(
        EventType::ChangeMerged,
        format!("bench-{n}"),
        "/baton/listener",
        "0a1b2c3d4e5f",
        json!({"repository": {"id": "acme/shop", "source": "https://github.com/acme/shop"}}),
    )
    .expect("static content serializes")
    .with_chain_id(format!("release-{n}"));
    Outgoing::new("acme/shop", e)
}

/// Throughput rounds; the median is reported.
const ROUNDS: usize = 9;

fn main() -> Result<()> {
    let latency_samples: usize = std::env::var("BENCH_LATENCY_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let throughput_events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let server = baton_tests::NatsServer::start()?;
    runtime.block_on(async move {
        let topology = server.topology().await?;
        let settings = RunnerSettings {
            concurrency: 1024,
            ..RunnerSettings::default()
        };
        let runner_topology = server.topology().await?;
        let handled_at: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let runner = StageRunner::new(
            Stage::new("builder", [EventType::ChangeMerged]),
            Forward(Arc::clone(&handled_at)),
            runner_topology,
            settings,
            baton_kit::metrics::Metrics::new(),
        );
        runner.ensure_consumer().await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(runner.run(async move { token.cancelled().await }));
        let mut outputs = topology
            .jetstream
            .client()
            .subscribe(subjects::event_filter(EventType::BuildQueued))
            .await?;
        let js = topology.jetstream.clone();

        // Warm-up.
        for n in 0..200 {
            events::publish(&js, &input(n)).await?;
            outputs.next().await.context("output stream ended")?;
        }

        // Latency: one event in flight at a time.
        let mut samples = Vec::with_capacity(latency_samples);
        let mut t0s = Vec::new();
        for n in 0..latency_samples {
            let event = input(1_000_000 + n);
            let t0 = Instant::now();
            t0s.push(t0);
            events::publish(&js, &event).await?;
            outputs.next().await.context("output stream ended")?;
            samples.push(t0.elapsed());
        }
        samples.sort();
        let mut to_handler: Vec<Duration> = {
            let handled = handled_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            t0s.iter()
                .zip(&handled[200..])
                .map(|(sent, handled)| *handled - *sent)
                .collect()
        };
        to_handler.sort();

        // Throughput: many in flight, in rounds (this machine's neighbours make single runs
        // noisy). Inputs are encoded before the clock starts, so the figure is the stage
        // runner's and JetStream's, not the test producer's. A round ends when the runner has
        // acked every input, which it does only after each output is acked by JetStream.
        drop(outputs);
        let mut consumer = topology
            .events
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("builder")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut rates = Vec::new();
        for round in 0..ROUNDS {
            let encoded: Vec<_> = (0..throughput_events)
                .map(|n| {
                    let event = input(2_000_000 + round * throughput_events + n);
                    let cloudevent = events::to_cloudevent(&event.event);
                    let (headers, payload) = baton_kit::codec::encode_binary(&cloudevent);
                    (
                        subjects::event_subject(&event.app, EventType::ChangeMerged),
                        headers,
                        payload,
                        event.event.context.id,
                    )
                })
                .collect();
            let started = Instant::now();
            let mut in_flight = futures::stream::iter(encoded)
                .map(|(subject, headers, payload, id)| {
                    let js = js.clone();
                    async move { fabric::publish_raw(&js, &subject, headers, payload, &id).await }
                })
                .buffer_unordered(512);
            while let Some(r) = in_flight.next().await {
                r?;
            }
            loop {
                let info = consumer.info().await?;
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(120),
                    "round {round} did not finish"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            rates.push(throughput_events as f64 / started.elapsed().as_secs_f64());
        }
        stop.cancel();
        task.await??;

        println!(
            "fabric benchmark (nats-server {}, file storage, stage runner concurrency 256)",
            baton_tests::PINNED_NATS_SERVER_VERSION
        );
        println!("latency over {latency_samples} sequential events       p50        p90        p99");
        for (what, v) in [
            ("publish -> handler starts", &to_handler),
            ("publish -> output at next stage", &samples),
        ] {
            println!(
                "  {what:<32} {:>7.3} ms {:>7.3} ms {:>7.3} ms",
                baton_tests::percentile(v, 0.50).as_secs_f64() * 1e3,
                baton_tests::percentile(v, 0.90).as_secs_f64() * 1e3,
                baton_tests::percentile(v, 0.99).as_secs_f64() * 1e3
            );
        }
        let rounds: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "sustained throughput, {ROUNDS} rounds of {throughput_events} events: median {:.0} events/s (rounds: {})",
            rates[rates.len() / 2],
            rounds.join(", ")
        );
        anyhow::Ok(())
    })
}

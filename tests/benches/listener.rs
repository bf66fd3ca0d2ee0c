//! `just bench listener`: signed GitHub push webhooks per second through the listener, and the
//! latency from request to 2xx, which includes JetStream's acknowledgement of the event.
//! Concurrent keep-alive clients on loopback, bounded in count.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use baton_listener::Application;
use baton_tests::app;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PUSH: &str = include_str!("../../services/listener/src/providers/fixtures/github-push.json");
const SECRET: &str = "bench-secret";

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn main() -> Result<()> {
    let total: usize = std::env::var("BENCH_WEBHOOKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let nats = baton_tests::NatsServer::start()?;
    runtime.block_on(async move {
        let service = yaml_serde::from_str(
            "repositories:\n  - name: Codertocat/Hello-World\n    provider: github\n    secret_env: BENCH_SECRET\n    branches: [main]\n",
        )?;
        let env = |name: &str| (name == "BENCH_SECRET").then(|| SECRET.to_owned());
        let stop = tokio_util::sync::CancellationToken::new();
        let listener = app::spawn::<Application>(app::common(&nats.url()), service, &env, &stop).await?;
        let url = format!("http://{}/webhooks/github", listener.addr);

        let body = bytes::Bytes::from_static(PUSH.as_bytes());
        let sig = signature(&body);
        baton_kit::tls::install_crypto_provider();
        let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (http, url, body, sig, next) = (http.clone(), url.clone(), body.clone(), sig.clone(), Arc::clone(&next));
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= total {
                        return anyhow::Ok(latencies);
                    }
                    let t0 = Instant::now();
                    let response = http
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .header("X-GitHub-Event", "push")
                        .header("X-GitHub-Delivery", format!("bench-{n}"))
                        .header("X-Hub-Signature-256", &sig)
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = response.status();
                    response.bytes().await?;
                    anyhow::ensure!(status.as_u16() == 202, "webhook {n} answered {status}");
                    latencies.push(t0.elapsed());
                }
            }));
        }
        let mut latencies = Vec::with_capacity(total);
        for t in tasks {
            latencies.extend(t.await.context("client task")??);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        stop.cancel();
        listener.task.await??;
        println!("listener benchmark: {total} signed GitHub push webhooks, {clients} concurrent keep-alive clients");
        println!(
            "  {:.0} webhooks/s; request -> 202 (JetStream acked) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            total as f64 / elapsed.as_secs_f64(),
            baton_tests::percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            baton_tests::percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
        anyhow::Ok(())
    })
}

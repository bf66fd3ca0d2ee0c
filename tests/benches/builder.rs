//! `just bench builder`: time from a commit's `change.merged` to its `artifact.published`,
//! excluding the user's build commands (the pipeline has none), for a 20 MB artifact on a small
//! busybox base: cold (empty mirror cache, nothing in the registry) and warm (the same commit
//! again: cached mirror, every blob already in the registry; then a commit changing one small file).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::{Outgoing, codec, events};
use baton_schemas::payloads::BuildData;
use baton_schemas::{EventType, subjects};
use baton_tests::push::Push;
use baton_tests::{app, git};
use futures::StreamExt;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ARTIFACT_BYTES: usize = 20 * 1024 * 1024;

/// The listener's `change.merged` for a push of `sha` from `url`.
fn push_event(url: &str, sha: &str, delivery: &str) -> Result<Outgoing> {
    Push {
        app: "bench/app",
        clone_url: url,
        commit: sha,
        delivery,
    }
    .event()
}

fn main() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let nats = baton_tests::NatsServer::start()?;
    let registry = baton_tests::registry::RegistryServer::start()?;
    registry.push_busybox_base("base/busybox", "1")?;
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("app");
    std::fs::create_dir(&repo)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    // 20 MB that does not compress, like a real binary.
    let mut artifact = vec![0u8; ARTIFACT_BYTES];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut artifact {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    std::fs::write(repo.join("app.bin"), &artifact)?;
    std::fs::write(
        repo.join(".baton.yaml"),
        format!(
            "image:\n  base: {}/base/busybox:1\n  add:\n    - {{from: app.bin, to: /app/app.bin}}\n    - {{from: version.txt, to: /app/version.txt}}\n  cmd: [/app/app.bin]\n",
            registry.address()
        ),
    )?;
    std::fs::write(repo.join("version.txt"), "1")?;
    git(&repo, &["add", "."])?;
    git(&repo, &["commit", "-qm", "one"])?;
    let first = git(&repo, &["rev-parse", "HEAD"])?;
    std::fs::write(repo.join("version.txt"), "2")?;
    git(&repo, &["commit", "-qam", "two"])?;
    let second = git(&repo, &["rev-parse", "HEAD"])?;
    let url = format!("file://{}", repo.display());

    runtime.block_on(async move {
        let service = yaml_serde::from_str(&format!(
            "registry:\n  address: {}\n  insecure: true\n",
            registry.address()
        ))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let builder =
            app::spawn::<baton_builder::Application>(app::common(&nats.url()), service, &|_| None, &stop).await?;
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let mut published = client
            .subscribe(subjects::event_filter(EventType::ArtifactPublished))
            .await?;

        let mut results = Vec::new();
        for (label, sha, delivery) in [
            ("cold", &first, "cold"),
            ("warm, same commit", &first, "warm"),
            ("warm, one small file changed", &second, "changed"),
        ] {
            let started = Instant::now();
            events::publish(&js, &push_event(&url, sha, delivery)?).await?;
            let message = tokio::time::timeout(Duration::from_secs(120), published.next())
                .await?
                .context("no artifact.published")?;
            let elapsed = started.elapsed();
            let event = codec::decode(message.headers.as_ref(), &message.payload)?;
            let Some(cloudevents::Data::Json(data)) = event.data() else {
                anyhow::bail!("no data")
            };
            let build: BuildData = serde_json::from_value(data["customData"].clone())?;
            let image = build.image.context("image")?;
            results.push((label, elapsed, image.uploaded_bytes, image.digest));
        }
        stop.cancel();
        builder.task.await??;
        println!("builder benchmark: 20 MB incompressible artifact on a busybox base, no build commands");
        for (label, elapsed, uploaded, digest) in &results {
            println!(
                "  {label:<30} {:>8.0} ms  uploaded {:>10} bytes  {}",
                elapsed.as_secs_f64() * 1e3,
                uploaded,
                &digest[..19]
            );
        }
        anyhow::Ok(())
    })
}

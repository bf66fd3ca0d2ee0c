//! `just bench builder`: time from a commit's `change.merged` to its `artifact.published`,
//! excluding the user's build commands (the pipeline has none), for a 20 MB artifact on a small
//! busybox base: cold (empty mirror cache, nothing in the registry) and warm (the same commit
//! again: cached mirror, every blob already in the registry; then a commit changing one small file),
//! with signing on (the builder's events follow its evidence, so the times include it).
//!
//! Then what the evidence adds to a build, against the same registry: [`EVIDENCE_ROUNDS`] times,
//! two fresh images (a small layer on the busybox base, as a commit's build makes them) are
//! published through the builder's own `publish`, one without an attester and one with it (the
//! image pushed while its signature `.sig` and provenance `.att` are), in alternating order; the
//! added time is the difference of the two modes' medians. The tester's test-result attestation
//! appended to that `.att` is timed after each signed one: it is paid by the test run, after the
//! tests, and is reported beside. Each service opens its upload sessions when its work starts
//! (`EvidenceStore::prepare`); here that is done, untimed, before the image is assembled and
//! before the tester attests.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::{Outgoing, codec, events};
use baton_schemas::payloads::{BuildData, Outcome, TestCounts, TestData};
use baton_schemas::{EventType, subjects};
use baton_tests::push::Push;
use baton_tests::{app, git};
use futures::StreamExt;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ARTIFACT_BYTES: usize = 20 * 1024 * 1024;
/// Fresh digests signed and attested for the evidence figures (after [`EVIDENCE_WARMUP`]).
const EVIDENCE_ROUNDS: usize = 50;
/// Rounds run first and not counted: connections opened, code paged in.
const EVIDENCE_WARMUP: usize = 5;

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

    let key = baton_tests::keys::SigningKeyFile::generate()?;
    runtime.block_on(async move {
        let service = yaml_serde::from_str(&format!(
            "registry:\n  address: {}\n  insecure: true\n{}",
            registry.address(),
            key.signing_section()
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
        println!("builder benchmark: 20 MB incompressible artifact on a busybox base, no build commands, signing on");
        for (label, elapsed, uploaded, digest) in &results {
            println!(
                "  {label:<30} {:>8.0} ms  uploaded {:>10} bytes  {}",
                elapsed.as_secs_f64() * 1e3,
                uploaded,
                &digest[..19]
            );
        }
        evidence_cost(&registry.address(), key.path()).await
    })
}

/// Times publishing fresh images in `registry` with and without the builder's evidence (key at
/// `key`), and the tester's attestation of each signed one, and prints p50, p90 and max of each
/// and what the evidence adds at p50.
async fn evidence_cost(registry: &str, key: &std::path::Path) -> Result<()> {
    use baton_builder::evidence::{Attester, BuildFacts, publish};
    use baton_builder::image::{self, ImageJob, Registry};
    use baton_kit::evidence::{EvidenceStore, SigningKey};
    let store = || EvidenceStore::new(registry, true, None, None);
    let builder = Attester::new(
        SigningKey::from_pem_file(key)?,
        "https://baton.dev/builder/v1".into(),
        store(),
    );
    let tester = baton_tester::evidence::Attester::new(
        SigningKey::from_pem_file(key)?,
        "https://baton.dev/tester/v1".into(),
        store(),
    );
    let target = Registry::new(registry, true, None, None);
    let repository = "baton/bench/evidence";
    let spec: baton_schemas::pipeline::ImageSpec = yaml_serde::from_str(&format!(
        "base: {registry}/base/busybox:1\nadd:\n  - {{from: version.txt, to: /app/version.txt}}\ncmd: [/app/version.txt]\n"
    ))?;
    let workspace = tempfile::tempdir()?;
    let mut build = BuildData {
        app: "bench/app".into(),
        commit: "0".repeat(40),
        git_ref: Some("refs/heads/main".into()),
        repository: "https://git.example/bench/app".into(),
        run: String::new(),
        outcome: None,
        reason: None,
        steps: Vec::new(),
        image: None,
        pushed_by: None,
    };
    let passed = baton_tester::evidence::PassedCases {
        names: (0..20).map(|i| format!("bench.Case.test_{i}")).collect(),
        omitted: 0,
    };
    let (mut unsigned, mut signed, mut testing) = (Vec::new(), Vec::new(), Vec::new());
    let mut fresh = 0u64;
    for round in 0..EVIDENCE_WARMUP + EVIDENCE_ROUNDS {
        // Alternating which mode goes first, so neither always follows the other's writes.
        let modes = if round % 2 == 0 { [false, true] } else { [true, false] };
        for sign in modes {
            // A fresh image each time, as each commit's build is: its tags start empty.
            fresh += 1;
            std::fs::write(workspace.path().join("version.txt"), format!("{fresh}\n"))?;
            let commit = format!("{fresh:040x}");
            build.commit.clone_from(&commit);
            build.run = format!("build-{fresh}");
            let job = ImageJob {
                spec: &spec,
                workspace: workspace.path(),
                commit: &commit,
                source_url: &build.repository,
                registry: &target,
                repository,
            };
            if sign {
                // As the builder does when the build's steps start: its sessions are open by the
                // time the image is assembled.
                builder.prepare(repository).await;
            }
            let assembled = image::assemble(&job).await?;
            let facts = BuildFacts {
                data: &build,
                pipeline_digest: assembled.digest(),
                started: chrono::Utc::now(),
                finished: chrono::Utc::now(),
            };
            let started = Instant::now();
            let (pushed, _) = publish(&assembled, sign.then_some(&builder), &facts)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let elapsed = started.elapsed();
            if round < EVIDENCE_WARMUP {
                continue;
            }
            if !sign {
                unsigned.push(elapsed);
                continue;
            }
            signed.push(elapsed);
            let verdict = TestData {
                app: build.app.clone(),
                commit: build.commit.clone(),
                repository: build.repository.clone(),
                image: Some(pushed.info()),
                run: format!("test-{fresh}"),
                outcome: Some(Outcome::Success),
                reason: None,
                no_tests_declared: false,
                counts: TestCounts {
                    suites: 1,
                    tests: 20,
                    ..TestCounts::default()
                },
                failed_cases: Vec::new(),
                steps: Vec::new(),
                pushed_by: None,
            };
            // As the tester does when its tests start.
            tester.prepare(repository).await;
            let started = Instant::now();
            tester.attest(&pushed.info(), &verdict, &passed).await?;
            testing.push(started.elapsed());
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "evidence added to a build: {EVIDENCE_ROUNDS} fresh images published each way (a small layer on busybox), p50 / p90 / max"
    );
    let mut p50 = Vec::new();
    for (label, times) in [
        ("image pushed, no evidence", &mut unsigned),
        ("image pushed with .sig and .att", &mut signed),
        ("test-result attestation", &mut testing),
    ] {
        times.sort();
        p50.push(baton_tests::percentile(times, 0.5));
        println!(
            "  {label:<34} {:>6.1} / {:>6.1} / {:>6.1} ms",
            ms(baton_tests::percentile(times, 0.5)),
            ms(baton_tests::percentile(times, 0.9)),
            ms(times[times.len() - 1])
        );
    }
    println!(
        "  signature + provenance add (p50 with − p50 without): {:.1} ms; with the test-result attestation: {:.1} ms",
        ms(p50[1]) - ms(p50[0]),
        ms(p50[1]) - ms(p50[0]) + ms(p50[2])
    );
    Ok(())
}

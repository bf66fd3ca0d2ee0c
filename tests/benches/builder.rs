//! `just bench builder`: time from a commit's `change.merged` to its `artifact.published`,
//! excluding the user's build commands (the pipeline has none), for a 20 MB artifact on a small
//! busybox base: cold (empty mirror cache, nothing in the registry) and warm (the same commit
//! again: cached mirror, every blob already in the registry; then a commit changing one small file),
//! with signing on (the builder's events follow its evidence, so the times include it).
//!
//! Then what the evidence adds to a build, measured alone against the same registry: for each of
//! [`EVIDENCE_ROUNDS`] fresh digests, the builder's signature (`.sig`) and provenance (`.att`) and
//! the tester's test-result attestation appended to that `.att`, through the services' own
//! `Attester`s.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::{Outgoing, codec, events};
use baton_schemas::payloads::{BuildData, Outcome, TestCounts, TestData};
use baton_schemas::{EventType, subjects};
use baton_tests::push::Push;
use baton_tests::{app, git};
use futures::StreamExt;
use sha2::Digest as _;

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

/// Times the builder's signature and provenance and the tester's attestation for fresh digests
/// in `registry`, with the key at `key`, and prints p50, p90 and max of each part and the sum.
async fn evidence_cost(registry: &str, key: &std::path::Path) -> Result<()> {
    use baton_kit::evidence::{EvidenceStore, SigningKey};
    let store = || EvidenceStore::new(registry, true, None, None);
    let builder = baton_builder::evidence::Attester::new(
        SigningKey::from_pem_file(key)?,
        "https://baton.dev/builder/v1".into(),
        store(),
    );
    let tester = baton_tester::evidence::Attester::new(
        SigningKey::from_pem_file(key)?,
        "https://baton.dev/tester/v1".into(),
        store(),
    );
    let repository = "baton/bench/evidence";
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
    let (mut signing, mut testing, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..EVIDENCE_WARMUP + EVIDENCE_ROUNDS {
        // A fresh image each round, as each build is: its tags start empty.
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("bench-{round}"))));
        let image = baton_builder::image::PushedImage {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            reference: format!("{registry}/{repository}@{digest}"),
            digest: digest.clone(),
            tag: build.commit.clone(),
            config_digest: digest.clone(),
            layers: Vec::new(),
            uploaded_bytes: 0,
            skipped_blobs: 0,
            mounted_blobs: 0,
            purl: baton_builder::image::purl(registry, repository, &digest, &build.commit),
            base: Some(baton_builder::image::PinnedBase {
                name: format!("{registry}/base/busybox:1"),
                digest: digest.clone(),
            }),
        };
        build.run = format!("build-{round}");
        let facts = baton_builder::evidence::BuildFacts {
            data: &build,
            pipeline_digest: &digest,
            started: chrono::Utc::now(),
            finished: chrono::Utc::now(),
        };
        let verdict = TestData {
            app: build.app.clone(),
            commit: build.commit.clone(),
            repository: build.repository.clone(),
            image: Some(image.info()),
            run: format!("test-{round}"),
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
        let passed = baton_tester::evidence::PassedCases {
            names: (0..20).map(|i| format!("bench.Case.test_{i}")).collect(),
            omitted: 0,
        };
        let started = Instant::now();
        builder.sign_and_attest(&image, &facts).await?;
        let signed = started.elapsed();
        tester.attest(&image.info(), &verdict, &passed).await?;
        let elapsed = started.elapsed();
        if round >= EVIDENCE_WARMUP {
            signing.push(signed);
            testing.push(elapsed - signed);
            total.push(elapsed);
        }
    }
    println!("evidence added to a build: {EVIDENCE_ROUNDS} fresh digests, p50 / p90 / max");
    for (label, times) in [
        ("signature + provenance", &mut signing),
        ("test-result attestation", &mut testing),
        ("all three", &mut total),
    ] {
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {label:<30} {:>6.1} / {:>6.1} / {:>6.1} ms",
            ms(baton_tests::percentile(times, 0.5)),
            ms(baton_tests::percentile(times, 0.9)),
            ms(times[times.len() - 1])
        );
    }
    Ok(())
}

//! `just bench deployer`: the deployer's apply + verify overhead for a 10-object release
//! (a Deployment, a Service, a Secret and seven ConfigMaps) on the real 1.20 control plane with
//! simulated nodes, excluding the time pods take to become ready: each release changes the
//! ConfigMaps, not the pod template, so the Deployment stays healthy and what is measured is
//! Baton's work — reading the config repo, checking and dry-running every object, applying it,
//! pruning, and verifying the rollout. Reported from `environment.modified` published to the
//! verdict received, p50/p99 over repeated releases.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::{codec, events};
use baton_schemas::config::deployer::DeployerSettings;
use baton_schemas::payloads::ImageInfo;
use baton_schemas::release::{DeploymentData, PromotionAction};
use baton_schemas::{CdEvent, EventType};
use baton_tests::kube::KubeCluster;
use baton_tests::promotion::{self, Promotion};
use baton_tests::{NatsServer, app, git};
use futures::StreamExt;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RELEASES: usize = 40;
const WARMUP: usize = 3;

fn release_files(round: usize, image: &str) -> Vec<(String, String)> {
    let mut files = vec![
        (
            "deployment.yaml".to_owned(),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: shop}}\n  template:\n    metadata:\n      labels: {{app: shop}}\n    spec:\n      containers:\n        - name: shop\n          image: {image}\n"
            ),
        ),
        (
            "service.yaml".to_owned(),
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: shop\nspec:\n  selector: {app: shop}\n  ports: [{port: 80, protocol: TCP}]\n".to_owned(),
        ),
        (
            "secret.yaml".to_owned(),
            format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: shop\nstringData:\n  token: t{round}\n"),
        ),
    ];
    for i in 0..7 {
        files.push((
            format!("config-{i}.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shop-{i}\ndata:\n  round: \"{round}\"\n"),
        ));
    }
    files
}

#[tokio::main]
async fn main() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let cluster = KubeCluster::start().await?;
    let _nodes = cluster.simulate_nodes(2).await?;
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let dir = tempfile::tempdir()?;
    git(dir.path(), &["init", "-q", "--bare", "-b", "main", "config.git"])?;
    git(dir.path(), &["clone", "-q", "config.git", "config"])?;
    let work = dir.path().join("config");

    let service = DeployerSettings {
        kubeconfig: Some(cluster.kubeconfig_path().to_owned()),
        poll_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let deployer =
        app::spawn::<baton_deployer::Application>(app::common(&nats.url()), service, &|_| None, &stop).await?;
    let mut verdicts = client.subscribe("baton.events.bench_shop.>").await?;

    let digest = format!("sha256:{}", "b".repeat(64));
    let image = ImageInfo {
        registry: "127.0.0.1:5000".into(),
        repository: "baton/shop".into(),
        tag: "bench".into(),
        digest: digest.clone(),
        reference: format!("127.0.0.1:5000/baton/shop@{digest}"),
        purl: "pkg:oci/shop@sha256%3Abbbb".into(),
        uploaded_bytes: 0,
    };
    let mut times = Vec::new();
    for round in 0..RELEASES + WARMUP {
        let folder = work.join("staging/bench_shop");
        std::fs::create_dir_all(&folder)?;
        for (name, content) in release_files(round, &image.reference) {
            std::fs::write(folder.join(name), content)?;
        }
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-qm", &format!("round {round}")])?;
        git(&work, &["push", "-q", "origin", "main"])?;
        let commit = git(&work, &["rev-parse", "HEAD"])?;
        let promotion_id = format!("bench-{round}");
        let data = Promotion {
            app: "bench/shop",
            environment: "staging",
            namespace: "bench-staging",
            promotion: promotion_id.clone(),
            release: format!("release-{round}"),
            image: &image,
            action: PromotionAction::Promote,
            config_repository: format!("file://{}", dir.path().join("config.git").display()),
            config_commit: &commit,
            manifests_path: "staging/bench_shop".into(),
            actor: "bench",
        }
        .data();
        let event = promotion::event(&data, &format!("bench-modified-{round}"))?;
        let started = Instant::now();
        events::publish(&js, &event).await?;
        let deadline = started + Duration::from_secs(120);
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline.into(), verdicts.next()).await else {
                let mut dead = js.get_stream("BATON_DEADLETTER").await?;
                let last = dead.info().await?.state.last_sequence;
                let reason = match dead.get_raw_message(last).await {
                    Ok(m) => format!("{:?}", m.headers.get(baton_kit::runner::DEADLETTER_REASON)),
                    Err(_) => "none".to_owned(),
                };
                anyhow::bail!("round {round}: no verdict in time; last dead letter: {reason}");
            };
            let message = message.context("subscription closed")?;
            let ce = codec::decode(message.headers.as_ref(), &message.payload)?;
            let Some(cloudevents::Data::Json(value)) = ce.data() else {
                continue;
            };
            let cd: CdEvent = serde_json::from_value(value.clone())?;
            let ty = cd.event_type();
            if matches!(ty, Some(EventType::DeploymentStarted)) {
                continue;
            }
            let Ok(report) = cd.custom_data_as::<DeploymentData>() else {
                continue;
            };
            if report.promotion != promotion_id {
                continue;
            }
            anyhow::ensure!(
                matches!(ty, Some(EventType::ServiceDeployed | EventType::ServiceUpgraded)),
                "round {round}: {ty:?} {:?}",
                report.reason
            );
            anyhow::ensure!(report.applied.len() == 10, "ten objects: {:?}", report.applied);
            break;
        }
        if round >= WARMUP {
            times.push(started.elapsed());
        }
        // The first release waits for its pods; later ones change only ConfigMaps and a Secret.
    }
    stop.cancel();
    deployer.task.await??;
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "deployer: {RELEASES} releases of 10 objects (after {WARMUP} warm-up), environment.modified → verdict: p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(baton_tests::percentile(&times, 0.50)),
        ms(baton_tests::percentile(&times, 0.99)),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
    Ok(())
}

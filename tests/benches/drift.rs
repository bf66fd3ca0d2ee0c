//! `just bench drift`: the deployer's drift detection on the real 1.20 control plane. 100 apps
//! of 10 objects each (a Deployment, a Service, a Secret and seven ConfigMaps), in 10
//! environments of 10 apps, are deployed through the deployer; then
//!
//! - a **full pass** over all of them is timed from the deployer's own
//!   `baton_deployer_drift_pass_seconds` (listing what was applied, reading the config repo, one
//!   list per kind and namespace, and comparing every object): the first pass of a fresh deployer
//!   (every object dry-run) and the passes after it (objects unchanged since they were compared
//!   clean are not dry-run again);
//! - the **watch** is timed from a ConfigMap changed with a plain client (another field manager)
//!   to `baton-environment.drifted` on the stream, and back to `baton-environment.synced` when the
//!   change is undone, p50/p99 over repeated changes of different apps.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use baton_kit::{codec, events};
use baton_schemas::config::deployer::{DeployerSettings, DriftSettings};
use baton_schemas::payloads::ImageInfo;
use baton_schemas::release::{DeploymentData, PromotionAction};
use baton_schemas::{CdEvent, EventType};
use baton_tests::kube::KubeCluster;
use baton_tests::promotion::{self, Promotion};
use baton_tests::{NatsServer, app, eventually, git};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The allocator Baton's service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENVIRONMENTS: usize = 10;
const APPS_PER_ENVIRONMENT: usize = 10;
const WARM_PASSES: usize = 5;
const CHANGES: usize = 30;

/// The ten objects of app `n` (named after it: ten apps share a namespace).
fn app_files(n: usize, image: &str) -> Vec<(String, String)> {
    let mut files = vec![
        (
            "deployment.yaml".to_owned(),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app{n}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: app{n}}}\n  template:\n    metadata:\n      labels: {{app: app{n}}}\n    spec:\n      containers:\n        - name: shop\n          image: {image}\n"
            ),
        ),
        (
            "service.yaml".to_owned(),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: app{n}\nspec:\n  selector: {{app: app{n}}}\n  ports: [{{port: 80, protocol: TCP}}]\n"
            ),
        ),
        (
            "secret.yaml".to_owned(),
            format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: app{n}\nstringData:\n  token: t\n"),
        ),
    ];
    for i in 0..7 {
        files.push((
            format!("config-{i}.yaml"),
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app{n}-{i}\ndata:\n  value: \"{i}\"\n"),
        ));
    }
    files
}

/// The (sum, count) of the deployer's drift pass histogram.
async fn passes(addr: SocketAddr) -> Result<(f64, u64)> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    let sample = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("0")
            .to_owned()
    };
    Ok((
        sample("baton_deployer_drift_pass_seconds_sum").parse()?,
        sample("baton_deployer_drift_pass_seconds_count").parse()?,
    ))
}

/// Waits for the pass after `seen` passes and returns its duration.
async fn next_pass(addr: SocketAddr, seen: (f64, u64)) -> Result<((f64, u64), Duration)> {
    let now = eventually(Duration::from_secs(120), "the next drift pass", async || {
        let now = passes(addr).await?;
        Ok(if now.1 > seen.1 {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        })
    })
    .await?;
    Ok((now, Duration::from_secs_f64((now.0 - seen.0) / (now.1 - seen.1) as f64)))
}

fn deployer_settings(cluster: &KubeCluster, interval: Duration) -> DeployerSettings {
    DeployerSettings {
        kubeconfig: Some(cluster.kubeconfig_path().to_owned()),
        poll_interval: Duration::from_millis(100),
        drift: DriftSettings {
            interval,
            ..DriftSettings::default()
        },
        ..Default::default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let cluster = KubeCluster::start().await?;
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let dir = tempfile::tempdir()?;
    git(dir.path(), &["init", "-q", "--bare", "-b", "main", "config.git"])?;
    git(dir.path(), &["clone", "-q", "config.git", "config"])?;
    let work = dir.path().join("config");

    // Every app's folder in one commit.
    let digest = format!("sha256:{}", "d".repeat(64));
    let image = ImageInfo {
        registry: "127.0.0.1:5000".into(),
        repository: "baton/shop".into(),
        tag: "bench".into(),
        digest: digest.clone(),
        reference: format!("127.0.0.1:5000/baton/shop@{digest}"),
        purl: "pkg:oci/shop@sha256%3Adddd".into(),
        uploaded_bytes: 0,
    };
    let mut apps = Vec::new();
    for e in 0..ENVIRONMENTS {
        for a in 0..APPS_PER_ENVIRONMENT {
            let (env, app) = (format!("env{e}"), format!("bench/app{a}"));
            let folder = work.join(&env).join(format!("bench_app{a}"));
            std::fs::create_dir_all(&folder)?;
            for (name, content) in app_files(a, &image.reference) {
                std::fs::write(folder.join(name), content)?;
            }
            apps.push((env, app, format!("bench_app{a}"), a));
        }
    }
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-qm", "every app"])?;
    git(&work, &["push", "-q", "origin", "main"])?;
    let commit = git(&work, &["rev-parse", "HEAD"])?;

    // Deployed through the deployer (no drift pass meanwhile).
    let stop = CancellationToken::new();
    let deployer = app::spawn::<baton_deployer::Application>(
        app::common(&nats.url()),
        deployer_settings(&cluster, Duration::from_secs(3600)),
        &|_| None,
        &stop,
    )
    .await?;
    let mut verdicts = client.subscribe("baton.events.*.>").await?;
    for (i, (env, app, dir_name, _)) in apps.iter().enumerate() {
        let data = Promotion {
            app,
            environment: env,
            namespace: &format!("bench-{env}"),
            promotion: format!("bench-{i}"),
            release: format!("release-{i}"),
            image: &image,
            action: PromotionAction::Promote,
            config_repository: format!("file://{}", dir.path().join("config.git").display()),
            config_commit: &commit,
            manifests_path: format!("{env}/{dir_name}"),
            actor: "bench",
        }
        .data();
        events::publish(&js, &promotion::event(&data, &format!("bench-modified-{i}"))?).await?;
    }
    let deploying = Instant::now();
    let mut deployed = 0;
    while deployed < apps.len() {
        let message = tokio::time::timeout(Duration::from_secs(300), verdicts.next())
            .await
            .context("the apps were not all deployed in time")?
            .context("subscription closed")?;
        let ce = codec::decode(message.headers.as_ref(), &message.payload)?;
        let Some(cloudevents::Data::Json(value)) = ce.data() else {
            continue;
        };
        let event: CdEvent = serde_json::from_value(value.clone())?;
        match event.event_type() {
            Some(EventType::ServiceDeployed) => {
                let report: DeploymentData = event.custom_data_as()?;
                anyhow::ensure!(report.applied.len() == 10, "ten objects: {:?}", report.applied);
                deployed += 1;
            }
            Some(EventType::DeploymentFailed) => {
                let report: DeploymentData = event.custom_data_as()?;
                anyhow::bail!("{} in {} failed: {:?}", report.app, report.environment, report.reason);
            }
            _ => {}
        }
    }
    println!(
        "drift: {} apps × 10 objects deployed in {:.1} s",
        apps.len(),
        deploying.elapsed().as_secs_f64()
    );
    stop.cancel();
    deployer.task.await??;

    // Full passes: a fresh deployer's first, then the ones after.
    let stop = CancellationToken::new();
    let deployer = app::spawn::<baton_deployer::Application>(
        app::common(&nats.url()),
        deployer_settings(&cluster, Duration::from_secs(3)),
        &|_| None,
        &stop,
    )
    .await?;
    let (mut seen, first) = next_pass(deployer.addr, (0.0, 0)).await?;
    let mut warm = Vec::new();
    for _ in 0..WARM_PASSES {
        let (now, took) = next_pass(deployer.addr, seen).await?;
        seen = now;
        warm.push(took);
    }
    warm.sort();
    // Nothing was changed: a pass that finds drift here compares wrongly.
    let reported = baton_tests::events::of(&js, EventType::EnvironmentDrifted).await?;
    anyhow::ensure!(
        reported.is_empty(),
        "drift reported in an untouched cluster: {:?}",
        reported[0].custom_data
    );
    println!(
        "drift: full pass over {} apps × 10 objects: first (every object dry-run) {:.0} ms; later passes p50 {:.0} ms, max {:.0} ms",
        apps.len(),
        ms(first),
        ms(baton_tests::percentile(&warm, 0.50)),
        ms(warm[warm.len() - 1]),
    );
    stop.cancel();
    deployer.task.await??;

    // The watch: a deployer whose next pass is an hour away.
    let stop = CancellationToken::new();
    let deployer = app::spawn::<baton_deployer::Application>(
        app::common(&nats.url()),
        deployer_settings(&cluster, Duration::from_secs(3600)),
        &|_| None,
        &stop,
    )
    .await?;
    next_pass(deployer.addr, (0.0, 0)).await?;
    // The watches start after the first pass; give them their first list.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut reports = client.subscribe("baton.events.*.baton-environment.>").await?;
    let kube = cluster.client()?;
    let by_hand = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    let (mut detect, mut end) = (Vec::new(), Vec::new());
    for (i, (env, _, _, n)) in apps.iter().cycle().step_by(7).take(CHANGES).enumerate() {
        let config_maps: Api<ConfigMap> = Api::namespaced(kube.clone(), &format!("bench-{env}"));
        let name = format!("app{n}-{}", i % 7);
        for (value, wanted, times) in [
            (format!("changed-{i}"), EventType::EnvironmentDrifted, &mut detect),
            ((i % 7).to_string(), EventType::EnvironmentSynced, &mut end),
        ] {
            let started = Instant::now();
            config_maps
                .patch(&name, &by_hand, &Patch::Merge(json!({"data": {"value": value}})))
                .await?;
            loop {
                let message = tokio::time::timeout(Duration::from_secs(30), reports.next())
                    .await
                    .with_context(|| format!("change {i}: no {wanted} in time"))?
                    .context("subscription closed")?;
                let ce = codec::decode(message.headers.as_ref(), &message.payload)?;
                let Some(cloudevents::Data::Json(value)) = ce.data() else {
                    continue;
                };
                let cd: CdEvent = serde_json::from_value(value.clone())?;
                if cd.event_type() == Some(wanted) {
                    break;
                }
            }
            times.push(started.elapsed());
        }
    }
    stop.cancel();
    deployer.task.await??;
    detect.sort();
    end.sort();
    println!(
        "drift: watch, plain-client change → baton-environment.drifted: p50 {:.0} ms, p99 {:.0} ms; undone → synced: p50 {:.0} ms, p99 {:.0} ms ({CHANGES} changes)",
        ms(baton_tests::percentile(&detect, 0.50)),
        ms(baton_tests::percentile(&detect, 0.99)),
        ms(baton_tests::percentile(&end, 0.50)),
        ms(baton_tests::percentile(&end, 0.99)),
    );
    Ok(())
}

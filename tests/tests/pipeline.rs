//! The release story end to end, growing one stage at a time: a signed push webhook reaches the
//! listener, the builder fetches that exact commit, runs its build steps, assembles the image
//! and pushes it to a real registry, and the tester runs the commit's tests against that image;
//! the promoter turns the verdict into a release and promotes it to staging as a config-repo
//! commit pinning the image's digest, and the deployer rolls it out on a real Kubernetes control
//! plane (simulated nodes) until it is healthy. The release carries one `chainId` from the push
//! to `service.deployed`.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use baton_schemas::payloads::BuildData;
use baton_schemas::{CdEvent, EventType};
use baton_tests::keys::SigningKeyFile;
use baton_tests::registry::RegistryServer;
use baton_tests::{NatsServer, app, events, git, repos};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "pipeline-secret";

/// Every event of `ty` so far, once at least one has arrived.
async fn wait_for(js: &async_nats::jetstream::Context, ty: EventType) -> Result<Vec<CdEvent>> {
    events::wait_for(js, ty, 1, Duration::from_secs(60), |_| true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_becomes_a_healthy_deployment_in_staging() -> Result<()> {
    baton_kit::tls::install_crypto_provider();
    let nats = NatsServer::start()?;
    let registry = RegistryServer::start()?;
    let dir = tempfile::tempdir()?;

    // The application's repository: a build step produces the file the image ships.
    let repo = dir.path().join("shop");
    let sha = repos::app_repo(
        &repo,
        &[
            (
                ".baton.yaml",
                "build:\n  steps:\n    - name: compile\n      run: mkdir -p out && printf 'hello from %s\\n' \"$GREETING\" > out/hello.txt\n      env: {GREETING: baton}\nmanifests: deploy\nimage:\n  name: baton/shop\n  base: scratch\n  add:\n    - {from: out/hello.txt, to: /srv/hello.txt, mode: '0644'}\n  entrypoint: [/srv/hello]\n  labels: {team: shop}\ntest:\n  steps:\n    - name: smoke\n      run: test -n \"$BATON_IMAGE\" && test -n \"$BATON_COMMIT\"\n",
            ),
            ("deploy/deployment.yaml", &repos::shop_deployment("baton/shop:dev")),
        ],
    )?;
    // The config repo the promoter owns, with one automatic environment.
    repos::config_repo(dir.path(), "config-seed", repos::STAGING_AUTO)?;
    let clone_url = format!("file://{}", repo.display());

    // Every service, each as its own application.
    let env = |name: &str| (name == "SHOP_SECRET").then(|| SECRET.to_owned());
    let common = || app::common(&nats.url());
    let stop = CancellationToken::new();
    let listener = app::spawn::<baton_listener::Application>(
        common(),
        yaml_serde::from_str(
            "repositories:\n  - name: acme/shop\n    provider: generic\n    secret_env: SHOP_SECRET\n    branches: [main]\n",
        )?,
        &env,
        &stop,
    )
    .await?;
    // Signing on, as users get it (the services read their keys at start).
    let (builder_key, tester_key) = (SigningKeyFile::generate()?, SigningKeyFile::generate()?);
    let builder = app::spawn::<baton_builder::Application>(
        common(),
        yaml_serde::from_str(&format!(
            "registry:\n  address: {}\n  insecure: true\n  repository_prefix: baton\n{}",
            registry.address(),
            builder_key.signing_section()
        ))?,
        &env,
        &stop,
    )
    .await?;
    let webhook = format!("http://{}/webhooks/generic", listener.addr);
    let tester = app::spawn::<baton_tester::Application>(
        common(),
        yaml_serde::from_str(&format!(
            "registry:\n  address: {}\n  insecure: true\n{}",
            registry.address(),
            tester_key.signing_section()
        ))?,
        &env,
        &stop,
    )
    .await?;
    let promoter = app::spawn::<baton_promoter::Application>(
        common(),
        yaml_serde::from_str(&format!(
            "config_repo:\n  url: file://{}\n",
            dir.path().join("config.git").display()
        ))?,
        &env,
        &stop,
    )
    .await?;
    let cluster = baton_tests::kube::KubeCluster::start().await?;
    let _nodes = cluster.simulate_nodes(1).await?;
    let deployer = app::spawn::<baton_deployer::Application>(
        common(),
        yaml_serde::from_str(&format!(
            "kubeconfig: {}\npoll_interval: 200ms\n",
            cluster.kubeconfig_path().display()
        ))?,
        &env,
        &stop,
    )
    .await?;

    // The push.
    let body = json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "repository": {"full_name": "acme/shop", "clone_url": clone_url},
        "head_commit": {"id": sha, "message": "first", "author": {"name": "Ada"}}
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes())?;
    mac.update(body.as_bytes());
    let response = reqwest::Client::new()
        .post(&webhook)
        .header("Content-Type", "application/json")
        .header("X-Baton-Delivery", "push-1")
        .header(
            "X-Baton-Signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        )
        .body(body)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await?;
    let release = answer["accepted"][0]["release"]
        .as_str()
        .context("a release id")?
        .to_owned();

    // The image reaches the registry, and the whole story is one release.
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let published = wait_for(&js, EventType::ArtifactPublished).await?;
    let finished = wait_for(&js, EventType::BuildFinished).await?;
    for ty in [
        EventType::BuildQueued,
        EventType::BuildStarted,
        EventType::ArtifactPackaged,
    ] {
        assert_eq!(wait_for(&js, ty).await?.len(), 1, "{ty}");
    }
    for event in published.iter().chain(&finished) {
        assert_eq!(
            event.context.chain_id.as_deref(),
            Some(release.as_str()),
            "one release from push to image"
        );
    }
    let build: BuildData = finished[0].custom_data_as()?;
    assert_eq!(
        build.outcome,
        Some(baton_schemas::payloads::Outcome::Success),
        "{build:?}"
    );
    assert_eq!(build.commit, sha);
    assert_eq!(build.steps[0].name, "compile");
    let image = build.image.context("the build names its image")?;
    assert_eq!(published[0].subject.id, image.purl);
    assert!(image.purl.starts_with("pkg:oci/shop@sha256:"), "{}", image.purl);
    assert!(image.purl.ends_with(&format!("&tag={sha}")), "{}", image.purl);
    assert_eq!(finished[0].subject.content["artifactId"], image.purl.as_str());

    // An independent client sees what the pipeline file asked for.
    let config = registry.skopeo_inspect(&image.reference, false)?;
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.revision"], sha.as_str());
    assert_eq!(labels["org.opencontainers.image.source"], clone_url.as_str());
    assert_eq!(labels["team"], "shop");
    assert_eq!(config["config"]["Entrypoint"], json!(["/srv/hello"]));
    let manifest = registry.skopeo_inspect(&image.reference, true)?;
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1), "{manifest}");
    let by_tag = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/{}:{sha}", registry.address(), image.repository),
        ])
        .output()?;
    let by_tag: Value = serde_json::from_slice(&by_tag.stdout)?;
    assert_eq!(
        by_tag["Digest"],
        image.digest.as_str(),
        "tag = commit, identity = digest"
    );

    // The tester ran the commit's tests against that image, in the same release.
    let verdict = wait_for(&js, EventType::TestSuiteRunFinished).await?;
    assert_eq!(verdict[0].context.chain_id.as_deref(), Some(release.as_str()));
    assert_eq!(
        verdict[0].subject.content["outcome"], "success",
        "{:?}",
        verdict[0].custom_data
    );
    let tests: baton_schemas::payloads::TestData = verdict[0].custom_data_as()?;
    assert_eq!(
        tests.image.map(|i| i.digest),
        Some(image.digest.clone()),
        "the image that was built is the one tested"
    );
    assert_eq!(
        verdict[0]
            .context
            .links
            .as_ref()
            .and_then(|l| l[0].from.as_ref())
            .map(|f| f.context_id.clone()),
        Some(published[0].context.id.clone())
    );

    // The promoter made it a release and promoted it to staging: a config-repo commit whose
    // manifests run the tested image by digest.
    let created = wait_for(&js, EventType::ReleaseCreated).await?;
    assert_eq!(created[0].subject.id, release, "the release id is the chainId");
    let promoted = wait_for(&js, EventType::EnvironmentModified).await?;
    assert_eq!(promoted[0].context.chain_id.as_deref(), Some(release.as_str()));
    assert_eq!(
        promoted[0]
            .context
            .links
            .as_ref()
            .and_then(|l| l[0].from.as_ref())
            .map(|f| f.context_id.clone()),
        Some(verdict[0].context.id.clone()),
        "the promotion follows the test verdict"
    );
    let promotion: baton_schemas::release::PromotionData = promoted[0].custom_data_as()?;
    let config = dir.path().join("config.git");
    assert_eq!(git(&config, &["rev-parse", "main"])?, promotion.config_commit);
    let deployed = git(&config, &["show", "main:staging/acme_shop/deployment.yaml"])?;
    assert!(
        deployed.contains(&format!("image: {}", image.reference)),
        "staging runs the tested digest: {deployed}"
    );

    // The deployer rolled it out: the Deployment's pods run that digest, healthy.
    let deployed = wait_for(&js, EventType::ServiceDeployed).await?;
    assert_eq!(deployed[0].context.chain_id.as_deref(), Some(release.as_str()));
    assert_eq!(deployed[0].subject.content["artifactId"], image.purl.as_str());
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(cluster.client()?, "shop-staging");
    let shop = deployments.get("shop").await?;
    let template = shop.spec.and_then(|s| s.template.spec).context("a pod template")?;
    assert_eq!(template.containers[0].image.as_deref(), Some(image.reference.as_str()));
    assert_eq!(shop.status.and_then(|s| s.available_replicas), Some(1));

    stop.cancel();
    for service in [deployer, promoter, listener, builder, tester] {
        service.task.await??;
    }
    Ok(())
}

//! The kubernetes step executor against a real control plane (etcd, kube-apiserver 1.20,
//! controller-manager, scheduler): the build namespace it reconciles, the locked-down pod it
//! creates as the apiserver stores it, the steps that fail before running (a namespace missing or
//! not a build namespace, a pod the quota refuses, a pod no node can take) each with its reason,
//! the reaper deleting what a previous life of the service left, and steps that run on the node
//! simulator executing pods (busybox from the test registry): the workspace in and the outputs
//! back, the log masked, no ServiceAccount token, an exit code, a timeout and an OOM kill. The
//! simulator does not enforce NetworkPolicies, so the policies are asserted by their content.
//!
//! Each test starts its own cluster, so they run in parallel and share nothing. The executor
//! talks to the apiserver as the cluster's admin here; the RBAC it gets in production is tested
//! by the deploy suite.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use baton_kit::steps::{
    Executor, ResourceLimits, StepError, StepOutcome, StepRequest, StepRunner, StepStatus, start_executor,
};
use baton_schemas::config::StepsSettings;
use baton_schemas::pipeline::Step;
use baton_tests::eventually_every;
use baton_tests::kube::KubeCluster;
use baton_tests::kube::steps::{self, ExecutingCluster, label_build_namespace};
use k8s_openapi::api::core::v1::{LimitRange, Pod, ResourceQuota, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// How often the tests ask the apiserver, sparing it on a busy two-core machine.
const POLL: Duration = Duration::from_millis(200);
/// How long anything the tests wait for may take on a busy machine.
const WAIT: Duration = Duration::from_secs(60);
/// The app every test runs steps of, and its build namespace.
const APP: &str = "acme/shop";
const NAMESPACE: &str = "baton-build-acme-shop";
/// This executor's instance label.
const INSTANCE: &str = "builder-test-0";

/// `steps:` of a builder with the kubernetes executor on `cluster`, plus `extra` lines under
/// `kubernetes:`.
fn settings(cluster: &KubeCluster, extra: &str) -> Result<StepsSettings> {
    let yaml = format!(
        "executor: kubernetes\nkubernetes:\n  kubeconfig: {}\n  image: registry.example/toolchain:1\n  \
         instance: {INSTANCE}\n  schedule_timeout: 4s\n  transfer_timeout: 30s\n  \
         workspace:\n    listen: 127.0.0.1:0\n    url: http://baton-builder.baton.svc:8091\n{extra}",
        cluster.kubeconfig_path().display()
    );
    Ok(yaml_serde::from_str(&yaml)?)
}

async fn executor(cluster: &KubeCluster, extra: &str) -> Result<Executor> {
    let (executor, warning) = start_executor("builder", &settings(cluster, extra)?, &|_| None).await?;
    ensure!(warning.is_none(), "unexpected warning: {warning:?}");
    Ok(executor)
}

/// The build namespace as the platform makes it (deploy/build-namespaces).
async fn build_namespace(cluster: &KubeCluster, name: &str) -> Result<()> {
    cluster.create_namespace(name).await?;
    label_build_namespace(cluster, name, "builder", APP).await
}

fn step(name: &str) -> Step {
    Step {
        name: name.to_owned(),
        run: "echo \"$(id -u)\" > out".to_owned(),
        env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        timeout: Duration::from_secs(30),
        workdir: None,
        network: false,
        limits: Default::default(),
        secrets: vec!["NPM_TOKEN".to_owned()],
        image: None,
    }
}

/// Runs `step` of build-42 of acme/shop in `workspace`, granted `NPM_TOKEN`.
async fn run_in(
    executor: &Executor,
    step: &Step,
    workspace: &std::path::Path,
    limits: Option<&ResourceLimits>,
) -> StepOutcome {
    let secret_env = BTreeMap::from([(
        "NPM_TOKEN".to_owned(),
        baton_kit::secret::Secret::new("npm-secret-value"),
    )]);
    StepRunner::offline()
        .with_executor(executor.clone())
        .run(StepRequest {
            run_id: "build-42",
            app: APP,
            step,
            workspace,
            extra_env: &BTreeMap::new(),
            secrets: &[],
            secret_env: &secret_env,
            limits,
        })
        .await
}

/// Runs `step` in a fresh workspace.
async fn run(executor: &Executor, step: &Step) -> Result<StepOutcome> {
    let workspace = tempfile::tempdir()?;
    std::fs::write(workspace.path().join("README"), "hello\n")?;
    Ok(run_in(executor, step, workspace.path(), None).await)
}

fn step_error(outcome: &StepOutcome) -> Result<&StepError> {
    match &outcome.status {
        StepStatus::Error(error) => Ok(error),
        other => anyhow::bail!("expected the step not to run, it {other}: {:?}", outcome.tail),
    }
}

/// Fails unless the step ended as `expected`, showing its log's tail.
fn ended_as(outcome: &StepOutcome, expected: &StepStatus) -> Result<()> {
    ensure!(&outcome.status == expected, "{:?}: {:?}", outcome.status, outcome.tail);
    Ok(())
}

/// Waits until no step pod or Secret is left in the namespace.
async fn nothing_left(client: &Client) -> Result<()> {
    steps::nothing_left(client, NAMESPACE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_is_reconciled_and_the_pod_locked_down_until_no_node_takes_it() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    let client = cluster.client()?;
    build_namespace(&cluster, NAMESPACE).await?;
    let executor = executor(
        &cluster,
        "  quota:\n    pods: '5'\n  limit_range:\n    cpu: 500m\n    memory: 1Gi\n",
    )
    .await?;
    let compile = step("Compile all");
    let running = tokio::spawn({
        let executor = executor.clone();
        let compile = compile.clone();
        async move { run(&executor, &compile).await }
    });

    // The pod, as the apiserver stores it, while it waits for a node (there is none).
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod = eventually_every(POLL, WAIT, "the step's pod", async || {
        let items = pods
            .list(&ListParams::default().labels("baton.dev/component=step"))
            .await?
            .items;
        Ok(items.into_iter().next().ok_or_else(|| "no pod yet".to_owned()))
    })
    .await?;
    let name = pod.metadata.name.clone().context("a pod without a name")?;
    ensure!(name.starts_with("build-42-compile-all-") && name.len() <= 63, "{name}");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    for (key, value) in [
        ("app.kubernetes.io/managed-by", "baton"),
        ("baton.dev/component", "step"),
        ("baton.dev/service", "builder"),
        ("baton.dev/run", "build-42"),
        ("baton.dev/instance", INSTANCE),
    ] {
        ensure!(labels.get(key).map(String::as_str) == Some(value), "{key}: {labels:?}");
    }
    // `acme/shop` is no label value: it is made one, with a hash of the name.
    ensure!(labels["baton.dev/app"].starts_with("acme-shop-"), "{labels:?}");
    ensure!(labels["baton.dev/step"].starts_with("Compile-all-"), "{labels:?}");
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    ensure!(
        annotations["baton.dev/app"] == APP && annotations["baton.dev/step"] == "Compile all",
        "{annotations:?}"
    );
    ensure!(!labels.contains_key("baton.dev/network"), "{labels:?}");
    let spec = pod.spec.clone().context("no spec")?;
    ensure!(spec.restart_policy.as_deref() == Some("Never"));
    ensure!(spec.automount_service_account_token == Some(false));
    ensure!(spec.enable_service_links == Some(false));
    ensure!(
        spec.active_deadline_seconds == Some(60),
        "{:?}",
        spec.active_deadline_seconds
    );
    let security = spec.security_context.clone().context("no pod security context")?;
    ensure!(security.run_as_non_root == Some(true) && security.run_as_user == Some(65532));
    ensure!(security.run_as_group == Some(65532) && security.fs_group == Some(65532));
    ensure!(security.seccomp_profile.map(|p| p.type_).as_deref() == Some("RuntimeDefault"));
    // No ServiceAccount token volume: only the workspace and /tmp.
    let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    ensure!(volumes == ["workspace", "tmp"], "{volumes:?}");
    let containers: Vec<_> = spec.init_containers.iter().flatten().chain(&spec.containers).collect();
    let names: Vec<_> = containers.iter().map(|c| c.name.as_str()).collect();
    ensure!(names == ["workspace-in", "step", "workspace-out"], "{names:?}");
    for container in &containers {
        let security = container
            .security_context
            .clone()
            .context("no container security context")?;
        ensure!(security.read_only_root_filesystem == Some(true), "{}", container.name);
        ensure!(security.allow_privilege_escalation == Some(false), "{}", container.name);
        let dropped = security.capabilities.and_then(|c| c.drop).unwrap_or_default();
        ensure!(dropped == ["ALL"], "{}: {dropped:?}", container.name);
        let mounts: Vec<_> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        ensure!(mounts == ["/workspace", "/tmp"], "{}: {mounts:?}", container.name);
    }
    let step_container = containers[1];
    ensure!(step_container.image.as_deref() == Some("registry.example/toolchain:1"));
    // The command is an argument of the wrapper, `$` written so the kubelet expands nothing.
    let args = step_container.args.clone().unwrap_or_default();
    ensure!(args[2] == "echo \"$$(id -u)\" > out", "{args:?}");
    let env = step_container.env.clone().unwrap_or_default();
    let secret_ref = env
        .iter()
        .find(|e| e.name == "NPM_TOKEN")
        .and_then(|e| e.value_from.clone());
    ensure!(
        secret_ref.and_then(|s| s.secret_key_ref).map(|r| (r.name, r.key))
            == Some((name.clone(), "NPM_TOKEN".to_owned())),
        "{env:?}"
    );
    ensure!(
        env.iter().all(|e| e.name != "BATON_WORKSPACE_TOKEN"),
        "the step sees the token: {env:?}"
    );
    ensure!(
        env.iter().all(|e| e.value.as_deref() != Some("npm-secret-value")),
        "a secret in plain env"
    );
    // The LimitRange gave the step its cpu.
    let requests = step_container
        .resources
        .clone()
        .and_then(|r| r.requests)
        .unwrap_or_default();
    ensure!(
        requests.get("cpu").map(|q| q.0.as_str()) == Some("500m"),
        "{requests:?}"
    );

    // Its Secret: owned by the pod, holding the token and the granted secret.
    let secret = Api::<Secret>::namespaced(client.clone(), NAMESPACE).get(&name).await?;
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owners.len() == 1 && owners[0].kind == "Pod" && Some(&owners[0].uid) == pod.metadata.uid.as_ref(),
        "{owners:?}"
    );
    let data = secret.data.clone().unwrap_or_default();
    ensure!(data["NPM_TOKEN"].0 == b"npm-secret-value" && data["BATON_WORKSPACE_TOKEN"].0.len() == 64);

    // The namespace's objects.
    let quota = Api::<ResourceQuota>::namespaced(client.clone(), NAMESPACE)
        .get("baton-steps")
        .await?;
    let hard = quota.spec.and_then(|s| s.hard).unwrap_or_default();
    // The configured quota replaces the default one whole.
    ensure!(hard.len() == 1 && hard["pods"].0 == "5", "{hard:?}");
    let limits = Api::<LimitRange>::namespaced(client.clone(), NAMESPACE)
        .get("baton-steps")
        .await?;
    let item = limits.spec.context("no limit range spec")?.limits.remove(0);
    ensure!(item.type_ == "Container");
    ensure!(item.default.unwrap_or_default()["memory"].0 == "1Gi");
    ensure!(item.default_request.unwrap_or_default()["cpu"].0 == "500m");
    let account = Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .get("default")
        .await?;
    ensure!(account.automount_service_account_token == Some(false));
    // The network policies, checked by content: the simulator does not enforce them.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), NAMESPACE);
    let deny = serde_json::to_value(policies.get("baton-default-deny").await?.spec)?;
    ensure!(
        deny == json!({
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [
                {
                    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                {
                    "to": [{
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "baton"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "baton-builder"}},
                    }],
                    "ports": [{"protocol": "TCP", "port": 8091}, {"protocol": "TCP", "port": executor_port(&executor)?}],
                },
            ],
        }),
        "{deny:#}"
    );
    let open = serde_json::to_value(policies.get("baton-step-network").await?.spec)?;
    ensure!(
        open["podSelector"] == json!({"matchLabels": {"baton.dev/network": "true"}}),
        "{open:#}"
    );
    ensure!(open["policyTypes"] == json!(["Egress"]), "{open:#}");
    let outside = &open["egress"][0]["to"];
    ensure!(outside[0]["ipBlock"]["cidr"] == "0.0.0.0/0", "{open:#}");
    ensure!(
        outside[0]["ipBlock"]["except"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("169.254.0.0/16")) && e.contains(&json!("10.0.0.0/8"))),
        "{open:#}"
    );

    // No node at all: the step fails with the scheduler's own words, and nothing is left.
    let outcome = running.await??;
    let StepError::Unschedulable { reason } = step_error(&outcome)? else {
        anyhow::bail!("expected an unschedulable pod, got {:?}", outcome.status);
    };
    ensure!(
        reason.contains("nodes are available") || reason.contains("no nodes available"),
        "{reason}"
    );
    ensure!(
        outcome.tail.iter().any(|l| l.contains("could not be scheduled")),
        "{:?}",
        outcome.tail
    );
    nothing_left(&client).await
}

/// The port the executor's workspace server was bound to (`listen: 127.0.0.1:0`).
fn executor_port(executor: &Executor) -> Result<u16> {
    match executor {
        Executor::Kubernetes(pods) => Ok(pods.workspace_server().port()),
        other => anyhow::bail!("not the kubernetes executor: {}", other.name()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_no_node_can_take_fails_with_the_schedulers_message() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    let _nodes = cluster.simulate_nodes(1).await?;
    build_namespace(&cluster, NAMESPACE).await?;
    // Every simulated node has 8 CPUs.
    let executor = executor(
        &cluster,
        "  limit_range:\n    cpu: '64'\n    memory: 1Gi\n  quota:\n    requests.cpu: '100'\n    limits.cpu: '100'\n",
    )
    .await?;
    let outcome = run(&executor, &step("compile")).await?;
    let StepError::Unschedulable { reason } = step_error(&outcome)? else {
        anyhow::bail!("expected an unschedulable pod, got {:?}", outcome.status);
    };
    ensure!(reason.contains("Insufficient cpu"), "{reason}");
    ensure!(step_error(&outcome)?.metric_label() == "unschedulable");
    nothing_left(&cluster.client()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_beyond_the_quota_waits_for_room_then_is_refused_with_the_quotas_words() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    build_namespace(&cluster, NAMESPACE).await?;
    let executor = executor(&cluster, "  quota:\n    pods: '0'\n").await?;
    // The first step applies the quota; the quota controller then counts what it allows.
    let first = run(&executor, &step("compile")).await?;
    ensure!(
        matches!(step_error(&first)?, StepError::Quota { .. }),
        "{:?}",
        first.status
    );
    let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client()?, NAMESPACE);
    eventually_every(POLL, WAIT, "the quota to be counted", async || {
        let quota = quotas.get("baton-steps").await?;
        Ok(quota
            .status
            .and_then(|s| s.hard)
            .map(|_| ())
            .ok_or_else(|| "not counted yet".to_owned()))
    })
    .await?;
    let outcome = run(&executor, &step("compile")).await?;
    let StepError::Quota { reason } = step_error(&outcome)? else {
        anyhow::bail!("expected a quota refusal, got {:?}", outcome.status);
    };
    ensure!(
        reason.contains("exceeded quota: baton-steps") && reason.contains("pods=1"),
        "{reason}"
    );
    ensure!(step_error(&outcome)?.metric_label() == "quota");
    // It waited for room (up to schedule_timeout) before it failed, and said so.
    ensure!(
        outcome
            .tail
            .iter()
            .any(|l| l.contains("waiting for room in the build namespace's quota")),
        "{:?}",
        outcome.tail
    );
    // Room made while it waits lets its pod in: with no node to take it, it then fails as
    // unschedulable, not as refused.
    let waiting = tokio::spawn({
        let executor = executor.clone();
        async move { run(&executor, &step("compile")).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    quotas
        .patch(
            "baton-steps",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hard": {"pods": "5"}}})),
        )
        .await?;
    let outcome = waiting.await??;
    ensure!(
        matches!(step_error(&outcome)?, StepError::Unschedulable { .. }),
        "{:?}: {:?}",
        outcome.status,
        outcome.tail
    );
    nothing_left(&cluster.client()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_foreign_namespace_fails_naming_the_fix() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    let refused = executor(&cluster, "").await?;
    let outcome = run(&refused, &step("compile")).await?;
    let StepError::Namespace { namespace, reason } = step_error(&outcome)? else {
        anyhow::bail!("expected a namespace error, got {:?}", outcome.status);
    };
    ensure!(namespace == NAMESPACE, "{namespace}");
    ensure!(
        reason.contains("does not exist") && reason.contains("deploy/build-namespaces"),
        "{reason}"
    );
    // A namespace of that name that the platform did not make a build namespace is not used.
    cluster.create_namespace(NAMESPACE).await?;
    let outcome = run(&refused, &step("compile")).await?;
    let StepError::Namespace { reason, .. } = step_error(&outcome)? else {
        anyhow::bail!("expected a namespace error, got {:?}", outcome.status);
    };
    ensure!(reason.contains("baton.dev/build-namespace=builder"), "{reason}");
    // Nor is the build namespace of another app whose name maps to the same one (`acme/Shop`):
    // the namespace names its app, and the fix is a namespace of this app's own.
    label_build_namespace(&cluster, NAMESPACE, "builder", "acme/Shop").await?;
    let outcome = run(&refused, &step("compile")).await?;
    let StepError::Namespace { reason, .. } = step_error(&outcome)? else {
        anyhow::bail!("expected a namespace error, got {:?}", outcome.status);
    };
    ensure!(
        reason.contains("\"acme/Shop\"") && reason.contains("steps.kubernetes.apps.\"acme/shop\".namespace"),
        "{reason}"
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client()?, NAMESPACE);
    ensure!(
        pods.list(&ListParams::default()).await?.items.is_empty(),
        "a pod was created"
    );
    // With its own namespace the app's steps go there.
    let own = executor(
        &cluster,
        &format!("  apps:\n    {APP}:\n      namespace: baton-build-acme-shop-own\n"),
    )
    .await?;
    let Executor::Kubernetes(kubernetes) = &own else {
        anyhow::bail!("not the kubernetes executor");
    };
    ensure!(kubernetes.namespace(APP) == "baton-build-acme-shop-own");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_deletes_what_this_instance_left_and_long_ended_pods() -> Result<()> {
    let cluster = KubeCluster::start().await?;
    let client = cluster.client()?;
    build_namespace(&cluster, NAMESPACE).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let orphan = |name: &str, instance: &str| -> Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "app.kubernetes.io/managed-by": "baton", "baton.dev/component": "step",
                "baton.dev/service": "builder", "baton.dev/instance": instance}},
            "spec": {"containers": [{"name": "step", "image": "registry.example/toolchain:1"}]},
        }))?)
    };
    // Left by this instance before it restarted; running for another instance; ended an hour ago.
    pods.create(&PostParams::default(), &orphan("mine", INSTANCE)?).await?;
    pods.create(&PostParams::default(), &orphan("theirs", "builder-test-1")?)
        .await?;
    pods.create(&PostParams::default(), &orphan("ended", "builder-test-1")?)
        .await?;
    let hour_ago = (k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1)).to_string();
    let ended = json!({"status": {"phase": "Failed", "containerStatuses": [
        {"name": "step", "image": "registry.example/toolchain:1", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"terminated": {"exitCode": 1, "finishedAt": hour_ago}}}]}});
    pods.patch_status("ended", &PatchParams::default(), &Patch::Merge(&ended))
        .await?;
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "mine", "labels": {
        "baton.dev/component": "step", "baton.dev/service": "builder", "baton.dev/instance": INSTANCE}}}))?;
    secrets.create(&PostParams::default(), &secret).await?;

    let _executor = executor(&cluster, "").await?;
    let left = eventually_every(POLL, WAIT, "the reaper to delete the orphans", async || {
        let mut names: Vec<String> = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        let secret_left = secrets.get_opt("mine").await?.is_some();
        Ok(if names == ["theirs"] && !secret_left {
            Ok(names)
        } else {
            Err(format!("pods {names:?}, secret left: {secret_left}"))
        })
    })
    .await?;
    ensure!(left == ["theirs"]);
    Ok(())
}

/// A free port on 127.0.0.1 for the workspace server: pods of the executing simulator share the
/// host's network, so they reach it on loopback.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_in_its_pod_on_the_workspace_and_its_outputs_come_back() -> Result<()> {
    let executing = ExecutingCluster::start().await?;
    let cluster = &executing.cluster;
    build_namespace(cluster, NAMESPACE).await?;
    let settings = executing.steps_yaml(cluster.kubeconfig_path(), INSTANCE, free_port()?);
    let (executor, _) = start_executor("builder", &yaml_serde::from_str(&settings)?, &|_| None).await?;

    let workspace = tempfile::tempdir()?;
    std::fs::write(workspace.path().join("input.txt"), "from the service\n")?;
    let run_step =
        async |step: &Step, limits: Option<&ResourceLimits>| run_in(&executor, step, workspace.path(), limits).await;
    let write = Step {
        run: "cat input.txt; echo \"uid $(id -u) $GREETING $NPM_TOKEN\"; mkdir -p reports && echo '<testsuite/>' > reports/junit.xml; \
              ls /var/run/secrets/kubernetes.io 2>&1 | head -1"
            .to_owned(),
        ..step("write")
    };
    let outcome = run_step(&write, None).await;
    ended_as(&outcome, &StepStatus::Succeeded)?;
    ensure!(outcome.tail[0] == "from the service", "{:?}", outcome.tail);
    // Its uid, its env, its secret masked in the log.
    ensure!(outcome.tail[1] == "uid 65532 hello ***", "{:?}", outcome.tail);
    // No ServiceAccount token in the pod.
    ensure!(outcome.tail[2].contains("No such file"), "{:?}", outcome.tail);
    ensure!(
        std::fs::read_to_string(workspace.path().join("reports/junit.xml"))? == "<testsuite/>\n",
        "the outputs did not come back"
    );
    ensure!(workspace.path().join("input.txt").exists());

    let failing = Step {
        run: "echo about to fail; exit 3".to_owned(),
        ..step("fail")
    };
    let outcome = run_step(&failing, None).await;
    let exited = StepStatus::Failed {
        exit_code: Some(3),
        signal: None,
    };
    ended_as(&outcome, &exited)?;
    ensure!(outcome.tail == ["about to fail"], "{:?}", outcome.tail);

    // The service's own clock ends a step past its timeout.
    let slow = Step {
        run: "echo started; sleep 60".to_owned(),
        timeout: Duration::from_secs(3),
        ..step("slow")
    };
    let outcome = run_step(&slow, None).await;
    ended_as(&outcome, &StepStatus::TimedOut)?;
    ensure!(outcome.tail[0] == "started", "{:?}", outcome.tail);
    ensure!(outcome.duration < Duration::from_secs(30), "{:?}", outcome.duration);

    // Past its memory limit, the kernel kills it: the limit is named.
    let hog = Step {
        run: "awk 'BEGIN { s = \"x\"; while (1) s = s s }'".to_owned(),
        ..step("hog")
    };
    let limits = ResourceLimits {
        memory_bytes: 64 << 20,
        ..ResourceLimits::default()
    };
    let outcome = run_step(&hog, Some(&limits)).await;
    let StepStatus::LimitExceeded { limit, .. } = &outcome.status else {
        anyhow::bail!(
            "expected the memory limit, got {:?}: {:?}",
            outcome.status,
            outcome.tail
        );
    };
    ensure!(*limit == "memory_bytes", "{limit}");
    nothing_left(&cluster.client()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_steps_log_streams_live_and_is_stored_whole_and_masked() -> Result<()> {
    use futures::StreamExt as _;
    use tokio::io::AsyncReadExt as _;

    let nats = baton_tests::NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let topology = baton_kit::fabric::provision(
        &client,
        &baton_schemas::config::JetStreamSettings::default(),
        Duration::from_secs(3600),
    )
    .await?;
    let executing = ExecutingCluster::start().await?;
    let cluster = &executing.cluster;
    build_namespace(cluster, NAMESPACE).await?;
    let settings = executing.steps_yaml(cluster.kubeconfig_path(), INSTANCE, free_port()?);
    let (executor, _) = start_executor("builder", &yaml_serde::from_str(&settings)?, &|_| None).await?;

    let mut live = client
        .subscribe(baton_schemas::subjects::log_subject("build-42", "chatty"))
        .await?;
    client.flush().await?;
    let chatty = Step {
        run: "for i in 1 2 3; do echo \"line $i $NPM_TOKEN\"; sleep 1; done".to_owned(),
        ..step("chatty")
    };
    let workspace = tempfile::tempdir()?;
    let runner = StepRunner::new(&topology).with_executor(executor.clone());
    let secret_env = BTreeMap::from([(
        "NPM_TOKEN".to_owned(),
        baton_kit::secret::Secret::new("npm-secret-value"),
    )]);
    let path = workspace.path().to_owned();
    let running = tokio::spawn(async move {
        runner
            .run(StepRequest {
                run_id: "build-42",
                app: APP,
                step: &chatty,
                workspace: &path,
                extra_env: &BTreeMap::new(),
                secrets: &[],
                secret_env: &secret_env,
                limits: None,
            })
            .await
    });
    // The first line arrives while the step still runs (it sleeps two more seconds after it).
    let first = tokio::time::timeout(WAIT, live.next())
        .await
        .context("no live line")?
        .context("the subscription ended")?;
    ensure!(!running.is_finished(), "the first line came only after the step ended");
    ensure!(first.payload.as_ref() == b"line 1 ***", "{:?}", first.payload);
    let outcome = running.await?;
    ended_as(&outcome, &StepStatus::Succeeded)?;
    let log = outcome
        .log
        .clone()
        .map_err(|e| anyhow::anyhow!("log not stored: {e}"))?;
    ensure!(log.object == "build-42/chatty.log", "{}", log.object);
    let mut stored = Vec::new();
    topology.logs.get(&log.object).await?.read_to_end(&mut stored).await?;
    let stored = String::from_utf8(stored)?;
    ensure!(stored == "line 1 ***\nline 2 ***\nline 3 ***\n", "{stored:?}");
    nothing_left(&cluster.client()?).await
}

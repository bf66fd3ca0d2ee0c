//! Talking to the Kubernetes API: resolving kinds, the environment's namespace, server-side
//! apply (a dry run of every object first, so a release the apiserver rejects leaves nothing
//! half-applied), and pruning what a release no longer contains.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use baton_kit::error::{Classify as _, ErrorKind};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use sha2::Digest as _;

use crate::error::ClusterError;
use crate::manifests::{APP_LABEL, ENVIRONMENT_LABEL, MANAGED_BY, Manifest};

/// The apiserver does not serve `kind` in `group/version`.
fn unknown(group: &str, version: &str, kind: &str, source: kube::Error) -> ClusterError {
    ClusterError::UnknownKind {
        kind: kind.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        source,
    }
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 403)
}

/// The longest field manager name the apiserver accepts.
const MAX_FIELD_MANAGER: usize = 128;

/// The longest configured `field_manager`: room for `/` and an app's hash after it.
pub const MAX_FIELD_MANAGER_BASE: usize = 64;

/// Namespaced kinds Baton prunes besides those of the current release.
const PRUNABLE: &[(&str, &str, &str)] = &[
    ("", "v1", "ConfigMap"),
    ("", "v1", "Secret"),
    ("", "v1", "Service"),
    ("", "v1", "ServiceAccount"),
    ("", "v1", "PersistentVolumeClaim"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("apps", "v1", "DaemonSet"),
    ("batch", "v1", "Job"),
    ("batch", "v1", "CronJob"),
    ("networking.k8s.io", "v1", "Ingress"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("rbac.authorization.k8s.io", "v1", "Role"),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ("policy", "v1", "PodDisruptionBudget"),
];

/// What one prune deletes from: the namespace, the app's objects (by label selector and field
/// manager), less the release's own.
struct PruneScope<'a> {
    namespace: &'a str,
    selector: &'a str,
    app_manager: &'a str,
    keep: &'a BTreeSet<String>,
}

/// A cluster and what the deployer learned about its kinds.
pub struct Cluster {
    client: Client,
    field_manager: String,
    force: bool,
    kinds: Mutex<HashMap<String, (ApiResource, bool)>>,
    // Prunable kinds this apiserver does not serve (e.g. autoscaling/v2 on 1.20): not asked again.
    unserved: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("field_manager", &self.field_manager)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster behind `client`; applies each app as its own field manager under
    /// `field_manager` (see [`Cluster::manager_of`]), forcing conflicts if `force`.
    pub fn new(client: Client, field_manager: impl Into<String>, force: bool) -> Self {
        Self {
            client,
            field_manager: field_manager.into(),
            force,
            kinds: Mutex::new(HashMap::new()),
            unserved: Mutex::new(BTreeSet::new()),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The field manager that applies `app` (its label token): `<field_manager>/<app>`. One
    /// manager per app means the apiserver itself keeps apps apart: another app's apply of a
    /// field this app set is a conflict, not a silent take-over. The apiserver allows 128
    /// characters; past that the app is named by a hash of it instead, still one per app
    /// (`field_manager` itself is at most 64, checked at start).
    pub fn manager_of(&self, app: &str) -> String {
        let name = format!("{}/{app}", self.field_manager);
        if name.len() <= MAX_FIELD_MANAGER {
            return name;
        }
        let digest = hex::encode(sha2::Sha256::digest(app.as_bytes()));
        format!("{}/{}", self.field_manager, &digest[..32])
    }

    /// The field manager every app was applied with before each had its own.
    pub fn shared_manager(&self) -> &str {
        &self.field_manager
    }

    /// Whether a managedFields entry's manager applied `app`: its own manager, or the one shared
    /// manager every app was applied with before each had its own (objects of such releases are
    /// adopted by [`Cluster::check_owners`] when a release names them, and pruned by either).
    pub fn applied_for(&self, manager: Option<&str>, app_manager: &str) -> bool {
        manager.is_some_and(|m| m == app_manager || m == self.field_manager)
    }

    /// The API resource of a kind, and whether it is namespaced.
    ///
    /// # Errors
    /// [`ClusterError::UnknownKind`] for a kind the apiserver does not serve.
    pub async fn resolve(&self, group: &str, version: &str, kind: &str) -> Result<(ApiResource, bool), ClusterError> {
        let key = format!("{group}/{version}/{kind}");
        if let Some(found) = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(found.clone());
        }
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Api(ref status) if status.code == 404 => unknown(group, version, kind, e),
                kube::Error::Discovery(_) => unknown(group, version, kind, e),
                other => ClusterError::api(format!("resolving {kind}"), other),
            })?;
        let found = (resource, caps.scope == Scope::Namespaced);
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, found.clone());
        Ok(found)
    }

    /// Makes sure `namespace` exists, creating it labelled as Baton's when it does not.
    ///
    /// # Errors
    /// [`ClusterError`]; a namespace the deployer may not create is refused with the hint.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn ensure_namespace(&self, namespace: &str, environment: &str) -> Result<(), ClusterError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.get_opt(namespace).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            // Allowed to work in the namespace but not to read namespaces: it exists.
            Err(kube::Error::Api(status)) if status.code == 403 => return Ok(()),
            Err(e) => return Err(ClusterError::api(format!("reading namespace {namespace}"), e)),
        }
        let mut ns = Namespace::default();
        ns.metadata.name = Some(namespace.to_owned());
        ns.metadata.labels = Some(BTreeMap::from([
            (MANAGED_BY.to_owned(), "baton".to_owned()),
            (ENVIRONMENT_LABEL.to_owned(), environment.to_owned()),
        ]));
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e @ kube::Error::Api(_)) if is_forbidden(&e) => Err(ClusterError::NamespaceNotCreatable {
                namespace: namespace.to_owned(),
                source: e,
            }),
            Err(e) => Err(ClusterError::api(format!("creating namespace {namespace}"), e)),
        }
    }

    fn api(&self, resource: &ApiResource, namespaced: bool, namespace: &str) -> Api<DynamicObject> {
        if namespaced {
            Api::namespaced_with(self.client.clone(), namespace, resource)
        } else {
            Api::all_with(self.client.clone(), resource)
        }
    }

    /// Server-side applies every manifest into `namespace`: first all as a dry run (unless there is
    /// only one), then for real. Returns the objects applied. `take_back` forces conflicts (as
    /// `force_conflicts` does for every apply): a heal takes back the fields the release sets
    /// that someone changed by hand.
    ///
    /// # Errors
    /// [`ClusterError`]; a rejected object is named with the apiserver's message.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn apply(
        &self,
        namespace: &str,
        app: &str,
        manifests: &[(Manifest, ApiResource, bool)],
        take_back: bool,
    ) -> Result<Vec<String>, ClusterError> {
        let mut params = PatchParams::apply(&self.manager_of(app));
        if self.force || take_back {
            params = params.force();
        }
        // The dry run makes a release all or nothing; a release of one object is that already.
        let passes: &[bool] = if manifests.len() > 1 { &[true, false] } else { &[false] };
        for &dry_run in passes {
            let params = if dry_run {
                params.clone().dry_run()
            } else {
                params.clone()
            };
            // The objects of one pass go out together: one round trip's latency, not one per object.
            let results = futures::future::join_all(manifests.iter().map(|(manifest, resource, namespaced)| {
                let api = self.api(resource, *namespaced, namespace);
                let params = params.clone();
                async move {
                    api.patch(&manifest.name, &params, &Patch::Apply(&manifest.object))
                        .await
                        .map_err(|e| {
                            let what = format!(
                                "{} {} ({})",
                                if dry_run { "checking" } else { "applying" },
                                manifest.display(),
                                manifest.file
                            );
                            ClusterError::api(what, e)
                        })
                }
            }))
            .await;
            // The first failure in file order is the one reported.
            if let Some(e) = results.into_iter().find_map(Result::err) {
                return Err(e);
            }
        }
        Ok(manifests.iter().map(|(m, _, _)| m.display()).collect())
    }

    /// Refuses a release that names an object another app already owns (its live object carries
    /// another `baton.dev/app` label): Baton applies every app as one field manager, so the
    /// apply would take it over silently. The objects are read at once, one round trip.
    ///
    /// # Errors
    /// [`ClusterError::OwnedByAnotherApp`] naming the object, its file and its owner;
    /// [`ClusterError::Api`] when an object cannot be read.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn check_owners(
        &self,
        namespace: &str,
        app: &str,
        manifests: &[(Manifest, ApiResource, bool)],
    ) -> Result<(), ClusterError> {
        let app_manager = self.manager_of(app);
        let owners = futures::future::join_all(manifests.iter().map(|(manifest, resource, namespaced)| {
            let api = self.api(resource, *namespaced, namespace);
            let app_manager = app_manager.as_str();
            async move {
                let reading = || format!("reading {} ({})", manifest.display(), manifest.file);
                let Some(live) = api
                    .get_opt(&manifest.name)
                    .await
                    .map_err(|e| ClusterError::api(reading(), e))?
                else {
                    return Ok(None);
                };
                let owner = live.metadata.labels.as_ref().and_then(|l| l.get(APP_LABEL)).cloned();
                if let Some(owner) = owner.filter(|owner| owner != app) {
                    return Ok(Some((manifest, owner)));
                }
                if let Some(adopted) = self.adopted(&live, app_manager) {
                    api.patch(&manifest.name, &PatchParams::default(), &Patch::Merge(adopted))
                        .await
                        .map_err(|e| {
                            ClusterError::api(format!("adopting {} ({})", manifest.display(), manifest.file), e)
                        })?;
                }
                Ok::<_, ClusterError>(None)
            }
        }))
        .await;
        // The first in file order is the one reported.
        for result in owners {
            if let Some((manifest, owner)) = result? {
                return Err(ClusterError::OwnedByAnotherApp {
                    file: manifest.file.clone(),
                    object: manifest.display(),
                    namespace: namespace.to_owned(),
                    owner,
                });
            }
        }
        Ok(())
    }

    /// The merge patch that hands `live`'s managedFields entries of the shared manager to
    /// `app_manager` (an entry the app's manager already has for the same operation and
    /// subresource wins, and the shared one is dropped), or `None` when it has none. The
    /// patch carries the object's resourceVersion, so it applies to what was read or not at all.
    fn adopted(&self, live: &DynamicObject, app_manager: &str) -> Option<serde_json::Value> {
        let entries = live.metadata.managed_fields.as_ref()?;
        if !entries
            .iter()
            .any(|e| e.manager.as_deref() == Some(self.field_manager.as_str()))
        {
            return None;
        }
        let has_own = |shared: &ManagedFieldsEntry| {
            entries.iter().any(|e| {
                e.manager.as_deref() == Some(app_manager)
                    && e.operation == shared.operation
                    && e.subresource == shared.subresource
            })
        };
        let kept: Vec<ManagedFieldsEntry> = entries
            .iter()
            .filter_map(|e| {
                if e.manager.as_deref() != Some(self.field_manager.as_str()) {
                    return Some(e.clone());
                }
                (!has_own(e)).then(|| ManagedFieldsEntry {
                    manager: Some(app_manager.to_owned()),
                    ..e.clone()
                })
            })
            .collect();
        Some(serde_json::json!({
            "metadata": {
                "resourceVersion": live.metadata.resource_version,
                "managedFields": kept,
            }
        }))
    }

    /// Deletes the objects labelled as this app's in this environment, applied by the app's field
    /// manager (or the one all apps once shared), that are not in `keep`
    /// (`Kind/name`), among the kinds of `applied` and the usual namespaced kinds. Returns what
    /// was deleted.
    ///
    /// # Errors
    /// [`ClusterError`] when listing or deleting fails (a kind the deployer may not list is
    /// skipped).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn prune(
        &self,
        namespace: &str,
        app: &str,
        selector: &str,
        applied: &[(Manifest, ApiResource, bool)],
    ) -> Result<Vec<String>, ClusterError> {
        let keep: BTreeSet<String> = applied.iter().map(|(m, _, _)| m.display()).collect();
        let kinds = Self::listed_kinds(
            applied
                .iter()
                .filter(|(_, _, namespaced)| *namespaced)
                .map(|(m, _, _)| m),
        );
        let app_manager = self.manager_of(app);
        let scope = PruneScope {
            namespace,
            selector,
            app_manager: &app_manager,
            keep: &keep,
        };
        // Every kind is listed (and its leftovers deleted) at once.
        let per_kind = futures::future::join_all(
            kinds
                .into_iter()
                .map(|(group, version, kind)| self.prune_kind(&scope, group, version, kind)),
        )
        .await;
        let mut pruned = Vec::new();
        for result in per_kind {
            pruned.extend(result?);
        }
        pruned.sort();
        Ok(pruned)
    }

    /// The API of a kind Baton lists (to prune, or to look for drift) in `namespace`, or `None`
    /// when the apiserver does not serve it (remembered) or it is not namespaced.
    pub(crate) async fn listable(
        &self,
        group: &str,
        version: &str,
        kind: &str,
        namespace: &str,
    ) -> Option<Api<DynamicObject>> {
        let key = format!("{group}/{version}/{kind}");
        let unserved = |this: &Self| {
            this.unserved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&key)
        };
        if unserved(self) {
            return None;
        }
        let (resource, namespaced) = match self.resolve(group, version, kind).await {
            Ok(found) => found,
            Err(e) if e.kind() == ErrorKind::Permanent => {
                self.unserved
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key.clone());
                return None;
            }
            Err(_) => return None,
        };
        namespaced.then(|| self.api(&resource, true, namespace))
    }

    /// The prunable kinds and the namespaced kinds of `applied`, as (group, version, kind).
    pub fn listed_kinds<'a>(applied: impl IntoIterator<Item = &'a Manifest>) -> Vec<(String, String, String)> {
        let mut kinds: BTreeMap<String, (String, String, String)> = PRUNABLE
            .iter()
            .map(|(g, v, k)| ((*k).to_owned(), ((*g).to_owned(), (*v).to_owned(), (*k).to_owned())))
            .collect();
        for m in applied {
            let (g, v) = m.group_version();
            kinds.insert(m.kind.clone(), (g.to_owned(), v.to_owned(), m.kind.clone()));
        }
        kinds.into_values().collect()
    }

    /// Every object of `kinds` in `namespace` matching `selector`, as (kind, object), every kind
    /// listed at once; kinds not served or not listable by the deployer are skipped.
    ///
    /// # Errors
    /// [`ClusterError::Api`] when a list fails otherwise.
    pub async fn labelled(
        &self,
        namespace: &str,
        selector: &str,
        kinds: &[(String, String, String)],
    ) -> Result<Vec<(String, DynamicObject)>, ClusterError> {
        let per_kind = futures::future::join_all(kinds.iter().map(|(group, version, kind)| async move {
            let Some(api) = self.listable(group, version, kind, namespace).await else {
                return Ok(Vec::new());
            };
            match api.list(&ListParams::default().labels(selector)).await {
                Ok(list) => Ok(list.items.into_iter().map(|o| (kind.clone(), o)).collect()),
                Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => Ok(Vec::new()),
                Err(e) => Err(ClusterError::api(format!("listing {kind}"), e)),
            }
        }))
        .await;
        let mut out = Vec::new();
        for listed in per_kind {
            out.extend(listed?);
        }
        Ok(out)
    }

    /// What server-side applying `manifest` as `app`'s field manager, forced, would make of the
    /// live object: the apiserver's dry run, which changes nothing. Fields other managers own
    /// that the manifest does not set keep their live values.
    ///
    /// # Errors
    /// [`ClusterError::Api`] naming the object.
    pub async fn dry_run(
        &self,
        namespace: &str,
        app: &str,
        manifest: &Manifest,
        resource: &ApiResource,
    ) -> Result<DynamicObject, ClusterError> {
        let params = PatchParams::apply(&self.manager_of(app)).force().dry_run();
        self.api(resource, true, namespace)
            .patch(&manifest.name, &params, &Patch::Apply(&manifest.object))
            .await
            .map_err(|e| ClusterError::api(format!("comparing {} ({})", manifest.display(), manifest.file), e))
    }

    /// The live object of `manifest`, if there is one.
    ///
    /// # Errors
    /// [`ClusterError::Api`] naming the object.
    pub async fn live(
        &self,
        namespace: &str,
        manifest: &Manifest,
        resource: &ApiResource,
    ) -> Result<Option<DynamicObject>, ClusterError> {
        self.api(resource, true, namespace)
            .get_opt(&manifest.name)
            .await
            .map_err(|e| ClusterError::api(format!("reading {} ({})", manifest.display(), manifest.file), e))
    }

    async fn prune_kind(
        &self,
        scope: &PruneScope<'_>,
        group: String,
        version: String,
        kind: String,
    ) -> Result<Vec<String>, ClusterError> {
        let Some(api) = self.listable(&group, &version, &kind, scope.namespace).await else {
            return Ok(Vec::new());
        };
        let listed = match api.list(&ListParams::default().labels(scope.selector)).await {
            Ok(list) => list,
            Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => return Ok(Vec::new()),
            Err(e) => return Err(ClusterError::api(format!("listing {kind}"), e)),
        };
        let mut pruned = Vec::new();
        for object in listed {
            let Some(name) = object.metadata.name.clone() else {
                continue;
            };
            let display = format!("{kind}/{name}");
            if scope.keep.contains(&display) {
                continue;
            }
            // Only what Baton applied: the labels alone can be copied onto anything (a
            // `kubectl create` with the app's labels is not the release's to delete).
            let applied_by_us = object
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .any(|entry| self.applied_for(entry.manager.as_deref(), scope.app_manager));
            if !applied_by_us {
                let object = display.as_str();
                tracing::info!(
                    object,
                    "not pruned: carries the app's labels but was not applied by Baton"
                );
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => pruned.push(display),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(ClusterError::api(format!("pruning {display}"), e)),
            }
        }
        Ok(pruned)
    }
}

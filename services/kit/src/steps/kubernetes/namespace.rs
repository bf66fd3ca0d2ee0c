//! An app's build namespace, made ready for its steps. The platform creates the namespace (label
//! `baton.dev/build-namespace: builder|tester`) and the RoleBinding that lets the service work in
//! it (`deploy/build-namespaces`), annotated `baton.dev/app` with the one app it is for; the
//! service checks it is there, labelled for it and for this app, then
//! applies (server-side, as `baton-builder` or `baton-tester`) what steps run under: the
//! ResourceQuota and LimitRange `baton-steps`, the NetworkPolicies `baton-default-deny` (no
//! ingress; egress only to DNS and the service's workspace server) and `baton-step-network`
//! (egress to the outside for pods labelled `baton.dev/network: "true"`, never to private,
//! link-local or loopback addresses), and the `default` ServiceAccount with
//! `automountServiceAccountToken: false`. Once per namespace per process, then again at most
//! every [`RECONCILE_EVERY`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;

use super::pod::labels;
use super::settings::{PodSettings, RECONCILE_EVERY};
use crate::steps::StepError;

/// Name of the ResourceQuota and the LimitRange.
pub(crate) const STEPS_OBJECTS: &str = "baton-steps";
/// Name of the NetworkPolicy every step pod is under.
pub(crate) const DEFAULT_DENY: &str = "baton-default-deny";
/// Name of the NetworkPolicy opening egress to steps with `network: true`.
pub(crate) const STEP_NETWORK: &str = "baton-step-network";
/// What `network: true` may not reach: private, shared, link-local (cloud metadata) and loopback
/// addresses, where the cluster's own services are.
const INTERNAL_V4: [&str; 6] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
];
/// The same for IPv6: unique-local, link-local and loopback.
const INTERNAL_V6: [&str; 3] = ["fc00::/7", "fe80::/10", "::1/128"];

/// When each build namespace was last reconciled by this process.
#[derive(Debug, Default)]
pub(super) struct Reconciled {
    at: Mutex<HashMap<String, Instant>>,
}

impl Reconciled {
    /// Makes `namespace` (of `app`) ready for steps, unless this process did so lately.
    ///
    /// # Errors
    /// [`StepError::Namespace`] naming the fix when the namespace is missing, not a build
    /// namespace of this service, or not the service's to manage; [`StepError::Kubernetes`] when
    /// the API fails otherwise.
    pub(super) async fn ensure(
        &self,
        client: &Client,
        settings: &PodSettings,
        app: &str,
        namespace: &str,
    ) -> Result<(), StepError> {
        let fresh = self
            .lock()
            .get(namespace)
            .is_some_and(|at| at.elapsed() < RECONCILE_EVERY);
        if fresh {
            return Ok(());
        }
        reconcile(client, settings, app, namespace).await?;
        self.lock().insert(namespace.to_owned(), Instant::now());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.at.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Annotation of a build namespace naming, as written, the one app whose steps run in it.
pub(super) const APP_ANNOTATION: &str = "baton.dev/app";

/// Checks the namespace and applies every object of it.
async fn reconcile(client: &Client, settings: &PodSettings, app: &str, namespace: &str) -> Result<(), StepError> {
    let missing = |reason: String| StepError::Namespace {
        namespace: namespace.to_owned(),
        reason,
    };
    match Api::<Namespace>::all(client.clone()).get(namespace).await {
        Ok(found) => {
            let label = found
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::BUILD_NAMESPACE))
                .map(String::as_str);
            if label != Some(settings.service) {
                return Err(missing(format!(
                    "it is not labelled {}={}: build namespaces are made from deploy/build-namespaces",
                    labels::BUILD_NAMESPACE,
                    settings.service
                )));
            }
            // Two apps may map to one name (`acme/shop_api`, `acme/shop-api`): the namespace
            // says whose it is, so one app's steps never run under another's quota and policies.
            let owner = found
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(APP_ANNOTATION))
                .map(String::as_str);
            if owner != Some(app) {
                return Err(missing(match owner {
                    Some(other) => format!(
                        "it is the build namespace of app {other:?} (annotation {APP_ANNOTATION}), not of {app:?}: two apps whose names differ only where a namespace name cannot map to one namespace; give this one its own with steps.kubernetes.apps.\"{app}\".namespace"
                    ),
                    None => format!(
                        "it does not name its app: annotate it {APP_ANNOTATION}={app:?} (deploy/build-namespaces does)"
                    ),
                }));
            }
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(missing(format!(
                "it does not exist: create it (and the RoleBinding letting the {} use it) from deploy/build-namespaces, one copy per app",
                settings.service
            )));
        }
        // Without the cluster-wide namespace reader the label cannot be checked; applying below
        // still proves the service may use it.
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::warn!(
                namespace,
                "cannot read the build namespace (bind ClusterRole baton-build-namespace-reader)"
            );
        }
        Err(e) => return Err(StepError::Kubernetes { reason: e.to_string() }),
    }
    let objects = NamespaceObjects::new(settings, app, namespace);
    let params = PatchParams::apply(&settings.field_manager).force();
    let api_error = |kind: &str, e: kube::Error| match e {
        kube::Error::Api(status) if status.code == 403 => missing(format!(
            "the {} may not manage its {kind}: bind ClusterRole baton-step-runner to its ServiceAccount in it (deploy/build-namespaces): {}",
            settings.service, status.message
        )),
        kube::Error::Api(status) if status.code == 404 => missing(format!(
            "it does not exist: create it from deploy/build-namespaces ({})",
            status.message
        )),
        other => StepError::Kubernetes {
            reason: format!("cannot apply the build namespace's {kind}: {other}"),
        },
    };
    apply(client, namespace, STEPS_OBJECTS, &objects.quota, &params)
        .await
        .map_err(|e| api_error("ResourceQuota", e))?;
    apply(client, namespace, STEPS_OBJECTS, &objects.limit_range, &params)
        .await
        .map_err(|e| api_error("LimitRange", e))?;
    apply(client, namespace, DEFAULT_DENY, &objects.default_deny, &params)
        .await
        .map_err(|e| api_error("NetworkPolicy", e))?;
    apply(client, namespace, STEP_NETWORK, &objects.step_network, &params)
        .await
        .map_err(|e| api_error("NetworkPolicy", e))?;
    apply(client, namespace, "default", &objects.service_account, &params)
        .await
        .map_err(|e| api_error("ServiceAccount", e))?;
    tracing::info!(namespace, "build namespace reconciled");
    Ok(())
}

async fn apply<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    object: &K,
    params: &PatchParams,
) -> Result<K, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(name, params, &Patch::Apply(object))
        .await
}

/// What a build namespace holds, as values.
#[derive(Debug, Clone)]
pub(super) struct NamespaceObjects {
    pub(super) quota: ResourceQuota,
    pub(super) limit_range: LimitRange,
    pub(super) default_deny: NetworkPolicy,
    pub(super) step_network: NetworkPolicy,
    pub(super) service_account: ServiceAccount,
}

impl NamespaceObjects {
    pub(super) fn new(settings: &PodSettings, app: &str, namespace: &str) -> Self {
        let meta = |name: &str| ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_owned(), "baton".to_owned()),
                (labels::SERVICE.to_owned(), settings.service.to_owned()),
            ])),
            ..ObjectMeta::default()
        };
        let quantities = |map: BTreeMap<String, String>| -> BTreeMap<String, Quantity> {
            map.into_iter().map(|(k, v)| (k, Quantity(v))).collect()
        };
        let limits = quantities(settings.limit_range(app));
        let selector = |labels: &BTreeMap<String, String>| LabelSelector {
            match_labels: Some(labels.clone()),
            ..LabelSelector::default()
        };
        let port = |protocol: &str, port: u16| NetworkPolicyPort {
            protocol: Some(protocol.to_owned()),
            port: Some(IntOrString::Int(i32::from(port))),
            ..NetworkPolicyPort::default()
        };
        let dns = NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(selector(&BTreeMap::from([(
                    "k8s-app".to_owned(),
                    "kube-dns".to_owned(),
                )]))),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        };
        let workspace_server = NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(selector(&settings.namespace_labels)),
                pod_selector: Some(selector(&settings.pod_labels)),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(settings.ports.iter().map(|p| port("TCP", *p)).collect()),
        };
        let outside = |cidr: &str, except: &[&str]| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.to_owned(),
                except: Some(except.iter().map(|c| (*c).to_owned()).collect()),
            }),
            ..NetworkPolicyPeer::default()
        };
        Self {
            quota: ResourceQuota {
                metadata: meta(STEPS_OBJECTS),
                spec: Some(ResourceQuotaSpec {
                    hard: Some(quantities(settings.quota(app))),
                    ..ResourceQuotaSpec::default()
                }),
                status: None,
            },
            limit_range: LimitRange {
                metadata: meta(STEPS_OBJECTS),
                spec: Some(LimitRangeSpec {
                    limits: vec![LimitRangeItem {
                        type_: "Container".to_owned(),
                        default: Some(limits.clone()),
                        default_request: Some(limits),
                        ..LimitRangeItem::default()
                    }],
                }),
            },
            default_deny: NetworkPolicy {
                metadata: meta(DEFAULT_DENY),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(LabelSelector::default()),
                    policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
                    ingress: None,
                    egress: Some(vec![dns, workspace_server]),
                }),
            },
            step_network: NetworkPolicy {
                metadata: meta(STEP_NETWORK),
                spec: Some(NetworkPolicySpec {
                    pod_selector: Some(selector(&BTreeMap::from([(
                        labels::NETWORK.to_owned(),
                        "true".to_owned(),
                    )]))),
                    policy_types: Some(vec!["Egress".to_owned()]),
                    ingress: None,
                    egress: Some(vec![NetworkPolicyEgressRule {
                        to: Some(vec![outside("0.0.0.0/0", &INTERNAL_V4), outside("::/0", &INTERNAL_V6)]),
                        ports: None,
                    }]),
                }),
            },
            service_account: ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".to_owned()),
                    namespace: Some(namespace.to_owned()),
                    ..ObjectMeta::default()
                },
                automount_service_account_token: Some(false),
                ..ServiceAccount::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_reach_only_dns_and_the_workspace_server_unless_they_declare_network() {
        let yaml = "image: i\nworkspace:\n  listen: 0.0.0.0:9000\n  url: http://baton-builder.baton.svc:8091\n";
        let settings =
            PodSettings::resolve("builder", &yaml_serde::from_str(yaml).unwrap(), &|_| Some("b-0".into())).unwrap();
        let objects = NamespaceObjects::new(&settings, "acme/shop", "baton-build-acme-shop");
        let deny = objects.default_deny.spec.unwrap();
        assert_eq!(deny.pod_selector, Some(LabelSelector::default()));
        assert_eq!(deny.ingress, None);
        let egress = deny.egress.unwrap();
        assert_eq!(egress.len(), 2);
        let server = &egress[1];
        let peer = &server.to.as_ref().unwrap()[0];
        assert_eq!(
            peer.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app.kubernetes.io/name"],
            "baton-builder"
        );
        let ports: Vec<_> = server.ports.as_ref().unwrap().iter().map(|p| p.port.clone()).collect();
        assert_eq!(ports, [Some(IntOrString::Int(8091)), Some(IntOrString::Int(9000))]);
        let open = objects.step_network.spec.unwrap();
        let blocks = &open.egress.unwrap()[0].to.clone().unwrap();
        assert!(
            blocks[0]
                .ip_block
                .as_ref()
                .unwrap()
                .except
                .as_ref()
                .unwrap()
                .contains(&"169.254.0.0/16".to_owned())
        );
        assert_eq!(objects.service_account.automount_service_account_token, Some(false));
    }
}

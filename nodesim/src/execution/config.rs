//! What a pod reads from its namespace: the Secrets and ConfigMaps its volumes and environment
//! variables name, and each container's environment built from them, its image and the pod's
//! own fields. A missing object is the kubelet's error message, which the callers show in the
//! waiting containers before trying again after [`CONFIG_RETRY`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret};
use kube::ResourceExt as _;
use kube::api::Api;
use serde_json::Value;

use super::PodContext;
use crate::image::PulledImage;
use crate::workload::expand;

/// How long a container waiting for its configuration waits between tries.
pub(super) const CONFIG_RETRY: Duration = Duration::from_secs(1);

/// Where a variable or volume takes its data from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    Secret,
    ConfigMap,
}

impl Source {
    fn kind(self) -> &'static str {
        match self {
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
        }
    }
}

impl PodContext<'_> {
    /// The named object of the pod's namespace, `None` when it does not exist.
    async fn get<K>(&self, name: &str) -> Result<Option<K>, String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        api.get_opt(name).await.map_err(|e| e.to_string())
    }

    /// The data of the named Secret or ConfigMap, `None` when it does not exist.
    async fn data(&self, source: Source, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(match source {
            Source::Secret => self.get::<Secret>(name).await?.map(|secret| {
                secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }),
            Source::ConfigMap => self.get::<ConfigMap>(name).await?.map(|map| {
                map.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .chain(map.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)))
                    .collect()
            }),
        })
    }

    /// The object's data; nothing when it is missing and `optional`, else the kubelet's error.
    pub(super) async fn required_data(
        &self,
        source: Source,
        name: &str,
        optional: Option<bool>,
    ) -> Result<BTreeMap<String, Vec<u8>>, String> {
        match self.data(source, name).await? {
            Some(data) => Ok(data),
            None if optional == Some(true) => Ok(BTreeMap::new()),
            None => Err(format!("{} \"{name}\" not found", source.kind().to_lowercase())),
        }
    }

    /// One key of the object (`secretKeyRef`, `configMapKeyRef`).
    async fn key(
        &self,
        source: Source,
        name: &str,
        key: &str,
        optional: Option<bool>,
    ) -> Result<Option<String>, String> {
        match self.required_data(source, name, optional).await?.get(key) {
            Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
            None if optional == Some(true) => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {} {}/{name}",
                source.kind(),
                self.namespace
            )),
        }
    }

    /// The container's environment, in order: the image's, `envFrom`, `env`.
    pub(super) async fn environment(
        &self,
        container: &Container,
        image: &PulledImage,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        for entry in image.config["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some((key, value)) = entry.split_once('=') {
                env.insert(key.to_owned(), value.to_owned());
            }
        }
        for source in container.env_from.iter().flatten() {
            let prefix = source.prefix.clone().unwrap_or_default();
            let references = [
                source
                    .secret_ref
                    .as_ref()
                    .map(|r| (Source::Secret, &r.name, r.optional)),
                source
                    .config_map_ref
                    .as_ref()
                    .map(|r| (Source::ConfigMap, &r.name, r.optional)),
            ];
            for (kind, name, optional) in references.into_iter().flatten() {
                for (key, value) in self.required_data(kind, name, optional).await? {
                    env.insert(format!("{prefix}{key}"), String::from_utf8_lossy(&value).into_owned());
                }
            }
        }
        for var in container.env.iter().flatten() {
            let value = if let Some(value) = &var.value {
                Some(expand(value, &env))
            } else if let Some(from) = &var.value_from {
                if let Some(key_ref) = &from.secret_key_ref {
                    self.key(Source::Secret, &key_ref.name, &key_ref.key, key_ref.optional)
                        .await?
                } else if let Some(key_ref) = &from.config_map_key_ref {
                    self.key(Source::ConfigMap, &key_ref.name, &key_ref.key, key_ref.optional)
                        .await?
                } else if let Some(field) = &from.field_ref {
                    let spec = self.pod.spec.as_ref();
                    Some(match field.field_path.as_str() {
                        "metadata.name" => self.pod.name_any(),
                        "metadata.namespace" => self.namespace.to_owned(),
                        "metadata.uid" => self.pod.uid().unwrap_or_default(),
                        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                        "spec.serviceAccountName" => {
                            spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default()
                        }
                        "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                        other => return Err(format!("the node simulator does not resolve fieldRef {other}")),
                    })
                } else {
                    return Err(format!(
                        "env {}: only secretKeyRef, configMapKeyRef and fieldRef are resolved",
                        var.name
                    ));
                }
            } else {
                Some(String::new())
            };
            if let Some(value) = value {
                env.insert(var.name.clone(), value);
            }
        }
        Ok(env)
    }
}

//! Who may talk to a test cluster: the key material of [`pki`](super::pki), the static bearer
//! tokens of the admin, the deployer, the controller-manager and the scheduler, and the
//! kubeconfigs that carry a token and trust the cluster CA.

use std::path::{Path, PathBuf};

use kube::Config;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rand::Rng as _;
use serde_json::json;

use super::pki::Pki;
use super::{ADMIN_USER, DEPLOYER_USER};
use crate::{HarnessError, write_file};

/// The cluster's key material and tokens.
#[derive(Debug)]
pub(super) struct Credentials {
    pub(super) pki: Pki,
    /// `--token-auth-file`: admin, deployer, controller-manager and scheduler.
    pub(super) token_file: PathBuf,
    pub(super) admin_token: String,
    pub(super) deployer_token: String,
    pub(super) controller_manager_token: String,
    pub(super) scheduler_token: String,
}

impl Credentials {
    /// Generates keys, certificates and tokens into `dir`.
    pub(super) fn generate(openssl: &Path, dir: &Path) -> Result<Self, HarnessError> {
        let pki = Pki::generate(openssl, dir)?;
        let credentials = Self {
            pki,
            token_file: dir.join("tokens.csv"),
            admin_token: random_token(),
            deployer_token: random_token(),
            controller_manager_token: random_token(),
            scheduler_token: random_token(),
        };
        // token,user,uid,"group1,group2" — the controller-manager and the scheduler use the
        // identities the bootstrap RBAC policy grants their permissions to.
        let tokens = format!(
            "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n\
             {},{DEPLOYER_USER},{DEPLOYER_USER}\n\
             {},system:kube-controller-manager,system:kube-controller-manager\n\
             {},system:kube-scheduler,system:kube-scheduler\n",
            credentials.admin_token,
            credentials.deployer_token,
            credentials.controller_manager_token,
            credentials.scheduler_token,
        );
        write_file(&credentials.token_file, &tokens)?;
        Ok(credentials)
    }

    /// Writes a kubeconfig for `server` as `user` with `token` to `path`.
    pub(super) fn write_kubeconfig(
        &self,
        path: &Path,
        server: &str,
        user: &str,
        token: &str,
    ) -> Result<(), HarnessError> {
        write_file(path, &kubeconfig_yaml(server, &self.pki.ca_pem, user, token))
    }
}

/// A fresh random bearer token.
pub(super) fn random_token() -> String {
    hex::encode(rand::rng().random::<[u8; 24]>())
}

/// Base64 of `bytes`, as a kubeconfig's `*-data` fields hold it. k8s-openapi's `ByteString` is
/// base64 in JSON, so its serializer does the encoding.
fn base64(bytes: &[u8]) -> String {
    match serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())) {
        Ok(serde_json::Value::String(encoded)) => encoded,
        other => panic!("k8s-openapi's ByteString did not serialize to a base64 string: {other:?}"),
    }
}

/// A kubeconfig (YAML) for `server` that trusts `ca_pem` and authenticates with `token`.
pub(super) fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "baton-test",
            "cluster": {
                "server": server,
                "certificate-authority-data": base64(ca_pem.as_bytes()),
            },
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{
            "name": "baton-test",
            "context": { "cluster": "baton-test", "user": user, "namespace": "default" },
        }],
        "current-context": "baton-test",
    });
    yaml_serde::to_string(&kubeconfig).expect("a JSON value always serializes to YAML")
}

/// Loads a kubeconfig the harness wrote into a client configuration.
pub(super) async fn load_kubeconfig(path: &Path) -> Result<Config, HarnessError> {
    let kubeconfig_error = |source| HarnessError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_embeds_the_ca_and_the_token() {
        let yaml = kubeconfig_yaml(
            "https://127.0.0.1:6443",
            "-----BEGIN CERTIFICATE-----\n",
            "alice",
            "s3cret",
        );
        let kubeconfig = Kubeconfig::from_yaml(&yaml).expect("kube-rs reads it");
        let cluster = kubeconfig.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==")
        );
        assert_eq!(kubeconfig.auth_infos[0].name, "alice");
        assert_eq!(kubeconfig.current_context.as_deref(), Some("baton-test"));
        assert!(yaml.contains("token: s3cret"), "{yaml}");
    }

    #[test]
    fn tokens_are_random() {
        let token = random_token();
        assert_eq!(token.len(), 48);
        assert_ne!(token, random_token());
    }
}

//! `steps.kubernetes` resolved at start into what running a step as a Pod needs: every field
//! checked (and refused naming it), the service's defaults filled in, and the names Kubernetes
//! accepts derived from Baton's own (an app's build namespace, a step's pod, label values).
//! Pure: no I/O, the environment read through the function the service passes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::Uri;
use baton_schemas::config::{AppStepOverrides, KubernetesStepsSettings};
use sha2::{Digest, Sha256};

use crate::service::Env;
use crate::settings::ConfigError;

/// Longest name of a namespace, a pod or a label value.
pub(super) const MAX_NAME: usize = 63;
/// How long a build namespace's objects are trusted before they are applied again.
pub(super) const RECONCILE_EVERY: Duration = Duration::from_secs(300);

/// What running a step as a Pod needs, resolved from `steps.kubernetes`.
#[derive(Debug, Clone)]
pub(super) struct PodSettings {
    /// `builder` or `tester`: the `baton.dev/service` label and the build namespaces' label.
    pub(super) service: &'static str,
    /// Server-side apply field manager: `baton-builder` or `baton-tester`.
    pub(super) field_manager: String,
    /// Prefix of the build namespaces.
    pub(super) namespace_prefix: String,
    /// The default step image.
    pub(super) image: String,
    /// Image of the workspace-in and workspace-out containers.
    pub(super) helper_image: String,
    /// uid of every container.
    pub(super) uid: i64,
    /// gid of every container (and `fsGroup`).
    pub(super) gid: i64,
    /// Where the workspace server listens.
    pub(super) listen: SocketAddr,
    /// How pods reach it, without a trailing `/`.
    pub(super) url: String,
    /// The TCP ports step pods may reach the server on: the URL's (a Service's port) and the
    /// one it listens on (the pod's port, which a NetworkPolicy sees after the Service).
    pub(super) ports: Vec<u16>,
    /// `namespaceSelector` of the service's pods.
    pub(super) namespace_labels: BTreeMap<String, String>,
    /// `podSelector` of the service's pods.
    pub(super) pod_labels: BTreeMap<String, String>,
    quota: BTreeMap<String, String>,
    limit_range: BTreeMap<String, String>,
    apps: BTreeMap<String, AppStepOverrides>,
    /// Longest wait for scheduling and images.
    pub(super) schedule_timeout: Duration,
    /// Added to a step's timeout for the pod's `activeDeadlineSeconds`.
    pub(super) transfer_timeout: Duration,
    /// This replica's `baton.dev/instance`.
    pub(super) instance: String,
}

impl PodSettings {
    /// Checks `steps.kubernetes` of `service` (`builder` or `tester`).
    ///
    /// # Errors
    /// The first field that is missing or invalid, by its full name.
    pub(super) fn resolve(
        service: &'static str,
        settings: &KubernetesStepsSettings,
        env: Env<'_>,
    ) -> Result<Self, ConfigError> {
        let field = |name: &str| format!("steps.kubernetes.{name}");
        let image = settings
            .image
            .clone()
            .filter(|image| !image.trim().is_empty())
            .ok_or_else(|| {
                ConfigError::invalid(
                    field("image"),
                    "executor kubernetes needs a default step image: a toolchain image with /bin/sh, best pinned by digest (registry/toolchain@sha256:…)",
                )
            })?;
        check_image(&image).map_err(|why| ConfigError::invalid(field("image"), why))?;
        check_image(&settings.helper_image).map_err(|why| ConfigError::invalid(field("helper_image"), why))?;
        let namespace_prefix = settings.namespace_prefix.clone().unwrap_or_else(|| match service {
            "tester" => "baton-test-".to_owned(),
            _ => "baton-build-".to_owned(),
        });
        if namespace_prefix.is_empty()
            || namespace_prefix.len() > 40
            || !namespace_prefix.starts_with(|c: char| c.is_ascii_lowercase())
            || !namespace_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(ConfigError::invalid(
                field("namespace_prefix"),
                format!(
                    "{namespace_prefix:?} cannot start a namespace name: lowercase letters, digits and `-`, starting with a letter, at most 40 characters"
                ),
            ));
        }
        for (name, id) in [("run_as.uid", settings.run_as.uid), ("run_as.gid", settings.run_as.gid)] {
            if id == 0 {
                return Err(ConfigError::invalid(
                    field(name),
                    "steps must not run as root: choose an unprivileged id (default 65532)",
                ));
            }
        }
        let url = settings
            .workspace
            .url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        let url_port = workspace_url_port(&url).map_err(|why| ConfigError::invalid(field("workspace.url"), why))?;
        let mut ports = vec![url_port];
        if settings.workspace.listen.port() != url_port {
            ports.push(settings.workspace.listen.port());
        }
        if settings.service.namespace_labels.is_empty() {
            return Err(ConfigError::invalid(
                field("service.namespace_labels"),
                "name the labels of the namespace the service runs in (e.g. kubernetes.io/metadata.name: baton): without them every namespace's pods would be reachable from steps",
            ));
        }
        for (name, labels) in [
            ("service.namespace_labels", &settings.service.namespace_labels),
            ("service.pod_labels", &settings.service.pod_labels),
        ] {
            for (key, value) in labels {
                if !is_label_key(key) || !is_label_value(value) {
                    return Err(ConfigError::invalid(
                        field(name),
                        format!("{key}: {value} is not a Kubernetes label"),
                    ));
                }
            }
        }
        let pod_labels = if settings.service.pod_labels.is_empty() {
            BTreeMap::from([("app.kubernetes.io/name".to_owned(), format!("baton-{service}"))])
        } else {
            settings.service.pod_labels.clone()
        };
        check_quantities(&field("quota"), &settings.quota)?;
        check_quantities(&field("limit_range"), &settings.limit_range)?;
        for (app, overrides) in &settings.apps {
            if let Some(namespace) = &overrides.namespace
                && (namespace.len() > MAX_NAME
                    || !namespace.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    || !namespace.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    || !namespace
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            {
                return Err(ConfigError::invalid(
                    field(&format!("apps.{app}.namespace")),
                    format!(
                        "{namespace:?} is not a namespace name: lowercase letters, digits and `-`, starting and ending with a letter or digit, at most {MAX_NAME} characters"
                    ),
                ));
            }
            check_quantities(&field(&format!("apps.{app}.quota")), &overrides.quota)?;
            check_quantities(&field(&format!("apps.{app}.limit_range")), &overrides.limit_range)?;
        }
        for (name, value) in [
            ("schedule_timeout", settings.schedule_timeout),
            ("transfer_timeout", settings.transfer_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(field(name), "must be longer than 0s, e.g. 2m"));
            }
        }
        let instance = settings
            .instance
            .clone()
            .filter(|i| !i.is_empty())
            .or_else(|| env("HOSTNAME").filter(|h| !h.is_empty()))
            .ok_or_else(|| {
                ConfigError::invalid(
                    field("instance"),
                    "name this replica (default: $HOSTNAME, which is not set): its pods carry it, so that after a restart it deletes the ones it left",
                )
            })?;
        if !is_label_value(&instance) {
            return Err(ConfigError::invalid(
                field("instance"),
                format!("{instance:?} is not a Kubernetes label value (at most 63 letters, digits, `-`, `_`, `.`)"),
            ));
        }
        Ok(Self {
            service,
            field_manager: format!("baton-{service}"),
            namespace_prefix,
            image,
            helper_image: settings.helper_image.clone(),
            uid: i64::from(settings.run_as.uid),
            gid: i64::from(settings.run_as.gid),
            listen: settings.workspace.listen,
            url,
            ports,
            namespace_labels: settings.service.namespace_labels.clone(),
            pod_labels,
            quota: settings.quota.clone(),
            limit_range: settings.limit_range.clone(),
            apps: settings.apps.clone(),
            schedule_timeout: settings.schedule_timeout,
            transfer_timeout: settings.transfer_timeout,
            instance,
        })
    }

    /// The server is listening on `port`: with `listen` on port 0 (tests), the port the system
    /// chose is the one the network policy allows.
    pub(super) fn listening_on(&mut self, port: u16) {
        if self.listen.port() != port {
            self.ports.retain(|p| *p != self.listen.port());
            self.listen.set_port(port);
            if !self.ports.contains(&port) {
                self.ports.push(port);
            }
        }
    }

    /// The build namespace of `app`: the prefix and the app as a DNS label.
    pub(super) fn namespace(&self, app: &str) -> String {
        if let Some(namespace) = self.apps.get(app).and_then(|o| o.namespace.clone()) {
            return namespace;
        }
        let room = MAX_NAME - self.namespace_prefix.len();
        format!("{}{}", self.namespace_prefix, dns_label(app, room, "app"))
    }

    /// The ResourceQuota's `spec.hard` for `app`: the defaults with its overrides.
    pub(super) fn quota(&self, app: &str) -> BTreeMap<String, String> {
        let mut quota = self.quota.clone();
        if let Some(overrides) = self.apps.get(app) {
            quota.extend(overrides.quota.clone());
        }
        quota
    }

    /// The LimitRange's per-container defaults for `app`: the defaults with its overrides.
    pub(super) fn limit_range(&self, app: &str) -> BTreeMap<String, String> {
        let mut limits = self.limit_range.clone();
        if let Some(overrides) = self.apps.get(app) {
            limits.extend(overrides.limit_range.clone());
        }
        limits
    }
}

/// `text` as a DNS label of at most `room` characters, predictably (`acme/shop` → `acme-shop`,
/// so the platform can name the namespace it creates): lowercased, every run of other
/// characters one `-`, trimmed. Only a label that had to be cut ends in `-` and 8 hex of the
/// text's SHA-256. `fallback` stands in for a text with no letter or digit.
pub(super) fn dns_label(text: &str, room: usize, fallback: &str) -> String {
    let mut label = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.ends_with('-') && !label.is_empty() {
            label.push('-');
        }
    }
    let label = label.trim_end_matches('-');
    let label = if label.is_empty() { fallback } else { label };
    if label.len() <= room {
        return label.to_owned();
    }
    let suffix = short_hash(text);
    let keep = room.saturating_sub(suffix.len() + 1);
    let head = label[..label.len().min(keep)].trim_end_matches('-');
    if head.is_empty() {
        suffix
    } else {
        format!("{head}-{suffix}")
    }
}

/// A label value for `text`: itself when it is one, else its letters, digits, `-`, `_` and
/// `.` cut to fit with a hash suffix (as [`dns_label`] does).
pub(super) fn label_value(text: &str) -> String {
    if is_label_value(text) {
        return text.to_owned();
    }
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let suffix = short_hash(text);
    let keep = MAX_NAME - suffix.len() - 1;
    let head = cleaned[..cleaned.len().min(keep)].trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        suffix
    } else {
        format!("{head}-{suffix}")
    }
}

/// 8 hex digits of the SHA-256 of `text`.
pub(super) fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

/// Whether `value` is a label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`,
/// beginning and ending with an alphanumeric.
pub(super) fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= MAX_NAME
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

/// Whether `key` is a label key: an optional DNS prefix and `/`, then a name as a value but
/// not empty.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// An image reference as the kubelet takes it: no spaces, no scheme.
fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) || image.contains("://") {
        return Err(format!(
            "{image:?} is not an image reference (registry/name:tag or registry/name@sha256:…)"
        ));
    }
    Ok(())
}

/// The TCP port of the workspace URL, checked: `http` or `https`, a host, no query.
fn workspace_url_port(url: &str) -> Result<u16, String> {
    if url.is_empty() {
        return Err(
            "executor kubernetes needs the URL its pods reach the service's workspace server at, e.g. http://baton-builder.baton.svc:8091"
                .to_owned(),
        );
    }
    let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    if uri.host().is_none_or(str::is_empty) || uri.query().is_some() || url.contains('@') {
        return Err(format!("{url:?} must name a host, without user or query"));
    }
    if url.contains(['\'', '"', '`', '$', '\\', ' ']) {
        return Err(format!("{url:?} contains a character a URL of a Service does not need"));
    }
    Ok(uri.port_u16().unwrap_or(default_port))
}

/// Checks every value of a quantity map (`quota`, `limit_range`) is a Kubernetes quantity.
fn check_quantities(field: &str, quantities: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in quantities {
        if !is_quantity(value) {
            return Err(ConfigError::invalid(
                format!("{field}.{name}"),
                format!("{value:?} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi, 1.5G)"),
            ));
        }
    }
    Ok(())
}

/// Whether `value` is a Kubernetes quantity: a decimal number and an optional suffix.
fn is_quantity(value: &str) -> bool {
    const SUFFIXES: [&str; 13] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T"];
    let number = value.strip_prefix('+').unwrap_or(value);
    let number = SUFFIXES
        .iter()
        .chain(&["P", "E"])
        .find_map(|s| number.strip_suffix(s))
        .unwrap_or(number);
    let number = match number.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => {
            let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if exponent.is_empty() || !exponent.chars().all(|c| c.is_ascii_digit()) {
                return false;
            }
            mantissa
        }
        None => number,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    !(whole.is_empty() && fraction.is_empty())
        && whole.chars().all(|c| c.is_ascii_digit())
        && fraction.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> KubernetesStepsSettings {
        yaml_serde::from_str(yaml).unwrap()
    }

    const MINIMAL: &str =
        "image: registry.example/toolchain:1\nworkspace:\n  url: http://baton-builder.baton.svc:8091\n";

    fn env(name: &str) -> Option<String> {
        (name == "HOSTNAME").then(|| "baton-builder-0".to_owned())
    }

    #[test]
    fn a_minimal_config_gets_the_services_defaults() {
        let builder = PodSettings::resolve("builder", &settings(MINIMAL), &env).unwrap();
        assert_eq!(builder.namespace("acme/shop"), "baton-build-acme-shop");
        assert_eq!(builder.instance, "baton-builder-0");
        assert_eq!(builder.field_manager, "baton-builder");
        assert_eq!(builder.ports, [8091]);
        assert_eq!(builder.pod_labels["app.kubernetes.io/name"], "baton-builder");
        let tester = PodSettings::resolve("tester", &settings(MINIMAL), &env).unwrap();
        assert_eq!(tester.namespace("acme/shop"), "baton-test-acme-shop");
        assert_eq!(tester.pod_labels["app.kubernetes.io/name"], "baton-tester");
    }

    #[test]
    fn an_incomplete_or_invalid_config_is_refused_naming_the_field() {
        let cases = [
            ("workspace:\n  url: http://x:1\n", "steps.kubernetes.image"),
            ("image: a b\nworkspace:\n  url: http://x:1\n", "steps.kubernetes.image"),
            ("image: i\n", "steps.kubernetes.workspace.url"),
            (
                "image: i\nworkspace:\n  url: ftp://x\n",
                "steps.kubernetes.workspace.url",
            ),
            (
                "image: i\nworkspace:\n  url: 'http://x:1/$(id)'\n",
                "steps.kubernetes.workspace.url",
            ),
            (
                "image: i\nworkspace:\n  url: http://u@x:1\n",
                "steps.kubernetes.workspace.url",
            ),
            (
                "image: i\nhelper_image: ''\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.helper_image",
            ),
            (
                "image: i\nnamespace_prefix: Build_\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.namespace_prefix",
            ),
            (
                "image: i\nrun_as:\n  uid: 0\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.run_as.uid",
            ),
            (
                "image: i\napps:\n  acme/shop:\n    namespace: Build_Shop\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.apps.acme/shop.namespace",
            ),
            (
                "image: i\nrun_as:\n  gid: 0\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.run_as.gid",
            ),
            (
                "image: i\nquota:\n  pods: ten\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.quota.pods",
            ),
            (
                "image: i\napps:\n  acme/shop:\n    limit_range:\n      memory: 4 Gi\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.apps.acme/shop.limit_range.memory",
            ),
            (
                "image: i\nschedule_timeout: 0s\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.schedule_timeout",
            ),
            (
                "image: i\ntransfer_timeout: 0s\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.transfer_timeout",
            ),
            (
                "image: i\nservice:\n  namespace_labels: {}\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.service.namespace_labels",
            ),
            (
                "image: i\nservice:\n  pod_labels: {'a b': c}\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.service.pod_labels",
            ),
            (
                "image: i\ninstance: 'a/b'\nworkspace:\n  url: http://x\n",
                "steps.kubernetes.instance",
            ),
        ];
        for (yaml, field) in cases {
            let error = PodSettings::resolve("builder", &settings(yaml), &env).unwrap_err();
            assert_eq!(error.field(), Some(field), "{yaml}: {error}");
        }
        let no_hostname = PodSettings::resolve("builder", &settings(MINIMAL), &|_| None).unwrap_err();
        assert_eq!(no_hostname.field(), Some("steps.kubernetes.instance"));
    }

    #[test]
    fn the_network_policy_allows_the_urls_port_and_the_listening_one() {
        let yaml = "image: i\nworkspace:\n  listen: 0.0.0.0:9000\n  url: https://ws.baton.svc\n";
        let resolved = PodSettings::resolve("builder", &settings(yaml), &env).unwrap();
        assert_eq!(resolved.ports, [443, 9000]);
        assert_eq!(resolved.url, "https://ws.baton.svc");
        let yaml = "image: i\nworkspace:\n  listen: 127.0.0.1:0\n  url: http://ws:8091\n";
        let mut resolved = PodSettings::resolve("builder", &settings(yaml), &env).unwrap();
        resolved.listening_on(41234);
        assert_eq!(resolved.ports, [8091, 41234]);
    }

    #[test]
    fn per_app_overrides_replace_only_their_keys() {
        let yaml =
            format!("{MINIMAL}apps:\n  acme/shop:\n    quota:\n      pods: '3'\n    limit_range:\n      cpu: 500m\n");
        let resolved = PodSettings::resolve("builder", &settings(&yaml), &env).unwrap();
        let quota = resolved.quota("acme/shop");
        assert_eq!((quota["pods"].as_str(), quota["limits.memory"].as_str()), ("3", "32Gi"));
        assert_eq!(resolved.quota("acme/web")["pods"], "10");
        assert_eq!(resolved.limit_range("acme/shop")["cpu"], "500m");
        assert_eq!(resolved.limit_range("acme/shop")["memory"], "4Gi");
    }

    #[test]
    fn names_become_predictable_dns_labels_cut_with_a_hash() {
        assert_eq!(dns_label("shop", 63, "app"), "shop");
        assert_eq!(dns_label("acme/shop", 63, "app"), "acme-shop");
        assert_eq!(dns_label("Acme/Shop", 63, "app"), "acme-shop");
        assert_eq!(dns_label("-lead/ing-", 63, "app"), "lead-ing");
        let long = dns_label(&"x".repeat(100), 40, "app");
        assert_eq!(long.len(), 40);
        assert!(long.starts_with("xxx") && long.contains('-'));
        let odd = dns_label("///", 63, "app");
        assert_eq!(odd, "app");
        // Cut names differ by their hash.
        assert_ne!(
            dns_label(&format!("{}a", "x".repeat(80)), 40, "app"),
            dns_label(&format!("{}b", "x".repeat(80)), 40, "app")
        );
        for label in [long, odd, dns_label("-lead/ing-", 63, "app")] {
            assert!(label.len() <= 63 && is_label_value(&label) && !label.starts_with('-') && !label.ends_with('-'));
        }
        assert_eq!(label_value("build-42"), "build-42");
        let cut = label_value(&format!("{}/x", "r".repeat(80)));
        assert!(cut.len() <= 63 && is_label_value(&cut), "{cut}");
    }

    #[test]
    fn quantities_are_checked() {
        for good in ["1", "500m", "4Gi", "1.5G", ".5", "1e3", "+2", "10Ki", "0"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "ten", "4 Gi", "4GiB", "-", "1e", "1.2.3", "Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}

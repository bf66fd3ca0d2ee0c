//! What an executed container is, decided without I/O: its command line (the pod's `command`
//! and `args` over the image's `Entrypoint` and `Cmd`, with `$(VAR)` references expanded as the
//! kubelet expands them), its user, and Kubernetes quantities in bytes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSecurityContext};
use serde_json::Value;

/// Expands `$(NAME)` references to variables of `env` as the kubelet does: `$$` is a literal
/// `$`, a reference to an unknown variable stays as written.
pub(super) fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The command line of `container` on an image whose config is `image`: `command` replaces the
/// image's `Entrypoint` (and then its `Cmd` is dropped), `args` replaces its `Cmd`.
pub(super) fn command_line(container: &Container, image: &Value, env: &BTreeMap<String, String>) -> Vec<String> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let expanded = |items: &[String]| items.iter().map(|item| expand(item, env)).collect::<Vec<_>>();
    match (&container.command, &container.args) {
        (Some(command), args) => [expanded(command), expanded(args.as_deref().unwrap_or_default())].concat(),
        (None, Some(args)) => [strings(&image["Entrypoint"]), expanded(args)].concat(),
        (None, None) => [strings(&image["Entrypoint"]), strings(&image["Cmd"])].concat(),
    }
}

/// The uid and gid a container runs as: its own security context, else the pod's, else the
/// image's numeric `User` (`uid` or `uid:gid`), else root. A group not set anywhere is 0.
pub(super) fn user(container: &Container, pod: Option<&PodSecurityContext>, image: &Value) -> (u32, u32) {
    let own = container.security_context.as_ref();
    let image_user = image["User"].as_str().unwrap_or("");
    let (image_uid, image_gid) = match image_user.split_once(':') {
        Some((uid, gid)) => (uid.parse().ok(), gid.parse().ok()),
        None => (image_user.parse().ok(), None),
    };
    let id = |value: Option<i64>| value.and_then(|v| u32::try_from(v).ok());
    let uid = id(own.and_then(|c| c.run_as_user))
        .or_else(|| id(pod.and_then(|p| p.run_as_user)))
        .or(image_uid)
        .unwrap_or(0);
    let gid = id(own.and_then(|c| c.run_as_group))
        .or_else(|| id(pod.and_then(|p| p.run_as_group)))
        .or(image_gid)
        .unwrap_or(0);
    (uid, gid)
}

/// Whether the container must not run as root (`runAsNonRoot`, its own or the pod's).
pub(super) fn must_be_non_root(container: &Container, pod: Option<&PodSecurityContext>) -> bool {
    container
        .security_context
        .as_ref()
        .and_then(|c| c.run_as_non_root)
        .or_else(|| pod.and_then(|p| p.run_as_non_root))
        .unwrap_or(false)
}

/// A Kubernetes quantity (`64Mi`, `1G`, `500k`, `1048576`, `1e6`) in bytes, rounded up.
pub(super) fn quantity_bytes(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    // number = digits / 10^fraction.len(), in integers so no precision is lost.
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = 10_u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let (numerator, denominator): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "m" => (1, 1_000),
        exponent if exponent.starts_with(['e', 'E']) => (10_u128.checked_pow(exponent[1..].parse().ok()?)?, 1),
        _ => return None,
    };
    let bytes = digits.checked_mul(numerator)?.div_ceil(scale.checked_mul(denominator)?);
    u64::try_from(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn references_expand_as_the_kubelet_expands_them() {
        let vars = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &vars), "1-two");
        assert_eq!(expand("$(MISSING) $$(A) $A", &vars), "$(MISSING) $(A) $A");
        assert_eq!(expand("cost: 5$", &vars), "cost: 5$");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn command_and_args_override_the_image() -> anyhow::Result<()> {
        let image = json!({"Entrypoint": ["/entry"], "Cmd": ["default"]});
        let container = |value: Value| -> anyhow::Result<Container> { Ok(serde_json::from_value(value)?) };
        let vars = env(&[("X", "x")]);
        let line = |c: Container| command_line(&c, &image, &vars);
        assert_eq!(line(container(json!({"name": "c"}))?), ["/entry", "default"]);
        assert_eq!(
            line(container(json!({"name": "c", "args": ["$(X)"]}))?),
            ["/entry", "x"]
        );
        assert_eq!(
            line(container(
                json!({"name": "c", "command": ["sh"], "args": ["-c", "echo $(X)"]})
            )?),
            ["sh", "-c", "echo x"]
        );
        assert_eq!(line(container(json!({"name": "c", "command": ["sh"]}))?), ["sh"]);
        Ok(())
    }

    #[test]
    fn the_container_user_wins_over_the_pod_and_the_image() -> anyhow::Result<()> {
        let container: Container = serde_json::from_value(json!({"name": "c", "securityContext": {"runAsUser": 7}}))?;
        let pod: PodSecurityContext = serde_json::from_value(json!({"runAsUser": 5, "runAsGroup": 6}))?;
        assert_eq!(user(&container, Some(&pod), &json!({"User": "9:9"})), (7, 6));
        let bare: Container = serde_json::from_value(json!({"name": "c"}))?;
        assert_eq!(user(&bare, None, &json!({"User": "9:8"})), (9, 8));
        assert_eq!(user(&bare, None, &json!({"User": "nobody"})), (0, 0));
        Ok(())
    }

    #[test]
    fn quantities_are_bytes() {
        assert_eq!(quantity_bytes("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1048576"), Some(1_048_576));
        assert_eq!(quantity_bytes("1e3"), Some(1000));
        assert_eq!(quantity_bytes("0.5Ki"), Some(512));
        assert_eq!(quantity_bytes("lots"), None);
    }
}

//! The new image's config (the OCI image config JSON): the base's, with the spec's
//! environment, entrypoint, ports and labels applied and Baton's provenance labels added, and
//! the checks of those spec values, made before any work starts.

use baton_schemas::pipeline::ImageSpec;
use serde_json::{Map, Value, json};

use super::error::ImageError;
use super::{CREATED, REVISION_LABEL, SOURCE_LABEL};

/// Platform of images from `scratch`, and the one picked from a multi-platform base.
const OS: &str = "linux";
/// See [`OS`].
const ARCHITECTURE: &str = "amd64";

/// Checks the spec's fields that do not concern files (those are checked by [`build_layer`](super::build_layer)).
pub(super) fn check_spec(spec: &ImageSpec) -> Result<(), ImageError> {
    let invalid = |field: &str, message: String| ImageError::InvalidSpec {
        field: field.to_owned(),
        message,
    };
    for (index, add) in spec.add.iter().enumerate() {
        if let Some(mode) = &add.mode {
            parse_mode(mode).map_err(|message| invalid(&format!("image.add[{index}].mode"), message))?;
        }
    }
    for port in &spec.expose {
        exposed_port(port).map_err(|message| invalid("image.expose", message))?;
    }
    for name in spec.env.keys() {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(invalid(
                "image.env",
                format!("`{name}` is not a variable name (no `=`, not empty)"),
            ));
        }
    }
    Ok(())
}

/// `"0755"` (or `"0o755"`, `"755"`) as permission bits.
pub(super) fn parse_mode(mode: &str) -> Result<u32, String> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|bits| *bits <= 0o7777)
        .ok_or_else(|| format!("`{mode}` is not an octal mode like \"0755\""))
}

/// `8080`, `8080/tcp` or `53/udp` as the config's `8080/tcp` key.
fn exposed_port(port: &str) -> Result<String, String> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    match (number.parse::<u16>(), protocol.as_str()) {
        (Ok(n), "tcp" | "udp" | "sctp") if n > 0 => Ok(format!("{n}/{protocol}")),
        _ => Err(format!(
            "`{port}` is not a port like \"8080/tcp\" (1-65535, tcp, udp or sctp)"
        )),
    }
}

/// The new image's config: the base's (or an empty linux/amd64 one), with the spec applied.
///
/// - `Env`: the base's, a variable of the spec replacing the base's value in place, new ones
///   appended in name order;
/// - `Entrypoint` and `Cmd`: the spec's when given; a new entrypoint without `cmd` drops the
///   base's `Cmd` (as Docker does: the base's arguments were meant for the base's entrypoint);
/// - `WorkingDir`, `User`: the spec's when given; `ExposedPorts` and `Labels`: merged, the spec
///   winning, then Baton's revision and source labels;
/// - `rootfs.diff_ids`: the base's plus `layer_diff_ids`; `history`: the base's plus one entry per new layer,
///   dropped when the base's history does not match its layers;
/// - `created`: [`CREATED`].
///
/// # Errors
/// [`ImageError::InvalidSpec`] for an exposed port that is not `<port>[/<protocol>]`. Fields of
/// the base config that have the wrong JSON type are replaced, not refused.
pub fn image_config(
    base: Option<&Value>,
    spec: &ImageSpec,
    commit: &str,
    source_url: &str,
    layer_diff_ids: &[String],
) -> Result<Value, ImageError> {
    let mut image = match base {
        Some(Value::Object(config)) => config.clone(),
        _ => Map::new(),
    };
    image.insert("created".into(), json!(CREATED));
    image.entry("architecture").or_insert_with(|| json!(ARCHITECTURE));
    image.entry("os").or_insert_with(|| json!(OS));

    let config = object_field(&mut image, "config");
    let mut env: Vec<Value> = config.get("Env").and_then(Value::as_array).cloned().unwrap_or_default();
    for (name, value) in &spec.env {
        let entry = json!(format!("{name}={value}"));
        let same_name = |existing: &Value| {
            existing
                .as_str()
                .is_some_and(|e| e.split_once('=').map_or(e, |(key, _)| key) == name.as_str())
        };
        match env.iter_mut().find(|existing| same_name(existing)) {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    if !env.is_empty() {
        config.insert("Env".into(), Value::Array(env));
    }
    if !spec.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(spec.entrypoint));
        if spec.cmd.is_empty() {
            config.remove("Cmd");
        }
    }
    if !spec.cmd.is_empty() {
        config.insert("Cmd".into(), json!(spec.cmd));
    }
    if let Some(workdir) = &spec.workdir {
        config.insert("WorkingDir".into(), json!(workdir));
    }
    if let Some(user) = &spec.user {
        config.insert("User".into(), json!(user));
    }
    if !spec.expose.is_empty() {
        let ports = object_field(config, "ExposedPorts");
        for port in &spec.expose {
            let key = exposed_port(port).map_err(|message| ImageError::InvalidSpec {
                field: "image.expose".into(),
                message,
            })?;
            ports.insert(key, json!({}));
        }
    }
    let labels = object_field(config, "Labels");
    for (name, value) in &spec.labels {
        labels.insert(name.clone(), json!(value));
    }
    labels.insert(REVISION_LABEL.into(), json!(commit));
    labels.insert(SOURCE_LABEL.into(), json!(source_url));

    let rootfs = object_field(&mut image, "rootfs");
    rootfs.insert("type".into(), json!("layers"));
    let mut diff_ids: Vec<Value> = rootfs
        .get("diff_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let base_layers = diff_ids.len();
    diff_ids.extend(layer_diff_ids.iter().map(|id| json!(id)));
    rootfs.insert("diff_ids".into(), Value::Array(diff_ids));

    let mut history: Vec<Value> = image
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let base_layer_entries = history
        .iter()
        .filter(|entry| !entry.get("empty_layer").and_then(Value::as_bool).unwrap_or(false))
        .count();
    if base_layer_entries == base_layers {
        // One history entry per new layer: one per `add` entry (or one empty layer).
        let added: Vec<String> = spec.add.iter().map(|add| format!("{} {}", add.from, add.to)).collect();
        for n in 0..layer_diff_ids.len() {
            let what = added.get(n).map_or_else(|| "nothing".to_owned(), Clone::clone);
            history.push(json!({
                "created": CREATED,
                "created_by": format!("baton: add {what}"),
                "comment": format!("built from {source_url} at {commit}"),
            }));
        }
        image.insert("history".into(), Value::Array(history));
    } else {
        // Runtimes pair history entries with layers; a mismatched list is worse than none.
        image.remove("history");
    }
    Ok(Value::Object(image))
}

/// `map[key]` as an object, replacing whatever else was there.
fn object_field<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(object) => object,
        _ => unreachable!("just made an object"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use baton_schemas::pipeline::AddEntry;

    use super::*;
    use crate::image::SCRATCH;

    fn spec() -> ImageSpec {
        ImageSpec {
            name: None,
            base: SCRATCH.into(),
            add: vec![AddEntry {
                from: "bin".into(),
                to: "/app/bin".into(),
                mode: None,
            }],
            entrypoint: vec!["/app/bin/shop".into()],
            cmd: vec![],
            env: BTreeMap::from([("PATH".into(), "/app/bin".into()), ("MODE".into(), "prod".into())]),
            workdir: Some("/app".into()),
            user: Some("65532".into()),
            expose: vec!["8080/tcp".into(), "9090".into()],
            labels: BTreeMap::from([("team".into(), "shop".into())]),
        }
    }

    #[test]
    fn config_from_scratch_has_the_spec_and_provenance() {
        let config = image_config(
            None,
            &spec(),
            "abc123",
            "https://git.example.com/shop.git",
            &["sha256:11".to_owned()],
        )
        .unwrap();
        assert_eq!(config["created"], CREATED);
        assert_eq!(
            (config["os"].as_str(), config["architecture"].as_str()),
            (Some("linux"), Some("amd64"))
        );
        assert_eq!(config["config"]["Entrypoint"], json!(["/app/bin/shop"]));
        assert_eq!(config["config"]["Env"], json!(["MODE=prod", "PATH=/app/bin"]));
        assert_eq!(
            config["config"]["ExposedPorts"],
            json!({"8080/tcp": {}, "9090/tcp": {}})
        );
        assert_eq!(config["config"]["WorkingDir"], "/app");
        assert_eq!(config["config"]["User"], "65532");
        assert_eq!(config["config"]["Labels"][REVISION_LABEL], "abc123");
        assert_eq!(
            config["config"]["Labels"][SOURCE_LABEL],
            "https://git.example.com/shop.git"
        );
        assert_eq!(config["config"]["Labels"]["team"], "shop");
        assert_eq!(config["rootfs"], json!({"type": "layers", "diff_ids": ["sha256:11"]}));
        assert_eq!(config["history"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn config_inherits_the_base_and_overrides_it() {
        let base = json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/bin:/bin", "LANG=C"], "Cmd": ["/bin/sh"],
                "ExposedPorts": {"22/tcp": {}}, "Labels": {"vendor": "base", REVISION_LABEL: "base-rev"}
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:b1"]},
            "history": [{"created_by": "ADD rootfs"}, {"created_by": "CMD", "empty_layer": true}]
        });
        let config = image_config(
            Some(&base),
            &spec(),
            "abc123",
            "https://x/y.git",
            &["sha256:11".to_owned()],
        )
        .unwrap();
        assert_eq!(config["config"]["Env"], json!(["PATH=/app/bin", "LANG=C", "MODE=prod"]));
        assert_eq!(
            config["config"].get("Cmd"),
            None,
            "a new entrypoint drops the base's arguments"
        );
        assert_eq!(
            config["config"]["ExposedPorts"],
            json!({"22/tcp": {}, "8080/tcp": {}, "9090/tcp": {}})
        );
        assert_eq!(config["config"]["Labels"]["vendor"], "base");
        assert_eq!(config["config"]["Labels"][REVISION_LABEL], "abc123");
        assert_eq!(config["rootfs"]["diff_ids"], json!(["sha256:b1", "sha256:11"]));
        assert_eq!(config["history"].as_array().unwrap().len(), 3);
        assert_eq!(config["created"], CREATED);

        let mut no_entrypoint = spec();
        no_entrypoint.entrypoint.clear();
        let config = image_config(Some(&base), &no_entrypoint, "c", "s", &["sha256:11".to_owned()]).unwrap();
        assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));

        let mut broken_history = base.clone();
        broken_history["history"] = json!([]);
        let config = image_config(Some(&broken_history), &spec(), "c", "s", &["sha256:11".to_owned()]).unwrap();
        assert_eq!(
            config.get("history"),
            None,
            "a history that does not match the layers is dropped"
        );
    }

    #[test]
    fn spec_values_are_checked() {
        let mut bad = spec();
        bad.expose = vec!["http".into()];
        let e = check_spec(&bad).unwrap_err();
        assert!(e.to_string().starts_with("image.expose: `http`"), "{e}");
        let mut bad = spec();
        bad.env.insert("A=B".into(), "x".into());
        assert!(check_spec(&bad).unwrap_err().to_string().contains("image.env"));
        assert_eq!(exposed_port("53/UDP").unwrap(), "53/udp");
        assert!(exposed_port("0").is_err() && exposed_port("70000").is_err() && exposed_port("1/icmp").is_err());
        assert_eq!(parse_mode("0o755"), Ok(0o755));
    }
}

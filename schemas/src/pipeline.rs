//! The pipeline file, `.baton.yaml` at the root of an application's repository: how the
//! builder builds the commit and assembles its image, how the tester tests it, and where the
//! application's Kubernetes manifests live. Schema: `schemas/json/pipeline.json`.
//!
//! ```yaml
//! build:
//!   steps:
//!     - name: compile
//!       run: cargo build --release
//!       timeout: 10m
//! image:
//!   base: scratch                # or an image reference, e.g. registry.example.com/base/busybox:1.36
//!   add:
//!     - from: target/release/shop
//!       to: /app/shop
//!       mode: "0755"
//!   entrypoint: [/app/shop]
//!   expose: ["8080/tcp"]
//! test:
//!   steps:
//!     - name: unit
//!       run: cargo test
//!       junit: target/junit.xml
//! manifests: deploy/k8s
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The path of the pipeline file inside a repository.
pub const PIPELINE_FILE: &str = ".baton.yaml";

/// The whole pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Pipeline {
    /// How the commit is built.
    pub build: BuildSection,
    /// How the image is assembled from the built workspace. Without it the commit is built
    /// (and tested) but produces no image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// How the commit is tested.
    pub test: TestSection,
    /// Directory (relative to the repository root) holding the application's Kubernetes
    /// manifests, which the promoter pins to the image digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<String>,
}

/// The build section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BuildSection {
    /// Steps run in order in a fresh checkout of the commit; the first failure fails the build.
    pub steps: Vec<Step>,
}

/// One command run in the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Name shown in events and logs; unique within its section.
    pub name: String,
    /// The command, run by `/bin/sh -c`.
    pub run: String,
    /// Environment variables of the step. Nothing else from the builder's environment is
    /// passed on, except a minimal `PATH` (and `HOME` pointing into the workspace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Longest the step may run; then it is killed with its whole process group.
    #[serde(default = "default_step_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Directory to run in, relative to the repository root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Outbound network access. Without it (the default) the step has no network at all; with
    /// it, the step reaches the outside through user-mode networking, and the host's own
    /// loopback (NATS, the registry, the Kubernetes API, every service port) stays unreachable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// What the step may use, each within the service's maxima (`steps.limits` of the builder's
    /// or tester's config); what it leaves out is the maximum. Asking for more fails the build
    /// naming the field.
    #[serde(default, skip_serializing_if = "StepResources::is_empty")]
    pub limits: StepResources,
    /// Secrets the step needs, by name. Each must be granted to the repository in the service's
    /// config (`steps.secrets`); it is set as an environment variable of that name for this step
    /// only, and masked in its log. A name not granted fails the build naming it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The container image the step runs in (`registry/toolchain@sha256:…`), when the service
    /// runs steps as Pods (`steps.executor: kubernetes`); default: the service's `steps.kubernetes.image`.
    /// Other executors refuse a step that names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Resources one step asks for (each optional: the service's maximum when left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StepResources {
    /// Address space one process may map, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Processes (and threads) the step may run at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// CPU seconds one process may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Files one process may hold open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Bytes the step may add to its workspace (and one file may grow to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

impl StepResources {
    /// Whether the step asks for nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn default_step_timeout() -> Duration {
    Duration::from_secs(600)
}

/// The test section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TestSection {
    /// Test steps.
    pub steps: Vec<TestStep>,
    /// Longest the whole suite may run.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
}

/// One test step: a [`Step`] that may also report JUnit XML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestStep {
    /// The command and its settings.
    #[serde(flatten)]
    pub step: Step,
    /// JUnit XML report the step writes (relative to the repository root); when set, the
    /// report's failures decide the outcome, not only the exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit: Option<String>,
    /// Whether the step may run in parallel with the other independent steps.
    #[serde(default)]
    pub independent: bool,
}

/// The image assembled on top of a base from files of the built workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Repository name in the registry, under the builder's `registry.repository_prefix`
    /// (`<prefix>/...`; a name outside it fails the build); default: `<prefix>/<app>`,
    /// lower-cased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `scratch`, or the reference of the base image whose layers are reused by digest.
    #[serde(default = "scratch")]
    pub base: String,
    /// Files and directories of the workspace to put in the image (one new layer).
    #[serde(default)]
    pub add: Vec<AddEntry>,
    /// The image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// The image's default arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Environment of the image (added to the base's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User the image runs as: a name, a uid, or `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Exposed ports, e.g. `8080/tcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    /// Labels (Baton adds `org.opencontainers.image.revision` and `.source`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn scratch() -> String {
    "scratch".to_owned()
}

/// A file or directory of the workspace copied into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddEntry {
    /// Path in the workspace, relative to the repository root; must stay inside it.
    pub from: String,
    /// Absolute path in the image.
    pub to: String,
    /// Permission bits as an octal string (`"0755"`); default: the file's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A pipeline file that cannot be used, with the field and line at fault.
pub type PipelineError = crate::userfile::FileError;

impl Pipeline {
    /// Parses and checks a pipeline file.
    ///
    /// # Errors
    /// Names the field and line of the first problem.
    pub fn parse(text: &str) -> Result<Self, PipelineError> {
        let pipeline: Pipeline = crate::userfile::from_yaml(PIPELINE_FILE, text)?;
        pipeline
            .check()
            .map_err(|(field, message)| PipelineError::in_field(PIPELINE_FILE, field, message))?;
        Ok(pipeline)
    }

    fn check(&self) -> Result<(), (String, String)> {
        check_steps("build.steps", self.build.steps.iter())?;
        check_steps("test.steps", self.test.steps.iter().map(|t| &t.step))?;
        if let Some(image) = &self.image {
            for (i, add) in image.add.iter().enumerate() {
                if !add.to.starts_with('/') {
                    return Err((
                        format!("image.add[{i}].to"),
                        format!("`{}` must be an absolute path in the image", add.to),
                    ));
                }
                if add.from.is_empty() {
                    return Err((
                        format!("image.add[{i}].from"),
                        "must name a file or directory of the workspace".into(),
                    ));
                }
                if let Some(mode) = &add.mode
                    && u32::from_str_radix(mode.trim_start_matches("0o"), 8).map_or(true, |m| m > 0o7777)
                {
                    return Err((
                        format!("image.add[{i}].mode"),
                        format!("`{mode}` is not an octal mode like \"0755\""),
                    ));
                }
            }
            if image.base.trim().is_empty() {
                return Err(("image.base".into(), "write `scratch` or an image reference".into()));
            }
        }
        Ok(())
    }
}

fn check_steps<'a>(section: &str, steps: impl Iterator<Item = &'a Step>) -> Result<(), (String, String)> {
    let mut names = std::collections::BTreeSet::new();
    for (i, step) in steps.enumerate() {
        if step.name.trim().is_empty() {
            return Err((format!("{section}[{i}].name"), "every step needs a name".into()));
        }
        if !names.insert(step.name.as_str()) {
            return Err((
                format!("{section}[{i}].name"),
                format!("`{}` is used by two steps", step.name),
            ));
        }
        if step.run.trim().is_empty() {
            return Err((format!("{section}[{i}].run"), "must be a command".into()));
        }
        if step.timeout.is_zero() {
            return Err((format!("{section}[{i}].timeout"), "must be longer than 0s".into()));
        }
    }
    Ok(())
}

/// yaml_serde appends " at line L column C" to messages; the location is reported separately.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("pipeline.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").or_else(|| l.strip_prefix("//!")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let p = Pipeline::parse(&text).unwrap();
        assert_eq!(p.build.steps[0].timeout, Duration::from_secs(600));
        let image = p.image.unwrap();
        assert_eq!(image.base, "scratch");
        assert_eq!(image.add[0].mode.as_deref(), Some("0755"));
        assert_eq!(p.test.steps[0].junit.as_deref(), Some("target/junit.xml"));
        assert_eq!(p.manifests.as_deref(), Some("deploy/k8s"));
    }

    #[test]
    fn errors_name_field_and_line() {
        let err = Pipeline::parse("build:\n  steps:\n    - name: a\n      run: make\n      timout: 5m\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("line 5") && text.contains("build.steps[0]") && text.contains("timout"),
            "{text}"
        );
        let err = Pipeline::parse("build:\n  steps: nope\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("build.steps"), "{err}");
        let err = Pipeline::parse("image:\n  add:\n    - from: a\n      to: relative\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("image.add[0].to"), "{err}");
        let err = Pipeline::parse("build:\n  steps:\n    - {name: a, run: x}\n    - {name: a, run: y}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("build.steps[1].name"), "{err}");
        let err = Pipeline::parse("image:\n  add:\n    - {from: a, to: /a, mode: '999'}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("image.add[0].mode"), "{err}");
        let err = Pipeline::parse("test:\n  steps:\n    - {name: a, run: x, junitt: y}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.steps[0]") && err.contains("junitt"), "{err}");
    }
}

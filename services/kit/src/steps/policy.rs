//! What one step of one repository may have: its resources within the service's maxima, and the
//! secrets the service grants that repository. The builder and the tester resolve their `steps`
//! and `limits` config into a [`StepPolicy`] once at start (secret values read, repository globs
//! checked), then check every step of a pipeline with [`StepPolicy::allow_all`] before running any
//! of them: a step asking for more than the maxima, or for a secret its repository is not
//! granted, fails the run with the field named as the user wrote it. The check is pure: no I/O,
//! no clock, the same answer for the same pipeline.
//!
//! At start the same config also chooses how steps run: [`start_executor`] builds the executor
//! `steps.executor` names and proves the sandbox works on this host (or refuses to start, naming
//! `steps.executor` and the fix), starts the kubernetes executor from `steps.kubernetes`, and
//! words the warning an unsandboxed service keeps showing. A step naming its own `image` is
//! refused unless steps run as pods.
//!
//! ```no_run
//! # fn example(steps: &[baton_schemas::pipeline::Step]) -> Result<(), Box<dyn std::error::Error>> {
//! use baton_kit::steps::StepPolicy;
//! use baton_schemas::config::builder::StepLimits;
//!
//! let settings = yaml_serde::from_str(
//!     "secrets:\n  NPM_TOKEN:\n    value_env: NPM_TOKEN\n    repositories: [acme/*]\n",
//! )?;
//! let env = |name: &str| std::env::var(name).ok();
//! let policy = StepPolicy::resolve("builder", &settings, &StepLimits::default(), &env)?;
//! // One grant per step, in order: its limits and its secrets, for its StepRequest.
//! let grants = policy.allow_all("acme/shop", "build.steps", steps)?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, PathBuf};

use baton_schemas::config::builder::StepLimits;
use baton_schemas::config::{SandboxSettings, StepExecutor, StepsSettings};
use baton_schemas::pipeline::Step;

use super::{Executor, Kubernetes, ResourceLimits, Sandbox};
use crate::secret::{Named, Secret};
use crate::service::Env;
use crate::settings::ConfigError;

/// Names a secret may not have: the service sets them for every step.
const RESERVED_NAMES: [&str; 2] = ["PATH", "HOME"];
/// Prefix of the variables the service sets (`BATON_IMAGE`, `BATON_COMMIT`, …).
const RESERVED_PREFIX: &str = "BATON_";
/// Longest name quoted in a message; the rest is cut, so a hostile name cannot flood a reason.
const MAX_QUOTED_NAME: usize = 100;

/// A service's rules for steps, resolved from its config at start.
#[derive(Clone)]
pub struct StepPolicy {
    /// `builder` or `tester`: how messages name the service whose config to change.
    service: &'static str,
    /// The most a step may ask for (0: unlimited); what it gets when it asks nothing.
    maxima: ResourceLimits,
    /// Each secret by name: its value and who may have it.
    grants: BTreeMap<String, Grant>,
    /// How steps run: only Pods can run a step in an `image` of its own.
    executor: StepExecutor,
}

impl fmt::Debug for StepPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepPolicy")
            .field("service", &self.service)
            .field("maxima", &self.maxima)
            .field("grants", &self.grants)
            .field("executor", &self.executor)
            .finish()
    }
}

/// One secret and the repositories granted it.
#[derive(Debug, Clone)]
struct Grant {
    value: Secret,
    repositories: Vec<RepositoryGlob>,
}

/// What one step gets: the two things its [`StepRequest`](super::StepRequest) needs.
#[derive(Debug, Clone)]
pub struct StepGrant {
    /// Its limits: what it asked for, or the maximum where it asked nothing.
    pub limits: ResourceLimits,
    /// The secrets it asked for, each granted to its repository, by name.
    pub secrets: BTreeMap<String, Secret>,
}

/// A step refused: where it is in the pipeline file and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at} ({step}): {problem}")]
pub struct PolicyError {
    /// The step's place as the user wrote it, e.g. `build.steps[1]`.
    pub at: String,
    /// The step's name.
    pub step: String,
    /// What is wrong with it.
    pub problem: StepProblem,
}

impl PolicyError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        self.problem.metric_label()
    }
}

/// What a step asks for that it may not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepProblem {
    /// A limit above the service's maximum.
    #[error("limits.{field} {asked} is above this {service}'s maximum {maximum}")]
    AboveMaximum {
        /// The field under `limits`, e.g. `memory_bytes`.
        field: &'static str,
        /// What the step asked for.
        asked: u64,
        /// The service's maximum.
        maximum: u64,
        /// `builder` or `tester`.
        service: &'static str,
    },
    /// A limit of 0, which would mean no limit at all, under a service that has one.
    #[error(
        "limits.{field} 0 would lift the limit, above this {service}'s maximum {maximum}: ask for at least 1, or leave it out to get the maximum"
    )]
    Unlimited {
        /// The field under `limits`.
        field: &'static str,
        /// The service's maximum.
        maximum: u64,
        /// `builder` or `tester`.
        service: &'static str,
    },
    /// A secret name that is not an environment variable name, or one the service sets itself.
    #[error("secrets[{index}] {name:?} {why}")]
    InvalidName {
        /// Its place in the step's `secrets`.
        index: usize,
        /// The name as written (cut when very long).
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The same secret listed twice.
    #[error("secrets[{index}]: secret {name} is listed twice")]
    Duplicate {
        /// Its second place in the step's `secrets`.
        index: usize,
        /// The name.
        name: String,
    },
    /// A secret that would replace a variable of the step's own `env`.
    #[error("secret {name} is also set in env: remove it from env, the secret sets it")]
    ShadowsEnv {
        /// The name.
        name: String,
    },
    /// An `image` for a step under an executor that runs steps on the service's host.
    #[error(
        "image needs steps.executor: kubernetes in the {service}'s config (steps run on its host here, not in images)"
    )]
    ImageNeedsKubernetes {
        /// `builder` or `tester`.
        service: &'static str,
    },
    /// A secret the service does not grant the repository (or does not have at all).
    #[error("secret {name} is not granted to {repository} (grants are in the {service}'s steps.secrets)")]
    NotGranted {
        /// The name.
        name: String,
        /// The repository's full name.
        repository: String,
        /// `builder` or `tester`.
        service: &'static str,
    },
}

impl StepProblem {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::AboveMaximum { .. } | Self::Unlimited { .. } => "above_maximum",
            Self::InvalidName { .. } => "invalid_secret_name",
            Self::Duplicate { .. } => "duplicate_secret",
            Self::ShadowsEnv { .. } => "secret_shadows_env",
            Self::NotGranted { .. } => "secret_not_granted",
            Self::ImageNeedsKubernetes { .. } => "image_needs_kubernetes",
        }
    }
}

impl StepPolicy {
    /// Resolves a service's `steps` and `limits` config: every secret's value read through `env`
    /// or from its file, its name and repository globs checked.
    ///
    /// `service` is `builder` or `tester`, as messages name it.
    ///
    /// # Errors
    /// The first invalid field, e.g. `steps.secrets.NPM_TOKEN.value_env` when the variable is
    /// not set.
    pub fn resolve(
        service: &'static str,
        settings: &StepsSettings,
        maxima: &StepLimits,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut grants = BTreeMap::new();
        for (name, secret) in &settings.secrets {
            let field = |sub: &str| format!("steps.secrets.{name}{sub}");
            if let Err(why) = check_secret_name(name) {
                return Err(ConfigError::invalid(field(""), format!("{name:?} {why}")));
            }
            let (value_env, file) = (field(".value_env"), field(".file"));
            let value = Secret::from_config(
                Named {
                    field: &value_env,
                    value: secret.value_env.as_deref(),
                },
                Named {
                    field: &file,
                    value: secret.file.as_deref(),
                },
                env,
            )?
            .ok_or_else(|| {
                ConfigError::invalid(
                    &value_env,
                    "a secret needs a value: set value_env (a variable of the service) or file",
                )
            })?;
            if secret.repositories.is_empty() {
                return Err(ConfigError::invalid(
                    field(".repositories"),
                    "grants the secret to no repository: list the repositories (e.g. acme/shop, or acme/*) or remove the secret",
                ));
            }
            let repositories = secret
                .repositories
                .iter()
                .enumerate()
                .map(|(i, glob)| {
                    RepositoryGlob::parse(glob).map_err(|why| {
                        ConfigError::invalid(field(&format!(".repositories[{i}]")), format!("{glob:?} {why}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            grants.insert(name.clone(), Grant { value, repositories });
        }
        Ok(Self {
            service,
            maxima: maxima.into(),
            grants,
            executor: settings.executor,
        })
    }

    /// The limits of a step that asks for nothing: the maxima.
    pub fn maxima(&self) -> &ResourceLimits {
        &self.maxima
    }

    /// Checks one step of `repository` (its full name, e.g. `acme/shop`) at `at` (e.g.
    /// `build.steps[1]`): its image against the executor, its limits against the maxima, its
    /// secrets against the grants.
    ///
    /// # Errors
    /// An image the executor cannot run steps in, the first limit above its maximum, or the
    /// first secret the step may not have.
    pub fn allow(&self, repository: &str, at: &str, step: &Step) -> Result<StepGrant, PolicyError> {
        let refuse = |problem| PolicyError {
            at: at.to_owned(),
            step: quoted(&step.name),
            problem,
        };
        if step.image.is_some() && self.executor != StepExecutor::Kubernetes {
            return Err(refuse(StepProblem::ImageNeedsKubernetes { service: self.service }));
        }
        let limits = self.limits(step).map_err(refuse)?;
        let secrets = self.secrets(repository, step).map_err(refuse)?;
        Ok(StepGrant { limits, secrets })
    }

    /// Checks every step of a section (`build.steps` or `test.steps`), before any runs; one grant
    /// per step, in order.
    ///
    /// # Errors
    /// The first step refused.
    pub fn allow_all<'a>(
        &self,
        repository: &str,
        section: &str,
        steps: impl IntoIterator<Item = &'a Step>,
    ) -> Result<Vec<StepGrant>, PolicyError> {
        steps
            .into_iter()
            .enumerate()
            .map(|(i, step)| self.allow(repository, &format!("{section}[{i}]"), step))
            .collect()
    }

    fn limits(&self, step: &Step) -> Result<ResourceLimits, StepProblem> {
        let asked = &step.limits;
        let max = &self.maxima;
        let within = |field: &'static str, asked: Option<u64>, maximum: u64| match asked {
            None => Ok(maximum),
            // 0 in the maxima is no limit, so any ask fits; an ask of 0 is no limit either.
            Some(asked) if maximum == 0 => Ok(asked),
            Some(0) => Err(StepProblem::Unlimited {
                field,
                maximum,
                service: self.service,
            }),
            Some(asked) if asked > maximum => Err(StepProblem::AboveMaximum {
                field,
                asked,
                maximum,
                service: self.service,
            }),
            Some(asked) => Ok(asked),
        };
        // In the order the fields are declared in `.baton.yaml`'s schema.
        Ok(ResourceLimits {
            memory_bytes: within("memory_bytes", asked.memory_bytes, max.memory_bytes)?,
            processes: within("processes", asked.processes, max.processes)?,
            cpu_seconds: within("cpu_seconds", asked.cpu_seconds, max.cpu_seconds)?,
            open_files: within("open_files", asked.open_files, max.open_files)?,
            disk_bytes: within("disk_bytes", asked.disk_bytes, max.disk_bytes)?,
        })
    }

    fn secrets(&self, repository: &str, step: &Step) -> Result<BTreeMap<String, Secret>, StepProblem> {
        let mut granted = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (index, name) in step.secrets.iter().enumerate() {
            if let Err(why) = check_secret_name(name) {
                return Err(StepProblem::InvalidName {
                    index,
                    name: quoted(name),
                    why,
                });
            }
            if !seen.insert(name.as_str()) {
                return Err(StepProblem::Duplicate {
                    index,
                    name: quoted(name),
                });
            }
            if step.env.contains_key(name) {
                return Err(StepProblem::ShadowsEnv { name: quoted(name) });
            }
            match self.grants.get(name) {
                Some(grant) if grant.repositories.iter().any(|glob| glob.matches(repository)) => {
                    granted.insert(name.clone(), grant.value.clone());
                }
                _ => {
                    return Err(StepProblem::NotGranted {
                        name: quoted(name),
                        repository: quoted(repository),
                        service: self.service,
                    });
                }
            }
        }
        Ok(granted)
    }
}

/// What an unsandboxed service logs at start and `/readyz` repeats.
pub const UNSANDBOXED_WARNING: &str = "steps.executor is unsandboxed: steps run as this service's own user without isolation, so any .baton.yaml can read the service's environment and files (its NATS, registry and git credentials), reach its network and leave processes behind; set steps.executor: sandbox once the host can run bubblewrap";

/// The executor `steps.executor` names, ready to run steps: with `sandbox` (the default), once a
/// trial step ran in it (and the warning for `/readyz` when one with network could not: steps
/// that declare `network: true` will fail); with `unsandboxed`, after logging
/// [`UNSANDBOXED_WARNING`], which it returns too for `/readyz`; with `kubernetes`, once
/// [`Kubernetes::start`] resolved `steps.kubernetes`, built its client, bound its workspace
/// server and reaped what this instance left. `service` (`builder` or `tester`) names the
/// service in messages and on its pods; `env` is the service's environment (`$HOSTNAME`).
///
/// # Errors
/// `steps.sandbox.*` or `steps.kubernetes.*` invalid or incomplete, or `steps.executor`: the
/// sandbox cannot run here, saying why and how to fix it (install bubblewrap, allow user
/// namespaces, or choose `unsandboxed`).
pub async fn start_executor(
    service: &'static str,
    settings: &StepsSettings,
    env: Env<'_>,
) -> Result<(Executor, Option<String>), ConfigError> {
    let (run_as, read_only) = sandbox_settings(&settings.sandbox)?;
    match settings.executor {
        StepExecutor::Sandbox => {
            let executor = Executor::Sandbox(Sandbox::new(run_as, read_only));
            let warning = executor.check().await.map_err(|e| {
                ConfigError::invalid(
                    "steps.executor",
                    format!("`sandbox` cannot run steps on this host: {}", crate::service::chain(&e)),
                )
            })?;
            match &warning {
                Some(warning) => tracing::warn!("steps run in the sandbox, but {warning}"),
                None => tracing::info!("steps run in the sandbox"),
            }
            Ok((executor, warning))
        }
        StepExecutor::Unsandboxed => {
            tracing::warn!("{UNSANDBOXED_WARNING}");
            Ok((Executor::Unsandboxed, Some(UNSANDBOXED_WARNING.to_owned())))
        }
        StepExecutor::Kubernetes => {
            let executor = Kubernetes::start(service, &settings.kubernetes, env).await?;
            Ok((Executor::Kubernetes(executor), None))
        }
    }
}

/// The sandbox's host uid and gid and its extra read-only paths, checked.
fn sandbox_settings(settings: &SandboxSettings) -> Result<((u32, u32), Vec<PathBuf>), ConfigError> {
    for (field, id) in [("steps.sandbox.uid", settings.uid), ("steps.sandbox.gid", settings.gid)] {
        if id == 0 {
            return Err(ConfigError::invalid(
                field,
                "steps must not run as root: choose an unprivileged id (default 65534, nobody)",
            ));
        }
        if id == u32::MAX {
            return Err(ConfigError::invalid(
                field,
                "4294967295 is not an id (the kernel reads it as \"none\"): choose an unprivileged id (default 65534, nobody)",
            ));
        }
    }
    for (i, path) in settings.read_only_paths.iter().enumerate() {
        let field = format!("steps.sandbox.read_only_paths[{i}]");
        if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(ConfigError::invalid(
                field,
                format!("{} must be an absolute path without `..`", path.display()),
            ));
        }
        if path.parent().is_none() {
            return Err(ConfigError::invalid(
                field,
                "`/` would show every step the service's config, secrets and caches: name the directories steps need",
            ));
        }
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError::invalid(
                field,
                format!("cannot use {}: {e}", path.display()),
            ));
        }
    }
    Ok(((settings.uid, settings.gid), settings.read_only_paths.clone()))
}

/// Whether `name` may name a secret: an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`)
/// that the service does not set itself.
fn check_secret_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("is not an environment variable name (letters, digits and `_`, not starting with a digit)");
    }
    if RESERVED_NAMES.contains(&name) || name.starts_with(RESERVED_PREFIX) {
        return Err("is set by Baton for every step (PATH, HOME, BATON_*) and cannot be a secret");
    }
    Ok(())
}

/// `text` cut at [`MAX_QUOTED_NAME`] characters, for messages.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_NAME) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A repository full name or a glob of them, from `steps.secrets.*.repositories`: parts
/// separated by `/`; in a part `*` matches any characters and `?` one; a part `**` matches one
/// or more whole parts. ASCII case is ignored, as git hosts ignore it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RepositoryGlob {
    parts: Vec<GlobPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobPart {
    /// `**`: one or more whole parts.
    AnyParts,
    /// A part with `*` and `?`, lower-cased.
    Part(Vec<char>),
}

impl RepositoryGlob {
    fn parse(glob: &str) -> Result<Self, &'static str> {
        if glob.is_empty() {
            return Err("is empty: write a repository's full name (acme/shop) or a glob (acme/*)");
        }
        if glob.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("contains a space or control character");
        }
        if glob.contains(['[', ']', '{', '}', '\\', '!']) {
            return Err("uses a wildcard Baton does not have: only `*`, `?` and a `**` part are wildcards");
        }
        let parts = glob
            .split('/')
            .map(|part| match part {
                "" => Err("has an empty part (a leading, trailing or doubled `/`)"),
                "**" => Ok(GlobPart::AnyParts),
                part if part.contains("**") => Err("uses `**` inside a part: `**` must be a whole part (acme/**)"),
                part => Ok(GlobPart::Part(part.chars().map(|c| c.to_ascii_lowercase()).collect())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { parts })
    }

    /// Whether the repository `name` is granted. A name with an empty part matches nothing.
    fn matches(&self, name: &str) -> bool {
        let name: Vec<Vec<char>> = name
            .split('/')
            .map(|part| part.chars().map(|c| c.to_ascii_lowercase()).collect())
            .collect();
        if name.iter().any(Vec::is_empty) {
            return false;
        }
        // fits[i][j]: the glob's parts from i match the name's parts from j.
        let (g, n) = (self.parts.len(), name.len());
        let mut fits = vec![vec![false; n + 1]; g + 1];
        fits[g][n] = true;
        for i in (0..g).rev() {
            for j in (0..n).rev() {
                fits[i][j] = match &self.parts[i] {
                    GlobPart::AnyParts => fits[i + 1][j + 1] || fits[i][j + 1],
                    GlobPart::Part(pattern) => fits[i + 1][j + 1] && part_matches(pattern, &name[j]),
                };
            }
        }
        fits[0][0]
    }
}

/// Whether one part of a name matches one part of a glob (`*` any characters, `?` one), in time
/// proportional to their lengths' product at worst: the last `*` is retried, never every one.
fn part_matches(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use baton_schemas::pipeline::StepResources;

    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn settings(yaml: &str) -> StepsSettings {
        yaml_serde::from_str(yaml).unwrap()
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "NPM" => Some("npm-token-value".into()),
            "PACT" => Some("pact-token-value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn policy() -> StepPolicy {
        let settings = settings(
            "secrets:\n  NPM_TOKEN:\n    value_env: NPM\n    repositories: [acme/shop, acme/web-*]\n  PACT_TOKEN:\n    value_env: PACT\n    repositories: [acme/*]\n",
        );
        let maxima = StepLimits {
            cpu_seconds: 600,
            memory_bytes: 8 * GIB,
            open_files: 1024,
            processes: 256,
            disk_bytes: 0,
        };
        StepPolicy::resolve("builder", &settings, &maxima, &env).unwrap()
    }

    fn step(limits: StepResources, secrets: &[&str]) -> Step {
        Step {
            name: "compile".into(),
            run: "make".into(),
            env: BTreeMap::from([("CC".to_owned(), "gcc".to_owned())]),
            timeout: Duration::from_secs(60),
            workdir: None,
            network: false,
            limits,
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            image: None,
        }
    }

    #[test]
    fn a_step_gets_what_it_asks_within_the_maxima_and_the_maxima_otherwise() {
        let policy = policy();
        let grant = policy
            .allow("acme/shop", "build.steps[0]", &step(StepResources::default(), &[]))
            .unwrap();
        assert_eq!(grant.limits, *policy.maxima());
        assert!(grant.secrets.is_empty());

        let asked = StepResources {
            memory_bytes: Some(GIB),
            processes: Some(256),
            cpu_seconds: Some(1),
            open_files: None,
            // The maximum is 0 (unlimited): any ask fits, the largest too.
            disk_bytes: Some(u64::MAX),
        };
        let grant = policy.allow("acme/shop", "build.steps[0]", &step(asked, &[])).unwrap();
        assert_eq!(
            grant.limits,
            ResourceLimits {
                cpu_seconds: 1,
                memory_bytes: GIB,
                open_files: 1024,
                processes: 256,
                disk_bytes: u64::MAX,
            }
        );
        let unlimited = StepResources {
            disk_bytes: Some(0),
            ..StepResources::default()
        };
        assert_eq!(
            policy
                .allow("acme/shop", "build.steps[0]", &step(unlimited, &[]))
                .unwrap()
                .limits
                .disk_bytes,
            0
        );
    }

    #[test]
    fn limits_above_the_maxima_are_refused_naming_the_field() {
        let policy = policy();
        let cases: [(StepResources, &str); 6] = [
            (
                StepResources {
                    memory_bytes: Some(16 * GIB),
                    ..StepResources::default()
                },
                "build.steps[1] (compile): limits.memory_bytes 17179869184 is above this builder's maximum 8589934592",
            ),
            (
                StepResources {
                    memory_bytes: Some(u64::MAX),
                    ..StepResources::default()
                },
                "build.steps[1] (compile): limits.memory_bytes 18446744073709551615 is above this builder's maximum 8589934592",
            ),
            (
                StepResources {
                    processes: Some(257),
                    ..StepResources::default()
                },
                "build.steps[1] (compile): limits.processes 257 is above this builder's maximum 256",
            ),
            (
                StepResources {
                    cpu_seconds: Some(601),
                    ..StepResources::default()
                },
                "build.steps[1] (compile): limits.cpu_seconds 601 is above this builder's maximum 600",
            ),
            (
                StepResources {
                    open_files: Some(0),
                    ..StepResources::default()
                },
                "build.steps[1] (compile): limits.open_files 0 would lift the limit, above this builder's maximum 1024: ask for at least 1, or leave it out to get the maximum",
            ),
            (
                // The first field at fault is named, in the schema's order.
                StepResources {
                    open_files: Some(1 << 40),
                    processes: Some(1 << 40),
                    ..StepResources::default()
                },
                "build.steps[1] (compile): limits.processes 1099511627776 is above this builder's maximum 256",
            ),
        ];
        for (asked, message) in cases {
            let error = policy
                .allow("acme/shop", "build.steps[1]", &step(asked, &[]))
                .unwrap_err();
            assert_eq!(error.to_string(), message);
            assert_eq!(error.metric_label(), "above_maximum");
        }
    }

    #[test]
    fn a_step_gets_only_the_secrets_it_names_and_its_repository_is_granted() {
        let policy = policy();
        let grant = policy
            .allow(
                "acme/shop",
                "test.steps[0]",
                &step(StepResources::default(), &["NPM_TOKEN", "PACT_TOKEN"]),
            )
            .unwrap();
        let names: Vec<_> = grant.secrets.keys().map(String::as_str).collect();
        assert_eq!(names, ["NPM_TOKEN", "PACT_TOKEN"]);
        assert_eq!(grant.secrets["NPM_TOKEN"].expose(), b"npm-token-value");
        let grant = policy
            .allow(
                "acme/web-ui",
                "test.steps[0]",
                &step(StepResources::default(), &["NPM_TOKEN"]),
            )
            .unwrap();
        assert_eq!(grant.secrets.len(), 1);
        // Granted, but not asked for: not given.
        let grant = policy
            .allow(
                "acme/shop",
                "test.steps[0]",
                &step(StepResources::default(), &["PACT_TOKEN"]),
            )
            .unwrap();
        assert!(!grant.secrets.contains_key("NPM_TOKEN"));
    }

    #[test]
    fn hostile_secret_requests_are_refused_naming_the_field() {
        let policy = policy();
        let long = "A".repeat(5000);
        let cases: Vec<(&str, Vec<&str>, &str, &str)> = vec![
            (
                "acme/shop-evil",
                vec!["NPM_TOKEN"],
                "test.steps[0] (compile): secret NPM_TOKEN is not granted to acme/shop-evil (grants are in the builder's steps.secrets)",
                "secret_not_granted",
            ),
            (
                "other/shop",
                vec!["PACT_TOKEN"],
                "test.steps[0] (compile): secret PACT_TOKEN is not granted to other/shop (grants are in the builder's steps.secrets)",
                "secret_not_granted",
            ),
            (
                "acme/shop",
                vec!["UNKNOWN"],
                "test.steps[0] (compile): secret UNKNOWN is not granted to acme/shop (grants are in the builder's steps.secrets)",
                "secret_not_granted",
            ),
            (
                "acme/shop",
                vec!["NPM_TOKEN", "NPM_TOKEN"],
                "test.steps[0] (compile): secrets[1]: secret NPM_TOKEN is listed twice",
                "duplicate_secret",
            ),
            (
                "acme/shop",
                vec!["PATH"],
                "test.steps[0] (compile): secrets[0] \"PATH\" is set by Baton for every step (PATH, HOME, BATON_*) and cannot be a secret",
                "invalid_secret_name",
            ),
            (
                "acme/shop",
                vec!["NPM_TOKEN", "BATON_X"],
                "test.steps[0] (compile): secrets[1] \"BATON_X\" is set by Baton for every step (PATH, HOME, BATON_*) and cannot be a secret",
                "invalid_secret_name",
            ),
            (
                "acme/shop",
                vec!["NPM_TOKEN=x"],
                "test.steps[0] (compile): secrets[0] \"NPM_TOKEN=x\" is not an environment variable name (letters, digits and `_`, not starting with a digit)",
                "invalid_secret_name",
            ),
            (
                "acme/shop",
                vec![""],
                "test.steps[0] (compile): secrets[0] \"\" is not an environment variable name (letters, digits and `_`, not starting with a digit)",
                "invalid_secret_name",
            ),
            (
                "acme/shop",
                vec!["CC"],
                "test.steps[0] (compile): secret CC is also set in env: remove it from env, the secret sets it",
                "secret_shadows_env",
            ),
        ];
        for (repository, secrets, message, label) in cases {
            let error = policy
                .allow(repository, "test.steps[0]", &step(StepResources::default(), &secrets))
                .unwrap_err();
            assert_eq!(error.to_string(), message, "{repository} {secrets:?}");
            assert_eq!(error.metric_label(), label);
        }
        // A huge name is cut in the message.
        let error = policy
            .allow(
                "acme/shop",
                "test.steps[0]",
                &step(StepResources::default(), &[&format!("{long}-")]),
            )
            .unwrap_err()
            .to_string();
        assert!(error.len() < 400, "{error}");
        let error = policy
            .allow("acme/shop", "test.steps[0]", &step(StepResources::default(), &[&long]))
            .unwrap_err()
            .to_string();
        assert!(error.len() < 400 && error.contains("is not granted"), "{error}");
    }

    #[test]
    fn an_image_is_refused_unless_steps_run_as_pods() {
        let with_image = Step {
            image: Some("registry.example/toolchain:1".into()),
            ..step(StepResources::default(), &[])
        };
        let error = policy().allow("acme/shop", "build.steps[0]", &with_image).unwrap_err();
        assert_eq!(
            error.to_string(),
            "build.steps[0] (compile): image needs steps.executor: kubernetes in the builder's config (steps run on its host here, not in images)"
        );
        assert_eq!(error.metric_label(), "image_needs_kubernetes");
        let unsandboxed = StepPolicy::resolve(
            "tester",
            &settings("executor: unsandboxed\n"),
            &StepLimits::default(),
            &env,
        )
        .unwrap();
        assert!(unsandboxed.allow("acme/shop", "test.steps[0]", &with_image).is_err());
        let pods = StepPolicy::resolve(
            "tester",
            &settings("executor: kubernetes\n"),
            &StepLimits::default(),
            &env,
        )
        .unwrap();
        assert!(pods.allow("acme/shop", "test.steps[0]", &with_image).is_ok());
    }

    #[test]
    fn every_step_is_checked_before_any_runs() {
        let policy = policy();
        let steps = [
            step(StepResources::default(), &["NPM_TOKEN"]),
            Step {
                name: "publish".into(),
                ..step(StepResources::default(), &["NPM_TOKEN"])
            },
        ];
        let grants = policy.allow_all("acme/shop", "build.steps", &steps).unwrap();
        assert_eq!(grants.len(), 2);
        let error = policy.allow_all("acme/other", "build.steps", &steps).unwrap_err();
        assert_eq!(error.at, "build.steps[0]");
        let mixed = [
            step(StepResources::default(), &[]),
            Step {
                name: "publish".into(),
                ..step(StepResources::default(), &["NPM_TOKEN"])
            },
        ];
        let error = policy.allow_all("acme/other", "build.steps", &mixed).unwrap_err();
        assert_eq!(
            error.to_string(),
            "build.steps[1] (publish): secret NPM_TOKEN is not granted to acme/other (grants are in the builder's steps.secrets)"
        );
    }

    #[test]
    fn repository_globs_match_whole_parts_only() {
        let cases: [(&str, &str, bool); 24] = [
            ("acme/shop", "acme/shop", true),
            ("acme/shop", "ACME/Shop", true),
            ("acme/shop", "acme/shop-evil", false),
            ("acme/shop", "acme/sho", false),
            ("acme/shop", "evil/acme/shop", false),
            ("acme/shop", "acme/shop/evil", false),
            ("acme/shop", "acme//shop", false),
            ("acme/*", "acme/shop", true),
            ("acme/*", "acme/", false),
            ("acme/*", "acme", false),
            ("acme/*", "acme/team/shop", false),
            ("acme/*", "acme-evil/shop", false),
            ("acme/web-*", "acme/web-ui", true),
            ("acme/web-*", "acme/web-", true),
            ("acme/web-*", "acme/webui", false),
            ("acme/s?op", "acme/shop", true),
            ("acme/s?op", "acme/s/op", false),
            ("acme/**", "acme/team/shop", true),
            ("acme/**", "acme", false),
            ("**", "anything/at/all", true),
            ("**/shop", "acme/team/shop", true),
            ("**/shop", "shop", false),
            ("a*a*a*a*a*a*a*a*b", &format!("x/{}", "a".repeat(64)), false),
            ("*/a*a*a*a*a*a*a*a*b", &format!("x/{}", "a".repeat(64)), false),
        ];
        for (glob, name, expected) in cases {
            let parsed = RepositoryGlob::parse(glob).unwrap();
            assert_eq!(parsed.matches(name), expected, "{glob} ~ {name}");
        }
        assert!(RepositoryGlob::parse("*/a*a*b").unwrap().matches("x/aaab"));
    }

    #[test]
    fn invalid_config_is_refused_naming_the_field() {
        let maxima = StepLimits::default();
        let cases = [
            (
                "secrets:\n  PATH:\n    value_env: NPM\n    repositories: [acme/*]\n",
                "steps.secrets.PATH",
            ),
            (
                "secrets:\n  BATON_TOKEN:\n    value_env: NPM\n    repositories: [acme/*]\n",
                "steps.secrets.BATON_TOKEN",
            ),
            (
                "secrets:\n  HOME:\n    value_env: NPM\n    repositories: [acme/*]\n",
                "steps.secrets.HOME",
            ),
            (
                "secrets:\n  1TOKEN:\n    value_env: NPM\n    repositories: [acme/*]\n",
                "steps.secrets.1TOKEN",
            ),
            (
                "secrets:\n  A-B:\n    value_env: NPM\n    repositories: [acme/*]\n",
                "steps.secrets.A-B",
            ),
            (
                "secrets:\n  T:\n    value_env: UNSET\n    repositories: [acme/*]\n",
                "steps.secrets.T.value_env",
            ),
            (
                "secrets:\n  T:\n    value_env: EMPTY\n    repositories: [acme/*]\n",
                "steps.secrets.T.value_env",
            ),
            (
                "secrets:\n  T:\n    repositories: [acme/*]\n",
                "steps.secrets.T.value_env",
            ),
            (
                "secrets:\n  T:\n    file: /nonexistent/secret\n    repositories: [acme/*]\n",
                "steps.secrets.T.file",
            ),
            (
                "secrets:\n  T:\n    value_env: NPM\n    file: /etc/hostname\n    repositories: [acme/*]\n",
                "steps.secrets.T.file",
            ),
            ("secrets:\n  T:\n    value_env: NPM\n", "steps.secrets.T.repositories"),
            (
                "secrets:\n  T:\n    value_env: NPM\n    repositories: ['']\n",
                "steps.secrets.T.repositories[0]",
            ),
            (
                "secrets:\n  T:\n    value_env: NPM\n    repositories: [acme/x, /acme]\n",
                "steps.secrets.T.repositories[1]",
            ),
            (
                "secrets:\n  T:\n    value_env: NPM\n    repositories: [acme/]\n",
                "steps.secrets.T.repositories[0]",
            ),
            (
                "secrets:\n  T:\n    value_env: NPM\n    repositories: ['acme/**x']\n",
                "steps.secrets.T.repositories[0]",
            ),
            (
                "secrets:\n  T:\n    value_env: NPM\n    repositories: ['acme/[ab]']\n",
                "steps.secrets.T.repositories[0]",
            ),
            (
                "secrets:\n  T:\n    value_env: NPM\n    repositories: ['acme/ shop']\n",
                "steps.secrets.T.repositories[0]",
            ),
        ];
        for (yaml, field) in cases {
            let error = StepPolicy::resolve("tester", &settings(yaml), &maxima, &env).unwrap_err();
            assert_eq!(error.field(), Some(field), "{yaml}: {error}");
            // Values never appear in messages.
            assert!(!error.to_string().contains("npm-token-value"), "{error}");
        }
    }

    #[tokio::test]
    async fn the_sandbox_settings_are_checked_before_the_sandbox_is() {
        let cases = [
            ("executor: unsandboxed\nsandbox:\n  uid: 0\n", "steps.sandbox.uid"),
            ("executor: unsandboxed\nsandbox:\n  gid: 0\n", "steps.sandbox.gid"),
            (
                "executor: unsandboxed\nsandbox:\n  uid: 4294967295\n",
                "steps.sandbox.uid",
            ),
            (
                "executor: unsandboxed\nsandbox:\n  read_only_paths: [opt/tools]\n",
                "steps.sandbox.read_only_paths[0]",
            ),
            (
                "executor: unsandboxed\nsandbox:\n  read_only_paths: [/usr, /opt/../etc]\n",
                "steps.sandbox.read_only_paths[1]",
            ),
            (
                "executor: unsandboxed\nsandbox:\n  read_only_paths: [/]\n",
                "steps.sandbox.read_only_paths[0]",
            ),
            (
                "executor: unsandboxed\nsandbox:\n  read_only_paths: [/nonexistent/tools]\n",
                "steps.sandbox.read_only_paths[0]",
            ),
        ];
        for (yaml, field) in cases {
            let error = start_executor("builder", &settings(yaml), &env).await.unwrap_err();
            assert_eq!(error.field(), Some(field), "{yaml}: {error}");
        }
        let (executor, warning) = start_executor(
            "builder",
            &settings("executor: unsandboxed\nsandbox:\n  read_only_paths: [/usr]\n"),
            &env,
        )
        .await
        .unwrap();
        assert_eq!(executor.name(), "unsandboxed");
        assert_eq!(warning.as_deref(), Some(UNSANDBOXED_WARNING));
    }

    #[test]
    fn a_secret_is_read_from_a_file() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from-file\n").unwrap();
        let yaml = format!(
            "secrets:\n  T:\n    file: {}\n    repositories: [acme/shop]\n",
            file.path().display()
        );
        let policy = StepPolicy::resolve("tester", &settings(&yaml), &StepLimits::default(), &env).unwrap();
        let grant = policy
            .allow("acme/shop", "test.steps[0]", &step(StepResources::default(), &["T"]))
            .unwrap();
        assert_eq!(grant.secrets["T"].expose(), b"from-file");
        assert!(!format!("{policy:?}").contains("from-file"));
    }
}

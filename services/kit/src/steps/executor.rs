//! How a service runs its steps: the choice `steps.executor` makes, and the check at start that
//! the chosen executor can run steps on this host.

use super::kubernetes::Kubernetes;
use super::sandbox::{Sandbox, SandboxError};

/// How steps run.
#[derive(Debug, Clone)]
pub enum Executor {
    /// Each step in its own sandbox (the default).
    Sandbox(Sandbox),
    /// Each step as a child of the service, with only a cleared environment and rlimits
    /// (`steps.executor: unsandboxed`): for hosts that cannot sandbox, and trusted code only.
    Unsandboxed,
    /// Each step as a Pod of its own in its app's build namespace (`steps.executor: kubernetes`).
    Kubernetes(Kubernetes),
}

impl Executor {
    /// `sandbox`, `unsandboxed` or `kubernetes`, as the config says it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sandbox(_) => "sandbox",
            Self::Unsandboxed => "unsandboxed",
            Self::Kubernetes(_) => "kubernetes",
        }
    }

    /// Whether steps can run: for the sandbox, a trivial step is run in one, then one with
    /// network, so a host without bubblewrap or namespaces is found at start rather than at the
    /// first build. A host that runs sandboxes but cannot give them a network (no slirp4netns
    /// or `/dev/net/tun`) still runs every step that declares none: that is returned as a
    /// warning (steps with `network: true` will fail, and why) rather than refused. The other
    /// executors were checked when they were made.
    ///
    /// # Errors
    /// [`SandboxError`] saying what is missing and how to fix it.
    pub async fn check(&self) -> Result<Option<String>, SandboxError> {
        let Self::Sandbox(sandbox) = self else {
            return Ok(None);
        };
        sandbox.check().await
    }
}

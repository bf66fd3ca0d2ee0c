//! The control plane's processes: which component each one is, how it is spawned with its log
//! in the cluster's log directory, and the set a cluster owns, killed in reverse start order
//! (clients before the servers they talk to, so nothing logs a storm of errors) when start-up
//! fails half-way or the cluster is dropped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;
use crate::process::{LogFile, Process};

/// One process of the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlPlaneComponent {
    /// etcd, the store.
    Etcd,
    /// kube-apiserver.
    ApiServer,
    /// kube-controller-manager: the Deployment, ReplicaSet, node-lifecycle, service-account and
    /// token controllers, among others.
    ControllerManager,
    /// kube-scheduler, which binds pods to (simulated) nodes.
    Scheduler,
}

impl ControlPlaneComponent {
    /// The program's name, also the stem of its log file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::ApiServer => "kube-apiserver",
            Self::ControllerManager => "kube-controller-manager",
            Self::Scheduler => "kube-scheduler",
        }
    }

    /// Its log file in `log_dir`.
    pub(super) fn log_path(self, log_dir: &Path) -> PathBuf {
        log_dir.join(format!("{}.log", self.name()))
    }
}

impl fmt::Display for ControlPlaneComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running component.
#[derive(Debug)]
pub(super) struct ComponentProcess {
    pub(super) component: ControlPlaneComponent,
    pub(super) process: Process,
}

impl ComponentProcess {
    /// Spawns `binary args...` with its output in `<log_dir>/<component>.log`.
    pub(super) fn spawn(
        component: ControlPlaneComponent,
        binary: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> Result<Self, HarnessError> {
        let process = Process::spawn(
            component.name(),
            Command::new(binary).args(args),
            &component.log_path(log_dir),
            LogFile::Fresh,
        )?;
        Ok(Self { component, process })
    }

    /// Whether it exited because a port it was given was taken.
    pub(super) fn lost_port_race(&self) -> bool {
        self.process.log_tail().contains("address already in use")
    }
}

/// The processes of one cluster in start order; dropping it kills them in reverse order.
#[derive(Debug, Default)]
pub(super) struct Processes(Vec<ComponentProcess>);

impl Processes {
    pub(super) fn push(&mut self, process: ComponentProcess) {
        self.0.push(process);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &ComponentProcess> {
        self.0.iter()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut ComponentProcess> {
        self.0.iter_mut()
    }

    pub(super) fn get(&self, component: ControlPlaneComponent) -> Option<&ComponentProcess> {
        self.0.iter().find(|process| process.component == component)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        while let Some(mut last) = self.0.pop() {
            // Nowhere to report a failure from `drop`; see `Process::kill`.
            let _ = last.process.kill();
        }
    }
}

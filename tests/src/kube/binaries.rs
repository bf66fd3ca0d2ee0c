//! Where the control plane's executables are: kube-apiserver, kube-controller-manager and
//! kube-scheduler in the directory `scripts/build-kubernetes.sh` fills (or `$BATON_K8S_BIN_DIR`),
//! etcd and openssl as installed programs.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{ETCD_BIN_ENV, K8S_BIN_DIR_ENV, K8S_CACHE_ENV, KUBERNETES_VERSION};
use crate::HarnessError;
use crate::process::{Program, is_executable_file};

/// The control-plane executables built by `scripts/build-kubernetes.sh`.
pub(super) const CONTROL_PLANE_BINARIES: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"];

/// etcd, the store. Debian installs it into /usr/bin, which a test runner's `PATH` may lack.
const ETCD: Program = Program {
    name: "etcd",
    env: Some(ETCD_BIN_ENV),
    install: "Debian package `etcd-server`",
    fallbacks: &["/usr/bin/etcd"],
};
/// openssl, which makes the cluster's keys and certificates.
pub(super) const OPENSSL: Program = Program {
    name: "openssl",
    env: None,
    install: "Debian package `openssl`",
    fallbacks: &["/usr/bin/openssl"],
};

/// Where the executables are.
#[derive(Debug)]
pub(super) struct Binaries {
    /// kube-apiserver, kube-controller-manager and kube-scheduler.
    bin_dir: PathBuf,
    /// etcd.
    pub(super) etcd: PathBuf,
    /// openssl, for keys and certificates.
    pub(super) openssl: PathBuf,
}

impl Binaries {
    /// Resolves every executable from the process environment.
    pub(super) fn locate() -> Result<Self, HarnessError> {
        let env = |name| std::env::var_os(name).filter(|value| !value.is_empty());
        let bin_dir = control_plane_bin_dir(
            env(K8S_BIN_DIR_ENV),
            env(K8S_CACHE_ENV),
            env("XDG_CACHE_HOME"),
            env("HOME"),
        )?;
        Ok(Self {
            bin_dir,
            etcd: ETCD.locate()?,
            openssl: OPENSSL.locate()?,
        })
    }

    /// The executable of a control-plane program (`kube-apiserver`, ...).
    pub(super) fn control_plane(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// The directory of the control-plane binaries: `bin_dir_override` if set, else
/// `<cache>/bin` with the cache resolved as `scripts/build-kubernetes.sh` does. Every binary must
/// be an executable file there.
fn control_plane_bin_dir(
    bin_dir_override: Option<OsString>,
    cache_override: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, HarnessError> {
    let (bin_dir, origin) = if let Some(dir) = bin_dir_override {
        (PathBuf::from(dir), format!("{K8S_BIN_DIR_ENV}="))
    } else if let Some(cache) = cache_override {
        (PathBuf::from(cache).join("bin"), format!("{K8S_CACHE_ENV}=.../"))
    } else {
        let cache_home = match (xdg_cache_home, home) {
            (Some(xdg), _) => PathBuf::from(xdg),
            (None, Some(home)) => PathBuf::from(home).join(".cache"),
            (None, None) => {
                return Err(HarnessError::ControlPlaneNotFound {
                    reason: format!("neither {K8S_BIN_DIR_ENV}, XDG_CACHE_HOME nor HOME is set"),
                });
            }
        };
        (
            cache_home
                .join("baton")
                .join(format!("k8s-{KUBERNETES_VERSION}"))
                .join("bin"),
            String::from("the cache "),
        )
    };
    let missing: Vec<&str> = CONTROL_PLANE_BINARIES
        .into_iter()
        .filter(|binary| !is_executable_file(&bin_dir.join(binary)))
        .collect();
    if missing.is_empty() {
        Ok(bin_dir)
    } else {
        Err(HarnessError::ControlPlaneNotFound {
            reason: format!("{} missing in {origin}{}", missing.join(", "), bin_dir.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn bin_dir_override_must_hold_every_binary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = control_plane_bin_dir(Some(dir.path().into()), None, None, None).expect_err("empty dir");
        let message = error.to_string();
        assert!(message.contains("just setup"), "{message}");
        assert!(
            message.contains("kube-apiserver, kube-controller-manager, kube-scheduler missing"),
            "{message}"
        );
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
    }

    #[test]
    fn cache_dir_follows_the_build_script() {
        let home = tempfile::tempdir().expect("temp dir");
        let expected = home.path().join(".cache/baton/k8s-1.20.2/bin");
        let error = control_plane_bin_dir(None, None, None, Some(home.path().into())).expect_err("no binaries");
        assert!(error.to_string().contains(&expected.display().to_string()), "{error}");

        fs::create_dir_all(&expected).expect("cache dir");
        for binary in CONTROL_PLANE_BINARIES {
            let path = expected.join(binary);
            fs::write(&path, "#!/bin/sh\n").expect("fake binary");
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        }
        assert_eq!(
            control_plane_bin_dir(None, None, None, Some(home.path().into())).expect("found"),
            expected
        );
        let cache = home.path().join("elsewhere");
        let error = control_plane_bin_dir(None, Some(cache.clone().into()), None, Some(home.path().into()))
            .expect_err("BATON_K8S_CACHE wins over HOME");
        assert!(
            error.to_string().contains(&cache.join("bin").display().to_string()),
            "{error}"
        );
    }
}

//! The kubelet log server's serving certificate: self-signed for 127.0.0.1, made with the
//! `openssl` CLI (the apiserver does not verify a kubelet's certificate without
//! `--kubelet-certificate-authority`, which the local control planes do not set).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::SimulatorError;

/// How long the certificate is valid. The apiserver does not check it, so this only has to
/// outlast any local cluster.
const VALIDITY_DAYS: &str = "3650";

/// Writes a self-signed serving certificate for 127.0.0.1 and its key to `dir`; returns the
/// certificate's and the key's paths.
pub(crate) fn self_signed_localhost(dir: &Path) -> Result<(PathBuf, PathBuf), SimulatorError> {
    let openssl = openssl()?;
    let (cert, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    let output = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", VALIDITY_DAYS, "-subj", "/CN=baton-node-simulator"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .current_dir(dir)
        .output()
        .map_err(|source| SimulatorError::Io {
            path: dir.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(SimulatorError::Certificate {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok((cert, key))
}

/// `openssl` on `PATH`, else Debian's `/usr/bin/openssl` (a test runner's `PATH` may lack it).
fn openssl() -> Result<PathBuf, SimulatorError> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("openssl"))
        .chain([PathBuf::from("/usr/bin/openssl")])
        .find(|candidate| candidate.is_file())
        .ok_or(SimulatorError::OpensslNotFound)
}

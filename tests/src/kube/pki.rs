//! The key material of one test cluster, made with the `openssl` CLI: a CA, the apiserver's
//! serving certificate signed by it (for 127.0.0.1, `localhost` and the in-cluster names), and
//! the key pair that signs service-account tokens. P-256 keys: generated in milliseconds, and
//! accepted by the apiserver for serving and for ES256 token signatures.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;
use crate::process;

/// Validity of the certificates: a test cluster lives minutes.
const VALIDITY_DAYS: &str = "2";

/// Paths (and the CA in PEM) of the generated files.
#[derive(Debug)]
pub(super) struct Pki {
    /// The CA certificate: `--client-ca-file`, `--root-ca-file`, trusted by every kubeconfig.
    pub(super) ca_cert: PathBuf,
    /// The CA key: `--cluster-signing-key-file`, and it signs the serving certificate.
    pub(super) ca_key: PathBuf,
    /// The CA certificate's contents.
    pub(super) ca_pem: String,
    /// The apiserver's serving certificate.
    pub(super) server_cert: PathBuf,
    /// Its key.
    pub(super) server_key: PathBuf,
    /// Signs service-account tokens (`--service-account-signing-key-file`, and the
    /// controller-manager's `--service-account-private-key-file`).
    pub(super) service_account_key: PathBuf,
    /// Verifies them (`--service-account-key-file`).
    pub(super) service_account_public_key: PathBuf,
}

impl Pki {
    /// Generates everything into `dir`.
    pub(super) fn generate(openssl: &Path, dir: &Path) -> Result<Self, HarnessError> {
        let path = |name: &str| dir.join(name);
        let pki = Self {
            ca_cert: path("ca.crt"),
            ca_key: path("ca.key"),
            ca_pem: String::new(),
            server_cert: path("apiserver.crt"),
            server_key: path("apiserver.key"),
            service_account_key: path("sa.key"),
            service_account_public_key: path("sa.pub"),
        };
        let server_csr = path("apiserver.csr");
        let server_extensions = path("apiserver.ext");
        let run = |args: &[&str]| run_openssl(openssl, dir, args);
        let ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

        let ca_key = display(&pki.ca_key);
        let ca_cert = display(&pki.ca_cert);
        run(&[
            &["req", "-x509"][..],
            &ec_key,
            &["-keyout", &ca_key, "-out", &ca_cert, "-days", VALIDITY_DAYS],
            &["-subj", "/CN=baton-test-ca"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
        ]
        .concat())?;

        let server_key = display(&pki.server_key);
        let csr = display(&server_csr);
        run(&[
            &["req", "-new"][..],
            &ec_key,
            &["-keyout", &server_key, "-out", &csr, "-subj", "/CN=kube-apiserver"],
        ]
        .concat())?;
        std::fs::write(
            &server_extensions,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
             DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\n",
        )
        .map_err(|source| HarnessError::Io {
            path: server_extensions.clone(),
            source,
        })?;
        let serial = format!("0x{}", super::credentials::random_token().get(..16).unwrap_or("01"));
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            VALIDITY_DAYS,
            "-extfile",
            &display(&server_extensions),
            "-out",
            &display(&pki.server_cert),
        ])?;

        let sa_key = display(&pki.service_account_key);
        run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            &sa_key,
        ])?;
        run(&[
            "pkey",
            "-in",
            &sa_key,
            "-pubout",
            "-out",
            &display(&pki.service_account_public_key),
        ])?;

        let ca_pem = std::fs::read_to_string(&pki.ca_cert).map_err(|source| HarnessError::Io {
            path: pki.ca_cert.clone(),
            source,
        })?;
        Ok(Self { ca_pem, ..pki })
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Runs `openssl args...` in `dir`; a failure carries its stderr.
fn run_openssl(openssl: &Path, dir: &Path, args: &[&str]) -> Result<(), HarnessError> {
    process::run(Command::new(openssl).args(args).current_dir(dir)).map(drop)
}

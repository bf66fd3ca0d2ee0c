//! Signing keys for suites that start a builder or a tester: a fresh ECDSA P-256 key pair made
//! by the `openssl` CLI (an independent tool, not Baton's code), in its own temporary directory,
//! removed on drop. Its `signing` config section is one call away.
//!
//! ```no_run
//! # fn main() -> Result<(), baton_tests::HarnessError> {
//! let key = baton_tests::keys::SigningKeyFile::generate()?;
//! let builder_config = format!("registry: {{address: 127.0.0.1:5000, insecure: true}}\n{}", key.signing_section());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::HarnessError;

/// A P-256 private key in PEM (SEC1, `EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it)
/// and its public half (SPKI, `PUBLIC KEY`), in a temporary directory.
#[derive(Debug)]
pub struct SigningKeyFile {
    /// `key.pem`: what `signing.key_file` names.
    private: PathBuf,
    /// The public half, PEM: what verifiers are given.
    public_pem: String,
    /// Owns both files; removed on drop.
    _dir: tempfile::TempDir,
}

impl SigningKeyFile {
    /// A fresh key pair.
    ///
    /// # Errors
    /// When the temporary directory cannot be made or `openssl` fails (quoting it).
    pub fn generate() -> Result<Self, HarnessError> {
        let dir = crate::temp_dir("baton-key-")?;
        let private = dir.path().join("key.pem");
        crate::process::run(
            Command::new("openssl")
                .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
                .arg(&private),
        )?;
        let public = crate::process::run(Command::new("openssl").args(["ec", "-pubout", "-in"]).arg(&private))?;
        Ok(Self {
            private,
            public_pem: String::from_utf8_lossy(&public).into_owned(),
            _dir: dir,
        })
    }

    /// The private key's file.
    pub fn path(&self) -> &Path {
        &self.private
    }

    /// The public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A service's `signing:` section (YAML) naming this key: signing on, default ids.
    pub fn signing_section(&self) -> String {
        format!("signing:\n  key_file: {:?}\n", self.private.display().to_string())
    }
}

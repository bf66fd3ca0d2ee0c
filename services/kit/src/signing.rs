//! Signed commands (DESIGN.md §4, "Signed commands"; §8): who asked for a command is proven by
//! an SSH signature, not by what the body says. The CLI and the chat-ops bot sign a command's
//! exact body bytes with a [`Signer`]; the promoter [`verify`]s them against the keys
//! `people.yaml` lists.
//!
//! The signature is SSHSIG (OpenSSH's `PROTOCOL.sshsig`) in the namespace [`NAMESPACE`], the
//! body hashed with sha512: byte for byte what `ssh-keygen -Y sign -n baton-command -f KEY`
//! writes. It travels in the NATS header [`SIGNATURE_HEADER`] as that armored text without its
//! `-----BEGIN/END SSH SIGNATURE-----` lines and without any newline: the bare base64, one line,
//! as a header must be. Any other tool that speaks SSHSIG can sign a command.
//!
//! Decisions a reader might otherwise guess at:
//! - A header that still has its armor lines, newlines or spaces is **refused** as malformed,
//!   naming what to strip: there is exactly one way to write a signature, and a NATS header
//!   cannot carry a newline anyway.
//! - [`verify`] checks in this order, and its error names the first check that failed: the
//!   header decodes, the namespace is [`NAMESPACE`], the signature verifies over the body with
//!   the key it names, that key is one of the allowed ones. A signature that verifies with a key
//!   nobody allowed is [`VerifyError::UnknownKey`] with that key's fingerprint, so the person
//!   can be told what to add to `people.yaml`.
//! - Keys are compared by their key data, never by comment.
//! - A signature hashed with sha256 verifies too: `PROTOCOL.sshsig` allows sha256 and sha512,
//!   and `ssh-keygen -Y verify` accepts both; Baton signs with sha512.
//! - An `authorized_keys` line with options ([`parse_authorized_key`]) is **refused**: options
//!   (`from=`, `command=`, `restrict`, …) limit SSH logins and mean nothing to a signed command,
//!   and silently dropping a `from=` would grant more than the line says.
//! - A private key protected by a passphrase is refused: Baton never asks for a passphrase;
//!   such a key signs through the ssh-agent ([`Agent`]), as git does with `gpg.format=ssh`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ssh_key::private::{KeypairData, RsaKeypair};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, Signature, SshSig};

/// The NATS header that carries a command's signature.
pub const SIGNATURE_HEADER: &str = "Baton-Signature";

/// The SSHSIG namespace of a command's signature (`ssh-keygen -Y sign -n baton-command`): a
/// signature made for anything else (a git commit, a file) is never taken for a command.
pub const NAMESPACE: &str = "baton-command";

/// The hash SSHSIG applies to the body before signing: sha512, as `ssh-keygen -Y sign` does.
const HASH: HashAlg = HashAlg::Sha512;

/// The armor `ssh-keygen` writes around the base64, which the header leaves out.
const PEM_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const PEM_END: &str = "-----END SSH SIGNATURE-----";
/// `ssh-keygen`'s base64 line width, which the PEM decoder expects back.
const PEM_LINE_WIDTH: usize = 70;

/// The longest header read: a signature with an RSA key of 16384 bits is about 5.5 KiB; a
/// longer header is refused before it is decoded.
const MAX_HEADER_LEN: usize = 16 * 1024;

/// The variable that names the ssh-agent's socket.
pub const AGENT_SOCKET_VAR: &str = "SSH_AUTH_SOCK";

/// `key`'s fingerprint as `ssh-keygen -l` prints it: `SHA256:` and the unpadded base64 digest.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Why a command could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key file cannot be read.
    #[error("cannot read the signing key {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file is not an OpenSSH private key.
    #[error(
        "{} is not an OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`; give the private \
         key, not the `.pub`; an older PEM key is rewritten in this format by `ssh-keygen -p -f {}`): {source}",
        path.display(),
        path.display()
    )]
    ParseKey {
        path: PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    /// The private key is protected by a passphrase, which Baton never asks for.
    #[error("{}", encrypted_key_message(path.as_deref()))]
    EncryptedKey { path: Option<PathBuf> },
    /// No ssh-agent is named by `SSH_AUTH_SOCK`.
    #[error(
        "{AGENT_SOCKET_VAR} is not set, so there is no ssh-agent to sign with: start one \
         (`eval \"$(ssh-agent)\"`) and `ssh-add` your key, or sign with a key file"
    )]
    NoAgent,
    /// The ssh-agent cannot be reached or answered something unreadable.
    #[error("cannot talk to the ssh-agent at {}: {source}", socket.display())]
    Agent {
        socket: PathBuf,
        #[source]
        source: ssh_agent_client_rs::Error,
    },
    /// The ssh-agent refused to sign.
    #[error(
        "the ssh-agent at {} refused to sign with {fingerprint}: is the key added (`ssh-add -l` \
         lists them), and if the agent asks to confirm each use, was it confirmed?",
        socket.display()
    )]
    AgentRefused { socket: PathBuf, fingerprint: String },
    /// The key cannot make this signature (e.g. a security key, which needs its device).
    #[error("cannot sign with {fingerprint}: {source}")]
    Sign {
        fingerprint: String,
        #[source]
        source: ssh_key::Error,
    },
    /// What was signed does not verify with the signer's own key: a broken agent, or one that
    /// signed with an algorithm SSHSIG refuses (RSA with SHA-1).
    #[error("the signature made with {fingerprint} does not verify with it: {source}")]
    SelfCheck {
        fingerprint: String,
        #[source]
        source: ssh_key::Error,
    },
}

fn encrypted_key_message(path: Option<&Path>) -> String {
    let (what, add) = match path {
        Some(path) => (path.display().to_string(), format!("`ssh-add {}`", path.display())),
        None => ("the signing key".to_owned(), "`ssh-add`".to_owned()),
    };
    format!(
        "{what} is protected by a passphrase, which Baton does not ask for: add it to your ssh-agent \
         ({add}) and sign through the agent at {AGENT_SOCKET_VAR} instead"
    )
}

/// Signs command bodies: with a private key held in memory (read from an unencrypted OpenSSH
/// key file), or through an ssh-agent that holds the key.
///
/// Cloning is cheap enough to hand one to a blocking task; `Debug` never shows the private key.
#[derive(Clone)]
pub struct Signer {
    /// The key the signature names and the promoter looks up in `people.yaml`.
    public_key: PublicKey,
    source: Source,
}

#[derive(Clone)]
enum Source {
    Key(Arc<PrivateKey>),
    Agent(Agent),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Signer");
        s.field("key", &self.fingerprint());
        match &self.source {
            Source::Key(_) => s.field("through", &"a key file"),
            Source::Agent(agent) => s.field("through", &agent.socket),
        };
        s.finish()
    }
}

impl Signer {
    /// A signer with the OpenSSH private key in the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, is not an OpenSSH private key, or is encrypted
    /// ([`SigningError::EncryptedKey`] says to use the ssh-agent).
    pub fn from_key_file(path: &Path) -> Result<Self, SigningError> {
        let text = std::fs::read_to_string(path).map_err(|source| SigningError::ReadKey {
            path: path.to_owned(),
            source,
        })?;
        let key = PrivateKey::from_openssh(text.trim()).map_err(|source| SigningError::ParseKey {
            path: path.to_owned(),
            source,
        })?;
        if key.is_encrypted() {
            return Err(SigningError::EncryptedKey {
                path: Some(path.to_owned()),
            });
        }
        Self::from_private_key(key)
    }

    /// A signer with `key`.
    ///
    /// # Errors
    /// [`SigningError::EncryptedKey`] when `key` is still encrypted.
    pub fn from_private_key(key: PrivateKey) -> Result<Self, SigningError> {
        if key.is_encrypted() {
            return Err(SigningError::EncryptedKey { path: None });
        }
        Ok(Self {
            public_key: key.public_key().clone(),
            source: Source::Key(Arc::new(key)),
        })
    }

    /// The public key the signatures name.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The public key's fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key)
    }

    /// Signs `body`, the exact bytes that will be sent, and returns the [`SIGNATURE_HEADER`]
    /// value. Through an agent this is a blocking round trip on its socket.
    ///
    /// # Errors
    /// [`SigningError`] when the key cannot sign or the agent refuses.
    pub fn sign(&self, body: &[u8]) -> Result<String, SigningError> {
        let signature = match &self.source {
            Source::Key(key) => sign_with_key(key, body).map_err(|source| SigningError::Sign {
                fingerprint: self.fingerprint(),
                source,
            })?,
            Source::Agent(agent) => {
                let signature = agent.sign_sshsig(&self.public_key, body)?;
                // The agent is another program: check what it returned before sending it.
                self.public_key
                    .verify(NAMESPACE, body, &signature)
                    .map_err(|source| SigningError::SelfCheck {
                        fingerprint: self.fingerprint(),
                        source,
                    })?;
                signature
            }
        };
        let pem = signature.to_pem(LineEnding::LF).map_err(|source| SigningError::Sign {
            fingerprint: self.fingerprint(),
            source,
        })?;
        Ok(header_from_pem(&pem))
    }
}

/// SSHSIG over `body` with a private key in memory.
fn sign_with_key(key: &PrivateKey, body: &[u8]) -> Result<SshSig, ssh_key::Error> {
    let KeypairData::Rsa(rsa) = key.key_data() else {
        return SshSig::sign(key, NAMESPACE, HASH, body);
    };
    let signed_data = SshSig::signed_data(NAMESPACE, HASH, body)?;
    SshSig::new(
        key.public_key().key_data().clone(),
        NAMESPACE,
        HASH,
        sign_rsa(rsa, &signed_data)?,
    )
}

/// An RSA signature as `ssh-keygen` makes it for SSHSIG: `rsa-sha2-512`, PKCS#1 v1.5 with
/// SHA-512. ssh-key 0.6 builds the RSA private key from `p` twice instead of `p` and `q`,
/// which rsa 0.9 refuses, so the key is built here from its own components.
fn sign_rsa(keypair: &RsaKeypair, message: &[u8]) -> Result<Signature, ssh_key::Error> {
    use rsa::signature::{SignatureEncoding, Signer as _};
    let uint = |m: &ssh_key::Mpint| {
        m.as_positive_bytes()
            .map(rsa::BigUint::from_bytes_be)
            .ok_or(ssh_key::Error::Crypto)
    };
    let private = rsa::RsaPrivateKey::from_components(
        uint(&keypair.public.n)?,
        uint(&keypair.public.e)?,
        uint(&keypair.private.d)?,
        vec![uint(&keypair.private.p)?, uint(&keypair.private.q)?],
    )
    .map_err(|_| ssh_key::Error::Crypto)?;
    let signature = rsa::pkcs1v15::SigningKey::<ssh_key::sha2::Sha512>::new(private)
        .try_sign(message)
        .map_err(|_| ssh_key::Error::Crypto)?;
    Signature::new(
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        signature.to_vec(),
    )
}

/// The ssh-agent at a socket (`SSH_AUTH_SOCK`): it lists the keys it holds and signs with
/// them, so a key protected by a passphrase is unlocked once, by the agent.
#[derive(Debug, Clone)]
pub struct Agent {
    socket: PathBuf,
}

impl Agent {
    /// The agent listening at `socket`. Nothing is contacted until it is used.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    /// The agent that `SSH_AUTH_SOCK` names in `env` (the process's is `std::env::vars()`).
    ///
    /// # Errors
    /// [`SigningError::NoAgent`] when the variable is unset or empty.
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, SigningError> {
        env.into_iter()
            .find(|(name, value)| name == AGENT_SOCKET_VAR && !value.is_empty())
            .map(|(_, socket)| Self::new(socket))
            .ok_or(SigningError::NoAgent)
    }

    /// The agent's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The public keys the agent holds (certificates left out), so the caller can pick the one
    /// `people.yaml` lists for the person.
    ///
    /// # Errors
    /// [`SigningError::Agent`] when the agent cannot be reached.
    pub fn identities(&self) -> Result<Vec<PublicKey>, SigningError> {
        let mut client = self.connect()?;
        let identities = client.list_all_identities().map_err(|source| self.error(source))?;
        Ok(identities
            .into_iter()
            .filter_map(|identity| match identity {
                ssh_agent_client_rs::Identity::PublicKey(key) => Some(key.into_owned()),
                ssh_agent_client_rs::Identity::Certificate(_) => None,
            })
            .collect())
    }

    /// A signer that asks this agent to sign with `key` (one of [`Agent::identities`]).
    pub fn signer(&self, key: PublicKey) -> Signer {
        Signer {
            public_key: key,
            source: Source::Agent(self.clone()),
        }
    }

    /// The agent signs SSHSIG's "signed data" blob (namespace, hash algorithm and the body's
    /// hash), never the body itself; the signature is then wrapped as `ssh-keygen` wraps it.
    fn sign_sshsig(&self, key: &PublicKey, body: &[u8]) -> Result<SshSig, SigningError> {
        let sign_error = |source| SigningError::Sign {
            fingerprint: fingerprint(key),
            source,
        };
        let signed_data = SshSig::signed_data(NAMESPACE, HASH, body).map_err(sign_error)?;
        let mut client = self.connect()?;
        let signature = client.sign(key, &signed_data).map_err(|e| match e {
            ssh_agent_client_rs::Error::RemoteFailure => SigningError::AgentRefused {
                socket: self.socket.clone(),
                fingerprint: fingerprint(key),
            },
            other => self.error(other),
        })?;
        SshSig::new(key.key_data().clone(), NAMESPACE, HASH, signature).map_err(sign_error)
    }

    fn connect(&self) -> Result<ssh_agent_client_rs::Client, SigningError> {
        ssh_agent_client_rs::Client::connect(&self.socket).map_err(|source| self.error(source))
    }

    fn error(&self, source: ssh_agent_client_rs::Error) -> SigningError {
        SigningError::Agent {
            socket: self.socket.clone(),
            source,
        }
    }
}

/// The header value of an armored signature: its base64 without the armor lines and newlines.
fn header_from_pem(pem: &str) -> String {
    pem.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----"))
        .collect()
}

/// The armored signature `ssh-keygen -Y verify` reads, from a header value that passed
/// [`check_header`].
fn pem_from_header(header: &str) -> String {
    let mut pem = String::with_capacity(header.len() + header.len() / PEM_LINE_WIDTH + 64);
    pem.push_str(PEM_BEGIN);
    pem.push('\n');
    // The header is ASCII (checked), so every chunk is valid UTF-8.
    for line in header.as_bytes().chunks(PEM_LINE_WIDTH) {
        pem.push_str(std::str::from_utf8(line).expect("an ASCII header"));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

/// What is wrong with a [`SIGNATURE_HEADER`] that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedHeader {
    /// The header is empty.
    Empty,
    /// The header is longer than any signature.
    TooLong,
    /// The `-----BEGIN/END SSH SIGNATURE-----` lines were left in.
    Armor,
    /// Newlines or spaces were left in.
    Whitespace,
    /// A character that base64 does not use.
    NotBase64,
    /// The base64 does not decode to an SSHSIG signature.
    NotSshSig,
}

impl fmt::Display for MalformedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "it is empty",
            Self::TooLong => "it is longer than any SSH signature",
            Self::Armor => {
                "it still has the `-----BEGIN/END SSH SIGNATURE-----` lines; send only the base64 between them"
            }
            Self::Whitespace => "it has newlines or spaces; join the base64 lines into one",
            Self::NotBase64 => "it is not base64",
            Self::NotSshSig => "it is not an SSH signature (SSHSIG) as `ssh-keygen -Y sign` writes",
        })
    }
}

/// Why a signed command was not verified. Each variant names the check that failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The header cannot be decoded into a signature.
    #[error("the {SIGNATURE_HEADER} header is malformed: {reason}")]
    Malformed {
        reason: MalformedHeader,
        #[source]
        source: Option<ssh_key::Error>,
    },
    /// The signature was made for another purpose.
    #[error(
        "the signature is in the namespace `{found}`, not `{NAMESPACE}`: sign with \
         `ssh-keygen -Y sign -n {NAMESPACE}`"
    )]
    WrongNamespace { found: String },
    /// The signature does not verify over the body with the key it names: the body changed
    /// after signing, or the signature belongs to another body.
    #[error("the signature does not verify over this body with the key it names ({fingerprint}): {source}")]
    BadSignature {
        fingerprint: String,
        #[source]
        source: ssh_key::Error,
    },
    /// A valid signature by a key that is not allowed.
    #[error("the command is signed by {fingerprint}, which is not an allowed key")]
    UnknownKey { key: Box<PublicKey>, fingerprint: String },
}

impl VerifyError {
    /// The failed check as a metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::WrongNamespace { .. } => "wrong_namespace",
            Self::BadSignature { .. } => "bad_signature",
            Self::UnknownKey { .. } => "unknown_key",
        }
    }
}

/// A verified signature: the allowed key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The allowed key, as `allowed` listed it (with its comment).
    pub key: PublicKey,
    /// Its fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// Verifies that `header` (a [`SIGNATURE_HEADER`] value) is a signature over exactly `body`, in
/// the namespace [`NAMESPACE`], by one of `allowed`.
///
/// # Errors
/// [`VerifyError`] naming the first check that failed, in the order of the module's doc.
pub fn verify(body: &[u8], header: &str, allowed: &[PublicKey]) -> Result<Verified, VerifyError> {
    let signature = decode_header(header)?;
    if signature.namespace() != NAMESPACE {
        return Err(VerifyError::WrongNamespace {
            found: signature.namespace().to_owned(),
        });
    }
    let signing_key = PublicKey::from(signature.public_key().clone());
    signing_key
        .verify(NAMESPACE, body, &signature)
        .map_err(|source| VerifyError::BadSignature {
            fingerprint: fingerprint(&signing_key),
            source,
        })?;
    let key = allowed
        .iter()
        .find(|key| key.key_data() == signing_key.key_data())
        .ok_or_else(|| VerifyError::UnknownKey {
            fingerprint: fingerprint(&signing_key),
            key: Box::new(signing_key.clone()),
        })?;
    Ok(Verified {
        key: key.clone(),
        fingerprint: fingerprint(key),
    })
}

fn decode_header(header: &str) -> Result<SshSig, VerifyError> {
    let malformed = |reason| VerifyError::Malformed { reason, source: None };
    check_header(header).map_err(malformed)?;
    SshSig::from_pem(pem_from_header(header)).map_err(|source| VerifyError::Malformed {
        reason: MalformedHeader::NotSshSig,
        source: Some(source),
    })
}

fn check_header(header: &str) -> Result<(), MalformedHeader> {
    if header.is_empty() {
        return Err(MalformedHeader::Empty);
    }
    if header.len() > MAX_HEADER_LEN {
        return Err(MalformedHeader::TooLong);
    }
    if header.contains("-----") {
        return Err(MalformedHeader::Armor);
    }
    if header.chars().any(char::is_whitespace) {
        return Err(MalformedHeader::Whitespace);
    }
    if !header
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err(MalformedHeader::NotBase64);
    }
    Ok(())
}

/// Why an `authorized_keys` line was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizedKeyError {
    /// Nothing on the line.
    #[error("the key line is empty")]
    Empty,
    /// The line starts with `authorized_keys` options.
    #[error(
        "the key line starts with options (`{options}`), which are refused: they limit SSH logins \
         and mean nothing to a signed command; write only `TYPE BASE64 [COMMENT]`"
    )]
    Options { options: String },
    /// The first word is not a key type Baton verifies.
    #[error(
        "`{found}` is not a key type Baton accepts; the line must read `TYPE BASE64 [COMMENT]` with TYPE one of \
         {}",
        ACCEPTED_TYPES.join(", ")
    )]
    UnknownType { found: String },
    /// A key type whose signatures Baton does not verify.
    #[error("{found} keys are not accepted (OpenSSH itself has dropped them); use an ssh-ed25519 key")]
    Refused { found: String },
    /// The type is not followed by the key.
    #[error("the key line has the type `{found}` but no key after it")]
    MissingKey { found: String },
    /// The key does not decode, or is not of the type the line names.
    #[error("the key after `{found}` is not a valid {found} public key: {source}")]
    InvalidKey {
        found: String,
        #[source]
        source: ssh_key::Error,
    },
}

/// The key types [`parse_authorized_key`] accepts: those whose SSHSIG signatures [`verify`]
/// checks, the same list `people.yaml` is checked against.
const ACCEPTED_TYPES: &[&str] = baton_schemas::people::KEY_TYPES;

/// Parses one OpenSSH `authorized_keys` line, `TYPE BASE64 [COMMENT]`
/// (`ssh-ed25519 AAAA… alice@laptop`), into its public key. Leading and trailing spaces are
/// ignored; options before the type are refused (see the module's doc).
///
/// # Errors
/// [`AuthorizedKeyError`] saying what is wrong with the line.
pub fn parse_authorized_key(line: &str) -> Result<PublicKey, AuthorizedKeyError> {
    let line = line.trim();
    let mut words = line.split_whitespace();
    let first = words.next().ok_or(AuthorizedKeyError::Empty)?;
    if !ACCEPTED_TYPES.contains(&first) {
        if first == Algorithm::Dsa.as_str() {
            return Err(AuthorizedKeyError::Refused {
                found: first.to_owned(),
            });
        }
        // Options come before the type: a later word that is a key type means the line has
        // options (which may hold quoted spaces, so the word's position is found in the line).
        let type_at = line
            .match_indices(char::is_whitespace)
            .map(|(at, space)| at + space.len())
            .find(|&at| {
                let word = line[at..].split_whitespace().next().unwrap_or_default();
                ACCEPTED_TYPES.contains(&word) || word == Algorithm::Dsa.as_str()
            });
        return Err(match type_at {
            Some(at) => AuthorizedKeyError::Options {
                options: line[..at].trim().to_owned(),
            },
            None => AuthorizedKeyError::UnknownType {
                found: first.to_owned(),
            },
        });
    }
    if words.next().is_none() {
        return Err(AuthorizedKeyError::MissingKey {
            found: first.to_owned(),
        });
    }
    PublicKey::from_openssh(line).map_err(|source| AuthorizedKeyError::InvalidKey {
        found: first.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use ssh_key::private::{Ed25519Keypair, KeypairData};
    use ssh_key::{HashAlg, PrivateKey, PublicKey, SshSig};

    use super::*;

    const BODY: &[u8] = br#"{"actor":"alice","release":"r1","issuedAt":"2026-01-02T03:04:05Z","nonce":"n-1"}"#;

    /// The key types tried against OpenSSH, as `ssh-keygen` arguments.
    const KEY_KINDS: [&[&str]; 4] = [
        &["-t", "ed25519"],
        &["-t", "ecdsa", "-b", "256"],
        &["-t", "ecdsa", "-b", "384"],
        &["-t", "rsa", "-b", "2048"],
    ];

    fn key(seed: u8, comment: &str) -> PrivateKey {
        PrivateKey::new(KeypairData::from(Ed25519Keypair::from_seed(&[seed; 32])), comment).unwrap()
    }

    fn signer(seed: u8) -> Signer {
        Signer::from_private_key(key(seed, "test")).unwrap()
    }

    /// Runs an OpenSSH program and returns its stdout, failing the test with its stderr.
    fn run(command: &mut Command) -> String {
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (`just setup` installs openssh-client)"));
        assert!(
            output.status.success(),
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// A key made by `ssh-keygen` (`-t kind`, no passphrase) in `dir`, and its public key.
    fn keygen(dir: &Path, name: &str, kind: &[&str]) -> (PathBuf, PublicKey) {
        let path = dir.join(name);
        run(Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .args(kind));
        let public = PublicKey::read_openssh_file(&path.with_extension("pub")).unwrap();
        (path, public)
    }

    /// `ssh-keygen -Y sign -n namespace -f key` over `body`: the armored signature it writes.
    fn keygen_sign(dir: &Path, key: &Path, namespace: &str, body: &[u8]) -> String {
        let message = dir.join("body.json");
        std::fs::write(&message, body).unwrap();
        run(Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", namespace, "-f"])
            .arg(key)
            .arg(&message));
        let armored = std::fs::read_to_string(message.with_extension("json.sig")).unwrap();
        std::fs::remove_file(message.with_extension("json.sig")).unwrap();
        armored
    }

    /// `ssh-keygen -Y verify` of `header` over `body` by alice (whose key is `alice`).
    fn keygen_verify(dir: &Path, alice: &PublicKey, body: &[u8], header: &str) -> std::process::Output {
        let allowed = dir.join("allowed_signers");
        std::fs::write(&allowed, format!("alice {}\n", alice.to_openssh().unwrap())).unwrap();
        let signature = dir.join("command.sig");
        std::fs::write(&signature, pem_from_header(header)).unwrap();
        let mut child = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-I", "alice", "-n", NAMESPACE, "-f"])
            .arg(&allowed)
            .arg("-s")
            .arg(&signature)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh-keygen runs (`just setup` installs openssh-client)");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), body).unwrap();
        child.wait_with_output().unwrap()
    }

    fn malformed(header: &str) -> MalformedHeader {
        match verify(BODY, header, &[signer(1).public_key().clone()]) {
            Err(VerifyError::Malformed { reason, .. }) => reason,
            other => panic!("{header:?} is not refused as malformed: {other:?}"),
        }
    }

    #[test]
    fn a_signed_body_verifies_with_the_allowed_key_and_names_it() {
        let alice = signer(1);
        let header = alice.sign(BODY).unwrap();
        assert!(!header.contains('\n') && !header.contains("-----"), "{header}");
        // The allowed key's comment differs from the signer's: keys compare by their data.
        let mut listed = alice.public_key().clone();
        listed.set_comment("alice@laptop");
        let bob = signer(2).public_key().clone();
        let verified = verify(BODY, &header, &[bob, listed.clone()]).unwrap();
        assert_eq!(verified.key, listed);
        assert_eq!(verified.key.comment(), "alice@laptop");
        assert_eq!(verified.fingerprint, alice.fingerprint());
        assert!(verified.fingerprint.starts_with("SHA256:"), "{}", verified.fingerprint);
    }

    #[test]
    fn a_body_changed_by_one_byte_is_a_bad_signature() {
        let alice = signer(1);
        let header = alice.sign(BODY).unwrap();
        let allowed = [alice.public_key().clone()];
        for at in [0, BODY.len() / 2, BODY.len() - 1] {
            let mut changed = BODY.to_vec();
            changed[at] ^= 0x01;
            let e = verify(&changed, &header, &allowed).unwrap_err();
            assert!(matches!(e, VerifyError::BadSignature { .. }), "byte {at}: {e:?}");
            assert_eq!(e.metric_label(), "bad_signature");
        }
        let mut longer = BODY.to_vec();
        longer.push(b' ');
        assert!(matches!(
            verify(&longer, &header, &allowed),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_signature_by_another_key_is_an_unknown_key_named_by_its_fingerprint() {
        let (alice, mallory) = (signer(1), signer(3));
        let header = mallory.sign(BODY).unwrap();
        let e = verify(BODY, &header, &[alice.public_key().clone()]).unwrap_err();
        match &e {
            VerifyError::UnknownKey { key, fingerprint } => {
                assert_eq!(key.key_data(), mallory.public_key().key_data());
                assert_eq!(*fingerprint, mallory.fingerprint());
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(&mallory.fingerprint()), "{e}");
        assert!(matches!(
            verify(BODY, &header, &[]),
            Err(VerifyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn a_signature_whose_key_is_swapped_for_an_allowed_one_is_a_bad_signature() {
        // Mallory signs, then puts alice's public key into the signature.
        let (alice, mallory) = (signer(1), signer(3));
        let forged = decode_header(&mallory.sign(BODY).unwrap()).unwrap();
        let forged = SshSig::new(
            alice.public_key().key_data().clone(),
            NAMESPACE,
            forged.hash_alg(),
            forged.signature().clone(),
        )
        .unwrap();
        let header = header_from_pem(&forged.to_pem(LineEnding::LF).unwrap());
        let e = verify(BODY, &header, &[alice.public_key().clone()]).unwrap_err();
        assert!(matches!(e, VerifyError::BadSignature { .. }), "{e:?}");
    }

    #[test]
    fn a_signature_hashed_with_sha256_verifies_too() {
        let alice = key(1, "alice");
        let sha256 = SshSig::sign(&alice, NAMESPACE, HashAlg::Sha256, BODY).unwrap();
        let header = header_from_pem(&sha256.to_pem(LineEnding::LF).unwrap());
        assert!(verify(BODY, &header, &[alice.public_key().clone()]).is_ok());
        assert!(matches!(
            verify(b"{}", &header, &[alice.public_key().clone()]),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_signature_in_another_namespace_is_refused_naming_it() {
        let alice = key(1, "alice");
        let other = SshSig::sign(&alice, "git", HashAlg::Sha512, BODY).unwrap();
        let header = header_from_pem(&other.to_pem(LineEnding::LF).unwrap());
        let e = verify(BODY, &header, &[alice.public_key().clone()]).unwrap_err();
        assert!(
            matches!(&e, VerifyError::WrongNamespace { found } if found == "git"),
            "{e:?}"
        );
        assert!(e.to_string().contains("-n baton-command"), "{e}");
    }

    #[test]
    fn a_header_that_is_not_a_bare_signature_is_malformed_naming_why() {
        let header = signer(1).sign(BODY).unwrap();
        assert_eq!(malformed(""), MalformedHeader::Empty);
        assert_eq!(malformed("garbage"), MalformedHeader::NotSshSig);
        assert_eq!(malformed("not base64!"), MalformedHeader::Whitespace);
        assert_eq!(malformed("not_base64!"), MalformedHeader::NotBase64);
        assert_eq!(malformed(&"A".repeat(MAX_HEADER_LEN + 1)), MalformedHeader::TooLong);
        // Truncated: by a whole base64 quantum (still base64) and by one character.
        assert_eq!(malformed(&header[..header.len() - 8]), MalformedHeader::NotSshSig);
        assert_eq!(malformed(&header[..header.len() - 1]), MalformedHeader::NotSshSig);
        assert_eq!(malformed(&header[..40]), MalformedHeader::NotSshSig);
        // One character changed inside the signature bytes at the end: still a signature, but
        // not a valid one.
        let mut flipped = header.clone().into_bytes();
        let at = flipped.len() - 10;
        flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(matches!(
            verify(BODY, &flipped, &[signer(1).public_key().clone()]),
            Err(VerifyError::BadSignature { .. } | VerifyError::Malformed { .. })
        ));
        // The armored text as ssh-keygen writes it, whole or with only the newlines removed,
        // and the bare base64 still wrapped in lines: each refused, saying what to strip.
        let pem = pem_from_header(&header);
        assert_eq!(malformed(&pem), MalformedHeader::Armor);
        assert_eq!(malformed(&pem.replace('\n', "")), MalformedHeader::Armor);
        let wrapped = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(malformed(&wrapped), MalformedHeader::Whitespace);
        let e = verify(BODY, &pem, &[]).unwrap_err();
        assert!(e.to_string().contains("only the base64"), "{e}");
        assert_eq!(e.metric_label(), "malformed");
    }

    #[test]
    fn a_key_file_signs_and_an_encrypted_one_is_refused_pointing_at_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = keygen(dir.path(), "alice", &["-t", "ed25519"]);
        let from_file = Signer::from_key_file(&path).unwrap();
        assert_eq!(from_file.public_key().key_data(), public.key_data());
        let debug = format!("{from_file:?}");
        assert!(
            debug.contains(&from_file.fingerprint()) && debug.contains("key file"),
            "{debug}"
        );

        let locked = dir.path().join("locked");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
            .arg(&locked));
        let e = Signer::from_key_file(&locked).unwrap_err();
        assert!(matches!(e, SigningError::EncryptedKey { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains("ssh-add") && message.contains("SSH_AUTH_SOCK"),
            "{message}"
        );

        let e = Signer::from_key_file(&path.with_extension("pub")).unwrap_err();
        assert!(matches!(e, SigningError::ParseKey { .. }), "{e:?}");
        let e = Signer::from_key_file(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(e, SigningError::ReadKey { .. }), "{e:?}");
    }

    #[test]
    fn fingerprints_read_as_ssh_keygen_prints_them() {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = keygen(dir.path(), "alice", &["-t", "ed25519"]);
        let listed = run(Command::new("ssh-keygen").arg("-lf").arg(path.with_extension("pub")));
        // `256 SHA256:… alice (ED25519)`
        assert_eq!(
            listed.split_whitespace().nth(1),
            Some(fingerprint(&public).as_str()),
            "{listed}"
        );
    }

    /// Interop, ssh-keygen → Baton: what `ssh-keygen -Y sign` writes, stripped of its armor and
    /// newlines, verifies; and in another namespace it is refused.
    #[test]
    fn ssh_keygen_signatures_verify() {
        for kind in KEY_KINDS {
            let dir = tempfile::tempdir().unwrap();
            let (path, public) = keygen(dir.path(), "alice", kind);
            let header = header_from_pem(&keygen_sign(dir.path(), &path, NAMESPACE, BODY));
            let verified =
                verify(BODY, &header, std::slice::from_ref(&public)).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(verified.key, public);

            let other = header_from_pem(&keygen_sign(dir.path(), &path, "other", BODY));
            let e = verify(BODY, &other, std::slice::from_ref(&public)).unwrap_err();
            assert!(
                matches!(&e, VerifyError::WrongNamespace { found } if found == "other"),
                "{e:?}"
            );
        }
    }

    /// Interop, Baton → ssh-keygen: a [`Signer`]'s header, armored again, passes
    /// `ssh-keygen -Y verify` as alice, and not over another body. Ed25519 and RSA (PKCS#1
    /// v1.5) signatures are deterministic, so the header is byte for byte ssh-keygen's own.
    #[test]
    fn signer_headers_verify_with_ssh_keygen() {
        for kind in KEY_KINDS {
            let dir = tempfile::tempdir().unwrap();
            let (path, public) = keygen(dir.path(), "alice", kind);
            let header = Signer::from_key_file(&path)
                .unwrap()
                .sign(BODY)
                .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
            let output = keygen_verify(dir.path(), &public, BODY, &header);
            assert!(
                output.status.success(),
                "{kind:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                stdout.contains("Good \"baton-command\" signature for alice"),
                "{stdout}"
            );
            assert!(!keygen_verify(dir.path(), &public, b"{}", &header).status.success());
            if kind[1] != "ecdsa" {
                let theirs = header_from_pem(&keygen_sign(dir.path(), &path, NAMESPACE, BODY));
                assert_eq!(header, theirs, "{kind:?}");
            }
        }
    }

    /// An `ssh-agent -D` on a socket in a temporary directory, killed when dropped.
    struct SshAgent {
        child: Child,
        socket: PathBuf,
    }

    impl SshAgent {
        fn start(dir: &Path) -> Self {
            let socket = dir.join("agent.sock");
            let child = Command::new("ssh-agent")
                .arg("-D")
                .arg("-a")
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ssh-agent runs (`just setup` installs openssh-client)");
            let agent = Self { child, socket };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !agent.socket.exists() {
                assert!(Instant::now() < deadline, "ssh-agent made no socket in 10 s");
                std::thread::sleep(Duration::from_millis(10));
            }
            agent
        }

        fn add(&self, key: &Path) {
            run(Command::new("ssh-add")
                .arg("-q")
                .arg(key)
                .env("SSH_AUTH_SOCK", &self.socket));
        }
    }

    impl Drop for SshAgent {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn the_ssh_agent_lists_its_keys_and_signs_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let ssh_agent = SshAgent::start(dir.path());
        let (alice_key, alice) = keygen(dir.path(), "alice", &["-t", "ed25519"]);
        let (rsa_key, rsa) = keygen(dir.path(), "rsa", &["-t", "rsa", "-b", "2048"]);
        let (_, absent) = keygen(dir.path(), "absent", &["-t", "ed25519"]);
        ssh_agent.add(&alice_key);
        ssh_agent.add(&rsa_key);

        let env = [("SSH_AUTH_SOCK".to_owned(), ssh_agent.socket.display().to_string())];
        let agent = Agent::from_env(env).unwrap();
        let identities = agent.identities().unwrap();
        assert_eq!(identities.len(), 2, "{identities:?}");
        for public in [&alice, &rsa] {
            let listed = identities.iter().find(|k| k.key_data() == public.key_data()).unwrap();
            let signer = agent.signer(listed.clone());
            assert_eq!(signer.fingerprint(), fingerprint(public));
            let header = signer.sign(BODY).unwrap();
            let verified = verify(BODY, &header, std::slice::from_ref(public)).unwrap();
            assert_eq!(verified.fingerprint, fingerprint(public));
            let output = keygen_verify(dir.path(), public, BODY, &header);
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        }
        // The agent's ed25519 signature is the key file's, byte for byte.
        let from_file = Signer::from_key_file(&alice_key).unwrap().sign(BODY).unwrap();
        assert_eq!(agent.signer(alice.clone()).sign(BODY).unwrap(), from_file);

        let e = agent.signer(absent.clone()).sign(BODY).unwrap_err();
        assert!(matches!(e, SigningError::AgentRefused { .. }), "{e:?}");
        assert!(e.to_string().contains(&fingerprint(&absent)), "{e}");
    }

    #[test]
    fn no_agent_is_an_error_saying_how_to_start_one() {
        let e = Agent::from_env([("HOME".to_owned(), "/root".to_owned())]).unwrap_err();
        assert!(matches!(e, SigningError::NoAgent));
        assert!(e.to_string().contains("ssh-add"), "{e}");
        let empty = Agent::from_env([("SSH_AUTH_SOCK".to_owned(), String::new())]).unwrap_err();
        assert!(matches!(empty, SigningError::NoAgent));

        let dir = tempfile::tempdir().unwrap();
        let gone = Agent::new(dir.path().join("no.sock"));
        assert!(matches!(gone.identities(), Err(SigningError::Agent { .. })));
        let e = gone.signer(signer(1).public_key().clone()).sign(BODY).unwrap_err();
        assert!(matches!(e, SigningError::Agent { .. }), "{e:?}");
    }

    #[test]
    fn an_authorized_keys_line_parses_to_its_key() {
        let alice = signer(1).public_key().to_openssh().unwrap();
        let (kind, data) = alice.split_once(' ').unwrap();
        let data = data.split_whitespace().next().unwrap();
        let key = parse_authorized_key(&format!("  {kind} {data} alice@laptop (work)\n")).unwrap();
        assert_eq!(key.key_data(), signer(1).public_key().key_data());
        assert_eq!(key.comment(), "alice@laptop (work)");
        assert_eq!(parse_authorized_key(&format!("{kind} {data}")).unwrap().comment(), "");
    }

    #[test]
    fn an_authorized_keys_line_that_is_wrong_is_refused_naming_what() {
        let alice = signer(1).public_key().to_openssh().unwrap();
        let (_, data) = alice.split_once(' ').unwrap();
        let data = data.split_whitespace().next().unwrap();
        let refused = |line: &str| parse_authorized_key(line).unwrap_err();

        for (options, line) in [
            ("no-pty", format!("no-pty ssh-ed25519 {data} alice")),
            (
                "from=\"10.0.0.0/8\",command=\"echo hi there\"",
                format!("from=\"10.0.0.0/8\",command=\"echo hi there\" ssh-ed25519 {data}"),
            ),
        ] {
            let e = refused(&line);
            assert!(
                matches!(&e, AuthorizedKeyError::Options { options: o } if o == options),
                "{e:?}"
            );
            assert!(e.to_string().contains("TYPE BASE64 [COMMENT]"), "{e}");
        }
        assert!(matches!(refused("   "), AuthorizedKeyError::Empty));
        assert!(
            matches!(refused(&format!("ssh-foo {data}")), AuthorizedKeyError::UnknownType { found } if found == "ssh-foo")
        );
        assert!(matches!(
            refused(&format!("ssh-ed25519-cert-v01@openssh.com {data}")),
            AuthorizedKeyError::UnknownType { .. }
        ));
        assert!(matches!(
            refused("# alice's laptop"),
            AuthorizedKeyError::UnknownType { .. }
        ));
        assert!(matches!(refused("ssh-ed25519"), AuthorizedKeyError::MissingKey { .. }));
        assert!(matches!(
            refused("ssh-ed25519 AAAA!!!"),
            AuthorizedKeyError::InvalidKey { .. }
        ));
        assert!(matches!(
            refused(&format!("ssh-ed25519 {}", &data[..data.len() - 8])),
            AuthorizedKeyError::InvalidKey { .. }
        ));
        // The line says RSA, the key is ed25519.
        assert!(
            matches!(refused(&format!("ssh-rsa {data}")), AuthorizedKeyError::InvalidKey { found, .. } if found == "ssh-rsa")
        );
        assert!(matches!(
            refused(&format!("ssh-dss {data}")),
            AuthorizedKeyError::Refused { .. }
        ));
    }

    #[test]
    fn keys_from_ssh_keygen_parse_as_authorized_keys_lines() {
        for kind in KEY_KINDS {
            let dir = tempfile::tempdir().unwrap();
            let (path, public) = keygen(dir.path(), "alice", kind);
            let line = std::fs::read_to_string(path.with_extension("pub")).unwrap();
            assert_eq!(parse_authorized_key(&line).unwrap(), public, "{line}");
        }
    }
}

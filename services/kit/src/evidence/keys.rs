//! ECDSA P-256 keys, cosign's default: the signing key the builder and the tester read from a
//! PEM file (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as `openssl genpkey` and
//! `openssl ecparam -genkey` write them), and public keys (`PUBLIC KEY`, SPKI) as the config
//! repo keeps them. Any other algorithm or curve is refused with what was found, so a wrong key
//! is caught at start-up, not at the first verification.

use std::fmt;
use std::path::Path;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, Signature, VerifyingKey};
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::pkcs8::der::pem;
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding, ObjectIdentifier, PrivateKeyInfo};
use sha2::{Digest, Sha256};

use super::EvidenceError;

/// `id-ecPublicKey`: an elliptic-curve key, its curve named by the algorithm's parameters.
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `prime256v1`, also called P-256 and secp256r1.
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// The key that signs images and attestations. Its memory is zeroed when dropped, and it never
/// prints: `Debug` shows its public key's id.
#[derive(Clone)]
pub struct SigningKey {
    key: p256::ecdsa::SigningKey,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key a service's `signing` config names, or `None` when `enabled` is false: the one
    /// start-up check of the builder and the tester. `signs` says what the key is for (`every
    /// image is signed`) and `without` what turning signing off does (`to push unsigned images`),
    /// for the message of a missing key.
    ///
    /// # Errors
    /// `signing.key_file` when signing is on and the key is not given, cannot be read, or is not
    /// an unencrypted ECDSA P-256 private key in PEM.
    pub fn configured(
        enabled: bool,
        key_file: Option<&std::path::Path>,
        signs: &str,
        without: &str,
    ) -> Result<Option<Self>, crate::settings::ConfigError> {
        const FIELD: &str = "signing.key_file";
        if !enabled {
            return Ok(None);
        }
        let Some(path) = key_file else {
            return Err(crate::settings::ConfigError::invalid(
                FIELD,
                format!(
                    "is required: {signs} with this ECDSA P-256 private key (PEM; make one with \
                     `openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt`), or set \
                     signing.enabled: false {without}"
                ),
            ));
        };
        Self::from_pem_file(path).map(Some).map_err(|e| {
            let problem = match &e {
                EvidenceError::KeyFile { source, .. } => format!("cannot read `{}`: {source}", path.display()),
                other => format!("`{}`: {other}", path.display()),
            };
            crate::settings::ConfigError::invalid(FIELD, problem)
        })
    }

    /// Reads the key from a PEM file (see [`from_pem`](Self::from_pem)).
    ///
    /// # Errors
    /// [`EvidenceError::KeyFile`] when the file cannot be read, else as `from_pem`.
    pub fn from_pem_file(path: &Path) -> Result<Self, EvidenceError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| EvidenceError::KeyFile {
            path: path.to_owned(),
            source,
        })?);
        Self::from_pem(&text)
    }

    /// The key in `pem`: a PKCS#8 `PRIVATE KEY` or a SEC1 `EC PRIVATE KEY` on P-256, among any
    /// other blocks (`openssl ecparam -genkey` writes an `EC PARAMETERS` block first).
    ///
    /// # Errors
    /// [`EvidenceError::Key`] naming what was found: another algorithm or curve, an encrypted or
    /// public key, or no private key at all.
    pub fn from_pem(pem: &str) -> Result<Self, EvidenceError> {
        let (label, der) = pem_block(pem, "private key", |label| label.ends_with("PRIVATE KEY"))?;
        let der = Zeroizing::new(der);
        let secret = match label {
            "PRIVATE KEY" => {
                let info = PrivateKeyInfo::try_from(der.as_slice())
                    .map_err(|error| key_error(format!("the PKCS#8 key cannot be parsed: {error}")))?;
                let curve = info.algorithm.parameters_oid().ok();
                if info.algorithm.oid != EC_PUBLIC_KEY || curve != Some(P256) {
                    return Err(key_error(format!(
                        "{}, not ECDSA P-256",
                        describe_algorithm(info.algorithm.oid, curve)
                    )));
                }
                p256::SecretKey::from_pkcs8_der(&der)
                    .map_err(|error| key_error(format!("the PKCS#8 P-256 key is invalid: {error}")))?
            }
            "EC PRIVATE KEY" => {
                let key = sec1::EcPrivateKey::try_from(der.as_slice())
                    .map_err(|error| key_error(format!("the SEC1 key cannot be parsed: {error}")))?;
                match key.parameters.and_then(|parameters| parameters.named_curve()) {
                    Some(curve) if curve != P256 => {
                        return Err(key_error(format!(
                            "{}, not ECDSA P-256",
                            describe_algorithm(EC_PUBLIC_KEY, Some(curve))
                        )));
                    }
                    _ => {}
                }
                p256::SecretKey::from_sec1_der(&der)
                    .map_err(|error| key_error(format!("the SEC1 key is not a valid P-256 key: {error}")))?
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(key_error(
                    "an encrypted PKCS#8 key; store it unencrypted (`openssl pkey -in key.pem -out plain.pem`) \
                     and protect the file instead"
                        .to_owned(),
                ));
            }
            "RSA PRIVATE KEY" => return Err(key_error("an RSA key, not ECDSA P-256".to_owned())),
            "OPENSSH PRIVATE KEY" => {
                return Err(key_error(
                    "an OpenSSH key; convert a P-256 one with `ssh-keygen -p -m PKCS8 -f key`".to_owned(),
                ));
            }
            other => return Err(key_error(format!("a `{other}` block, not ECDSA P-256"))),
        };
        let key = p256::ecdsa::SigningKey::from(secret);
        let public = PublicKey::from_verifying_key(*key.verifying_key());
        Ok(Self { key, public })
    }

    /// The public half, to publish in the config repo.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// An ASN.1 DER ECDSA-SHA256 signature over `message`, as cosign and DSSE verifiers expect.
    pub(crate) fn sign_der(&self, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.key.sign(message);
        let der: DerSignature = signature.to_der();
        der.as_bytes().to_vec()
    }
}

/// A P-256 public key that verifies images and attestations, with its id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    /// `sha256:<hex>` of the SPKI DER, computed once.
    id: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublicKey").field(&self.id).finish()
    }
}

impl PublicKey {
    /// The key in a `PUBLIC KEY` (SPKI) PEM block, as `openssl ec -pubout` and cosign write it.
    ///
    /// # Errors
    /// [`EvidenceError::Key`] naming what was found: another algorithm or curve, a private key,
    /// or no key at all.
    pub fn from_pem(pem: &str) -> Result<Self, EvidenceError> {
        let (_, der) = pem_block(pem, "`PUBLIC KEY` block", |label| label == "PUBLIC KEY")?;
        let info = SubjectPublicKeyInfoRef::try_from(der.as_slice())
            .map_err(|error| key_error(format!("the public key cannot be parsed: {error}")))?;
        let curve = info.algorithm.parameters_oid().ok();
        if info.algorithm.oid != EC_PUBLIC_KEY || curve != Some(P256) {
            return Err(key_error(format!(
                "{}, not ECDSA P-256",
                describe_algorithm(info.algorithm.oid, curve)
            )));
        }
        let key = VerifyingKey::from_public_key_der(&der)
            .map_err(|error| key_error(format!("the P-256 public key is invalid: {error}")))?;
        Ok(Self::from_verifying_key(key))
    }

    fn from_verifying_key(key: VerifyingKey) -> Self {
        let der = key
            .to_public_key_der()
            .expect("a P-256 public key always encodes as SPKI");
        let id = format!("sha256:{}", hex::encode(Sha256::digest(der.as_bytes())));
        Self { key, id }
    }

    /// The key as a `PUBLIC KEY` PEM block (SPKI), the form the config repo keeps.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("a P-256 public key always encodes as SPKI PEM")
    }

    /// `sha256:<hex>` of the key's SPKI DER: what envelopes, events and releases name it by.
    pub fn key_id(&self) -> String {
        self.id.clone()
    }

    /// Whether `signature` (ASN.1 DER ECDSA-SHA256) is this key's over `message`.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        Signature::from_der(signature).is_ok_and(|signature| self.key.verify(message, &signature).is_ok())
    }
}

fn key_error(reason: String) -> EvidenceError {
    EvidenceError::Key { reason }
}

/// The first PEM block in `text` whose label is `wanted`, with its label and DER bytes; else an
/// error naming what was there instead (`what` names what was looked for).
fn pem_block<'a>(
    text: &'a str,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<(&'a str, Vec<u8>), EvidenceError> {
    let blocks = pem_blocks(text);
    let Some((label, block)) = blocks.iter().find(|(label, _)| wanted(label)) else {
        if blocks.is_empty() {
            return Err(key_error("no PEM block".to_owned()));
        }
        let labels: Vec<&str> = blocks.iter().map(|(label, _)| *label).collect();
        return Err(key_error(format!("no {what}, only {}", labels.join(", "))));
    };
    let (_, der) = pem::decode_vec(block.as_bytes())
        .map_err(|error| key_error(format!("the {label} block is not valid PEM: {error}")))?;
    Ok((label, der))
}

/// The PEM blocks in `text`, each with its label: `(label, the block from BEGIN to END)`.
fn pem_blocks(text: &str) -> Vec<(&str, &str)> {
    const BEGIN: &str = "-----BEGIN ";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let from = &rest[start..];
        let Some(label_end) = from[BEGIN.len()..].find("-----") else {
            break;
        };
        let label = &from[BEGIN.len()..BEGIN.len() + label_end];
        let end_line = format!("-----END {label}-----");
        let Some(end) = from.find(&end_line) else {
            break;
        };
        let block_end = end + end_line.len();
        blocks.push((label, &from[..block_end]));
        rest = &from[block_end..];
    }
    blocks
}

/// A person's name for a key algorithm (and curve).
fn describe_algorithm(algorithm: ObjectIdentifier, curve: Option<ObjectIdentifier>) -> String {
    match (algorithm.to_string().as_str(), curve.map(|curve| curve.to_string())) {
        ("1.2.840.10045.2.1", Some(curve)) => match curve.as_str() {
            "1.2.840.10045.3.1.7" => "an ECDSA P-256 key".to_owned(),
            "1.3.132.0.34" => "an ECDSA P-384 key".to_owned(),
            "1.3.132.0.35" => "an ECDSA P-521 key".to_owned(),
            "1.3.132.0.10" => "an ECDSA secp256k1 key".to_owned(),
            other => format!("an elliptic-curve key on curve {other}"),
        },
        ("1.2.840.10045.2.1", None) => "an elliptic-curve key without a named curve".to_owned(),
        ("1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10", _) => "an RSA key".to_owned(),
        ("1.3.101.112", _) => "an Ed25519 key".to_owned(),
        ("1.3.101.113", _) => "an Ed448 key".to_owned(),
        (other, _) => format!("a key of algorithm {other}"),
    }
}

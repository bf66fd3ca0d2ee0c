//! Who the CLI says sends a command, and the key that proves it (DESIGN.md §4, "Signed
//! commands"). The promoter accepts a command only when it is signed by a key that the config
//! repo's `people.yaml` lists for the `actor` the command names; the CLI only finds the key and
//! signs, and the promoter judges.
//!
//! The actor is `--actor NAME`, else `BATON_ACTOR`, else `$USER`. The key, in this order:
//! 1. `--key FILE` (or `BATON_SIGNING_KEY`): an unencrypted OpenSSH private key file. A key
//!    with a passphrase is refused, pointing at the ssh-agent: the CLI never asks for one.
//! 2. The ssh-agent at `SSH_AUTH_SOCK`: the key whose fingerprint `--key-fingerprint` (or
//!    `BATON_SIGNING_KEY_FINGERPRINT`) names, else the first key the agent lists — the CLI does
//!    not read the config repo, so it cannot know which of several keys `people.yaml` lists. A
//!    refused command signed that way says so, and how to pick another key.
//! 3. Neither: a usage error naming these ways.

use std::path::PathBuf;

use baton_kit::signing::{AGENT_SOCKET_VAR, Agent, Signer, fingerprint};
use ssh_key::PublicKey;

use crate::CliError;
use crate::cli::Signing;

/// The key a command is signed with, and how it was chosen.
#[derive(Debug)]
pub struct Chosen {
    /// Signs the command.
    pub signer: Signer,
    /// Where the key comes from, for messages: the file, or the agent's socket.
    pub from: KeySource,
}

/// Where a signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `--key FILE` or `BATON_SIGNING_KEY`.
    File(PathBuf),
    /// The ssh-agent, which holds `held` keys; `picked` when `--key-fingerprint` chose it rather
    /// than it being the first.
    Agent { held: usize, picked: bool },
}

impl Chosen {
    /// What to tell the person when the promoter refuses a command signed with this key: the
    /// agent held several keys and the CLI took the first, which may not be the one
    /// `people.yaml` lists.
    pub fn refusal_hint(&self) -> Option<String> {
        match self.from {
            KeySource::Agent { held, picked: false } if held > 1 => Some(format!(
                "signed with {}, the first of the {held} keys in the ssh-agent; if people.yaml lists \
                 another, pick it with --key-fingerprint SHA256:… (`ssh-add -l` lists them)",
                self.signer.fingerprint()
            )),
            _ => None,
        }
    }
}

/// The actor a command names: `--actor` (or `BATON_ACTOR`, which clap reads), else `USER` in
/// `env`.
///
/// # Errors
/// [`CliError::Usage`] when no name is known, or the removed `--as` is given.
pub fn actor(signing: &Signing, env: &dyn Fn(&str) -> Option<String>) -> Result<String, CliError> {
    if let Some(name) = &signing.removed_as {
        return Err(CliError::Usage(format!(
            "--as is gone: say who you are with --actor {name} (or BATON_ACTOR), and sign with your key \
             (--key FILE, BATON_SIGNING_KEY or the ssh-agent); the promoter checks the name against the key"
        )));
    }
    signing
        .actor
        .clone()
        .or_else(|| env("USER"))
        .filter(|name| !name.trim().is_empty())
        .ok_or_else(|| {
            CliError::Usage(
                "who are you? every command names the person who sends it: pass --actor NAME or set BATON_ACTOR \
                 (your name in the config repo's people.yaml)"
                    .into(),
            )
        })
}

/// The key to sign with, as the module documentation orders it; `env` is the process
/// environment (for `SSH_AUTH_SOCK`). Asking the agent for its keys is a short blocking round
/// trip on its socket.
///
/// # Errors
/// [`CliError::Usage`] when there is no key at all, the agent holds none, or none has the
/// fingerprint asked for; [`CliError::Sign`] when the key file or the agent cannot be used.
pub fn signer(signing: &Signing, env: &dyn Fn(&str) -> Option<String>) -> Result<Chosen, CliError> {
    let wanted = signing.key_fingerprint.as_deref().map(normalise_fingerprint);
    if let Some(path) = &signing.key {
        let signer = Signer::from_key_file(path).map_err(CliError::Sign)?;
        if let Some(wanted) = &wanted
            && signer.fingerprint() != *wanted
        {
            return Err(CliError::Usage(format!(
                "the key {} is {}, not {wanted} as --key-fingerprint (or BATON_SIGNING_KEY_FINGERPRINT) says",
                path.display(),
                signer.fingerprint()
            )));
        }
        return Ok(Chosen {
            signer,
            from: KeySource::File(path.clone()),
        });
    }
    let socket = env(AGENT_SOCKET_VAR).filter(|s| !s.is_empty());
    let Some(socket) = socket else {
        return Err(CliError::Usage(NO_KEY.into()));
    };
    let agent = Agent::new(socket);
    let identities = agent.identities().map_err(CliError::Sign)?;
    let held = identities.len();
    let key = pick(identities, wanted.as_deref())
        .map_err(|why| CliError::Usage(format!("the ssh-agent at {}: {why}", agent.socket().display())))?;
    Ok(Chosen {
        signer: agent.signer(key),
        from: KeySource::Agent {
            held,
            picked: wanted.is_some(),
        },
    })
}

/// The error when there is no key at all: the three ways to give one.
const NO_KEY: &str = "no key to sign the command with: pass --key FILE (your OpenSSH private key), set \
     BATON_SIGNING_KEY=FILE, or add your key to an ssh-agent (`ssh-add`, with SSH_AUTH_SOCK set); \
     people.yaml in the config repo must list its public key under your name";

/// `SHA256:…` as `ssh-add -l` prints it; the prefix may be left out.
fn normalise_fingerprint(fingerprint: &str) -> String {
    let fingerprint = fingerprint.trim();
    if fingerprint.starts_with("SHA256:") {
        fingerprint.to_owned()
    } else {
        format!("SHA256:{fingerprint}")
    }
}

/// The agent's key to sign with: the one with the `wanted` fingerprint, else the first.
/// The error says what is wrong, for the caller to prefix with the agent.
fn pick(identities: Vec<PublicKey>, wanted: Option<&str>) -> Result<PublicKey, String> {
    if identities.is_empty() {
        return Err("it holds no key: `ssh-add KEY`, or sign with a key file (--key FILE or BATON_SIGNING_KEY)".into());
    }
    let Some(wanted) = wanted else {
        return Ok(identities.into_iter().next().expect("not empty"));
    };
    let held: Vec<String> = identities.iter().map(fingerprint).collect();
    identities
        .into_iter()
        .find(|key| fingerprint(key) == wanted)
        .ok_or_else(|| format!("it holds no key {wanted}, only {}", held.join(", ")))
}

#[cfg(test)]
mod tests {
    use ssh_key::PrivateKey;
    use ssh_key::private::Ed25519Keypair;

    use super::*;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    #[test]
    fn the_agents_first_key_signs_unless_a_fingerprint_picks_one() {
        let (one, two) = (key(1), key(2));
        assert_eq!(pick(vec![one.clone(), two.clone()], None), Ok(one.clone()));
        let wanted = fingerprint(&two);
        assert_eq!(pick(vec![one.clone(), two.clone()], Some(&wanted)), Ok(two));
        let missing = pick(vec![one.clone()], Some(&wanted)).unwrap_err();
        assert!(
            missing.contains(&wanted) && missing.contains(&fingerprint(&one)),
            "names the key asked for and those held: {missing}"
        );
        assert!(pick(vec![], None).unwrap_err().contains("ssh-add"));
    }

    #[test]
    fn a_fingerprint_may_leave_out_its_prefix() {
        assert_eq!(normalise_fingerprint("SHA256:abc"), "SHA256:abc");
        assert_eq!(normalise_fingerprint(" abc "), "SHA256:abc");
    }

    #[test]
    fn the_actor_is_the_flag_else_user_and_as_is_gone() {
        let env = |name: &str| (name == "USER").then(|| "carol".to_owned());
        let none = |_: &str| None;
        let named = Signing {
            actor: Some("alice".into()),
            ..Signing::default()
        };
        assert_eq!(actor(&named, &env).unwrap(), "alice");
        assert_eq!(actor(&Signing::default(), &env).unwrap(), "carol");
        let Err(CliError::Usage(why)) = actor(&Signing::default(), &none) else {
            panic!("no name is a usage error");
        };
        assert!(why.contains("--actor") && why.contains("BATON_ACTOR"), "{why}");
        let old = Signing {
            removed_as: Some("alice".into()),
            ..Signing::default()
        };
        let Err(CliError::Usage(why)) = actor(&old, &env) else {
            panic!("--as is refused");
        };
        assert!(why.contains("--actor alice"), "{why}");
    }

    #[test]
    fn without_a_key_the_error_names_the_three_ways() {
        let Err(CliError::Usage(why)) = signer(&Signing::default(), &|_| None) else {
            panic!("no key is a usage error");
        };
        for way in [
            "--key FILE",
            "BATON_SIGNING_KEY",
            "ssh-agent",
            "SSH_AUTH_SOCK",
            "people.yaml",
        ] {
            assert!(why.contains(way), "names {way}: {why}");
        }
    }

    #[test]
    fn a_key_file_must_have_the_fingerprint_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        let private = PrivateKey::from(Ed25519Keypair::from_seed(&[3; 32]));
        std::fs::write(&path, private.to_openssh(ssh_key::LineEnding::LF).unwrap().as_bytes()).unwrap();
        let file = Signing {
            key: Some(path.clone()),
            ..Signing::default()
        };
        let chosen = signer(&file, &|_| None).unwrap();
        assert_eq!(chosen.signer.fingerprint(), fingerprint(private.public_key()));
        assert_eq!(chosen.from, KeySource::File(path.clone()));
        assert_eq!(chosen.refusal_hint(), None);
        let other = Signing {
            key_fingerprint: Some(fingerprint(&key(4))),
            ..file
        };
        assert!(matches!(signer(&other, &|_| None), Err(CliError::Usage(_))));
    }
}

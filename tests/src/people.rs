//! People for the suites: an SSH key per name (ed25519, derived from the name, so every run of a
//! suite has the same keys; or a random one, for the demo), the `people.yaml` that lists them,
//! promoter commands signed as them, as the CLI signs them, and their private key as a file for
//! the CLI's `--key`.
//!
//! ```no_run
//! # async fn example(client: &async_nats::Client) -> anyhow::Result<()> {
//! use baton_schemas::commands::{CommandRequest, Verb};
//! use baton_tests::people::{Person, people_yaml};
//!
//! let alice = Person::new("alice");
//! let yaml = people_yaml(&[alice.entry()]);   // commit it as people.yaml in the config repo
//! let reply = alice
//!     .send(client, Verb::Approve, CommandRequest { release: Some("r1".into()), ..Default::default() })
//!     .await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use baton_kit::signing::{SIGNATURE_HEADER, Signer};
use baton_schemas::commands::{CommandReply, CommandRequest, PROMOTER, Verb};
use baton_schemas::subjects;
use sha2::{Digest as _, Sha256};
use ssh_key::private::{Ed25519Keypair, PrivateKey};

/// Someone who signs commands.
#[derive(Debug, Clone)]
pub struct Person {
    /// The name `people.yaml` and `environments.yaml` know them by.
    pub name: String,
    signer: Signer,
    /// The private key behind `signer`, for a tool that reads it from a file (the `baton` CLI's
    /// `--key`).
    private_key: Arc<PrivateKey>,
}

/// A person's entry in `people.yaml`.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The name.
    pub name: String,
    /// Their public key line.
    pub key: String,
    /// Commit e-mail addresses.
    pub emails: Vec<String>,
    /// Git-host logins.
    pub logins: Vec<String>,
    /// Chat ids.
    pub chat: Vec<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// For a bot: whom it speaks for (`None`: a person).
    pub speaks_for: Option<Vec<String>>,
}

impl Person {
    /// `name`, with the key derived from it.
    pub fn new(name: &str) -> Self {
        let seed: [u8; 32] = Sha256::digest(format!("baton-tests:{name}").as_bytes()).into();
        Self::with_seed(name, &seed)
    }

    /// `name`, with a new random key (the demo's people, whose keys must not be guessable from
    /// their names).
    pub fn generate(name: &str) -> Self {
        Self::with_seed(name, &rand::random())
    }

    fn with_seed(name: &str, seed: &[u8; 32]) -> Self {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(seed));
        let signer = Signer::from_private_key(key.clone()).expect("an unencrypted key");
        Self {
            name: name.to_owned(),
            signer,
            private_key: Arc::new(key),
        }
    }

    /// Writes their private key to `path` as an unencrypted OpenSSH key file, readable by the
    /// owner only (as `ssh-keygen` writes one), for `baton --key` or `ssh-add`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_private_key(&self, path: &Path) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let text = self
            .private_key
            .to_openssh(ssh_key::LineEnding::LF)
            .context("encoding the private key")?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Their signer.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Their public key as an `authorized_keys` line.
    pub fn key_line(&self) -> String {
        self.signer
            .public_key()
            .to_openssh()
            .expect("a public key prints")
            .trim()
            .to_owned()
            + &format!(" {}@baton-tests", self.name)
    }

    /// Their entry in `people.yaml`: their key, nothing else.
    pub fn entry(&self) -> Entry {
        Entry {
            name: self.name.clone(),
            key: self.key_line(),
            ..Entry::default()
        }
    }

    /// `request` as `actor` = this person, with a fresh `issuedAt` and `nonce`: the exact body
    /// bytes and their `Baton-Signature`.
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign(&self, mut request: CommandRequest) -> Result<(Vec<u8>, String)> {
        if request.actor.is_empty() {
            request.actor.clone_from(&self.name);
        }
        request.issued_at.get_or_insert_with(chrono::Utc::now);
        request.nonce.get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
        let body = serde_json::to_vec(&request)?;
        let signature = self.signer.sign(&body).context("signing the command")?;
        Ok((body, signature))
    }

    /// Sends `request` as `verb`, signed by this person, and returns the promoter's reply
    /// (waiting a little for a promoter that is still starting).
    ///
    /// # Errors
    /// When no promoter answers.
    pub async fn send(&self, client: &async_nats::Client, verb: Verb, request: CommandRequest) -> Result<CommandReply> {
        let (body, signature) = self.sign(request)?;
        send_signed(client, verb, body, Some(signature)).await
    }
}

/// Sends `body` as `verb` with `signature` (or none) and returns the promoter's reply.
///
/// # Errors
/// When no promoter answers within 20 s.
pub async fn send_signed(
    client: &async_nats::Client,
    verb: Verb,
    body: Vec<u8>,
    signature: Option<String>,
) -> Result<CommandReply> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let subject = subjects::command_subject(PROMOTER, verb.as_str());
    loop {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(signature) = &signature {
            headers.insert(SIGNATURE_HEADER, signature.as_str());
        }
        match client
            .request_with_headers(subject.clone(), headers, body.clone().into())
            .await
        {
            Ok(reply) => return Ok(serde_json::from_slice(&reply.payload)?),
            Err(e)
                if e.kind() == async_nats::client::RequestErrorKind::NoResponders
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// An `ssh-agent -D` of its own, on a socket in a temporary directory, holding the keys
/// [`SshAgent::add`]ed: what the CLI signs through when it has no key file. Killed when dropped.
#[derive(Debug)]
pub struct SshAgent {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl SshAgent {
    /// Starts one and waits for its socket.
    ///
    /// # Errors
    /// When `ssh-agent` cannot run (`just setup` installs openssh-client) or makes no socket.
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let child = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(dir.path().join("agent.sock"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("running ssh-agent (`just setup` installs openssh-client)")?;
        let agent = Self { child, dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !agent.socket().exists() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "ssh-agent made no socket in 10 s");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(agent)
    }

    /// Its socket: the `SSH_AUTH_SOCK` of a program that signs through it.
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Adds `person`'s key (`ssh-add`); the agent lists its keys in the order they were added.
    ///
    /// # Errors
    /// When `ssh-add` fails.
    pub fn add(&self, person: &Person) -> Result<()> {
        let key = self.dir.path().join(format!("{}.key", person.name));
        person.write_private_key(&key)?;
        let status = std::process::Command::new("ssh-add")
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", self.socket())
            .status()
            .context("running ssh-add")?;
        anyhow::ensure!(status.success(), "ssh-add {} failed: {status}", key.display());
        Ok(())
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `people.yaml` listing `entries` (people, and bots: entries with `speaks_for`).
pub fn people_yaml(entries: &[Entry]) -> String {
    let list = |values: &[String]| {
        let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut people = String::from("people:\n");
    let mut bots = String::from("bots:\n");
    for entry in entries {
        match &entry.speaks_for {
            None => people.push_str(&format!(
                "  {}:\n    keys: ['{}']\n    emails: {}\n    logins: {}\n    chat: {}\n    groups: {}\n",
                entry.name,
                entry.key,
                list(&entry.emails),
                list(&entry.logins),
                list(&entry.chat),
                list(&entry.groups)
            )),
            Some(speaks_for) => bots.push_str(&format!(
                "  {}:\n    keys: ['{}']\n    speaks_for: {}\n",
                entry.name,
                entry.key,
                list(speaks_for)
            )),
        }
    }
    if entries.iter().any(|e| e.speaks_for.is_some()) {
        people.push_str(&bots);
    }
    people
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_schemas::people::PeopleFile;

    #[test]
    fn the_file_lists_each_person_and_bot_and_parses() {
        let (alice, bot) = (Person::new("alice"), Person::new("chatops"));
        let yaml = people_yaml(&[
            Entry {
                emails: vec!["alice@example.com".into()],
                chat: vec!["U1".into()],
                ..alice.entry()
            },
            Entry {
                speaks_for: Some(vec!["*".into()]),
                ..bot.entry()
            },
        ]);
        let file = PeopleFile::parse(&yaml).expect("valid");
        assert!(file.bot_speaks_for("chatops", "alice", "U1"));
        assert_eq!(
            Person::new("alice").key_line(),
            alice.key_line(),
            "the same key every run"
        );
        let (body, signature) = alice.sign(CommandRequest::default()).unwrap();
        let key = baton_kit::signing::parse_authorized_key(&alice.key_line()).unwrap();
        baton_kit::signing::verify(&body, &signature, &[key]).expect("verifies");
    }

    #[test]
    fn a_written_private_key_signs_as_the_person() {
        let dir = tempfile::tempdir().unwrap();
        let alice = Person::generate("alice");
        let path = dir.path().join("alice");
        alice.write_private_key(&path).unwrap();
        let from_file = Signer::from_key_file(&path).unwrap();
        assert_eq!(from_file.fingerprint(), alice.signer().fingerprint());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner only");
        assert_ne!(
            Person::generate("alice").key_line(),
            alice.key_line(),
            "a new key each time"
        );
    }
}

//! People for the suites: an SSH key per name (ed25519, derived from the name, so every run of a
//! suite has the same keys), the `people.yaml` that lists them, and promoter commands signed as
//! them, as the CLI signs them.
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
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        let signer = Signer::from_private_key(key).expect("an unencrypted key");
        Self {
            name: name.to_owned(),
            signer,
        }
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
}

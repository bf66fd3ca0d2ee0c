//! `people.yaml` at the root of the config repo: every person who may act on releases, and every
//! bot allowed to speak for people. The promoter reads it at the config repo's head before every
//! command: a command is accepted only when it is signed with a key listed here for the person
//! it names (or for a bot allowed to speak for that person through the chat id it names), so a
//! key removed from the file stops working at the next command. An invalid file is refused, with
//! the line or field at fault, and the last valid one stays in force. Schema:
//! `schemas/json/people.json`.
//!
//! ```yaml
//! people:
//!   alice:
//!     keys:                          # OpenSSH public keys (authorized_keys lines)
//!       - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... alice@laptop
//!     emails: [alice@corp.example]   # her commits (author and committer), any case
//!     logins: [alice-gh]             # her pushes: the pusher the git host names
//!     chat: [U024BE7LH]              # her chat ids (Slack user ids)
//!     groups: [sre]
//! bots:
//!   chatops:
//!     keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... baton-chatops]
//!     speaks_for: ["*"]              # or the people it may speak for
//! ```

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::userfile::{self, FileError};

/// The path of the people file inside the config repo.
pub const PEOPLE_FILE: &str = "people.yaml";

/// `speaks_for` entry meaning every person of the file.
pub const EVERYONE: &str = "*";

/// Key types a listed key may have (what OpenSSH writes in `authorized_keys`): the ones the
/// kit's signature verification accepts.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The whole `people.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeopleFile {
    /// Everyone who may act, by the name `environments.yaml` uses for them.
    #[serde(default)]
    pub people: BTreeMap<String, Person>,
    /// Programs that send commands on people's behalf (the chat-ops bot), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bots: BTreeMap<String, Bot>,
}

/// A person.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// OpenSSH public keys (`authorized_keys` lines, without options) their commands are signed
    /// with.
    #[serde(default)]
    pub keys: Vec<String>,
    /// E-mail addresses of their commits (as author or committer); compared ignoring case.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Their logins on git hosts: a signed push names its pusher by it. Compared ignoring case.
    #[serde(default)]
    pub logins: Vec<String>,
    /// Their chat user ids (Slack: `U024BE7LH`), through which a bot may speak for them.
    #[serde(default)]
    pub chat: Vec<String>,
    /// Groups they belong to, usable wherever `environments.yaml` names groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A bot: its keys, and whom it may speak for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bot {
    /// OpenSSH public keys it signs with.
    pub keys: Vec<String>,
    /// The people it may speak for (`*`: everyone in this file), each only through the chat ids
    /// listed for them.
    pub speaks_for: Vec<String>,
}

/// Who signed a command: a person, or a bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer<'a> {
    /// A person, by name.
    Person(&'a str),
    /// A bot, by name.
    Bot(&'a str),
}

impl PeopleFile {
    /// Parses and checks `people.yaml`.
    ///
    /// # Errors
    /// Names the field (and line, for syntax and shape errors) of the first problem.
    pub fn parse(text: &str) -> Result<Self, FileError> {
        let file: Self = userfile::from_yaml(PEOPLE_FILE, text)?;
        file.check()
            .map_err(|(field, message)| FileError::in_field(PEOPLE_FILE, field, message))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        let mut chats: BTreeMap<String, &str> = BTreeMap::new();
        let mut claim_key = |owner: &str, at: String, line: &str| -> Result<(), (String, String)> {
            let blob = key_blob(line).map_err(|why| (at.clone(), why))?;
            if let Some(other) = keys.insert(blob.to_owned(), owner.to_owned()) {
                return Err((
                    at,
                    format!("this key is also listed for `{other}`: a key names one signer"),
                ));
            }
            Ok(())
        };
        for (name, person) in &self.people {
            let at = |field: &str| format!("people.{name}.{field}");
            check_name(name).map_err(|why| (format!("people.{name}"), why))?;
            for (k, line) in person.keys.iter().enumerate() {
                claim_key(name, at(&format!("keys[{k}]")), line)?;
            }
            for (e, email) in person.emails.iter().enumerate() {
                if !email.contains('@') || email.chars().any(char::is_whitespace) {
                    return Err((
                        at(&format!("emails[{e}]")),
                        format!("`{email}` is not an e-mail address"),
                    ));
                }
            }
            for (c, chat) in person.chat.iter().enumerate() {
                if chat.trim().is_empty() {
                    return Err((at(&format!("chat[{c}]")), "a chat id cannot be empty".into()));
                }
                if let Some(other) = chats.insert(chat.clone(), name) {
                    return Err((
                        at(&format!("chat[{c}]")),
                        format!("chat id `{chat}` is also listed for `{other}`: a chat id names one person"),
                    ));
                }
            }
            for (g, group) in person.groups.iter().enumerate() {
                check_name(group).map_err(|why| (at(&format!("groups[{g}]")), why))?;
            }
        }
        for (name, bot) in &self.bots {
            let at = |field: &str| format!("bots.{name}.{field}");
            check_name(name).map_err(|why| (format!("bots.{name}"), why))?;
            if self.people.contains_key(name) {
                return Err((
                    format!("bots.{name}"),
                    format!("`{name}` is also a person: a name is a person's or a bot's"),
                ));
            }
            if bot.keys.is_empty() {
                return Err((at("keys"), "a bot needs a key to sign with".into()));
            }
            for (k, line) in bot.keys.iter().enumerate() {
                claim_key(name, at(&format!("keys[{k}]")), line)?;
            }
            for (s, spoken) in bot.speaks_for.iter().enumerate() {
                if spoken != EVERYONE && !self.people.contains_key(spoken) {
                    return Err((
                        at(&format!("speaks_for[{s}]")),
                        format!("`{spoken}` is not a person of this file (or `*` for everyone)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The signer whose keys list `name`: a person or a bot.
    pub fn signer(&self, name: &str) -> Option<(Signer<'_>, &[String])> {
        if let Some((name, person)) = self.people.get_key_value(name) {
            return Some((Signer::Person(name), &person.keys));
        }
        self.bots
            .get_key_value(name)
            .map(|(name, bot)| (Signer::Bot(name), bot.keys.as_slice()))
    }

    /// Whether bot `bot` may speak for `person` through chat id `chat`: the bot lists the
    /// person (or `*`), and the chat id is the person's.
    pub fn bot_speaks_for(&self, bot: &str, person: &str, chat: &str) -> bool {
        let Some(bot) = self.bots.get(bot) else {
            return false;
        };
        let listed = bot.speaks_for.iter().any(|s| s == EVERYONE || s == person);
        listed
            && self
                .people
                .get(person)
                .is_some_and(|p| p.chat.iter().any(|c| c == chat))
    }

    /// The person whose chat id is `chat`.
    pub fn by_chat(&self, chat: &str) -> Option<&str> {
        self.people
            .iter()
            .find(|(_, p)| p.chat.iter().any(|c| c == chat))
            .map(|(name, _)| name.as_str())
    }

    /// The person an e-mail address (of a commit) is, ignoring case.
    pub fn by_email(&self, email: &str) -> Option<&str> {
        self.people
            .iter()
            .find(|(_, p)| p.emails.iter().any(|e| e.eq_ignore_ascii_case(email)))
            .map(|(name, _)| name.as_str())
    }

    /// The person a git-host login (a pusher) is, ignoring case.
    pub fn by_login(&self, login: &str) -> Option<&str> {
        self.people
            .iter()
            .find(|(_, p)| p.logins.iter().any(|l| l.eq_ignore_ascii_case(login)))
            .map(|(name, _)| name.as_str())
    }

    /// The groups `person` belongs to by this file.
    pub fn groups_of(&self, person: &str) -> BTreeSet<&str> {
        self.people
            .get(person)
            .map(|p| p.groups.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

/// A person's or bot's name: what commands name as their actor.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` must be 1-64 letters, digits, `-`, `_`, `.` or `@`"))
    }
}

/// The base64 key blob of an `authorized_keys` line (`type blob [comment]`), refusing options
/// and unknown types. The kit parses the blob itself when it verifies a signature.
fn key_blob(line: &str) -> Result<&str, String> {
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "`{line}` is not an OpenSSH public key: write it as `ssh-keygen` prints it (`ssh-ed25519 AAAA… comment`, the content of the .pub file)"
        ));
    };
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "`{kind}` is not a key type Baton verifies ({}); options such as `from=` or `command=` are not allowed here",
            KEY_TYPES.join(", ")
        ));
    }
    if blob.len() < 16 || !blob.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) {
        return Err(format!("the key data of `{kind}` is not base64"));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbh7w0bPnC8mTpp4y7d7H4q0zC0Qh3VvDl5xY4vPGzZ alice@laptop";
    const BOT_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx3Fq7P1VfR9g6dWcE2n8qj1Yz0r4s5t6u7v8w9x0yZ baton-chatops";

    fn file() -> String {
        format!(
            "people:\n  alice:\n    keys: ['{ALICE_KEY}']\n    emails: [Alice@Corp.Example]\n    logins: [alice-gh]\n    chat: [U1]\n    groups: [sre]\n  bob:\n    chat: [U2]\nbots:\n  chatops:\n    keys: ['{BOT_KEY}']\n    speaks_for: [alice]\n"
        )
    }

    #[test]
    fn a_valid_file_names_people_bots_and_their_ids() {
        let people = PeopleFile::parse(&file()).unwrap();
        assert_eq!(people.by_email("alice@corp.example"), Some("alice"));
        assert_eq!(people.by_login("ALICE-GH"), Some("alice"));
        assert_eq!(people.by_chat("U2"), Some("bob"));
        assert!(people.bot_speaks_for("chatops", "alice", "U1"));
        assert!(!people.bot_speaks_for("chatops", "alice", "U2"), "bob's chat id");
        assert!(!people.bot_speaks_for("chatops", "bob", "U2"), "not listed for bob");
        assert!(!people.bot_speaks_for("alice", "alice", "U1"), "a person is no bot");
        assert!(matches!(people.signer("chatops"), Some((Signer::Bot("chatops"), _))));
        assert_eq!(people.groups_of("alice"), BTreeSet::from(["sre"]));
    }

    #[test]
    fn mistakes_are_refused_naming_the_field() {
        let cases = [
            ("people:\n  alice:\n    keys: ['ssh-ed25519']\n", "people.alice.keys[0]"),
            (
                "people:\n  alice:\n    keys: ['from=\"10.0.0.1\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbh']\n",
                "people.alice.keys[0]",
            ),
            ("people:\n  alice:\n    emails: [alice]\n", "people.alice.emails[0]"),
            (
                "people:\n  alice:\n    chat: [U1]\n  bob:\n    chat: [U1]\n",
                "people.bob.chat[0]",
            ),
            ("people:\n  'al ice': {}\n", "people.al ice"),
            (
                "people:\n  alice: {}\nbots:\n  alice:\n    keys: []\n    speaks_for: []\n",
                "bots.alice",
            ),
            ("bots:\n  bot:\n    keys: []\n    speaks_for: []\n", "bots.bot.keys"),
        ];
        for (text, field) in cases {
            let error = PeopleFile::parse(text).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
        let shared = format!("people:\n  alice:\n    keys: ['{ALICE_KEY}']\n  bob:\n    keys: ['{ALICE_KEY} copy']\n");
        assert_eq!(PeopleFile::parse(&shared).unwrap_err().field, "people.bob.keys[0]");
        let unknown = format!("bots:\n  chatops:\n    keys: ['{BOT_KEY}']\n    speaks_for: [mallory]\n");
        assert_eq!(
            PeopleFile::parse(&unknown).unwrap_err().field,
            "bots.chatops.speaks_for[0]"
        );
        let typo = PeopleFile::parse("people:\n  alice:\n    email: [a@b.c]\n").unwrap_err();
        assert!(typo.location.contains("line 3"), "{typo}");
    }
}

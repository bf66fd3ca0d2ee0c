//! `environments.yaml` at the root of the config repo: the ordered environments a release moves
//! through, each with its Kubernetes namespace and its promotion policy. The promoter reads it
//! from the config repo before every decision; an invalid file is refused (with the field at
//! fault) and the last valid policy stays in force. Schema: `schemas/json/environments.json`.
//!
//! ```yaml
//! environments:
//!   - name: staging
//!     namespace: shop-staging
//!     policy: auto                 # promote every tested release at once
//!     drift: heal                  # put back what someone changed in the cluster by hand
//!   - name: production
//!     namespace: shop-production
//!     policy: manual               # wait for approvals
//!     soak: 10m                    # healthy in staging at least this long first
//!     approvals:
//!       required: 2
//!       users: [alice]
//!       groups: [sre]
//!       author_may_approve: false
//!       expires_after: 24h
//!     freeze:
//!       - name: weekend
//!         cron: "0 18 * * FRI"     # starts Friday 18:00 …
//!         duration: 62h            # … and ends Monday 08:00
//!         timezone: Europe/Berlin
//!     evidence:                    # what the image must prove (keys: keys/<name>.pem here)
//!       signed_by: [builder-2026]
//!       provenance:
//!         builders: [https://baton.dev/builder/v1]
//!       tests:
//!         signed_by: [tester-2026]
//! groups:
//!   sre: [carol, dave]
//! people:
//!   alice:
//!     emails: [alice@example.com]  # recognises alice as the author of her commits
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::userfile::{self, FileError};

/// The path of the environments file inside the config repo.
pub const ENVIRONMENTS_FILE: &str = "environments.yaml";

/// The whole `environments.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentsFile {
    /// The environments in promotion order: a release enters the first and moves to the next
    /// once it is deployed and healthy where it is.
    pub environments: Vec<Environment>,
    /// Named groups of Baton identities, usable in `approvals.groups`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Baton identities and the commit e-mail addresses that are theirs, so the promoter can
    /// tell when someone approves their own change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub people: BTreeMap<String, PersonSpec>,
}

/// What Baton knows about a person.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonSpec {
    /// E-mail addresses their commits are authored with.
    #[serde(default)]
    pub emails: Vec<String>,
}

/// One environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Name, e.g. `staging`; also the folder of its manifests in the config repo. Lowercase
    /// letters, digits and `-`.
    pub name: String,
    /// The Kubernetes namespace the deployer applies this environment's manifests to.
    pub namespace: String,
    /// `auto`: promote without asking; `manual`: wait for the approvals below.
    pub policy: PromotionPolicy,
    /// Who must approve a promotion into this environment (used when `policy: manual`, and for
    /// break-glass promotions during a freeze).
    #[serde(default)]
    pub approvals: ApprovalPolicy,
    /// How long a release must have been deployed and healthy in the previous environment
    /// before it is promoted here.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Duration::is_zero")]
    #[schemars(with = "Option<String>")]
    pub soak: Duration,
    /// Windows in which nothing is promoted here automatically or by approval; only a
    /// break-glass promotion (itself approved, and recorded) goes through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<FreezeWindow>,
    /// Whether a release whose commit declares no test steps may enter this environment.
    #[serde(default)]
    pub allow_untested: bool,
    /// Who may give each operator command in this environment. A verb left out has its
    /// default ([`EnvironmentsFile::grantees`]; `baton policy show` prints every one).
    #[serde(default, skip_serializing_if = "Grants::is_empty")]
    pub grants: Grants,
    /// What a release must prove before it enters: signatures, provenance and a passing test
    /// attestation, read from the registry and verified with the config repo's `keys/`.
    /// Without it, nothing is asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidencePolicy>,
    /// What the deployer does when the live objects of an app differ from the manifests of the
    /// environment's current config commit: `report` (the default), `heal` or `ignore`.
    #[serde(default, skip_serializing_if = "DriftPolicy::is_default")]
    pub drift: DriftPolicy,
}

/// What the deployer does about drift: live objects that differ from the manifests of the
/// environment's current config commit (a field Baton manages changed, an applied object
/// missing, an object with the app's labels that the release does not have).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftPolicy {
    /// Report it (`baton-environment.drifted`, `baton status`, chat) and leave the cluster as it
    /// is: a person decides (`baton sync`, or a new promotion).
    #[default]
    Report,
    /// Report it and re-apply the current config commit through the normal apply path, rollout
    /// health judged; never while a newer promotion of the app is rolling out.
    Heal,
    /// Neither look nor report.
    Ignore,
}

impl DriftPolicy {
    /// Whether this is the default (`report`), left out when written.
    pub fn is_default(&self) -> bool {
        *self == Self::Report
    }

    /// The word in `environments.yaml`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Report => "report",
            Self::Heal => "heal",
            Self::Ignore => "ignore",
        }
    }
}

/// The folder of the config repo holding the public keys evidence is verified with:
/// `keys/<name>.pem`, one PEM `PUBLIC KEY` (ECDSA P-256) each.
pub const KEYS_DIR: &str = "keys";

/// The evidence an environment requires of a release's image, each piece verified with public
/// keys named here and kept in the config repo (`keys/<name>.pem`), so that adding or rotating a
/// key is a reviewed commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidencePolicy {
    /// The image must carry a cosign signature by one of these keys; the provenance must be
    /// signed by one of them too.
    pub signed_by: Vec<String>,
    /// An SLSA provenance attestation (signed by one of `signed_by`) must say the image was
    /// built by a listed builder, from the release's commit, of a listed repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<ProvenancePolicy>,
    /// A test-result attestation, signed by one of these keys, must say the tests PASSED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestsPolicy>,
}

/// Where an image must have been built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvenancePolicy {
    /// Builder ids accepted (the builder's `signing.builder_id`, e.g.
    /// `https://baton.dev/builder/v1`).
    pub builders: Vec<String>,
    /// Source repositories accepted (URLs). Empty: the release's own repository only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

/// Whose test verdicts count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestsPolicy {
    /// The keys a test-result attestation may be signed with (the testers').
    pub signed_by: Vec<String>,
}

impl EvidencePolicy {
    /// Every key name the policy uses, each once, in order.
    pub fn key_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        let tests = self.tests.iter().flat_map(|t| t.signed_by.iter());
        for name in self.signed_by.iter().chain(tests) {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }

    fn check(&self) -> Result<(), (String, String)> {
        if self.signed_by.is_empty() {
            return Err((
                "signed_by".into(),
                "name at least one key (a file keys/<name>.pem)".into(),
            ));
        }
        let named = |field: &str, names: &[String]| {
            for (k, name) in names.iter().enumerate() {
                if !is_key_name(name) {
                    return Err((
                        format!("{field}[{k}]"),
                        format!(
                            "`{name}` is not a key name: letters, digits, `.`, `_` and `-`, naming the file {KEYS_DIR}/<name>.pem"
                        ),
                    ));
                }
            }
            Ok(())
        };
        named("signed_by", &self.signed_by)?;
        if let Some(provenance) = &self.provenance
            && provenance.builders.is_empty()
        {
            return Err((
                "provenance.builders".into(),
                "name at least one builder id, e.g. https://baton.dev/builder/v1".into(),
            ));
        }
        if let Some(tests) = &self.tests {
            if tests.signed_by.is_empty() {
                return Err(("tests.signed_by".into(), "name at least one tester's key".into()));
            }
            named("tests.signed_by", &tests.signed_by)?;
        }
        Ok(())
    }
}

/// A key name: the file name of `keys/<name>.pem` without its extension.
fn is_key_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The operator commands an environment grants, each to people and groups.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// `promote` a release into the environment (it still passes the gates and approvals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promote: Option<Grant>,
    /// `rollback` the environment to an earlier release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Grant>,
    /// `pin` the environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<Grant>,
    /// `unpin` it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpin: Option<Grant>,
    /// `mark-bad`: quarantine a release (granted in any environment, it holds for every one).
    #[serde(rename = "mark-bad", skip_serializing_if = "Option::is_none")]
    pub mark_bad: Option<Grant>,
    /// `unquarantine`: lift a quarantine (granted in any environment, it holds for every one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unquarantine: Option<Grant>,
    /// Ask for a break-glass promotion during a freeze.
    #[serde(rename = "break-glass", skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<Grant>,
}

impl Grants {
    /// Whether nothing is granted explicitly.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn get(&self, verb: GrantedVerb) -> Option<&Grant> {
        match verb {
            GrantedVerb::Promote => self.promote.as_ref(),
            GrantedVerb::Rollback => self.rollback.as_ref(),
            GrantedVerb::Pin => self.pin.as_ref(),
            GrantedVerb::Unpin => self.unpin.as_ref(),
            GrantedVerb::MarkBad => self.mark_bad.as_ref(),
            GrantedVerb::Unquarantine => self.unquarantine.as_ref(),
            GrantedVerb::BreakGlass => self.break_glass.as_ref(),
        }
    }
}

/// People and groups granted a verb.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Grant {
    /// People, by name.
    pub users: Vec<String>,
    /// Groups: the top-level `groups` here, and the `groups` of people in `people.yaml`.
    pub groups: Vec<String>,
}

/// A verb `grants` can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrantedVerb {
    /// `promote`.
    Promote,
    /// `rollback`.
    Rollback,
    /// `pin`.
    Pin,
    /// `unpin`.
    Unpin,
    /// `mark-bad`.
    MarkBad,
    /// `unquarantine`.
    Unquarantine,
    /// A break-glass `promote` during a freeze.
    BreakGlass,
}

impl GrantedVerb {
    /// Every verb, in the order `baton policy show` prints them.
    pub const ALL: &'static [Self] = &[
        Self::Promote,
        Self::Rollback,
        Self::Pin,
        Self::Unpin,
        Self::MarkBad,
        Self::Unquarantine,
        Self::BreakGlass,
    ];

    /// As `grants` spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Rollback => "rollback",
            Self::Pin => "pin",
            Self::Unpin => "unpin",
            Self::MarkBad => "mark-bad",
            Self::Unquarantine => "unquarantine",
            Self::BreakGlass => "break-glass",
        }
    }

    /// Whether the verb acts on a release rather than on one environment: granted in any
    /// environment, it holds for the release everywhere.
    pub const fn is_release_wide(self) -> bool {
        matches!(self, Self::MarkBad | Self::Unquarantine)
    }
}

/// Who holds a verb in an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grantees {
    /// People, by name (empty with `everyone`).
    pub users: BTreeSet<String>,
    /// Groups, by name.
    pub groups: BTreeSet<String>,
    /// Everyone in `people.yaml` (the default where nobody approves).
    pub everyone: bool,
    /// Where it comes from, as `baton policy show` prints it.
    pub source: &'static str,
}

impl Grantees {
    /// Whether `person`, a member of `groups`, holds the verb.
    pub fn include(&self, person: &str, groups: &BTreeSet<&str>) -> bool {
        self.everyone || self.users.contains(person) || self.groups.iter().any(|g| groups.contains(g.as_str()))
    }
}

/// How releases enter an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PromotionPolicy {
    /// Every eligible release is promoted without asking.
    Auto,
    /// A release waits for the required approvals.
    Manual,
}

/// Who may approve a promotion, and how many must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Distinct approvals needed.
    pub required: u32,
    /// Identities allowed to approve.
    pub users: Vec<String>,
    /// Groups (see the top-level `groups`) whose members may approve.
    pub groups: Vec<String>,
    /// Whether the author of the release's commit may approve it.
    pub author_may_approve: bool,
    /// How long a request stays open; then it expires and the release stops here.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub expires_after: Duration,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self {
            required: 1,
            users: Vec::new(),
            groups: Vec::new(),
            author_may_approve: false,
            expires_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// A recurring window in which the environment is frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    /// A name shown when a promotion is held, e.g. `weekend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the window starts: a five-field cron expression (minute hour day month weekday).
    pub cron: String,
    /// How long the window lasts from each start.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub duration: Duration,
    /// The IANA time zone the cron expression is read in, e.g. `Europe/Berlin`.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

impl EnvironmentsFile {
    /// Parses and checks `environments.yaml`.
    ///
    /// # Errors
    /// Names the field (and line, for syntax and shape errors) of the first problem.
    pub fn parse(text: &str) -> Result<Self, FileError> {
        let file: Self = userfile::from_yaml(ENVIRONMENTS_FILE, text)?;
        file.check()
            .map_err(|(field, message)| FileError::in_field(ENVIRONMENTS_FILE, field, message))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), (String, String)> {
        if self.environments.is_empty() {
            return Err(("environments".into(), "list at least one environment".into()));
        }
        let mut names = BTreeSet::new();
        for (i, env) in self.environments.iter().enumerate() {
            let at = |field: &str| format!("environments[{i}].{field}");
            if !is_dns_label(&env.name) {
                return Err((
                    at("name"),
                    format!(
                        "`{}` must be 1-63 lowercase letters, digits or `-`, starting and ending with a letter or digit",
                        env.name
                    ),
                ));
            }
            if !names.insert(env.name.as_str()) {
                return Err((at("name"), format!("`{}` names two environments", env.name)));
            }
            if !is_dns_label(&env.namespace) {
                return Err((
                    at("namespace"),
                    format!("`{}` is not a valid Kubernetes namespace name", env.namespace),
                ));
            }
            let approvals = &env.approvals;
            if approvals.required == 0 {
                return Err((at("approvals.required"), "must be at least 1".into()));
            }
            if env.policy == PromotionPolicy::Manual && approvals.users.is_empty() && approvals.groups.is_empty() {
                return Err((
                    at("approvals"),
                    "a manual environment needs `users` or `groups` who may approve".into(),
                ));
            }
            for (g, group) in approvals.groups.iter().enumerate() {
                if !self.groups.contains_key(group) {
                    return Err((
                        at(&format!("approvals.groups[{g}]")),
                        format!("group `{group}` is not defined under the top-level `groups`"),
                    ));
                }
            }
            if env.policy == PromotionPolicy::Manual {
                let approvers = self.approvers_of(env).len();
                if approvers < approvals.required as usize {
                    return Err((
                        at("approvals.required"),
                        format!(
                            "{} approvals are required but only {approvers} people may approve",
                            approvals.required
                        ),
                    ));
                }
            }
            for verb in GrantedVerb::ALL {
                if let Some(grant) = env.grants.get(*verb)
                    && grant.users.is_empty()
                    && grant.groups.is_empty()
                {
                    return Err((
                        at(&format!("grants.{}", verb.as_str())),
                        "grants the verb to nobody: list `users` or `groups`, or leave the verb out for its default"
                            .into(),
                    ));
                }
            }
            if let Some(evidence) = &env.evidence {
                evidence
                    .check()
                    .map_err(|(field, message)| (at(&format!("evidence.{field}")), message))?;
            }
            if approvals.expires_after.is_zero() {
                return Err((at("approvals.expires_after"), "must be longer than 0s".into()));
            }
            for (w, window) in env.freeze.iter().enumerate() {
                let at = |field: &str| format!("environments[{i}].freeze[{w}].{field}");
                if let Err(e) = croner::Cron::from_str(&window.cron) {
                    return Err((
                        at("cron"),
                        format!(
                            "`{}` is not a cron expression (minute hour day month weekday): {e}",
                            window.cron
                        ),
                    ));
                }
                if window.timezone.parse::<chrono_tz::Tz>().is_err() {
                    return Err((
                        at("timezone"),
                        format!(
                            "`{}` is not an IANA time zone such as `UTC` or `Europe/Berlin`",
                            window.timezone
                        ),
                    ));
                }
                if window.duration.is_zero() {
                    return Err((at("duration"), "must be longer than 0s".into()));
                }
            }
        }
        Ok(())
    }

    /// The environment named `name`.
    pub fn get(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The environment after `name` in promotion order.
    pub fn next_after(&self, name: &str) -> Option<&Environment> {
        let i = self.environments.iter().position(|e| e.name == name)?;
        self.environments.get(i + 1)
    }

    /// The environment before `name` in promotion order.
    pub fn previous_before(&self, name: &str) -> Option<&Environment> {
        let i = self.environments.iter().position(|e| e.name == name)?;
        i.checked_sub(1).and_then(|p| self.environments.get(p))
    }

    /// Who holds `verb` in `env`: what `grants` says, or the default.
    ///
    /// Defaults: `promote`, `rollback`, `pin`, `unpin` and `break-glass` go to the environment's
    /// approvers; `mark-bad` to anyone who may approve in any environment; `unquarantine` to the
    /// approvers of the last environment (lifting a quarantine lets a release reach it). Where
    /// that names nobody (every environment automatic), the verb goes to everyone in
    /// `people.yaml`: a signed command by a listed person.
    pub fn grantees(&self, env: &Environment, verb: GrantedVerb) -> Grantees {
        if let Some(grant) = env.grants.get(verb) {
            return Grantees {
                users: grant.users.iter().cloned().collect(),
                groups: grant.groups.iter().cloned().collect(),
                everyone: false,
                source: "granted",
            };
        }
        let of = |envs: &[&Environment], source| {
            let users: BTreeSet<String> = envs.iter().flat_map(|e| e.approvals.users.iter().cloned()).collect();
            let groups: BTreeSet<String> = envs.iter().flat_map(|e| e.approvals.groups.iter().cloned()).collect();
            let everyone = users.is_empty() && groups.is_empty();
            Grantees {
                users,
                groups,
                everyone,
                source: if everyone {
                    "default: everyone in people.yaml (nobody approves here)"
                } else {
                    source
                },
            }
        };
        let manual = |e: &&Environment| {
            e.policy == PromotionPolicy::Manual || !e.approvals.users.is_empty() || !e.approvals.groups.is_empty()
        };
        match verb {
            GrantedVerb::MarkBad => {
                let all: Vec<&Environment> = self.environments.iter().filter(manual).collect();
                of(&all, "default: anyone who may approve in any environment")
            }
            GrantedVerb::Unquarantine => {
                let last: Vec<&Environment> = self.environments.last().into_iter().filter(manual).collect();
                of(&last, "default: the approvers of the last environment")
            }
            _ => {
                let this: Vec<&Environment> = std::iter::once(env).filter(manual).collect();
                of(&this, "default: the environment's approvers")
            }
        }
    }

    /// Everyone who may approve promotions into `env`.
    pub fn approvers_of<'a>(&'a self, env: &'a Environment) -> BTreeSet<&'a str> {
        let mut approvers: BTreeSet<&str> = env.approvals.users.iter().map(String::as_str).collect();
        for group in &env.approvals.groups {
            if let Some(members) = self.groups.get(group) {
                approvers.extend(members.iter().map(String::as_str));
            }
        }
        approvers
    }

    /// Whether `actor` is the author of a commit authored as `email` / `name`: their identity
    /// is the address or the name, or `people` lists the address as theirs.
    pub fn is_author(&self, actor: &str, email: Option<&str>, name: Option<&str>) -> bool {
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if email.is_some_and(|e| same(e, actor)) || name.is_some_and(|n| same(n, actor)) {
            return true;
        }
        match (self.people.get(actor), email) {
            (Some(person), Some(email)) => person.emails.iter().any(|e| same(e, email)),
            _ => false,
        }
    }
}

impl FreezeWindow {
    /// When the window covering `now` ends, or `None` when `now` is outside every occurrence.
    /// The file was checked at parse time; an expression that still fails to parse freezes
    /// nothing.
    pub fn active_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cron = croner::Cron::from_str(&self.cron).ok()?;
        let tz: chrono_tz::Tz = self.timezone.parse().ok()?;
        let length = chrono::Duration::from_std(self.duration).ok()?;
        // The first start strictly after `now - duration`: if it is not after `now`, the window
        // that began then still covers `now` (windows are half-open, [start, start + duration)).
        let from = (now - length).with_timezone(&tz);
        let start = cron.find_next_occurrence(&from, false).ok()?.with_timezone(&Utc);
        (start <= now).then_some(start + length)
    }

    /// How the window is named in messages.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("`{}` ({})", self.cron, self.timezone))
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace name.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn example() -> &'static str {
        let doc = include_str!("environments.rs");
        let start = doc.find("//! ```yaml\n").unwrap() + "//! ```yaml\n".len();
        let end = start + doc[start..].find("//! ```\n").unwrap();
        Box::leak(
            doc[start..end]
                .lines()
                .map(|l| l.strip_prefix("//! ").unwrap_or(l.trim_start_matches("//!")))
                .collect::<Vec<_>>()
                .join("\n")
                .into_boxed_str(),
        )
    }

    #[test]
    fn the_documented_example_parses() {
        let file = EnvironmentsFile::parse(example()).unwrap();
        assert_eq!(file.environments.len(), 2);
        let prod = file.get("production").unwrap();
        assert_eq!(prod.policy, PromotionPolicy::Manual);
        assert_eq!(prod.soak, Duration::from_secs(600));
        assert_eq!(prod.approvals.required, 2);
        assert_eq!(
            file.approvers_of(prod).into_iter().collect::<Vec<_>>(),
            ["alice", "carol", "dave"]
        );
        assert_eq!(file.next_after("staging").unwrap().name, "production");
        assert!(file.next_after("production").is_none());
        assert_eq!(file.previous_before("production").unwrap().name, "staging");
        assert!(file.is_author("alice", Some("Alice@Example.com"), None));
        assert!(!file.is_author("carol", Some("alice@example.com"), Some("Alice")));
        let evidence = prod.evidence.as_ref().unwrap();
        assert_eq!(evidence.key_names(), ["builder-2026", "tester-2026"]);
        assert!(file.get("staging").unwrap().evidence.is_none());
    }

    #[test]
    fn problems_name_the_field() {
        let cases = [
            ("environments: []", "field `environments`", "at least one"),
            (
                "environments:\n  - name: Staging\n    namespace: s\n    policy: auto",
                "environments[0].name",
                "lowercase",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n  - name: a\n    namespace: b\n    policy: auto",
                "environments[1].name",
                "two environments",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: sometimes",
                "environments[0].policy",
                "unknown variant",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: manual",
                "environments[0].approvals",
                "who may approve",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: manual\n    approvals: {users: [x], required: 2}",
                "environments[0].approvals.required",
                "only 1 people",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: manual\n    approvals: {groups: [ops]}",
                "environments[0].approvals.groups[0]",
                "not defined",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n    freeze: [{cron: 'every friday', duration: 1h}]",
                "environments[0].freeze[0].cron",
                "cron expression",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n    freeze: [{cron: '0 18 * * 5', duration: 1h, timezone: Mars/Olympus}]",
                "environments[0].freeze[0].timezone",
                "IANA",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n    soak: soon",
                "environments[0].soak",
                "",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n    colour: blue",
                "environments[0]",
                "unknown field `colour`",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n    evidence: {signed_by: []}",
                "environments[0].evidence.signed_by",
                "at least one key",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n    evidence: {signed_by: [../etc/passwd]}",
                "environments[0].evidence.signed_by[0]",
                "not a key name",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n    evidence: {signed_by: [b], provenance: {builders: []}}",
                "environments[0].evidence.provenance.builders",
                "builder id",
            ),
            (
                "environments:\n  - name: a\n    namespace: a\n    policy: auto\n    evidence: {signed_by: [b], tests: {signed_by: [t/x]}}",
                "environments[0].evidence.tests.signed_by[0]",
                "not a key name",
            ),
        ];
        for (text, field, words) in cases {
            let err = EnvironmentsFile::parse(text).unwrap_err();
            let shown = err.to_string();
            assert!(shown.starts_with("environments.yaml: "), "{shown}");
            assert!(
                err.field
                    .starts_with(field.trim_start_matches("field `").trim_end_matches('`')),
                "{text}\n=> {shown}"
            );
            assert!(shown.contains(words), "{text}\n=> {shown}");
        }
    }

    #[test]
    fn freeze_windows_cover_their_duration_in_their_time_zone() {
        let window = FreezeWindow {
            name: Some("weekend".into()),
            cron: "0 18 * * FRI".into(),
            duration: Duration::from_secs(62 * 3600),
            timezone: "Europe/Berlin".into(),
        };
        // Friday 2026-11-20 18:00 in Berlin is 17:00 UTC (CET, UTC+1).
        let start = Utc.with_ymd_and_hms(2026, 11, 20, 17, 0, 0).unwrap();
        assert_eq!(window.active_until(start - chrono::Duration::minutes(1)), None);
        let end = start + chrono::Duration::hours(62);
        assert_eq!(window.active_until(start), Some(end));
        assert_eq!(window.active_until(start + chrono::Duration::hours(30)), Some(end));
        assert_eq!(window.active_until(end), None);
        assert_eq!(window.active_until(end + chrono::Duration::days(2)), None);
    }

    #[test]
    fn every_verb_has_grantees_and_their_source() {
        let file = EnvironmentsFile::parse(
            "environments:\n  - {name: staging, namespace: s, policy: auto}\n  - name: production\n    namespace: p\n    policy: manual\n    approvals: {users: [alice], groups: [sre]}\n    grants:\n      rollback: {users: [oncall]}\ngroups:\n  sre: [carol]\n",
        )
        .unwrap();
        let (staging, production) = (file.get("staging").unwrap(), file.get("production").unwrap());
        let none = BTreeSet::new();
        let sre = BTreeSet::from(["sre"]);
        // Explicit.
        let rollback = file.grantees(production, GrantedVerb::Rollback);
        assert_eq!(rollback.source, "granted");
        assert!(rollback.include("oncall", &none) && !rollback.include("alice", &none));
        // The environment's approvers, by name or group.
        let pin = file.grantees(production, GrantedVerb::Pin);
        assert!(pin.include("alice", &none) && pin.include("carol", &sre) && !pin.include("bob", &none));
        // Nobody approves staging: everyone listed in people.yaml.
        assert!(file.grantees(staging, GrantedVerb::Rollback).everyone);
        // Release-wide verbs: approvers anywhere, and the last environment's.
        assert!(file.grantees(staging, GrantedVerb::MarkBad).include("alice", &none));
        assert!(!file.grantees(staging, GrantedVerb::MarkBad).everyone);
        assert!(file.grantees(staging, GrantedVerb::Unquarantine).include("carol", &sre));
        // A grant to nobody is refused.
        let empty = EnvironmentsFile::parse(
            "environments:\n  - name: staging\n    namespace: s\n    policy: auto\n    grants:\n      pin: {users: []}\n",
        )
        .unwrap_err();
        assert_eq!(empty.field, "environments[0].grants.pin");
    }
}

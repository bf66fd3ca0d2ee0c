//! The event catalog: every event type Baton emits or consumes.
//!
//! Types follow CDEvents v0.5.1 wherever one fits; approvals use the CDEvents 0.6 draft
//! vocabulary; what CDEvents has no word for is a Baton extension,
//! `dev.cdeventsx.baton-<subject>.<predicate>.<version>`. The NATS subject of an event is built
//! from its [`EventType::subject`] and [`EventType::predicate`] (see [`crate::subjects`]).

use std::fmt;
use std::str::FromStr;

/// Which vocabulary an event type comes from, and so which schema validates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vocabulary {
    /// An official CDEvents v0.5.1 type; validated against the vendored official schema.
    CdEvents051,
    /// A type from the CDEvents 0.6 draft (approvals); validated against the vendored draft schema.
    CdEvents06Draft,
    /// A Baton extension (`dev.cdeventsx.baton-…`); validated against the schema generated from
    /// the Rust types in [`crate::extensions`].
    BatonExtension,
}

impl Vocabulary {
    /// The `context.specversion` Baton writes for events of this vocabulary.
    pub const fn spec_version(self) -> &'static str {
        match self {
            Self::CdEvents051 | Self::BatonExtension => "0.5.1",
            Self::CdEvents06Draft => "0.6.0-draft",
        }
    }
}

macro_rules! catalog {
    ($(
        $(#[$doc:meta])*
        $variant:ident => ($vocab:ident, $prefix:literal, $subject:literal, $predicate:literal, $version:literal, $schema_file:literal, $emitter:literal)
    ),+ $(,)?) => {
        /// One event type of the catalog.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $( $(#[$doc])* $variant, )+
        }

        impl EventType {
            /// Every event type Baton knows, in catalog order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The full type string, e.g. `dev.cdevents.change.merged.0.3.0`. It is both the
            /// CloudEvent `type` and the CDEvent `context.type`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => concat!($prefix, ".", $subject, ".", $predicate, ".", $version),)+
                }
            }

            /// The CDEvents subject, e.g. `change` or `baton-release`.
            pub const fn subject(self) -> &'static str {
                match self { $(EventType::$variant => $subject,)+ }
            }

            /// The predicate, e.g. `merged`.
            pub const fn predicate(self) -> &'static str {
                match self { $(EventType::$variant => $predicate,)+ }
            }

            /// The version of this event type (not of the spec), e.g. `0.3.0`.
            pub const fn version(self) -> &'static str {
                match self { $(EventType::$variant => $version,)+ }
            }

            /// Which vocabulary the type belongs to.
            pub const fn vocabulary(self) -> Vocabulary {
                match self { $(EventType::$variant => Vocabulary::$vocab,)+ }
            }

            /// File name of this type's JSON Schema: under `schemas/cdevents/<version>/` for
            /// CDEvents types, under `schemas/json/events/` for Baton extensions.
            pub const fn schema_file(self) -> &'static str {
                match self { $(EventType::$variant => $schema_file,)+ }
            }

            /// The Baton service that emits events of this type.
            pub const fn emitted_by(self) -> &'static str {
                match self { $(EventType::$variant => $emitter,)+ }
            }
        }
    };
}

catalog! {
    /// A push to a tracked branch: the new head, with the pushed commits in `customData`.
    /// `change.merged` is the CDEvents word for "this change is now on the branch"; a push to
    /// `main` is exactly that, and it is what starts a release (a fresh `chainId`).
    ChangeMerged => (CdEvents051, "dev.cdevents", "change", "merged", "0.3.0", "changemerged.json", "listener"),
    /// The builder accepted a commit and queued its build.
    BuildQueued => (CdEvents051, "dev.cdevents", "build", "queued", "0.3.0", "buildqueued.json", "builder"),
    /// The build of a commit started.
    BuildStarted => (CdEvents051, "dev.cdevents", "build", "started", "0.3.0", "buildstarted.json", "builder"),
    /// The build finished; `customData.outcome` says success or failure, and why.
    BuildFinished => (CdEvents051, "dev.cdevents", "build", "finished", "0.3.0", "buildfinished.json", "builder"),
    /// The OCI image was assembled (not yet pushed).
    ArtifactPackaged => (CdEvents051, "dev.cdevents", "artifact", "packaged", "0.3.0", "artifactpackaged.json", "builder"),
    /// The OCI image is in the registry; the subject id is its purl, pinned by digest.
    ArtifactPublished => (CdEvents051, "dev.cdevents", "artifact", "published", "0.3.0", "artifactpublished.json", "builder"),
    /// The pushed image is signed and its provenance attested in the registry; `signature` is
    /// the cosign signature, `customData` names the key and the `.sig`/`.att` manifests.
    ArtifactSigned => (CdEvents051, "dev.cdevents", "artifact", "signed", "0.3.0", "artifactsigned.json", "builder"),
    /// The tester started the test suite of a commit.
    TestSuiteRunStarted => (CdEvents051, "dev.cdevents", "testsuiterun", "started", "0.3.0", "testsuiterunstarted.json", "tester"),
    /// The test suite finished with an outcome (success, failure, error, cancel).
    TestSuiteRunFinished => (CdEvents051, "dev.cdevents", "testsuiterun", "finished", "0.3.0", "testsuiterunfinished.json", "tester"),
    /// The promoter changed an environment's desired state (a commit to the config repo).
    EnvironmentModified => (CdEvents051, "dev.cdevents", "environment", "modified", "0.3.0", "environmentmodified.json", "promoter"),
    /// The deployer rolled a release out to an environment for the first time, healthy.
    ServiceDeployed => (CdEvents051, "dev.cdevents", "service", "deployed", "0.3.0", "servicedeployed.json", "deployer"),
    /// The deployer replaced a running release with a newer one, healthy.
    ServiceUpgraded => (CdEvents051, "dev.cdevents", "service", "upgraded", "0.3.0", "serviceupgraded.json", "deployer"),
    /// The deployer re-pointed an environment to an earlier release.
    ServiceRolledBack => (CdEvents051, "dev.cdevents", "service", "rolledback", "0.3.0", "servicerolledback.json", "deployer"),
    /// The promoter asks for approval to promote a release into a gated environment.
    ApprovalCreated => (CdEvents06Draft, "dev.cdevents", "approval", "created", "0.1.0", "approvalcreated.json", "promoter"),
    /// Someone approved or declined; the quorum is not settled yet.
    ApprovalUpdated => (CdEvents06Draft, "dev.cdevents", "approval", "updated", "0.1.0", "approvalupdated.json", "promoter"),
    /// The approval is settled: approved, rejected, cancelled (superseded) or expired.
    ApprovalClosed => (CdEvents06Draft, "dev.cdevents", "approval", "closed", "0.1.0", "approvalclosed.json", "promoter"),
    /// The promoter turned a tested artifact into a release (CDEvents has no release subject).
    ReleaseCreated => (BatonExtension, "dev.cdeventsx", "baton-release", "created", "0.1.0", "baton-release-created.json", "promoter"),
    /// A rollout failed its health checks (CDEvents' `service.*` events carry no outcome).
    DeploymentFailed => (BatonExtension, "dev.cdeventsx", "baton-deployment", "failed", "0.1.0", "baton-deployment-failed.json", "deployer"),
    /// The deployer began applying a promotion (progress: the rollout is under way).
    DeploymentStarted => (BatonExtension, "dev.cdeventsx", "baton-deployment", "started", "0.1.0", "baton-deployment-started.json", "deployer"),
    /// A promotion was not (fully) rolled out because a newer one for the same environment
    /// replaced it.
    DeploymentSuperseded => (BatonExtension, "dev.cdeventsx", "baton-deployment", "superseded", "0.1.0", "baton-deployment-superseded.json", "deployer"),
    /// A release was marked bad (by an operator, or after its rollout failed): it is never
    /// promoted again.
    ReleaseQuarantined => (BatonExtension, "dev.cdeventsx", "baton-release", "quarantined", "0.1.0", "baton-release-quarantined.json", "promoter"),
    /// A release's quarantine was lifted by a person granted `unquarantine`.
    ReleaseUnquarantined => (BatonExtension, "dev.cdeventsx", "baton-release", "unquarantined", "0.1.0", "baton-release-unquarantined.json", "promoter"),
    /// A promotion is waiting or refused (pinned, frozen, soaking, quarantined, untested), with
    /// the reason and, when it will happen by itself, when.
    PromotionHeld => (BatonExtension, "dev.cdeventsx", "baton-promotion", "held", "0.1.0", "baton-promotion-held.json", "promoter"),
    /// An operator command was refused (not allowed, duplicate, unknown release, closed
    /// request), recorded with the actor and the reason.
    CommandRejected => (BatonExtension, "dev.cdeventsx", "baton-command", "rejected", "0.1.0", "baton-command-rejected.json", "promoter"),
    /// An operator command was accepted from a proven sender: who (the person, the key's
    /// fingerprint, the channel) and what they asked; what it did follows as its own events.
    CommandAccepted => (BatonExtension, "dev.cdeventsx", "baton-command", "accepted", "0.1.0", "baton-command-accepted.json", "promoter"),
    /// The config repo's `environments.yaml` is invalid; the promoter keeps the last valid one.
    PolicyRejected => (BatonExtension, "dev.cdeventsx", "baton-policy", "rejected", "0.1.0", "baton-policy-rejected.json", "promoter"),
    /// The live objects of an app in an environment no longer match the manifests of its
    /// current config commit (a managed field changed, an applied object missing, an object with
    /// the app's labels the release does not have); reported once per drift.
    EnvironmentDrifted => (BatonExtension, "dev.cdeventsx", "baton-environment", "drifted", "0.1.0", "baton-environment-drifted.json", "deployer"),
    /// A reported drift ended: healed by the deployer, undone by hand, or replaced by a new
    /// rollout.
    EnvironmentSynced => (BatonExtension, "dev.cdeventsx", "baton-environment", "synced", "0.1.0", "baton-environment-synced.json", "deployer"),
    /// A heal did not put the environment back: its rollout failed, the release could not be
    /// applied, or objects still differ after it (ones Baton did not apply are not deleted). Not
    /// tried again for the same drift.
    EnvironmentUnhealed => (BatonExtension, "dev.cdeventsx", "baton-environment", "unhealed", "0.1.0", "baton-environment-unhealed.json", "deployer"),
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A type string that is not in Baton's catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type `{0}`: Baton handles only the types of its event catalog (see docs/events.md)")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_strings_follow_the_cdevents_grammar() {
        for t in EventType::ALL {
            let s = t.as_str();
            let parts: Vec<&str> = s.split('.').collect();
            assert_eq!(
                parts.len(),
                7,
                "{s}: dev.<cdevents|cdeventsx>.<subject>.<predicate>.<major>.<minor>.<patch>"
            );
            assert_eq!(parts[0], "dev");
            match t.vocabulary() {
                Vocabulary::BatonExtension => {
                    assert_eq!(parts[1], "cdeventsx");
                    assert!(parts[2].starts_with("baton-"), "{s}");
                }
                _ => assert_eq!(parts[1], "cdevents"),
            }
            assert_eq!(s.parse::<EventType>().unwrap(), *t);
        }
    }

    #[test]
    fn unknown_types_are_named_in_the_error() {
        let err = "dev.cdevents.pipelinerun.queued.0.2.0"
            .parse::<EventType>()
            .unwrap_err();
        assert!(err.to_string().contains("pipelinerun.queued"));
    }
}

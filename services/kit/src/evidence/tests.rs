//! Unit tests of the pure parts: keys, payloads, statements, envelopes and every refusal.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{TimeZone, Utc};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::Value;

use super::*;

/// A P-256 key from a fixed scalar, as PKCS#8 PEM (what `openssl genpkey` writes).
fn key(seed: u8) -> SigningKey {
    let secret = p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
    SigningKey::from_pem(&pem).unwrap()
}

fn subject() -> Subject {
    Subject {
        name: "registry.example:5000/acme/shop".to_owned(),
        digest: format!("sha256:{}", "ab".repeat(32)),
    }
}

fn build() -> BuildRecord {
    BuildRecord {
        builder_id: "https://baton.dev/builder/v1".to_owned(),
        repository: "https://git.example/acme/shop".to_owned(),
        git_ref: "refs/heads/main".to_owned(),
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        pipeline_digest: format!("sha256:{}", "cd".repeat(32)),
        base_image: Some(BaseImageRecord {
            name: "docker.io/library/busybox:1.36".to_owned(),
            digest: format!("sha256:{}", "ef".repeat(32)),
        }),
        steps: vec![
            StepRecord {
                name: "compile".to_owned(),
                exit_code: Some(0),
                status: "succeeded".to_owned(),
            },
            StepRecord {
                name: "lint".to_owned(),
                exit_code: Some(0),
                status: "succeeded".to_owned(),
            },
        ],
        run_id: "run-1".to_owned(),
        started: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
        finished: Utc.with_ymd_and_hms(2026, 1, 2, 3, 5, 0).unwrap(),
    }
}

#[test]
fn keys_load_and_name_themselves() {
    let signing = key(7);
    let public = signing.public_key();
    let pem = public.to_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    let reloaded = PublicKey::from_pem(&pem).unwrap();
    assert_eq!(reloaded, public);
    assert!(public.key_id().starts_with("sha256:") && public.key_id().len() == 7 + 64);
    assert_ne!(key(8).public_key().key_id(), public.key_id());
    assert!(!format!("{signing:?}").contains("PRIVATE"), "the key never prints");

    // SEC1, after the EC PARAMETERS block `openssl ecparam -genkey` writes first.
    let secret = p256::SecretKey::from_slice(&[7; 32]).unwrap();
    let sec1 = secret.to_sec1_pem(LineEnding::LF).unwrap();
    let text = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
        *sec1
    );
    assert_eq!(SigningKey::from_pem(&text).unwrap().public_key(), public);
}

#[test]
fn wrong_keys_are_refused_naming_what_was_found() {
    let refused = |pem: &str| SigningKey::from_pem(pem).unwrap_err().to_string();
    assert!(
        refused("nothing here").contains("no PEM block"),
        "{}",
        refused("nothing here")
    );
    let public = key(7).public_key().to_pem();
    assert!(
        refused(&public).contains("no private key, only PUBLIC KEY"),
        "{}",
        refused(&public)
    );
    let rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    assert!(refused(rsa).contains("an RSA key"), "{}", refused(rsa));
    let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert!(refused(encrypted).contains("encrypted"), "{}", refused(encrypted));
    // A private key where the public one is expected.
    let private = p256::SecretKey::from_slice(&[7; 32])
        .unwrap()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    let error = PublicKey::from_pem(&private).unwrap_err().to_string();
    assert!(error.contains("no `PUBLIC KEY` block, only PRIVATE KEY"), "{error}");
}

#[test]
fn the_simple_signing_payload_is_cosigns() {
    let payload = String::from_utf8(simple_signing_payload(&subject())).unwrap();
    assert_eq!(
        payload,
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"registry.example:5000/acme/shop"}},"image":{{"docker-manifest-digest":"sha256:{}"}},"type":"cosign container image signature"}},"optional":null}}"#,
            "ab".repeat(32)
        )
    );
}

#[test]
fn an_image_signature_verifies_under_its_key_only() {
    let signing = key(7);
    let trusted = [key(9).public_key(), signing.public_key()];
    let signature = sign_image(&signing, &subject());
    assert_eq!(
        verify_image_signature(&signature, &subject(), &trusted),
        Ok(signing.public_key().key_id())
    );

    // The payload changed after signing (another digest written in).
    let mut tampered = signature.clone();
    tampered.payload = String::from_utf8(tampered.payload)
        .unwrap()
        .replace(&"ab".repeat(32), &"ac".repeat(32))
        .into_bytes();
    assert_eq!(
        verify_image_signature(&tampered, &subject(), &trusted)
            .unwrap_err()
            .check,
        "signature"
    );

    // The signature changed: its last byte (inside `s`, so still DER), then not base64.
    let mut der = STANDARD.decode(&signature.signature).unwrap();
    *der.last_mut().unwrap() ^= 0x01;
    let flipped = ImageSignature {
        payload: signature.payload.clone(),
        signature: STANDARD.encode(&der),
    };
    assert_eq!(
        verify_image_signature(&flipped, &subject(), &trusted)
            .unwrap_err()
            .check,
        "signature"
    );
    let garbage = ImageSignature {
        payload: signature.payload.clone(),
        signature: "not base64!".to_owned(),
    };
    assert_eq!(
        verify_image_signature(&garbage, &subject(), &trusted)
            .unwrap_err()
            .check,
        "signature"
    );

    // Another key signed it.
    let other = sign_image(&key(11), &subject());
    let refusal = verify_image_signature(&other, &subject(), &trusted).unwrap_err();
    assert_eq!(refusal.check, "signature");
    assert!(refusal.reason.contains(&signing.public_key().key_id()), "{refusal}");

    // A valid signature of another image is not one of this image.
    let elsewhere = Subject {
        digest: format!("sha256:{}", "99".repeat(32)),
        ..subject()
    };
    let refusal = verify_image_signature(&sign_image(&signing, &elsewhere), &subject(), &trusted).unwrap_err();
    assert_eq!(refusal.check, "signature.subject");
    assert!(refusal.reason.contains(&elsewhere.digest), "{refusal}");
    let other_repository = Subject {
        name: "registry.example:5000/acme/other".to_owned(),
        ..subject()
    };
    let refusal = verify_image_signature(&sign_image(&signing, &other_repository), &subject(), &trusted).unwrap_err();
    assert_eq!(refusal.check, "signature.subject");

    assert_eq!(
        verify_image_signature(&signature, &subject(), &[]).unwrap_err().check,
        "signature.key"
    );
}

#[test]
fn provenance_records_the_build() {
    let statement = provenance(&subject(), &build());
    let json = serde_json::to_value(&statement).unwrap();
    assert_eq!(json["_type"], STATEMENT_V1);
    assert_eq!(json["predicateType"], SLSA_PROVENANCE_V1);
    assert_eq!(json["subject"][0]["name"], "registry.example:5000/acme/shop");
    assert_eq!(json["subject"][0]["digest"]["sha256"], "ab".repeat(32));
    let predicate = &json["predicate"];
    assert_eq!(predicate["runDetails"]["builder"]["id"], "https://baton.dev/builder/v1");
    let source = &predicate["buildDefinition"]["externalParameters"]["source"];
    assert_eq!(source["repository"], "https://git.example/acme/shop");
    assert_eq!(source["commit"], "0123456789abcdef0123456789abcdef01234567");
    let dependencies = predicate["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    assert_eq!(
        dependencies[0]["digest"]["gitCommit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(dependencies[1]["digest"]["sha256"], "cd".repeat(32));
    assert_eq!(dependencies[2]["uri"], "oci://docker.io/library/busybox:1.36");
    assert_eq!(dependencies[2]["digest"]["sha256"], "ef".repeat(32));
    let metadata = &predicate["runDetails"]["metadata"];
    assert_eq!(metadata["startedOn"], "2026-01-02T03:04:05.000Z");
    assert_eq!(metadata["finishedOn"], "2026-01-02T03:05:00.000Z");
    let steps = predicate["runDetails"]["byproducts"].as_array().unwrap();
    assert_eq!(steps[1]["name"], "step/lint");
    assert_eq!(steps[1]["annotations"]["exitCode"], 0);

    let scratch = provenance(
        &subject(),
        &BuildRecord {
            base_image: None,
            ..build()
        },
    );
    assert_eq!(
        scratch.predicate["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "scratch has no base image"
    );
}

#[test]
fn an_envelope_opens_under_its_key_only() {
    let signing = key(7);
    let trusted = [signing.public_key()];
    let statement = provenance(&subject(), &build());
    let envelope = seal(&signing, &statement);
    assert_eq!(envelope.payload_type, IN_TOTO_PAYLOAD_TYPE);
    assert_eq!(envelope.signatures[0].keyid, signing.public_key().key_id());
    let json = serde_json::to_value(&envelope).unwrap();
    assert!(json.get("payloadType").is_some(), "{json}");

    let (opened, key_id) = open_envelope(&envelope, &subject(), &trusted, SLSA_PROVENANCE_V1).unwrap();
    assert_eq!((opened, key_id), (statement.clone(), signing.public_key().key_id()));

    // The payload changed: the commit rewritten.
    let mut payload: Value = serde_json::from_slice(&STANDARD.decode(&envelope.payload).unwrap()).unwrap();
    payload["predicate"]["buildDefinition"]["externalParameters"]["source"]["commit"] = "f".repeat(40).into();
    let tampered = Envelope {
        payload: STANDARD.encode(serde_json::to_vec(&payload).unwrap()),
        ..envelope.clone()
    };
    let refusal = open_envelope(&tampered, &subject(), &trusted, SLSA_PROVENANCE_V1).unwrap_err();
    assert_eq!(refusal.check, "attestation.signature", "{refusal}");

    // The signature changed.
    let mut der = STANDARD.decode(&envelope.signatures[0].sig).unwrap();
    *der.last_mut().unwrap() ^= 0x01;
    let mut flipped = envelope.clone();
    flipped.signatures[0].sig = STANDARD.encode(&der);
    let refusal = open_envelope(&flipped, &subject(), &trusted, SLSA_PROVENANCE_V1).unwrap_err();
    assert_eq!(refusal.check, "attestation.signature", "{refusal}");

    // Another key sealed it.
    let other = seal(&key(11), &statement);
    let refusal = open_envelope(&other, &subject(), &trusted, SLSA_PROVENANCE_V1).unwrap_err();
    assert_eq!(refusal.check, "attestation.key", "{refusal}");
    assert!(refusal.reason.contains(&key(11).public_key().key_id()), "{refusal}");

    // About another image.
    let elsewhere = Subject {
        digest: format!("sha256:{}", "99".repeat(32)),
        ..subject()
    };
    let refusal = open_envelope(&envelope, &elsewhere, &trusted, SLSA_PROVENANCE_V1).unwrap_err();
    assert_eq!(refusal.check, "attestation.subject", "{refusal}");

    // Not the predicate asked for, and not an in-toto payload.
    let refusal = open_envelope(&envelope, &subject(), &trusted, TEST_RESULT_V0_1).unwrap_err();
    assert_eq!(refusal.check, "attestation.predicate_type", "{refusal}");
    let other_type = Envelope {
        payload_type: "application/json".to_owned(),
        ..envelope.clone()
    };
    let refusal = open_envelope(&other_type, &subject(), &trusted, SLSA_PROVENANCE_V1).unwrap_err();
    assert_eq!(refusal.check, "attestation.payload", "{refusal}");
}

#[test]
fn provenance_is_checked_against_the_release() {
    let statement = provenance(&subject(), &build());
    let builders = ["https://baton.dev/builder/v1".to_owned()];
    let repositories = ["https://git.example/acme/shop.git".to_owned()];
    let requirement = ProvenanceRequirement {
        builders: &builders,
        repositories: &repositories,
        commit: "0123456789abcdef0123456789abcdef01234567",
    };
    assert_eq!(check_provenance(&statement, &requirement), Ok(()));
    let other_commit = ProvenanceRequirement {
        commit: "1123456789abcdef0123456789abcdef01234567",
        ..requirement
    };
    assert_eq!(
        check_provenance(&statement, &other_commit).unwrap_err().check,
        "provenance.commit"
    );
    let unknown = ["https://ci.example/other".to_owned()];
    let other_builder = ProvenanceRequirement {
        builders: &unknown,
        ..requirement
    };
    assert_eq!(
        check_provenance(&statement, &other_builder).unwrap_err().check,
        "provenance.builder"
    );
    let elsewhere = ["https://git.example/acme/other".to_owned()];
    let other_repository = ProvenanceRequirement {
        repositories: &elsewhere,
        ..requirement
    };
    assert_eq!(
        check_provenance(&statement, &other_repository).unwrap_err().check,
        "provenance.repository"
    );
}

#[test]
fn test_results_pass_only_when_passed() {
    let verdict = TestRecord {
        tester_id: "https://baton.dev/tester/v1".to_owned(),
        result: TestOutcome::Passed,
        configuration: vec![ResourceDescriptor {
            name: ".baton.yaml".to_owned(),
            digest: BTreeMap::from([("sha256".to_owned(), "cd".repeat(32))]),
        }],
        passed_tests: vec!["cart::adds".to_owned()],
        warned_tests: Vec::new(),
        failed_tests: Vec::new(),
        counts: BTreeMap::from([("passed".to_owned(), 1), ("failed".to_owned(), 0)]),
        run_id: "test-1".to_owned(),
    };
    let statement = test_result(&subject(), &verdict);
    assert_eq!(statement.predicate_type, TEST_RESULT_V0_1);
    assert_eq!(statement.predicate["result"], "PASSED");
    assert_eq!(statement.predicate["passedTests"][0], "cart::adds");
    assert_eq!(statement.predicate["baton"]["counts"]["passed"], 1);
    assert_eq!(statement.predicate["baton"]["tester"], "https://baton.dev/tester/v1");
    assert_eq!(check_test_result(&statement), Ok(()));

    let failed = test_result(
        &subject(),
        &TestRecord {
            result: TestOutcome::Failed,
            failed_tests: vec!["cart::removes".to_owned()],
            ..verdict
        },
    );
    let refusal = check_test_result(&failed).unwrap_err();
    assert_eq!(refusal.check, "tests.result");
    assert!(refusal.reason.contains("cart::removes"), "{refusal}");
    assert_eq!(
        check_test_result(&provenance(&subject(), &build())).unwrap_err().check,
        "attestation.predicate_type"
    );
}

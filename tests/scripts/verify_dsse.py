#!/usr/bin/env python3
"""An independent verifier of the DSSE envelopes Baton attaches to images.

It shares no code with Baton: it recomputes DSSE's pre-authentication encoding (PAE), checks an
ECDSA P-256 / SHA-256 signature over it with the `cryptography` package and the public key in
PEM, then reads the in-toto statement inside and checks its subject and, for SLSA provenance,
the builder, the source repository and commit, the base image, the steps and the times.

Exit status: 0 when every check passes, 1 (with the failed check on stderr) otherwise.
"""

import argparse
import base64
import datetime
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

IN_TOTO = "application/vnd.in-toto+json"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"


class Refused(Exception):
    pass


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def verify_envelope(envelope: dict, public_key) -> dict:
    if envelope.get("payloadType") != IN_TOTO:
        raise Refused(f"payloadType is {envelope.get('payloadType')!r}")
    payload = base64.b64decode(envelope["payload"], validate=True)
    message = pae(envelope["payloadType"], payload)
    for signature in envelope.get("signatures", []):
        try:
            public_key.verify(base64.b64decode(signature["sig"]), message, ec.ECDSA(hashes.SHA256()))
            return json.loads(payload)
        except InvalidSignature:
            continue
    raise Refused("no signature verifies under the public key")


def load_public_key(path: str):
    """The ECDSA P-256 public key in the PEM file at `path`; `Refused` for any other key."""
    with open(path, "rb") as file:
        public_key = serialization.load_pem_public_key(file.read())
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise Refused("the public key is not ECDSA P-256")
    return public_key


def rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_statement(statement: dict, args) -> None:
    if statement.get("_type") != STATEMENT_V1:
        raise Refused(f"_type is {statement.get('_type')!r}")
    algorithm, _, hex_digest = args.digest.partition(":")
    if not any(subject.get("digest", {}).get(algorithm) == hex_digest for subject in statement.get("subject", [])):
        raise Refused(f"the statement is not about {args.digest}")
    if statement.get("predicateType") != args.predicate_type:
        raise Refused(f"predicateType is {statement.get('predicateType')!r}")
    if args.predicate_type != SLSA_PROVENANCE_V1:
        return
    predicate = statement["predicate"]
    definition, run = predicate["buildDefinition"], predicate["runDetails"]
    if args.builder and run["builder"]["id"] != args.builder:
        raise Refused(f"builder is {run['builder']['id']!r}")
    source = definition["externalParameters"]["source"]
    if args.repository and source["repository"] != args.repository:
        raise Refused(f"repository is {source['repository']!r}")
    if args.commit:
        if source["commit"] != args.commit:
            raise Refused(f"commit is {source['commit']!r}")
        commits = [d["digest"].get("gitCommit") for d in definition["resolvedDependencies"]]
        if args.commit not in commits:
            raise Refused("no resolved dependency records the commit")
    if args.base_digest:
        algorithm, _, hex_digest = args.base_digest.partition(":")
        bases = [d for d in definition["resolvedDependencies"] if d.get("name") == "base-image"]
        if not bases or bases[0]["digest"].get(algorithm) != hex_digest:
            raise Refused("the base image's digest is not recorded")
    if not definition["externalParameters"]["pipeline"]["digest"].startswith("sha256:"):
        raise Refused("the pipeline file's digest is missing")
    steps = [p for p in run.get("byproducts", []) if p.get("name", "").startswith("step/")]
    if len(steps) != args.steps:
        raise Refused(f"{len(steps)} steps recorded, not {args.steps}")
    for step in steps:
        if not isinstance(step["annotations"].get("exitCode"), int):
            raise Refused(f"{step['name']} has no exit code")
    metadata = run["metadata"]
    if rfc3339(metadata["startedOn"]) > rfc3339(metadata["finishedOn"]):
        raise Refused("the build finished before it started")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--envelope", required=True, help="the DSSE envelope, a JSON file")
    parser.add_argument("--public-key", required=True, help="the signer's public key, PEM")
    parser.add_argument("--digest", required=True, help="the image's manifest digest, sha256:<hex>")
    parser.add_argument("--predicate-type", default=SLSA_PROVENANCE_V1)
    parser.add_argument("--builder")
    parser.add_argument("--repository")
    parser.add_argument("--commit")
    parser.add_argument("--base-digest")
    parser.add_argument("--steps", type=int, default=0, help="how many build steps the provenance must list")
    args = parser.parse_args()

    with open(args.envelope, encoding="utf-8") as file:
        envelope = json.load(file)
    try:
        public_key = load_public_key(args.public_key)
        statement = verify_envelope(envelope, public_key)
        check_statement(statement, args)
    except (Refused, KeyError, TypeError, ValueError) as error:
        print(f"refused: {error!r}" if not isinstance(error, Refused) else f"refused: {error}", file=sys.stderr)
        return 1
    print(f"verified: {statement['predicateType']} about {args.digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

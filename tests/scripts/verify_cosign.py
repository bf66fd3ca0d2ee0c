#!/usr/bin/env python3
"""An independent verifier of the cosign signatures Baton attaches to images.

It shares no code with Baton: it reads the registry over plain HTTP as cosign lays signatures
out (the manifest tagged `sha256-<hex>.sig`, one simple-signing layer per signature, the
signature in the layer's `dev.cosignproject.cosign/signature` annotation), checks each layer's
bytes against its digest, verifies the ECDSA P-256 / SHA-256 signature over them with the
`cryptography` package and the public key in PEM, and checks that the payload names the image's
manifest digest and repository.

Exit status: 0 when one signature passes every check, 1 (with each refusal on stderr) otherwise.
"""

import argparse
import base64
import hashlib
import json
import sys
import urllib.error
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

# The key loading is verify_dsse.py's, beside this file.
from verify_dsse import Refused, load_public_key

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def get(url: str, accept: str = "*/*") -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read(1024 * 1024)


def check_layer(args, public_key, layer: dict) -> str:
    """An empty string when the layer is a valid signature, else why not."""
    if layer.get("mediaType") != SIMPLE_SIGNING:
        return f"layer media type {layer.get('mediaType')!r}"
    payload = get(f"{args.registry_url}/v2/{args.repository}/blobs/{layer['digest']}")
    if "sha256:" + hashlib.sha256(payload).hexdigest() != layer["digest"]:
        return "layer bytes do not match its digest"
    try:
        signature = base64.b64decode(layer["annotations"][ANNOTATION], validate=True)
        public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except (KeyError, ValueError, InvalidSignature):
        return "the signature does not verify under the public key"
    critical = json.loads(payload)["critical"]
    if critical["type"] != "cosign container image signature":
        return f"critical.type is {critical['type']!r}"
    if critical["image"]["docker-manifest-digest"] != args.digest:
        return f"it signs {critical['image']['docker-manifest-digest']}"
    if critical["identity"]["docker-reference"] != args.identity:
        return f"it names {critical['identity']['docker-reference']}"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registry-url", required=True, help="http://host:port")
    parser.add_argument("--repository", required=True)
    parser.add_argument("--digest", required=True, help="the image's manifest digest, sha256:<hex>")
    parser.add_argument("--identity", required=True, help="the docker-reference signed: host:port/repository")
    parser.add_argument("--public-key", required=True, help="the signer's public key, PEM")
    args = parser.parse_args()

    try:
        public_key = load_public_key(args.public_key)
    except Refused as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return 1
    tag = "sha256-" + args.digest.removeprefix("sha256:") + ".sig"
    try:
        manifest = json.loads(get(f"{args.registry_url}/v2/{args.repository}/manifests/{tag}", OCI_MANIFEST))
    except urllib.error.HTTPError as error:
        print(f"refused: no signature ({tag}: HTTP {error.code})", file=sys.stderr)
        return 1
    refusals = []
    for layer in manifest.get("layers", []):
        refusal = check_layer(args, public_key, layer)
        if not refusal:
            print(f"verified: {args.identity}@{args.digest}")
            return 0
        refusals.append(refusal)
    print("refused: " + ("; ".join(refusals) or "no layer"), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
